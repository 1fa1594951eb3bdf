"""Instruction tuning, measured: what it costs per token, and what it buys on the task suite.

    python bench/sft.py speed                     tok/s of train.py on conversations vs on the same text as plain
                                                  text, same shape, side by side (A, B, A, B); padding share
    python bench/sft.py curve [--name scratch] [-- train.py flags]
                                                  the recipe (configs/sft_tasks_cpu.toml) trained in stages (a
                                                  resumed run takes exactly the steps of an uninterrupted one), the
                                                  suite's val split scored after each stage, the test split at the end

Both read the suite from data/tasks (python -m gpt.tasks make --out data/tasks) and write JSON to bench/results/.
Examples, as BENCHMARKS.md records them:

    python bench/sft.py curve --name from_default --stages 250,500 --threads 1 --out out/curve_from_default
    python bench/sft.py curve --name from_default_all --threads 1 -- --loss_on=all
    python bench/sft.py curve --name scratch --threads 1 -- --init_from=scratch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

REPO = harness.REPO
CONFIG = REPO / "configs" / "sft_tasks_cpu.toml"
SUITE = REPO / "data" / "tasks"


def train(args: list[str]) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, text=True,
                         capture_output=True)
    if run.returncode != 0:
        raise SystemExit(f"train.py {' '.join(args)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return run.stdout


def score(ckpt: Path, data: Path, extra: list[str] = ()) -> dict:
    run = subprocess.run([sys.executable, "-m", "gpt.tasks", "eval", f"--ckpt={ckpt}", f"--data={data}", "--json",
                          "--progress=false", *extra], cwd=REPO, text=True, capture_output=True)
    if run.returncode != 0:
        raise SystemExit(f"scoring {ckpt} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout)


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------
# speed


def speed(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from gpt.post.chat import read_conversations

    train_file = SUITE / "train.jsonl"
    if not train_file.is_file():
        raise SystemExit(f"{train_file} not found: run python -m gpt.tasks make --out {SUITE} first")
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    # The same conversations as plain text: what the same model would read without a template or a mask.
    text = work / "tasks.txt"
    text.write_text("".join(f"{c.messages[0].content}\n{c.answer}\n\n" for c in read_conversations([train_file])),
                    encoding="utf-8")
    shape = ["--n_layer=4", "--n_head=4", "--n_embd=128", f"--block_size={args.block_size}",
             f"--batch_size={args.batch_size}", "--plot=false", "--progress=false", f"--threads={args.threads}",
             f"--data_dir={work / 'data'}", f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}",
             f"--eval_interval={args.steps}", "--eval_iters=1", "--log_interval=5"]
    kinds = {"conversations (answers only)": [f"--data={train_file}"],
             "conversations (every token)": [f"--data={train_file}", "--loss_on=all"],
             "plain text": [f"--data={text}"]}

    def once(flags: list[str]) -> float:
        out = Path(tempfile.mkdtemp(dir=work))
        train([*shape, *flags, f"--out_dir={out / 'run'}"])
        rates = [r["tok_per_s"] for r in log_records(out / "run") if r.get("tok_per_s")]
        return statistics.median(rates[2:] or rates)

    for flags in kinds.values():  # prepares the data (cached) and warms up
        once(flags)
    samples = harness.interleaved({name: (lambda f=flags: once(f)) for name, flags in kinds.items()},
                                  repeats=args.repeats, warmup=0)
    # The padding share of the packed windows, and the share of the tokens the masked loss counts.
    from gpt.datasets import open_training_data
    from types import SimpleNamespace

    cfg = SimpleNamespace(data=[str(train_file)], include=None, val_fraction=0.1, val_data=None,
                          data_dir=str(work / "data"), on_invalid_utf8="error", loss_on="assistant")
    data = open_training_data(cfg, "char", progress=False)
    stream = data.batches("train", args.block_size, args.batch_size, seed=0)
    padding = stream.padding_share()
    counted = sum(int(data.splits["train"].learned[s:e].sum()) for s, e in
                  zip(data.splits["train"].offsets[:-1], data.splits["train"].offsets[1:]))
    learned_share = counted / data.meta["splits"]["train"]["tokens"]
    base = statistics.median(samples["plain text"])
    rows, results = [], {"shape": shape, "padding_share": padding, "answer_share": learned_share, "runs": {}}
    for name, values in samples.items():
        s = harness.stats(values)
        results["runs"][name] = {"tok_per_s": s, "ratio_to_text": s["median"] / base}
        rows.append([name, s["median"], s["min"], s["max"], f"{s['median'] / base:.3f}"])
    path = harness.write("sft_speed", results)
    print(f"wrote {path}")
    print(harness.table(["data", "tok/s", "min", "max", "ratio to text"], rows))
    print(f"packed windows of {args.block_size + 1} tokens: {padding:.1%} padding; the answers are "
          f"{learned_share:.1%} of the conversations' tokens")


# ---------------------------------------------------------------------------------------------------
# curve


def curve(args: argparse.Namespace, flags: list[str]) -> None:
    stages = [int(s) for s in args.stages.split(",")]
    work = Path(args.out or tempfile.mkdtemp(prefix=f"bench-sft-{args.name}-"))
    out = work / "run"
    if out.exists():
        raise SystemExit(f"{out} exists: give another --out")
    points = []
    started = time.perf_counter()
    for i, steps in enumerate(stages):
        resume = ["--resume"] if i else [str(CONFIG), *flags]
        train([*resume, f"--out_dir={out}", f"--max_iters={steps}", f"--lr_decay_iters={stages[-1]}",
               f"--threads={args.threads}", "--progress=false", "--plot=false"])
        records = log_records(out)
        tokens = max(r.get("tokens", 0) for r in records)
        val_loss = [r["val_loss"] for r in records if r["kind"] == "eval"][-1]
        report = score(out / "ckpt.pt", SUITE / "val.jsonl")
        points.append({"step": steps, "tokens": tokens, "val_loss": val_loss,
                       "val_exact_match": report["exact_match"], "val_ended": report["ended"],
                       "train_seconds": max(r.get("elapsed", 0) for r in records)})
        print(f"{args.name} step {steps}: {tokens:,} tokens, val loss {val_loss:.4f}, val exact "
              f"{report['exact_match']:.1%}, ended {report['ended']:.1%}", flush=True)
    test = score(out / "ckpt.pt", SUITE / "test.jsonl")
    result = {"name": args.name, "flags": flags, "stages": points, "test": test,
              "wall_seconds": time.perf_counter() - started, "out": str(out)}
    path = harness.write(f"sft_curve_{args.name}", result)
    print(f"wrote {path}")
    for group, g in test.get("groups", {}).items():
        print(f"test {group}: exact {g['exact_match']:.1%} (mean of tasks {g['task_mean']:.1%}), ended "
              f"{g['ended']:.1%}")


def main() -> None:
    argv = sys.argv[1:]
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("curve")
    p.add_argument("--name", default="scratch")
    p.add_argument("--stages", default="250,500")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="")
    args = parser.parse_args(argv)
    speed(args) if args.what == "speed" else curve(args, flags)


if __name__ == "__main__":
    main()
