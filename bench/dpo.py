"""Preference tuning (DPO), measured: the time of a step against instruction tuning's on the same shape, and
whether its defaults keep exact match on tasks the recipes were never tuned on.

    python bench/dpo.py speed [--init_from out/sft_brief] [--steps 20] [--repeats 3] [--threads 1]
    python bench/dpo.py unseen [--threads 1] [--out out/unseen] [--reuse]

unseen: the five tasks the suite leaves out unless named (gpt/post/tasks/suite.py, UNSEEN_TASKS), end to end with
the documented commands and nothing tuned for them: their suite and pairs (data/unseen_tasks, data/unseen_pairs),
instruction tuning from out/default (configs/sft_tasks_cpu.toml on them), then DPO from that model with the
defaults (configs/dpo_tasks_cpu.toml on their pairs) and plain DPO (the same with --dpo_nll=0). Each model's exact
match on the test split and the DPO models' held-out preference accuracy, overall and on the tasks the starting
model can do (exact match on new inputs >= 50%: where it can tell a right answer from a wrong one). Writes
bench/results/dpo_unseen.json. Exact match at a fixed number of steps does not depend on the machine's load
(one thread count, one CPU); the times do. About 10 minutes of training on an idle 2-core CPU, with --threads 1.

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
import shutil
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


UNSEEN_DATA = {"suite": Path("data/unseen_tasks"), "pairs": Path("data/unseen_pairs")}
# name: (train.py's arguments after the data, the model it starts from)
UNSEEN_RUNS = {"sft": (["configs/sft_tasks_cpu.toml"], "out/default"),
               "dpo": (["configs/dpo_tasks_cpu.toml"], "sft"),
               "dpo_plain": (["configs/dpo_tasks_cpu.toml", "--dpo_nll=0"], "sft")}
CAN_DO = 0.5  # a task the starting model answers right at least this often (new inputs): it can tell the answers apart


def told_apart(pairs: dict, before: dict, threshold: float = CAN_DO) -> dict:
    """Preference accuracy on the held-out pairs of the tasks the starting model can do (its exact match on new
    inputs >= threshold), pooled over their pairs: {"tasks", "n", "accuracy"}."""
    can = sorted(t for t, s in before["groups"]["new_inputs"]["tasks"].items() if s["exact_match"] >= threshold)
    scored = [pairs["tasks"][t] for t in can if t in pairs["tasks"]]
    n = sum(s["n"] for s in scored)
    return {"tasks": can, "n": n, "accuracy": sum(s["accuracy"] * s["n"] for s in scored) / n if n else None}


def unseen(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from gpt.post.tasks.suite import UNSEEN_TASKS

    os.chdir(REPO)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads)}

    def run(command: list[str]) -> str:
        done = subprocess.run([sys.executable, *command], env=env, text=True, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done.stdout

    tasks = [f"--tasks={','.join(UNSEEN_TASKS)}", "--held_out="]
    for kind, folder in (("make", UNSEEN_DATA["suite"]), ("pairs", UNSEEN_DATA["pairs"])):
        if not (folder / "test.jsonl").exists():
            run(["-m", "gpt.tasks", kind, f"--out={folder}", *tasks])
    suite, pairs = UNSEEN_DATA["suite"], UNSEEN_DATA["pairs"]
    data = {"sft": [f"--data={suite / 'train.jsonl'}", f"--val_data={suite / 'val.jsonl'}"],
            "dpo": [f"--data={pairs / 'train.jsonl'}", f"--val_data={pairs / 'val.jsonl'}"]}
    out, models = Path(args.out), {}
    for name, (recipe, start) in UNSEEN_RUNS.items():
        folder = out / name
        init_from = start if start.startswith("out/") else str(out / start)
        command = ["train.py", *recipe, *data[name[:3]], f"--init_from={init_from}", f"--out_dir={folder}"]
        if not (args.reuse and (folder / "ckpt.pt").exists()):
            if folder.exists():
                shutil.rmtree(folder)
            print(f"python {' '.join(command)}", flush=True)
            run([*command, f"--threads={args.threads}", "--progress=false", "--plot=false", *args.extra.split()])
        limit = [f"--limit={args.limit}"] if args.limit else []
        m = {"command": "python " + " ".join(command),
             "test": json.loads(run(["-m", "gpt.tasks", "eval", f"--ckpt={folder}", f"--data={suite / 'test.jsonl'}",
                                     "--json", "--progress=false", *limit]))}
        if name != "sft":
            m["pairs"] = json.loads(run(["-m", "gpt.tasks", "eval", f"--ckpt={folder}", f"--data={pairs / 'val.jsonl'}",
                                         "--json", "--progress=false", *limit]))
            m["told_apart"] = told_apart(m["pairs"], models["sft"]["test"])
        models[name] = m
        g = m["test"]["groups"]
        print(f"{name}: exact match {m['test']['exact_match']:.1%} (" + ", ".join(
            f"{k} {v['exact_match']:.1%}" for k, v in g.items()) + ")" + (
            f"; held-out preference accuracy {m['pairs']['accuracy']:.1%}, " + (
                f"{m['told_apart']['accuracy']:.1%} on the tasks it can do" if m["told_apart"]["n"] else
                "no task it can do") if "pairs" in m else ""), flush=True)
    before = models["sft"]["test"]
    changes = {name: {"exact_match_points": 100 * (models[name]["test"]["exact_match"] - before["exact_match"]),
                      **{f"{g}_points": 100 * (models[name]["test"]["groups"][g]["exact_match"] -
                                              before["groups"][g]["exact_match"]) for g in before["groups"]}}
               for name in ("dpo", "dpo_plain")}
    path = harness.write("dpo_unseen", {
        "what": "DPO's defaults and plain DPO on five tasks the recipes were not tuned on (gpt/post/tasks UNSEEN_TASKS)",
        "tasks": list(UNSEEN_TASKS), "threads": args.threads, "can_do_threshold": CAN_DO, "models": models,
        "changes": changes})
    print(f"wrote {path.relative_to(REPO)}")


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
    p = sub.add_parser("unseen")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="out/unseen", help="where the three runs go (replaced, unless --reuse)")
    p.add_argument("--reuse", action="store_true", help="keep the runs already in --out (after a failure)")
    p.add_argument("--extra", default="", help="a smoke test's shortcut: flags for every train.py after the "
                   "recipe's own (e.g. --max_iters=2 --lr_decay_iters=2 --eval_interval=2)")
    p.add_argument("--limit", type=int, default=0, help="a smoke test's shortcut: score only the first N items")
    args = parser.parse_args()
    {"speed": speed, "unseen": unseen}[args.what](args)


if __name__ == "__main__":
    main()
