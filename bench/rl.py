"""Reinforcement learning on the task suite, measured: exact match before and after a time-boxed RL run.

    python bench/rl.py [--init_from out/sft_tasks] [--seconds 600] [--max_iters 0] [--threads 1] [-- extra flags]

Runs `train.py configs/rl_tasks_cpu.toml` from the instruction-tuned model for at most --seconds of run time
(train.py's max_seconds: the run stops at the first step past it, evaluations included), or --max_iters steps,
then scores the starting model and the run's final checkpoint on the whole test split
(`python -m gpt.tasks eval`, greedy). Writes bench/results/rl.json: the steps done, the seconds per step, exact
match per group and per task before and after, and the issue's goal (new inputs +10 points or more within
10 minutes, no task down more than 3). Flags after `--` go to train.py (e.g. --learning_rate=1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import harness

REPO = harness.REPO


def run(args: list[str], what: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def exact_match(ckpt: Path | str, data: Path, threads: int) -> dict:
    out = run(["-m", "gpt.tasks", "eval", f"--ckpt={ckpt}", f"--data={data}", "--json", "--progress=false",
               f"--threads={threads}"], f"scoring {ckpt}")
    report = json.loads(out)
    return {group: {"exact_match": g["exact_match"], "tasks": {t: s["exact_match"] for t, s in g["tasks"].items()}}
            for group, g in report["groups"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init_from", default="out/sft_tasks", help="the instruction-tuned model RL starts from")
    parser.add_argument("--seconds", type=float, default=600.0, help="the run's time budget (train.py max_seconds)")
    parser.add_argument("--max_iters", type=int, default=0, help="stop after this many steps instead (0: the config's, "
                                                                  "raised so that only --seconds stops the run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="data/tasks/test.jsonl", help="what exact match is scored on")
    parser.add_argument("extra", nargs="*", help="more train.py flags (after --)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-rl-")) / "run"
    steps = args.max_iters or 100_000
    flags = [str(REPO / "configs" / "rl_tasks_cpu.toml"), f"--init_from={args.init_from}", f"--out_dir={out}",
             f"--threads={args.threads}", f"--max_iters={steps}", "--progress=false", "--plot=false",
             *([f"--max_seconds={args.seconds}"] if not args.max_iters else []), *args.extra]
    run([str(REPO / "train.py"), *flags], "train.py")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    trained = [r for r in log if r["kind"] == "train"]
    evals = [r for r in log if r["kind"] == "eval"]
    before = exact_match(args.init_from, REPO / args.data, args.threads)
    after = exact_match(out / "ckpt.pt", REPO / args.data, args.threads)
    gain = after["new_inputs"]["exact_match"] - before["new_inputs"]["exact_match"]
    drops = {f"{group}/{task}": before[group]["tasks"][task] - em for group in after
             for task, em in after[group]["tasks"].items() if group == "new_inputs"}
    seconds = trained[-1]["elapsed"]
    result = {"init_from": args.init_from, "flags": flags[1:], "steps": trained[-1]["step"],
              "run_seconds": seconds, "seconds_per_step": seconds / trained[-1]["step"],
              "before": before, "after": after, "new_inputs_gain": gain,
              "largest_task_drop": max(drops.values()), "evals": evals,
              "goal": {"gain_at_least_10_points": gain >= 0.10, "no_task_down_more_than_3": max(drops.values()) <= 0.03,
                       "within_600_seconds": seconds <= 600}}
    path = harness.write("rl", result)
    print(harness.table(["", "new inputs", "new phrasings", "held-out tasks"],
                        [[name, *(f"{r[g]['exact_match']:.1%}" for g in ("new_inputs", "new_phrasings",
                                                                           "held_out_tasks"))]
                         for name, r in (("before", before), (f"after {result['steps']} steps", after))]))
    print(f"new inputs {gain:+.1%}; largest task drop {result['largest_task_drop']:.1%}; "
          f"{seconds:.0f} s, {result['seconds_per_step']:.2f} s/step; wrote {path}")


if __name__ == "__main__":
    main()
