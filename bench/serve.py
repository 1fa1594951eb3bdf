"""Benchmark: the server under load. How aggregate throughput grows with concurrent clients (one batched
decode step serves them all), and a bounded load test that must lose nothing.

    .venv/bin/python bench/serve.py                              # a random GPT-2 124M-shaped model
    .venv/bin/python bench/serve.py --ckpt out/shakespeare_char_cpu --tokens 100
    .venv/bin/python bench/serve.py --weights int8 --quick

It starts `python -m gpt.serve` on a free port (the model: --ckpt, or by default random weights at GPT-2
124M's shape written to a temporary Hugging Face folder, with GPT-2's tokenizer found offline, e.g. through
GPT2_TOKENIZER_DIR), then:

1. scaling: rounds alternate one client making requests one after another and C clients at once (C = 8 by
   default); each request asks for --tokens new tokens (temperature 0.8, its own seed). Aggregate tokens/s =
   completion tokens / wall time; the ratio of the medians is the gain from batching.
2. exactness: C greedy requests with different prompts, each alone, then all at once: every batched answer
   must equal its answer alone (counted in "greedy_equal_alone").
3. time to first token: a streaming request's wait for its first piece of text on an idle server, and while
   C - 1 other clients stream long answers (rounds alternating); the ratio of the medians is the cost of
   joining a busy batch (the new row's prefill and the steps it shares).
4. load test: 16 clients x 10 requests at once, each checked (status 200, the usage counts); reports
   requests served and lost, tokens/s, and the latency median and 95th percentile.
Writes bench/results/serve.json (with --weights int8: serve_int8.json; --name to choose).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness



def start(ckpt: str, args) -> tuple[subprocess.Popen, str, str]:
    command = [sys.executable, "-m", "gpt.serve", "--ckpt", ckpt, "--port", "0", "--log_level", "warning",
               "--max_batch", str(max(16, args.clients)), "--max_waiting", "256", "--weights", args.weights]
    if args.compile:
        command.append("--compile")
    if args.threads:
        command += ["--threads", str(args.threads)]
    process = subprocess.Popen(command, cwd=harness.REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"serving (\S+) .* at (http://\S+)/v1", line)
    if not match:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, match.group(2), match.group(1)


def request(http, url: str, model: str, tokens: int, seed: int, prompt: str) -> tuple[int, int, float]:
    started = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0.8, "seed": seed}
    response = http.post(url + "/v1/completions", json=body)
    seconds = time.perf_counter() - started
    completion = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
    return response.status_code, completion, seconds


def run_clients(url: str, model: str, clients: int, requests_each: int, tokens: int, prompt: str) -> dict:
    import httpx

    def client(c: int) -> list[tuple[int, int, float]]:
        with httpx.Client(timeout=600) as http:
            return [request(http, url, model, tokens, 1000 * c + r, prompt) for r in range(requests_each)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - started
    latencies = sorted(s for _, _, s in results)
    served = sum(status == 200 for status, _, _ in results)
    tokens_out = sum(t for _, t, _ in results)
    return {"clients": clients, "requests": len(results), "served": served, "lost": len(results) - served,
            "tokens": tokens_out, "wall_s": wall, "tok_per_s": tokens_out / wall,
            "latency_median_s": statistics.median(latencies),
            "latency_p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def greedy_text(http, url: str, model: str, tokens: int, prompt: str) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    return http.post(url + "/v1/completions", json=body).json()["choices"][0]["text"]


def exactness(url: str, model: str, clients: int, tokens: int, prompt: str) -> dict:
    """Each greedy request alone, then all at once: how many batched answers equal their answer alone."""
    import httpx

    prompts = [f"{prompt} {'x' * c}" for c in range(clients)]  # different lengths: rows at different positions
    with httpx.Client(timeout=600) as http:
        alone = [greedy_text(http, url, model, tokens, p) for p in prompts]

    def one(p: str) -> str:
        with httpx.Client(timeout=600) as http:
            return greedy_text(http, url, model, tokens, p)

    with ThreadPoolExecutor(clients) as pool:
        together = list(pool.map(one, prompts))
    return {"requests": clients, "greedy_equal_alone": sum(a == b for a, b in zip(alone, together))}


def first_token_seconds(http, url: str, model: str, prompt: str) -> float:
    """Seconds from sending a streaming request to its first piece of text; the rest of the stream is dropped."""
    started = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0.8, "seed": 1, "stream": True}
    with http.stream("POST", url + "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return time.perf_counter() - started
    raise SystemExit("a streaming request ended without a token")


def time_to_first_token(url: str, model: str, clients: int, rounds: int, prompt: str, busy_tokens: int) -> dict:
    """Median time to first token idle, and while clients - 1 others stream (rounds alternating)."""
    import threading

    import httpx

    idle, busy = [], []
    with httpx.Client(timeout=600) as http:
        for _ in range(rounds):
            idle.append(first_token_seconds(http, url, model, prompt))
            streaming = threading.Barrier(clients)  # the others have their first token: they are in the batch

            def other(c: int) -> None:
                body = {"model": model, "prompt": prompt, "max_tokens": busy_tokens, "temperature": 0.8,
                        "seed": c, "stream": True}
                with httpx.Client(timeout=600) as own, own.stream("POST", url + "/v1/completions", json=body) as r:
                    waiting = True
                    for line in r.iter_lines():
                        if waiting and '"text"' in line:
                            streaming.wait()
                            waiting = False

            others = [threading.Thread(target=other, args=(c,)) for c in range(clients - 1)]
            for t in others:
                t.start()
            streaming.wait()
            time.sleep(0.2)  # a few steps into their answers
            busy.append(first_token_seconds(http, url, model, prompt))
            for t in others:
                t.join()
    i, b = harness.stats(idle), harness.stats(busy)
    return {"idle_s": i, "busy_s": b, "busy_streams": clients - 1, "ratio": b["median"] / i["median"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="", help="the model to serve (default: random GPT-2 124M-shaped weights)")
    parser.add_argument("--weights", default="float32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="the server's torch threads (0: its default)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the scaling rounds")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", default="ROMEO:", help="the prompt of every request")
    parser.add_argument("--quick", action="store_true", help="1 round, 8 tokens, a smaller load test")
    parser.add_argument("--name", default="", help="results file bench/results/NAME.json (default: serve, "
                                                    "or serve_WEIGHTS for other weights than float32)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tokens = 1, 8
    args.name = args.name or ("serve" if args.weights == "float32" else f"serve_{args.weights}")

    folder = None
    ckpt = args.ckpt
    if not ckpt:
        import torch

        from gpt.hf import save_hf_gpt2
        from gpt.model import GPT, GPTConfig

        torch.manual_seed(0)
        folder = tempfile.TemporaryDirectory()
        save_hf_gpt2(GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)),
                     Path(folder.name) / "gpt2-124m-random")
        ckpt = str(Path(folder.name) / "gpt2-124m-random")
        os.environ.setdefault("GPT2_TOKENIZER_DIR", str(harness.REPO.parent / "shared" / "gpt2"))

    process, url, model = start(ckpt, args)
    prompt = args.prompt
    try:
        run_clients(url, model, args.clients, 1, 4, prompt)  # warm-up
        scaling = {"one": [], "many": []}
        for _ in range(args.rounds):  # alternate: one client (sequential requests), then C clients at once
            scaling["one"].append(run_clients(url, model, 1, args.clients, args.tokens, prompt))
            scaling["many"].append(run_clients(url, model, args.clients, 1, args.tokens, prompt))
        one = harness.stats([r["tok_per_s"] for r in scaling["one"]])
        many = harness.stats([r["tok_per_s"] for r in scaling["many"]])
        exact = exactness(url, model, args.clients, args.tokens, prompt)
        first = time_to_first_token(url, model, args.clients, max(2, args.rounds), prompt, 4 * args.tokens)
        load = run_clients(url, model, 16, 5 if args.quick else 10, args.tokens, prompt)
    finally:
        process.terminate()
        code = process.wait(timeout=120)
        if folder is not None:
            folder.cleanup()

    ratio = many["median"] / one["median"]
    path = harness.write(args.name, {
        "model": model, "weights": args.weights, "compile": args.compile, "threads": args.threads,
        "tokens_per_request": args.tokens, "clients": args.clients, "one_client": one, "many_clients": many,
        "ratio": ratio, "exactness": exact, "first_token": first, "load_test": load, "exit_code": code})
    print(f"wrote {path}")
    print(f"{model}, weights {args.weights}{', compiled' if args.compile else ''}, {args.tokens} tokens per request")
    print(harness.table(["clients", "aggregate tok/s median", "min", "max"],
                        [[1, one["median"], one["min"], one["max"]],
                         [args.clients, many["median"], many["min"], many["max"]]]))
    print(f"{args.clients} clients / 1 client: {ratio:.2f}x")
    print(f"greedy, {exact['requests']} requests at once: {exact['greedy_equal_alone']} equal their answer alone")
    print(f"time to first token: idle {first['idle_s']['median']:.3f} s, while {first['busy_streams']} others stream "
          f"{first['busy_s']['median']:.3f} s: {first['ratio']:.2f}x")
    print(f"load test: 16 clients x {load['requests'] // 16} requests: {load['served']} served, {load['lost']} lost, "
          f"{load['tok_per_s']:.1f} tok/s, latency median {load['latency_median_s']:.2f} s, "
          f"p95 {load['latency_p95_s']:.2f} s; server exit code {code}")


if __name__ == "__main__":
    main()
