"""Training throughput, MFU and peak memory of the real training loop, per config, side by side.

Each measurement runs `train.py` as a user would (fresh out_dir, the corpus already prepared), for a few
steps, and reads tok/s from its log.jsonl (steps after the first logged ones, so start-up and warm-up are
left out) and the process's peak RSS. MFU is computed here against the fp32 (or bf16) matmul peak measured
in the same run, with two FLOP counts: ours (6N + attention, as the trainer logs) and nanoGPT's 6N
reference (N without position embeddings), so the numbers compare with nanoGPT's.

    python bench/train.py                                 # the four CPU shapes
    python bench/train.py --compare dtype=float32,dtype=bfloat16 --shapes nanogpt_cpu
    python bench/train.py --compare compile=false,compile=true --shapes nanogpt_cpu --steps 60
    python bench/train.py --compare bias=true+compile=false,bias=false+compile=true --shapes nanogpt_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
import torch

from peak import matmul_rate

REPO = harness.REPO
SHAPES = {
    # name: (config, overrides)
    "default": ("configs/default.toml", []),
    "shakespeare_char_cpu": ("configs/shakespeare_char_cpu.toml", []),
    "shakespeare_char": ("configs/shakespeare_char.toml", ["--device=cpu", "--compile=false", "--dtype=float32"]),
    # the same without dropout, as nanoGPT's CPU recipe runs (on CPU, dropout's random masks are ~30% of a step)
    "shakespeare_char_nodrop": ("configs/shakespeare_char.toml", ["--device=cpu", "--compile=false", "--dtype=float32",
                                                                  "--dropout=0.0"]),
    # nanoGPT's CPU recipe for Tiny Shakespeare: 4 layers, 128 wide, block 64, batch 12
    "nanogpt_cpu": ("configs/shakespeare_char_cpu.toml", ["--n_layer=4", "--n_head=4", "--n_embd=128",
                                                           "--block_size=64", "--batch_size=12",
                                                           "--gradient_accumulation_steps=1", "--dropout=0.0"]),
}


def steps_for(shape: str, steps: int) -> int:
    """The 10.7M-parameter shapes take seconds per step: a quarter of the steps (at least 10)."""
    return max(10, steps // 4) if SHAPES[shape][0] == "configs/shakespeare_char.toml" else steps


def run_once(shape: str, extra: list[str], steps: int, data_dir: str, device: str) -> dict:
    config, overrides = SHAPES[shape]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(REPO / "train.py"), str(REPO / config), *overrides, *extra,
               f"--out_dir={out}/run", f"--data_dir={data_dir}", f"--max_iters={steps}", f"--lr_decay_iters={steps}",
               f"--eval_interval={steps}", "--eval_iters=1", "--log_interval=5", "--plot=false", "--progress=false"]
        if device:
            cmd.append(f"--device={device}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"{shape} {' '.join(extra)} failed:\n{output[-3000:]}")
        records = [json.loads(line) for line in Path(out, "run", "log.jsonl").read_text().splitlines()]
    steps_logged = [r for r in records if "tok_per_s" in r and r.get("tok_per_s")]
    usable = steps_logged[2:] or steps_logged[-1:]  # leave out the first windows: warm-up, compilation
    return {"tok_per_s": statistics.median(r["tok_per_s"] for r in usable), "peak_rss_mb": usage.ru_maxrss / 1024}


def model_numbers(shape: str, extra: list[str]) -> dict:
    """Parameters and FLOPs per token of the shape, from the config (no training)."""
    sys.path.insert(0, str(REPO))
    from gpt.config import parse_args
    from gpt.model import GPT
    from gpt.runtime import training_flops_per_token
    from gpt.trainer import TrainConfig, model_config

    config, overrides = SHAPES[shape]
    settings, _ = parse_args(TrainConfig, [str(REPO / config), *overrides, *extra])
    vocab = 65 if "shakespeare" in settings.data else 222  # char vocabularies of the corpora
    with torch.device("meta"):
        model = GPT(model_config(settings, vocab))
    return {"params": model.num_params(), "flops_per_token": training_flops_per_token(model),
            "flops_6n": 6 * model.num_params(), "tokens_per_step": settings.batch_size * settings.block_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="nanogpt_cpu,shakespeare_char_cpu,default,shakespeare_char")
    parser.add_argument("--compare", default="",
                        help="comma-separated variants, run side by side; one variant may join settings with '+'")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="")
    parser.add_argument("--data_dir", default=str(REPO / "data"))
    args = parser.parse_args()
    # "a=1+b=2" is one variant with two settings
    variants = [[f"--{s}" for s in v.split("+")] for v in args.compare.split(",")] if args.compare else [[]]

    # The peak is sampled before every shape and once more at the end, and the median taken: one measurement
    # on a shared machine can land in a busy moment.
    peak_cases = {"fp32": matmul_rate(2048, torch.float32, "cpu"), "bf16": matmul_rate(2048, torch.bfloat16, "cpu")}
    peak_samples: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def sample_peak() -> None:
        for name, values in harness.interleaved(peak_cases, repeats=3).items():
            peak_samples[name] += values

    measured: list[tuple[str, dict[str, list[dict]]]] = []
    for shape in args.shapes.split(","):
        sample_peak()
        steps = steps_for(shape, args.steps)
        run_once(shape, variants[0], 10, args.data_dir, args.device)  # prepares the corpus; warms the disk cache
        cases = {" ".join(v) or "-": (lambda v=v: run_once(shape, v, steps, args.data_dir, args.device)) for v in variants}
        samples: dict[str, list[dict]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # A, B, A, B, ...
            for name, fn in cases.items():
                samples[name].append(fn())
        measured.append((shape, samples))
    sample_peak()
    peak32, peak16 = statistics.median(peak_samples["fp32"]), statistics.median(peak_samples["bf16"])
    rows, results = [], {"peak_gflops": {"fp32": harness.stats(peak_samples["fp32"]),
                                         "bf16": harness.stats(peak_samples["bf16"])}, "runs": {}}
    for shape, samples in measured:
        steps = steps_for(shape, args.steps)
        base = None
        for name, runs in samples.items():
            numbers = model_numbers(shape, [] if name == "-" else name.split())
            tps = harness.stats([r["tok_per_s"] for r in runs])
            peak = peak16 if "bfloat16" in name else peak32
            mfu = numbers["flops_per_token"] * tps["median"] / (peak * 1e9)
            mfu_6n = numbers["flops_6n"] * tps["median"] / (peak * 1e9)
            rss = max(r["peak_rss_mb"] for r in runs)
            base = base or tps["median"]
            results["runs"][f"{shape} {name}"] = {**numbers, "tok_per_s": tps, "mfu": mfu, "mfu_6n": mfu_6n,
                                                   "peak_rss_mb": rss, "steps": steps, "ratio": tps["median"] / base}
            rows.append([shape, name, f"{numbers['params'] / 1e6:.2f}M", tps["median"], tps["min"], tps["max"],
                         f"{mfu:.1%}", f"{mfu_6n:.1%}", f"{tps['median'] / base:.2f}", f"{rss:,.0f}"])
    path = harness.write("train", results)
    print(f"wrote {path}")
    print(f"peak matmul (n=2048, median of {len(peak_samples['fp32'])} samples through the run): "
          f"fp32 {peak32:,.0f} GFLOP/s (min {min(peak_samples['fp32']):,.0f}, max {max(peak_samples['fp32']):,.0f}), "
          f"bf16 {peak16:,.0f} GFLOP/s")
    print(harness.table(["shape", "variant", "params", "tok/s", "min", "max", "MFU", "MFU 6N", "ratio", "RSS MB"], rows))


if __name__ == "__main__":
    main()
