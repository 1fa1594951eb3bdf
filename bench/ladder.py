"""The ladder from pretraining to an assistant, measured end to end: the figures of the README's results, of
docs/assistant.md and of BENCHMARKS.md's rows for them, from the commands the documentation shows.

    python bench/ladder.py [--threads 1] [--out out/ladder] [--skip sft_long,...] [--reuse] [--retrain_base]

In order, each a documented command (the runs go to --out/NAME; the base is out/default):

    python train.py                                         base: reused when out/default holds a finished run of
                                                            today's defaults (--retrain_base: trained again)
    python -m gpt.tasks make --out data/tasks               (reused when present: the same seed writes the same files)
    python -m gpt.tasks pairs --out data/task_pairs         (likewise)
    python train.py configs/sft_tasks_cpu.toml              sft: the instruction-tuning recipe
        ... --loss_on=all                                   sft_all: the loss on every token
        ... --init_from=scratch                             sft_scratch: no pretraining
        ... --max_iters=2500 --lr_decay_iters=2500          sft_long: five times longer
    python train.py configs/dpo_tasks_cpu.toml              dpo: the preference recipe (from sft)
        ... --dpo_nll=0 --learning_rate=1e-4 --min_lr=1e-5  dpo_plain: plain DPO
    python train.py configs/rl_tasks_cpu.toml               rl: reinforcement learning on checked answers (from dpo);
                                                            left out, with a note, where the config does not exist

Each model is scored with `python -m gpt.tasks eval` on data/tasks/test.jsonl (the DPO models and the one they
start from also on data/task_pairs/val.jsonl), and asked the documentation's prompts with `python sample.py`.
Writes bench/results/default.json (the base run and its samples) and bench/results/assistant.json (the rest),
then rewrites the documentation's figures from them (bench/figures.py --write). --report FILE also writes the
ladder as a Markdown report: each step (pretraining -> instruction tuning -> preference tuning -> reinforcement
learning), its time and tokens, exact match per group of the test split, what it changed, and a few answers.
`python bench/ladder.py --reuse --report FILE` writes it again from the runs and scores already in --out.

Every run is seeded and train.py is deterministic on one machine with one thread count, so the same code there gives
the same figures. Another thread count or CPU rounds differently (the recipe's loss at step 50 differs in the
seventh digit between one thread and two), which moves the scores a little: the figures say their thread count.
Times depend on the machine and its load. On the shared 2-core CPU, --threads 1 --parallel 2 with the base reused
took 50 minutes at load 3 to 8 (bench/results/assistant.json, wall_seconds and load_average); sft_long, 2,500 steps,
is the longest run (--skip sft_long ends sooner). Training the base first adds 4 minutes on a quiet machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import dataclasses
import datetime
import io
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import dpo
import harness

REPO = harness.REPO
SUITE, PAIRS = Path("data/tasks"), Path("data/task_pairs")
SFT, DPO, RL = "configs/sft_tasks_cpu.toml", "configs/dpo_tasks_cpu.toml", "configs/rl_tasks_cpu.toml"
# name: (the documented command's arguments after `python train.py`, the model it starts from)
RUNS: dict[str, tuple[list[str], str | None]] = {
    "sft": ([SFT], "base"),
    "sft_all": ([SFT, "--loss_on=all"], "base"),
    "sft_scratch": ([SFT, "--init_from=scratch"], None),
    "sft_long": ([SFT, "--max_iters=2500", "--lr_decay_iters=2500"], "base"),
    "dpo": ([DPO], "sft"),
    "dpo_plain": ([DPO, "--dpo_nll=0", "--learning_rate=1e-4", "--min_lr=1e-5"], "sft"),
    "rl": ([RL], "dpo"),  # only where RL's config exists (see main)
}
# The ladder of the report: each step's model, in order (the others are variations on a step).
STEPS = [("pretraining", "base"), ("instruction tuning", "sft"), ("preference tuning", "dpo"),
         ("reinforcement learning", "rl")]
PAIRS_SCORED = ("sft", "dpo", "dpo_plain")  # sft as the reference of itself: accuracy 50% by definition
# The prompts the documentation shows answers to (docs/assistant.md); the held-out tasks' are marked there.
PROMPTS = ["Reverse the word stone.", "What is 23 + 45?", "Uppercase blue.", "Spell cat.", "Which is larger, 312 or 297?",
           "How many letters are in planet?", "Sort these numbers: 42 7 19.", "Lowercase HELLO."]
HELD_OUT_PROMPTS = ["Lowercase HELLO."]
ANSWERED = ("sft", "dpo_plain", "dpo", "rl")
# The base model's samples (README.md, docs/sampling.md, docs/assistant.md): name -> sample.py's arguments.
BASE_SAMPLES = {
    "def": ["--prompt", "def ", "--max_new_tokens", "300", "--seed", "1"],
    "base_stone": ["--prompt", "Reverse the word stone.", "--max_new_tokens", "120", "--seed", "1"],
    "greedy": ["--prompt", "class ", "--temperature", "0", "--max_new_tokens", "200"],
    "show_probs": ["--prompt", "for i in ran", "--show_probs", "5"],
    "show_probs_t2": ["--prompt", "for i in ran", "--show_probs", "5", "--temperature", "2"],
}
# Settings that do not change a run of text: where it goes, how it shows, and the ones for pairs only (DPO's).
IGNORED_SETTINGS = {"out_dir", "threads", "progress", "plot", "device", "resume", "compile", "peak_flops", "dpo_beta",
                    "dpo_nll"}


class Ladder:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.threads:
            self.env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        self.loads: list[float] = [os.getloadavg()[0]]  # at the start, and before and after each command
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"[{(time.perf_counter() - self.started) / 60:5.1f} min] {text}", flush=True)

    def run(self, command: list[str]) -> str:
        self.loads.append(os.getloadavg()[0])
        done = subprocess.run([sys.executable, *command], cwd=REPO, env=self.env, text=True, capture_output=True)
        self.loads.append(os.getloadavg()[0])
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def train(self, args: list[str], out: Path, init_from: Path | None) -> None:
        flags = [f"--out_dir={out}", f"--threads={self.args.threads}", "--progress=false", "--plot=false",
                 *self.args.extra.split()]
        if init_from is not None:
            flags.append(f"--init_from={init_from}")
        self.run(["train.py", *args, *flags])

    # ---- the base

    def base(self) -> Path:
        if self.args.base:
            return Path(self.args.base)
        default = REPO / "out" / "default"
        if not self.args.retrain_base and finished_like_defaults(default):
            self.say(f"base: reusing {default.relative_to(REPO)} (a finished run of today's defaults)")
            return default
        target = default if not default.exists() else self.out / "default"
        if target.exists():
            shutil.rmtree(target)
        self.say(f"base: python train.py -> {target}")
        self.train([], target, None)
        return target

    # ---- the runs above it

    def tuned(self, name: str, base: Path) -> Path:
        args, start = RUNS[name]
        out = self.out / name
        init_from = {"base": base, "sft": self.out / "sft", "dpo": self.out / "dpo", None: None}[start]
        if self.args.reuse and (out / "best.pt").exists() and (out / "ckpt.pt").exists():
            self.say(f"{name}: reusing {out}")
            return out
        if out.exists():
            shutil.rmtree(out)
        self.say(f"{name}: python train.py {' '.join(args)}")
        self.train(args, out, init_from)
        return out

    def score(self, ckpt: Path, data: Path, extra: list[str] = ()) -> dict:
        cached = ckpt / f"ladder_{data.parent.name}_{data.stem}.json"
        if self.args.reuse and cached.exists():
            return json.loads(cached.read_text())
        limit = [f"--limit={self.args.limit}"] if self.args.limit else []
        report = json.loads(self.run(["-m", "gpt.tasks", "eval", f"--ckpt={ckpt}", f"--data={data}", "--json",
                                      "--progress=false", *limit, *extra]))
        if not self.args.limit:  # a smoke test's partial score must not pass for the whole one on --reuse
            cached.write_text(json.dumps(report))
        return report

    def sample(self, ckpt: Path, args: list[str]) -> str:
        """What `python sample.py --ckpt CKPT ARGS` prints, run in this process (the same main())."""
        import torch

        from gpt.generate import main

        threads = torch.get_num_threads()
        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        buffer = io.BytesIO()
        out = io.TextIOWrapper(buffer, encoding="utf-8", newline="")  # as a UTF-8 terminal: the bars of --show_probs
        with contextlib.redirect_stdout(out):
            code = main([*args, "--ckpt", str(ckpt), "--device", "cpu", "--stream=false"])
        out.flush()
        torch.set_num_threads(threads)
        if code != 0:
            raise SystemExit(f"sample.py {' '.join(args)} --ckpt {ckpt} failed")
        return buffer.getvalue().decode("utf-8")

    def load(self) -> dict:
        return {"min": min(self.loads, default=None), "max": max(self.loads, default=None)}


def finished_like_defaults(out: Path) -> bool:
    """Whether `out` holds a finished run of `python train.py` as the defaults are today."""
    sys.path.insert(0, str(REPO))
    from gpt.trainer import TrainConfig

    try:
        saved = tomllib.loads((out / "config.toml").read_text())
        steps = [r["step"] for r in log_records(out) if r["kind"] == "eval"]
    except (OSError, ValueError, KeyError):
        return False
    defaults = dataclasses.asdict(TrainConfig())
    # lr_decay_iters = 0 follows max_iters: a run that named its end (2000) has the same schedule as one that follows.
    for config in (saved, defaults):
        config["lr_decay_iters"] = config.get("lr_decay_iters") or config.get("max_iters")
    ignored = set(IGNORED_SETTINGS)
    if saved.get("lora_rank", 0) == defaults["lora_rank"] == 0:  # no adapter: its settings changed nothing
        ignored |= {k for k in defaults if k.startswith("lora_")}
    if not saved.get("rl"):  # not an RL run: its settings changed nothing
        ignored |= {"reward"} | {k for k in defaults if k.startswith("rl_")}
    # A setting added since the run was saved left it as that setting's default does (new settings default to
    # what the code did before them), so only the settings the run recorded are compared.
    same = all(saved[k] == v for k, v in defaults.items() if k not in ignored and k in saved)
    return same and (out / "ckpt.pt").exists() and steps and steps[-1] == defaults["max_iters"]


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def run_figures(out: Path) -> dict:
    """A run's figures from its own log: steps, training time, tok/s, the last evaluation's losses."""
    records = log_records(out)
    evals = [r for r in records if r["kind"] == "eval"]
    rates = [r["tok_per_s"] for r in records if r.get("tok_per_s")]
    last = evals[-1]
    finished = datetime.datetime.fromtimestamp((out / "log.jsonl").stat().st_mtime, datetime.timezone.utc)
    tokens = [r["tokens"] for r in records if r.get("tokens")]
    figures = {"steps": last["step"], "train_seconds": max(r.get("elapsed", 0) for r in records),
               "tokens": tokens[-1] if tokens else None,
               "finished": finished.strftime("%Y-%m-%d %H:%M UTC"),
               "tok_per_s_median": statistics.median(rates) if rates else None}
    figures.update({k: v for k, v in last.items() if k.startswith(("val_", "train_"))})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of every run (0: torch's default)")
    parser.add_argument("--out", default="out/ladder", help="where the tuned runs go (replaced, unless --reuse)")
    parser.add_argument("--parallel", type=int, default=1, help="runs (and scores) at the same time: 2 on an idle "
                        "2-core CPU with --threads 1")
    parser.add_argument("--skip", default="", help="runs to leave out, joined with ',' (of " + ", ".join(RUNS) + ")")
    parser.add_argument("--reuse", action="store_true", help="keep the runs and scores already in --out (after a "
                        "failure): only for the same code")
    parser.add_argument("--retrain_base", action="store_true", help="train the base again even if out/default holds "
                        "a finished run of today's defaults (after a change of the model's code)")
    parser.add_argument("--no_write", action="store_true", help="write the results, not the documentation")
    parser.add_argument("--report", default="", help="also write the ladder as a Markdown report to this file")
    parser.add_argument("--base", default="", help="a smoke test's shortcut: this checkpoint as the base")
    parser.add_argument("--extra", default="", help="a smoke test's shortcut: flags for every train.py after the "
                        "recipe's own (e.g. --max_iters=2 --lr_decay_iters=2 --eval_interval=2)")
    parser.add_argument("--limit", type=int, default=0, help="a smoke test's shortcut: score only the first N items")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(RUNS) or skip & {"sft", "dpo", "dpo_plain"}:
        raise SystemExit(f"--skip takes some of sft_all, sft_scratch, sft_long, rl; got {args.skip}")
    notes = {}
    if not (REPO / RL).exists() and "rl" not in skip:
        skip.add("rl")
        notes["rl"] = f"not run: this checkout has no {Path(RL).name} in configs/ (no reinforcement-learning step)"
    elif "rl" in skip:
        notes["rl"] = "not run: left out with --skip rl"
    if args.report:  # a path as the user meant it, before the change of folder
        args.report = str(Path(args.report).resolve())
        if not Path(args.report).parent.is_dir():
            raise SystemExit(f"--report {args.report}: its folder does not exist")
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    ladder = Ladder(args)
    ladder.out.mkdir(parents=True, exist_ok=True)

    base = ladder.base()
    samples = {name: ladder.sample(base, flags) for name, flags in BASE_SAMPLES.items()}
    base_figures = run_figures(base)
    path = harness.write("default", {
        "what": "python train.py (the default run) and the README's samples of it",
        "run": {"command": "python train.py", "out": str(base), **base_figures},
        "sample_commands": {name: shlex.join(["python", "sample.py", *flags]) for name, flags in BASE_SAMPLES.items()},
        "samples": samples, "load_average": ladder.load()})
    ladder.say(f"base: val loss {base_figures['val_loss']:.4f}; wrote {path.relative_to(REPO)}")

    for folder, command in ((SUITE, "make"), (PAIRS, "pairs")):
        if not (folder / "test.jsonl").exists():
            ladder.say(f"python -m gpt.tasks {command} --out {folder}")
            ladder.run(["-m", "gpt.tasks", command, f"--out={folder}"])

    models: dict[str, dict] = {"base": {"command": "python train.py", "out": str(base), "run": base_figures}}
    models.update({name: {"command": "python train.py " + " ".join(RUNS[name][0])} for name in RUNS if name not in skip})
    trained: dict[str, futures.Future] = {}

    def climb(name: str) -> None:
        """One model's rung: train it (after the model it starts from), then score it."""
        m = models[name]
        if name != "base":
            start = RUNS[name][1]
            if start in RUNS:  # a tuned model: wait for its run (the base is there already)
                trained[start].result()
            out = ladder.tuned(name, base)
            m.update(out=str(out), run=run_figures(out))
        ckpt = Path(m["out"])
        m["test"] = ladder.score(ckpt, SUITE / "test.jsonl")
        if name in PAIRS_SCORED:
            ref = [f"--ref={ladder.out / 'sft'}"] if name == "sft" else []
            m["pairs"] = ladder.score(ckpt, PAIRS / "val.jsonl", ref)
        g = m["test"]["groups"]
        ladder.say(f"{name}: test exact match " + " / ".join(f"{k} {g[k]['exact_match']:.1%}" for k in g))

    # The longest first; the DPO runs wait for sft, and rl for dpo, submitted before them (so a worker is never
    # stuck waiting).
    order = sorted(models, key=lambda n: (n != "sft_long", n.startswith("dpo") or n == "rl", n == "rl", n == "base"))
    with futures.ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for name in order:  # filled in order: a job finds every job submitted before it
            trained[name] = pool.submit(climb, name)
        for job in trained.values():
            job.result()
    for name in ("dpo", "dpo_plain"):  # held-out preference accuracy where the starting model can do the task
        models[name]["told_apart"] = dpo.told_apart(models[name]["pairs"], models["sft"]["test"])
    answers: dict[str, list[str]] = {"prompts": PROMPTS, "held_out_prompts": HELD_OUT_PROMPTS}
    for name in (n for n in ANSWERED if n in models):
        answers[name] = [ladder.sample(Path(models[name]["out"]), ["--chat", "--temperature", "0", "--prompt", p])
                         .rstrip("\n") for p in PROMPTS]
    changes = {}
    for name, before in (("dpo", "sft"), ("dpo_plain", "sft"), ("sft_long", "sft"), ("rl", "dpo")):
        if name in models:
            a = models[before]["test"]["groups"]["new_inputs"]["exact_match"]
            b = models[name]["test"]["groups"]["new_inputs"]["exact_match"]
            changes[f"{name}_new_inputs"] = {"from": a, "to": b, "word": "rose" if b > a else "fell" if b < a else
                                             "held"}
    path = harness.write("assistant", {
        "what": "the assistant ladder: instruction tuning and preference tuning on the task suite, scored",
        "suite": str(SUITE), "pairs": str(PAIRS), "threads": args.threads, "models": models, "answers": answers,
        "changes": changes, "steps": [{"step": step, "model": name, "note": notes.get(name)} for step, name in STEPS],
        "wall_seconds": time.perf_counter() - ladder.started, "load_average": ladder.load()})
    ladder.say(f"wrote {path.relative_to(REPO)}")
    if args.report:
        import figures
        from gpt.atomic import write_text

        report = Path(args.report)
        write_text(report, figures.ladder_report(json.loads(path.read_text())))
        ladder.say(f"wrote the report {report}")
    if not args.no_write:
        import figures

        problems = figures.check(write=True)
        print("\n".join(problems) if problems else "rewrote the documentation's figures from bench/results/")


if __name__ == "__main__":
    main()
