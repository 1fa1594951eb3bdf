"""Benchmark: a long prompt joining a batch that is decoding, read whole or in chunks (gpt/decoding.py's
prefill_chunk, the server's --prefill_chunk), at GPT-2 124M's shape on the CPU.

    .venv/bin/python bench/prefill.py --threads 1
    .venv/bin/python bench/prefill.py --threads 1 --prompt 256 --chunks 0,32      # shorter, quicker

Seven rows decode greedily (as seven streaming clients); then a prompt of --prompt tokens joins. For each
chunk size (0: the whole prompt in one forward pass), the rounds alternate and report: the longest step the
seven rows wait for while the newcomer is read (their worst gap between two tokens), their median step, and
how long the newcomer waits for its first token. Chunks bound the others' worst gap at the price of a later
first token for the newcomer. Writes bench/results/prefill.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import harness
import torch

from gpt.decoding import Decoder
from gpt.model import GPT, GPTConfig
from gpt.sampling import sample

SHAPE = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def join(model, chunk: int, prompt: int, others: int = 7) -> dict:
    """Seconds of each step while a `prompt`-token request joins `others` decoding rows."""
    decoder = Decoder(model, None, max_rows=others + 1, prefill_chunk=chunk)
    for b in range(others):
        decoder.add([1 + b, 2, 3])
    for _ in range(2):  # the others are decoding
        decoder.append(sample(decoder.next_logits(), 0.0))
    started = time.perf_counter()
    decoder.add(list(range(100, 100 + prompt)))
    steps = []
    while True:
        t0 = time.perf_counter()
        decoder.append(sample(decoder.next_logits(), 0.0))
        steps.append(time.perf_counter() - t0)
        if not decoder.rows[-1].filling:
            first_token = time.perf_counter() - started
            break
    for _ in range(3):  # steps after it joined, all rows decoding
        t0 = time.perf_counter()
        decoder.append(sample(decoder.next_logits(), 0.0))
        steps.append(time.perf_counter() - t0)
    return {"longest_step_s": max(steps), "median_step_s": statistics.median(steps),
            "first_token_s": first_token, "steps_to_join": len(steps) - 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=768, help="tokens of the joining prompt")
    parser.add_argument("--chunks", default="0,64", help="prefill_chunk values, comma-separated (0: whole)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(SHAPE).eval()
    chunks = [int(c) for c in args.chunks.split(",")]
    runs: dict[int, list[dict]] = {c: [] for c in chunks}
    with torch.inference_mode():
        join(model, chunks[0], 16)  # warm-up
        for _ in range(args.rounds):
            for c in chunks:
                runs[c].append(join(model, c, args.prompt))
    results, rows = {}, []
    for c in chunks:
        r = {key: statistics.median(run[key] for run in runs[c]) for key in runs[c][0]}
        results[f"chunk_{c}"] = r
        rows.append([c or "whole", r["longest_step_s"], r["median_step_s"], r["first_token_s"], r["steps_to_join"]])
    path = harness.write("prefill", {"shape": "gpt2 124M (12 layers, 768 wide, vocab 50257)", "others": 7,
                                     "prompt_tokens": args.prompt, "rounds": args.rounds, "results": results})
    print(f"wrote {path}")
    print(f"a {args.prompt}-token prompt joining 7 decoding rows, {torch.get_num_threads()} thread(s); medians of "
          f"{args.rounds} rounds")
    print(harness.table(["prefill_chunk", "others' longest step s", "median step s", "newcomer's first token s",
                         "steps to join"], rows))


if __name__ == "__main__":
    main()
