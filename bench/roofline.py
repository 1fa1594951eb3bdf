"""Benchmark: a roofline for decoding at GPT-2 124M's shape on this CPU: how close each weight format's tokens/s
comes to what the machine's memory bandwidth and matmul rate allow.

    .venv/bin/python bench/roofline.py --threads 1
    .venv/bin/python bench/roofline.py --threads 1 --quick      # fewer steps (a smoke run)

A decode step reads every weight once, for all the rows of the batch, and does 2 FLOPs per weight per row.
So a step of B rows costs at least max(weight bytes / bandwidth, B x FLOPs per token / matmul rate): at batch 1
the bytes bound it (a matrix-vector product does 2 FLOPs per weight read), and only at a batch of hundreds
would the arithmetic. This script measures the machine's two rates, then decodes greedily (gpt/decoding.py's
Decoder, random weights: speed does not depend on what was learned) with each format at batch 1 and 8:

  bandwidth     a copy of 256 MB (read + written: 512 MB moved), median of several, in GB/s
  matmul rate   float32 and bfloat16 matmuls of 1024 x 768 by 768 x 3072 (a GPT-2 MLP layer at a long prefill),
                and int8 through the same kernel as `--weights int8` (torch.ao's dynamic quantized Linear)
  bytes/token   the weights each step reads (every Linear layer, the LM head included; the embedding only
                one row per token) divided by the rows, plus each row's KV-cache reads at the measured length
  FLOPs/token   2 per matmul weight, plus attention's 4 x layers x context x width

Writes bench/results/roofline.json: the rates, and for each format and batch the bound in tokens/s, the
measured tokens/s and their ratio (the share of the bound reached).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import harness
import torch
import torch.nn as nn

from gpt.decoding import Decoder
from gpt.inference import prepare_for_inference
from gpt.model import GPT, GPTConfig
from gpt.sampling import sample

SHAPE = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


def copy_bandwidth(megabytes: int = 256, repeats: int = 7) -> float:
    """GB/s moved by copying a buffer far larger than the caches (each byte read once and written once)."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)  # touch the pages first
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - started)
    return 2 * source.numel() * 4 / statistics.median(times) / 1e9


def matmul_rate(weights: str, rows: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of a GPT-2 MLP-sized Linear (768 -> 3072) over `rows` tokens, in the given weight format."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(768, 3072, bias=False)).eval()
    x = torch.randn(rows, 768)
    if weights == "bfloat16":
        layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    elif weights == "int8":
        from gpt.inference import quantize_int8

        layer = quantize_int8(layer)
    with torch.inference_mode():
        layer(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - started)
    return 2 * rows * 768 * 3072 / statistics.median(times) / 1e9


def step_cost(model: GPT, weights: str, batch: int, context: int) -> tuple[float, float]:
    """Bytes read and FLOPs done per generated token, by a step of `batch` rows at `context` cached tokens."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    C, layers = model.config.n_embd, model.config.n_layer
    kv_bytes = 2 * layers * context * C * (4 if weights == "int8" else BYTES[weights])  # keys and values, per row
    bytes_per_token = matmul_weights * BYTES[weights] / batch + kv_bytes
    flops_per_token = 2 * matmul_weights + 4 * layers * context * C
    return bytes_per_token, flops_per_token


def decode_rate(model, batch: int, steps: int, prompt: int) -> float:
    """Tokens/s of greedy steps over `batch` rows, after their prompts are cached and one step is warm."""
    decoder = Decoder(model, torch.zeros(batch, prompt, dtype=torch.long))
    decoder.append(sample(decoder.next_logits(), 0.0))  # the prefill, then a first step
    started = time.perf_counter()
    for _ in range(steps):
        decoder.append(sample(decoder.next_logits(), 0.0))
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="float32,bfloat16,int8")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=16, help="tokens cached before the timed steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 4, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    bandwidth = copy_bandwidth()
    formats = args.formats.split(",")
    rates = {w: matmul_rate(w) for w in formats}
    torch.manual_seed(0)
    base = GPT(SHAPE).eval()
    models = {w: prepare_for_inference(copy.deepcopy(base), w) for w in formats}
    batches = [int(b) for b in args.batches.split(",")]
    cases = {f"{w} batch {b}": (lambda m=models[w], b=b: decode_rate(m, b, args.steps, args.prompt))
             for w in formats for b in batches}
    runs = harness.interleaved(cases, repeats=args.rounds, warmup=0)

    context = args.prompt + args.steps // 2  # the cache's mean length over the timed steps
    results, rows = {}, []
    for w in formats:
        for b in batches:
            nbytes, flops = step_cost(base, w, b, context)
            bound = min(bandwidth * 1e9 / nbytes, rates[w] * 1e9 / flops)
            measured = harness.stats(runs[f"{w} batch {b}"])
            share = measured["median"] / bound
            results[f"{w}_batch{b}"] = {"bytes_per_token": nbytes, "flops_per_token": flops,
                                        "bound_tok_per_s": bound, "bound_by": "bandwidth"
                                        if bandwidth * 1e9 / nbytes < rates[w] * 1e9 / flops else "matmul rate",
                                        "tok_per_s": measured, "share_of_bound": share}
            rows.append([w, b, nbytes / 1e6, flops / 1e9, bound, measured["median"], f"{share:.0%}"])
    path = harness.write("roofline", {"shape": "gpt2 124M (12 layers, 768 wide, vocab 50257)",
                                      "bandwidth_GBps": bandwidth, "matmul_GFLOPs": rates, "context": context,
                                      "steps": args.steps, "rounds": args.rounds, "results": results})
    print(f"wrote {path}")
    print(f"{torch.get_num_threads()} thread(s); copy bandwidth {bandwidth:.1f} GB/s; matmul GFLOP/s "
          + ", ".join(f"{w} {r:.0f}" for w, r in rates.items()))
    print(harness.table(["weights", "batch", "MB/token", "GFLOP/token", "bound tok/s", "tok/s median", "share"],
                        rows))


if __name__ == "__main__":
    main()
