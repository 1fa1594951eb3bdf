"""One GPT-2 124M training step on a GPU, in variants, to find what limits MFU.

The step is the trainer's (gpt/trainer.py): micro-batches of forward + loss under bf16 autocast, backward,
gradient clipping, fused AdamW; the model is compiled. Tokens are random (throughput does not depend on
them), and the tokens per optimizer step stay fixed (64 x 1024 by default) whatever the micro-batch size.

    python bench/gpu_step.py --batch 32                 # configs/gpt2_124m.toml's micro-batch
    python bench/gpu_step.py --batch 32 --attention cudnn --no_bias
    python bench/gpu_step.py --batch 16 --profile       # where the time goes, kernel by kernel

Each run prints one line: variant, ms per step, tokens/s, MFU against the 989 TFLOP/s bf16 datasheet peak.
Run each variant in its own process (compilation state does not carry over between shapes), with the
project installed or PYTHONPATH set to the repository, as bench/gpu.sh does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics

import torch

from gpt.model import GPT, GPTConfig
from gpt.runtime import training_flops_per_token
from gpt.trainer import TrainConfig, make_optimizer

PEAK = 989e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="sequences per micro-batch")
    parser.add_argument("--tokens_per_step", type=int, default=64 * 1024)
    parser.add_argument("--attention", default="auto", choices=["auto", "flash", "cudnn", "efficient"])
    parser.add_argument("--mode", default="default", help="torch.compile mode (or 'none' for eager)")
    parser.add_argument("--no_bias", action="store_true", help="no biases in Linear layers and LayerNorms")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    config = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                       bias=not args.no_bias)
    model = GPT(config).to(device)
    flops_per_token = training_flops_per_token(model)
    accum = max(1, args.tokens_per_step // (args.batch * config.block_size))
    tokens = accum * args.batch * config.block_size
    params = list(model.parameters())
    # The trainer's optimizer (fused AdamW, decay on matrices only), with configs/gpt2_124m.toml's settings.
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw", learning_rate=6e-4, beta2=0.95, weight_decay=0.1))
    compiled = model if args.mode == "none" else torch.compile(model, mode=None if args.mode == "default" else args.mode)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}.get(args.attention)
    attention = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
    batches = [torch.randint(0, 50257, (args.batch, config.block_size + 1), device=device) for _ in range(4)]

    def step() -> torch.Tensor:
        total = torch.zeros((), device=device)
        for micro in range(accum):
            data = batches[micro % len(batches)]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = compiled(data[:, :-1], data[:, 1:])
                loss = loss / accum
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    with attention:
        for _ in range(3):  # compile and warm up
            step()
        torch.cuda.synchronize()
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step()
                torch.cuda.synchronize()
            try:
                table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
            except Exception:  # newer names
                table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=40)
            print(table)
        times = []
        for _ in range(args.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    ms = statistics.median(times) * 1000
    tps = tokens / statistics.median(times)
    mfu = flops_per_token * tps / PEAK
    result = {"batch": args.batch, "accum": accum, "bias": not args.no_bias, "attention": args.attention,
              "mode": args.mode, "coordinate_descent": bool(os.environ.get("TORCHINDUCTOR_COORDINATE_DESCENT_TUNING")),
              "ms_per_step": round(ms, 2), "min_ms": round(min(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2),
              "tok_per_s": round(tps), "mfu": round(mfu, 4),
              "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
