"""Benchmark: batch-1 greedy decoding at GPT-2 124M's shape on the CPU, each of our inference options side by
side with Hugging Face transformers' `generate` from the same weights.

    .venv/bin/python bench/decode.py                  # 64 new tokens, 5 rounds
    .venv/bin/python bench/decode.py --compile        # also the compiled cases (compiling takes minutes here)
    .venv/bin/python bench/decode.py --quick          # 2 rounds of 16 tokens (a smoke run)
    .venv/bin/python bench/decode.py --cases float32,int8 --tokens 32 --rounds 3   # fewer cases (a busy machine)

Cases (one model each, built from the same random weights: speed does not depend on what was learned):
  transformers       GPT2LMHeadModel.generate, greedy, with its KV cache (the folder gpt.hf.save_hf_gpt2 writes)
  float32            our Decoder (gpt/decoding.py) as `sample.py --temperature 0` runs it
  bfloat16, int8     `--weights bfloat16`, `--weights int8` (gpt/inference.py)
  int8 weight-only   torch's int8 weight-only matmul kernel (_weight_int8pack_mm), measured to decide: it is
                     not an option of ours
  compiled, bfloat16 compiled   `--compile`, `--weights bfloat16 --compile` (with --compile; int8 does not
                     combine with compile: its quantized layers break the graph, measured slower than int8 alone)
Every case decodes the same number of new tokens from a one-token prompt. After a warm-up, rounds run the
cases one after another (A, B, C, ..., A, B, C, ...); the table gives each case's median tokens/s with min and
max, and its ratio to transformers' median. Writes bench/results/decode.json.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import harness
import torch
import torch.nn as nn

from gpt.decoding import generate_tokens
from gpt.hf import save_hf_gpt2
from gpt.inference import prepare_for_inference
from gpt.model import GPT, GPTConfig

SHAPE = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


class WeightOnlyInt8Linear(nn.Module):
    """y = x @ (int8 weight * per-row scale)^T, by torch's weight-only kernel: 1 byte per weight read."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.weight = torch.round(weight / scale[:, None]).to(torch.int8)
        self.scale = scale
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x):
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).contiguous(), self.weight, self.scale)
        y = y.view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def weight_only_int8(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, WeightOnlyInt8Linear(child))
    return model


def ours(model, n_new: int) -> float:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    start = time.perf_counter()
    count = sum(1 for _ in generate_tokens(model, prompt, n_new, temperature=0.0))
    return count / (time.perf_counter() - start)


def transformers_generate(model, n_new: int) -> float:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
    return (out.shape[1] - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also the compiled cases")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 16 tokens")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cases", default="", help="only these cases, comma-separated (transformers always runs)")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = 16, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT(SHAPE).eval()
    with tempfile.TemporaryDirectory() as folder:
        save_hf_gpt2(base, folder)
        hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    models = {
        "float32": base,
        "bfloat16": prepare_for_inference(copy.deepcopy(base), "bfloat16"),
        "int8": prepare_for_inference(copy.deepcopy(base), "int8"),
        "int8 weight-only": weight_only_int8(copy.deepcopy(base)),
    }
    if args.cases:
        wanted = set(args.cases.split(","))
        models = {name: m for name, m in models.items() if name in wanted}
    if args.compile:
        for name, weights in (("compiled", "float32"), ("bfloat16 compiled", "bfloat16")):
            started = time.perf_counter()
            models[name] = prepare_for_inference(copy.deepcopy(base), weights, compile=True)
            ours(models[name], 4)  # compiles: the prefill-free first step, then steps with a cache
            print(f"{name}: compiled in {time.perf_counter() - started:.0f} s", flush=True)

    cases = {"transformers": lambda: transformers_generate(hf, args.tokens)}
    cases.update({name: (lambda m=m: ours(m, args.tokens)) for name, m in models.items()})
    runs = harness.interleaved(cases, repeats=args.rounds, warmup=1)
    reference = harness.stats(runs["transformers"])["median"]
    rows, results = [], {}
    for name, samples in runs.items():
        s = harness.stats(samples)
        results[name] = {**s, "vs_transformers": s["median"] / reference}
        rows.append([name, s["median"], s["min"], s["max"], f"{s['median'] / reference:.2f}x"])
    path = harness.write("decode", {"shape": "gpt2 124M (12 layers, 768 wide, vocab 50257)", "batch": 1,
                                    "new_tokens": args.tokens, "rounds": args.rounds, "results": results})
    print(f"wrote {path}")
    print(f"greedy decoding, batch 1, {args.tokens} new tokens, GPT-2 124M shape, {torch.get_num_threads()} thread(s)")
    print(harness.table(["case", "tok/s median", "min", "max", "vs transformers"], rows))


if __name__ == "__main__":
    main()
