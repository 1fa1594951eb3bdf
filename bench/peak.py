"""Peak matmul rate of this machine in fp32 and bf16: the denominator of MFU on the CPU.

    python bench/peak.py [--sizes 512,1024,2048] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import harness
import torch


def matmul_rate(n: int, dtype: torch.dtype, device: str) -> Callable:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    inner = max(1, int(2e10 // (2 * n**3)))  # about 20 GFLOP per measurement

    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return 2 * n**3 * inner / (time.perf_counter() - t0) / 1e9  # GFLOP/s

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, results = [], {}
    for n in sizes:
        cases = {f"fp32 {n}": matmul_rate(n, torch.float32, args.device),
                 f"bf16 {n}": matmul_rate(n, torch.bfloat16, args.device)}
        runs = harness.interleaved(cases, repeats=args.repeats)
        s32, s16 = harness.stats(runs[f"fp32 {n}"]), harness.stats(runs[f"bf16 {n}"])
        results[str(n)] = {"fp32_gflops": s32, "bf16_gflops": s16, "bf16_over_fp32": s16["median"] / s32["median"]}
        rows.append([n, s32["median"], s32["min"], s32["max"], s16["median"], s16["min"], s16["max"],
                     s16["median"] / s32["median"]])
    path = harness.write("peak", {"device": args.device, "results": results})
    print(f"wrote {path}")
    print(harness.table(["n", "fp32 GF/s", "min", "max", "bf16 GF/s", "min", "max", "bf16/fp32"], rows))


if __name__ == "__main__":
    main()
