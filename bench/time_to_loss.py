"""Time to quality: wall-clock seconds from `python train.py CONFIG` starting to the first evaluation whose
val loss is below a target, corpus preparation included (a fresh data_dir each run).

    python bench/time_to_loss.py configs/shakespeare_char_cpu.toml --target 1.80
    python bench/time_to_loss.py configs/shakespeare_char.toml --target 1.47      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import harness

REPO = harness.REPO


def run(config: str, target: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "run", "log.jsonl")
        local = REPO / "data" / "shakespeare" / "input.txt"  # a named corpus's local copy is not part of "prepare"
        if local.is_file():
            (Path(tmp) / "data" / "shakespeare").mkdir(parents=True)
            shutil.copy(local, Path(tmp) / "data" / "shakespeare" / "input.txt")
        cmd = [sys.executable, str(REPO / "train.py"), config, f"--out_dir={tmp}/run", f"--data_dir={tmp}/data",
               "--progress=false", "--plot=false", *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        reached, seen = None, 0
        evals: list[dict] = []
        while True:
            done = proc.poll() is not None
            if log.exists():
                lines = log.read_text().splitlines()
                for line in lines[seen:]:
                    record = json.loads(line)
                    if "val_loss" in record:
                        evals.append({**record, "wall": time.perf_counter() - start})
                        if reached is None and record["val_loss"] < target:
                            reached = evals[-1]
                seen = len(lines)
            if done:
                break
            time.sleep(0.1)
        total = time.perf_counter() - start
        output = proc.stdout.read()
        if proc.returncode != 0:
            raise SystemExit(f"train.py failed:\n{output[-3000:]}")
    return {"reached": reached, "total_s": total, "final_val_loss": evals[-1]["val_loss"] if evals else None,
            "evals": evals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--target", type=float, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="settings passed on to train.py, e.g. --device=cuda")
    args, unknown = parser.parse_known_args()
    extra = args.extra + unknown
    runs = [run(args.config, args.target, extra) for _ in range(args.repeats)]
    times = [r["reached"]["wall"] for r in runs if r["reached"]]
    name = Path(args.config).stem
    path = harness.write(f"time_to_loss_{name}", {"config": args.config, "target": args.target, "extra": extra,
                                                   "runs": runs})
    print(f"wrote {path}")
    rows = []
    for i, r in enumerate(runs):
        hit = r["reached"]
        rows.append([i + 1, f"{hit['wall']:.1f}" if hit else "not reached", hit["step"] if hit else "-",
                     f"{hit['val_loss']:.4f}" if hit else "-", f"{r['final_val_loss']:.4f}", f"{r['total_s']:.1f}"])
    print(harness.table(["run", f"s to val<{args.target}", "step", "val loss", "final val", "total s"], rows))
    if times:
        print(f"median time to val loss < {args.target}: {statistics.median(times):.1f} s over {len(times)} run(s)")


if __name__ == "__main__":
    main()
