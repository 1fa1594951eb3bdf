"""Preference tuning (DPO), measured: the time of a step against instruction tuning's on the same shape.

    python bench/dpo.py speed [--init_from out/sft_brief] [--steps 20] [--repeats 3] [--threads 1]

Both runs start from the same instruction-tuned model with the same batch_size and block_size, side by side
(A, B, A, B): instruction tuning on the suite's conversations (data/tasks/train.jsonl: batch_size packed windows
of block_size tokens) and DPO on its pairs (data/task_pairs/train.jsonl: batch_size pairs = 2 x batch_size
sequences, padded to the longest of the batch, through the policy (forward and backward) and the frozen
reference (forward only)). The time of a step is the median over the logged windows of each run (evaluations
and saving excluded), then the median over the repeats. Writes bench/results/dpo_speed.json.
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

REPO = harness.REPO


def train(args: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = Path(tempfile.mkdtemp(prefix="bench-dpo-")) / "run"
    run = subprocess.run([sys.executable, str(REPO / "train.py"), *args, f"--out_dir={out}"], cwd=REPO, env=env,
                         text=True, capture_output=True)
    if run.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def speed(args: argparse.Namespace) -> None:
    suite, pairs = REPO / "data" / "tasks", REPO / "data" / "task_pairs"
    for path, how in ((suite / "train.jsonl", "python -m gpt.tasks make --out data/tasks"),
                      (pairs / "train.jsonl", "python -m gpt.tasks pairs --out data/task_pairs"),
                      (Path(args.init_from), "configs/dpo_tasks_cpu.toml says how to make it")):
        if not path.exists():
            raise SystemExit(f"{path} not found: {how}")
    shape = [f"--init_from={args.init_from}", f"--block_size={args.block_size}", f"--batch_size={args.batch_size}",
             f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}", f"--eval_interval={args.steps}",
             "--eval_iters=1", "--log_interval=2", "--plot=false", "--progress=false", f"--threads={args.threads}",
             "--learning_rate=1e-3", "--warmup_iters=0"]
    kinds = {"instruction tuning": [f"--data={suite / 'train.jsonl'}", f"--val_data={suite / 'val.jsonl'}"],
             "DPO": [f"--data={pairs / 'train.jsonl'}", f"--val_data={pairs / 'val.jsonl'}"]}
    nominal = args.batch_size * args.block_size  # what tok_per_s counts per step, for both

    def once(flags: list[str]) -> float:
        rates = [r["tok_per_s"] for r in train([*shape, *flags]) if r.get("tok_per_s")]
        return nominal / statistics.median(rates[1:] or rates)  # seconds per step; the first window warms up

    samples = harness.interleaved({name: (lambda f=flags: once(f)) for name, flags in kinds.items()},
                                  repeats=args.repeats, warmup=0)
    # What a DPO step computes: 2 x batch_size sequences padded to the batch's longest, against the packed
    # windows' batch_size x block_size tokens.
    sys.path.insert(0, str(REPO))
    from types import SimpleNamespace

    from gpt.checkpoint import load_model
    from gpt.post.dpo import open_pairs

    loaded = load_model(args.init_from)
    cfg = SimpleNamespace(init_from=args.init_from, val_data=str(pairs / "val.jsonl"), val_fraction=0.1,
                          data_dir="data", dpo_beta=0.1)
    data = open_pairs([pairs / "train.jsonl"], cfg, loaded.tokenizer)
    stream = data.batches("train", args.block_size, args.batch_size, seed=0)
    widths = [stream.next()[0].shape[1] for _ in range(50)]
    dpo_tokens = 2 * args.batch_size * statistics.mean(widths)
    base = statistics.median(samples["instruction tuning"])
    rows, results = [], {"shape": shape, "dpo_tokens_per_step": dpo_tokens, "sft_tokens_per_step": nominal, "runs": {}}
    for name, values in samples.items():
        s = harness.stats(values)
        results["runs"][name] = {"seconds_per_step": s, "ratio_to_instruction_tuning": s["median"] / base}
        rows.append([name, s["median"], s["min"], s["max"], f"{s['median'] / base:.3f}"])
    path = harness.write("dpo_speed", results)
    print(f"wrote {path}")
    print(harness.table(["training", "s/step", "min", "max", "ratio"], rows))
    print(f"tokens through the model per step: instruction tuning {nominal:,} (forward and backward); DPO "
          f"{dpo_tokens:,.0f} (mean of 50 batches; forward and backward through the policy, forward through the "
          "reference)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--init_from", default="out/sft_brief")
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    speed(args)


if __name__ == "__main__":
    main()
