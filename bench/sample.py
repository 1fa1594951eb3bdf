"""Benchmark: generation speed (new tokens per second) with and without the KV cache, on CPU, batch 1.

    .venv/bin/python bench/sample.py                 # both shapes, 500 and 2000 new tokens
    .venv/bin/python bench/sample.py --quick         # fewer repeats (a smoke run)

Shapes: the shakespeare_char model (6 layers, 6 heads, 384 wide, block 256, vocab 65) and a 4-layer,
128-wide, block-64 model (nanoGPT's sample.py, which has no cache, makes about 770 tokens/s there).
Random weights: speed does not depend on what the model learned. Decoding goes through
gpt.decoding.generate_tokens with sample.py's default settings (temperature 0.8, top_k 200), so the
numbers include the sampling step. Warm-up first, then repeats taken side by side (cache, no cache, cache,
...); median, min and max tokens/s. Writes bench/results/sample.json and prints a table last.
With --device cuda it also measures GPT-2 124M's shape, in bf16 autocast as sample.py uses on a GPU.
"""

from __future__ import annotations

import argparse
import time

import harness
import torch

from gpt.device import synchronize
from gpt.decoding import generate_tokens
from gpt.model import GPT, GPTConfig

GPU_SHAPES = {"gpt2_124m 12L/768/1024": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)}
# Without biases, as configs/shakespeare_char.toml and nanoGPT's CPU recipe train them.
SHAPES = {
    "shakespeare_char 6L/384/256": GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, bias=False),
    "small 4L/128/64": GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False),
}


def tokens_per_second(model: GPT, n_new: int, use_kv_cache: bool, seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> float:
    device = next(model.parameters()).device
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)  # one token, as from an empty prompt
    generator = torch.Generator(device=device).manual_seed(seed)
    synchronize(device)
    start = time.perf_counter()
    count = sum(1 for _ in generate_tokens(model, prompt, n_new, temperature=0.8, top_k=200, generator=generator,
                                           use_kv_cache=use_kv_cache, dtype=dtype))
    synchronize(device)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--lengths", default="500,2000", help="numbers of new tokens, comma-separated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = {**SHAPES, **(GPU_SHAPES if device.type == "cuda" else {})}

    rows, results = [], []
    for shape, config in shapes.items():
        torch.manual_seed(0)
        model = GPT(config).to(device).eval()
        tokens_per_second(model, 2 * config.block_size, True, dtype=dtype)  # warm-up, past a window restart
        tokens_per_second(model, 20, False, dtype=dtype)
        for n_new in lengths:
            if not args.quick and n_new > 1000 and device.type == "cpu" and "384" in shape:
                repeats = 1  # 2000 tokens without the cache take minutes on a CPU
            else:
                repeats = 1 if args.quick else args.repeats
            cases = {"kv_cache": lambda: tokens_per_second(model, n_new, True, dtype=dtype),
                     "no_cache": lambda: tokens_per_second(model, n_new, False, dtype=dtype)}
            runs = harness.interleaved(cases, repeats=repeats, warmup=0)
            kv, nc = harness.stats(runs["kv_cache"]), harness.stats(runs["no_cache"])
            speedup = kv["median"] / nc["median"]
            results.append({"shape": shape, "new_tokens": n_new, "kv_cache": kv, "no_cache": nc, "speedup": speedup})
            rows.append([shape, n_new, kv["median"], kv["min"], kv["max"], nc["median"], nc["min"], nc["max"],
                         f"{speedup:.1f}x"])
            print(f"{shape} {n_new}: cache {kv['median']:.1f} tok/s, no cache {nc['median']:.1f} tok/s", flush=True)

    path = harness.write("sample" if device.type == "cpu" else f"sample_{device.type}",
                         {"device": str(device), "dtype": str(dtype), "results": results})
    print(f"wrote {path}")
    print(f"new tokens per second, {device.type}, batch 1, {torch.get_num_threads()} CPU thread(s)")
    print(harness.table(["shape", "new", "KV cache", "min", "max", "no cache", "min", "max", "ratio"], rows))


if __name__ == "__main__":
    main()
