"""LoRA adapters against full fine-tuning, from the same base model, side by side.

Four parts:

  sweep   the task suite (python -m gpt.tasks make --out data/tasks): configs/lora_tasks.toml's recipe against
          configs/sft_tasks_cpu.toml's full fine-tuning from one base, at equal steps, and the LoRA recipe at other
          ranks (at its rate) and other rates (at its rank); each run scored by exact match on the test split's groups (new inputs of the trained
          tasks, new phrasings, and held-out tasks: tasks neither the base nor the tuning saw). --equal_time adds
          the LoRA recipe given the full run's seconds instead of its steps. Writes bench/results/lora.json
          (BENCHMARKS.md, 'Adapters (LoRA)'). Exact match at equal steps does not depend on the machine's load;
          the equal-time run does.

  parts   which parts of a full fine-tune's change carry what it learned: its model with the embedding's or the
          norms' change taken back, or each matrix's change cut to rank r, scored by exact match.

  runs    real `train.py` runs from one base (--base) on one text (--data): full fine-tuning and LoRA at each
          rank of --ranks. For each: the final val loss, trainable parameters (% of the model), the file sizes
          (best.pt: the adapter, against the full run's checkpoint), the optimizer state saved in ckpt.pt, the
          training speed (tok/s, median over the log) and the process's peak RSS. With --tasks DIR (the
          instruction-tuning task suite: python -m gpt.tasks make --out DIR) the runs train on DIR/train.jsonl
          and each is scored with `python -m gpt.tasks eval` on DIR/test.jsonl (exact match).
          Speed is also timed in short runs alternating full, r1, r2, ... (--repeats rounds).

  shape   training steps of a model of GPT-2 124M's shape (random weights and tokens), full against LoRA:
          the bytes of weights, gradients and optimizer state and the peak RSS (a process per variant), and
          seconds per step (both models in one process, one step of each in turn). A GPU's memory holds the
          same tensors; this is what the machine here can measure without one.

    python bench/lora.py runs --base out/default --data shakespeare --steps 500 --ranks 1,4,16
    python bench/lora.py runs --base out/default --tasks data/tasks --config configs/sft_tasks_cpu.toml \
        --steps 600 --full_lr 2e-3 --lora_lr 1e-2 --parallel 4
    python bench/lora.py shape --rank 8 --repeats 6
    python bench/lora.py sweep --ranks 2,8,32 --lrs 3e-3,1e-2,3e-2 --parallel 2 --keep out/lora_sweep
    python bench/lora.py sweep --ranks 8 --lrs 1e-2 --equal_time --keep out/lora_sweep   # on a quiet machine
    python bench/lora.py parts --full out/lora_sweep/full   # what of full fine-tuning's change a LoRA must carry
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
import time
from pathlib import Path

import harness

REPO = harness.REPO


def start_training(out: Path, base: str, data: str, steps: int, extra: list[str], data_dir: str, config: str = ""):
    """Start one train.py run as a user types it (its output goes to out.log); finish_training waits for it."""
    cmd = [sys.executable, str(REPO / "train.py"), *([config] if config else []), f"--init_from={base}", f"--data={data}", f"--out_dir={out}",
           f"--data_dir={data_dir}", f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--plot=false",
           "--progress=false", *extra]
    log = open(out.parent / f"{out.name}.log", "w")  # (not with_suffix: a name like "lr_0.01" has a dot)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, out, extra, time.perf_counter()


def finish_training(started) -> dict:
    """Wait for a run: its log's numbers, the process's peak RSS and wall time."""
    proc, out, extra, start = started
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"train.py {' '.join(extra)} failed:\n{(out.parent / f'{out.name}.log').read_text()[-3000:]}")
    return {**log_numbers(out), "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - start}


def log_numbers(out: Path) -> dict:
    """A finished run's val loss before and after, and its median training speed, from its log.jsonl."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    speeds = [r["tok_per_s"] for r in records if r.get("tok_per_s")][2:]  # leave out the warm-up windows
    evals = [r for r in records if "val_loss" in r]
    return {"val_loss_before": evals[0]["val_loss"], "val_loss": min(e["val_loss"] for e in evals),
            "tok_per_s": statistics.median(speeds) if speeds else None}


def train(out: Path, base: str, data: str, steps: int, extra: list[str], data_dir: str, config: str = "") -> dict:
    return finish_training(start_training(out, base, data, steps, extra, data_dir, config))


def checkpoint_numbers(out: Path) -> dict:
    """Parameters (trained and total), file sizes and the optimizer state of a finished run."""
    import torch

    from gpt import checkpoint as ckpt_io
    from gpt.post import adapters, lora
    loaded = ckpt_io.load_model(out)
    model = loaded.model
    total = sum(p.numel() for p in model.parameters())  # the tied head counted once
    adapter = adapters.attached(model)
    trained = sum(p.numel() for name, p in model.named_parameters()
                  if adapter is None or name.rpartition(".")[2] in lora.ADAPTER_KEYS)
    state = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)
    optimizer_bytes = sum(t.numel() * t.element_size() for s in state["optimizer"]["state"].values()
                          for t in s.values() if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"trained_params": trained, "total_params": total, "trained_pct": 100 * trained / total,
            "best_pt_bytes": (out / "best.pt").stat().st_size, "ckpt_pt_bytes": (out / "ckpt.pt").stat().st_size,
            "optimizer_state_bytes": optimizer_bytes}


TASK_GROUPS = ("new_inputs", "new_phrasings", "held_out_tasks")  # the test split's groups (gpt/post/tasks/)


def exact_match(out: Path, test_file: Path, threads: int = 0) -> dict | None:
    cmd = [sys.executable, "-m", "gpt.tasks", "eval", f"--ckpt={out}", f"--data={test_file}", "--json",
           f"--threads={threads}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"gpt.tasks eval failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def runs(args: argparse.Namespace) -> None:
    extra = args.extra.split() if args.extra else []
    variants = {"full": [f"--learning_rate={args.full_lr}", f"--min_lr={args.full_lr / 10}"]}
    for rank in [int(r) for r in args.ranks.split(",") if r]:
        variants[f"lora r{rank}"] = [f"--lora_rank={rank}", f"--learning_rate={args.lora_lr}",
                                     f"--min_lr={args.lora_lr / 10}"]
    data = str(Path(args.tasks) / "train.jsonl") if args.tasks else args.data
    if args.tasks:
        extra = [f"--val_data={Path(args.tasks) / 'val.jsonl'}", *extra]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The quality runs (deterministic: seeded), --parallel at a time: their results do not depend on it.
        names = list(variants)
        for name in names if args.reuse else []:  # runs kept by an earlier --keep: numbers from their files
            results[name] = {**log_numbers(Path(args.reuse) / name.replace(" ", "_")), "peak_rss_mb": None}
            shutil.copytree(Path(args.reuse) / name.replace(" ", "_"), Path(tmp) / name.replace(" ", "_"))
            results[name].update(checkpoint_numbers(Path(tmp) / name.replace(" ", "_")))
        for first in range(0, len(names) if not args.reuse else 0, args.parallel):
            batch = names[first:first + args.parallel]
            print(f"training {', '.join(batch)} for {args.steps} steps ...", flush=True)
            started = {name: start_training(Path(tmp) / name.replace(" ", "_"), args.base, data, args.steps,
                                            variants[name] + extra, args.data_dir, args.config) for name in batch}
            for name in batch:
                out = Path(tmp) / name.replace(" ", "_")
                results[name] = {**finish_training(started[name]), **checkpoint_numbers(out)}
                if args.keep:
                    shutil.copytree(out, Path(args.keep) / out.name, dirs_exist_ok=False)
        if args.tasks:  # exact match on the test split, one model at a time
            for name in names:
                print(f"scoring {name} on {args.tasks}/test.jsonl ...", flush=True)
                results[name]["tasks"] = exact_match(Path(tmp) / name.replace(" ", "_"), Path(args.tasks) / "test.jsonl")
        # Speed, side by side: short runs alternating the variants.
        timing = {name: [] for name in variants}
        for round_ in range(args.repeats):
            for name, flags in variants.items():
                out = Path(tmp) / f"timing_{round_}_{name.replace(' ', '_')}"
                run = train(out, args.base, data, args.timing_steps, flags + extra + [
                    "--eval_interval=100000", "--eval_iters=1", "--log_interval=1"], args.data_dir, args.config)
                timing[name].append(run["tok_per_s"])
    full = results["full"]
    rows = []
    for name, r in results.items():
        r["tok_per_s_alternating"] = harness.stats(timing[name])
        r["speed_vs_full"] = r["tok_per_s_alternating"]["median"] / statistics.median(timing["full"])
        r["best_pt_vs_full"] = r["best_pt_bytes"] / full["best_pt_bytes"]
        r["optimizer_state_vs_full"] = r["optimizer_state_bytes"] / full["optimizer_state_bytes"]
        row = [name, f"{r['trained_params']:,}", f"{r['trained_pct']:.2f}%", f"{r['val_loss_before']:.4f}",
               f"{r['val_loss']:.4f}", f"{r['best_pt_bytes'] / 1e3:,.0f} kB", f"{100 * r['best_pt_vs_full']:.2f}%",
               f"{r['optimizer_state_bytes'] / 1e3:,.0f} kB", f"{r['tok_per_s_alternating']['median']:,.0f}",
               f"{r['speed_vs_full']:.2f}", "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:,.0f}"]
        if args.tasks:
            groups = r["tasks"].get("groups", {})
            row += [f"{100 * groups[g]['exact_match']:.1f}%" if g in groups else "-" for g in TASK_GROUPS]
            row.append(f"{100 * r['tasks']['exact_match']:.1f}%")
        rows.append(row)
    headers = ["variant", "trained", "% of model", "val before", "val after", "best.pt", "vs full", "optimizer state",
               "tok/s", "vs full", "RSS MB"] + ([*TASK_GROUPS, "exact match (all)"] if args.tasks else [])
    path = harness.write(f"lora_runs{'_tasks' if args.tasks else ''}",
                         {"base": args.base, "data": data, "config": args.config, "steps": args.steps, "full_lr": args.full_lr,
                          "lora_lr": args.lora_lr, "extra": extra, "results": results})
    print(f"wrote {path}")
    print(harness.table(headers, rows))


# ---------------------------------------------------------------------------------------------------
# The task suite: LoRA's recipe against full fine-tuning's, at equal steps (a rank and rate grid) and at equal time


def recipe(config: str) -> dict:
    """A config file's settings, flattened (its [sections] are only for reading)."""
    import tomllib

    flat: dict = {}
    for value in tomllib.loads((REPO / config).read_text()).values():
        flat.update(value if isinstance(value, dict) else {})
    return flat


def scored(out: Path, tasks: Path, wall: dict, threads: int) -> dict:
    """A finished run's numbers: val loss, steps, run time, trained share, and exact match on the test split (kept in
    the run's folder as scores.json, and reused while the run and the test split stay as they were)."""
    cache = out / "scores.json"
    stamp = [(out / "best.pt").stat().st_mtime, str(tasks.resolve()), (tasks / "test.jsonl").stat().st_mtime]
    if cache.is_file() and not wall:
        kept = json.loads(cache.read_text())
        if kept.get("stamp") == stamp:
            return kept["scores"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval"]
    report = exact_match(out, tasks / "test.jsonl", threads)
    groups = report.get("groups", {})
    scores = {"val_loss": min(e["val_loss"] for e in evals), "steps": evals[-1]["step"],
              "run_seconds": evals[-1]["elapsed"], "wall_s": wall.get("wall_s"),
              **{k: v for k, v in checkpoint_numbers(out).items() if k in ("trained_params", "trained_pct", "best_pt_bytes")},
              "exact_match": report["exact_match"],
              "groups": {g: groups[g]["exact_match"] for g in TASK_GROUPS if g in groups}}
    cache.write_text(json.dumps({"stamp": stamp, "scores": scores}))
    return scores


def sweep(args: argparse.Namespace) -> None:
    tasks = Path(args.tasks)
    lora = recipe(args.lora_config)
    common = [f"--val_data={tasks / 'val.jsonl'}", f"--threads={args.threads}",  # (--data: start_training's)
              f"--max_iters={args.steps}", "--lr_decay_iters=0", *(args.extra.split() if args.extra else [])]
    runs: dict[str, tuple[str, list[str]]] = {"full": (args.full_config, [])}
    # One factor at a time around the recipe (configs/lora_tasks.toml): its rate at each rank, its rank at each rate.
    grid = [(int(r), lora["learning_rate"]) for r in args.ranks.split(",")] + \
        [(lora["lora_rank"], float(x)) for x in args.lrs.split(",")]
    default = f"lora r{lora['lora_rank']} lr {lora['learning_rate']:g}"
    runs[default] = (args.lora_config, [])
    for rank, lr in grid:
        runs.setdefault(f"lora r{rank} lr {lr:g}", (args.lora_config, [f"--lora_rank={rank}", f"--learning_rate={lr}",
                                                                        f"--min_lr={lr / 10:g}"]))
    for targets in [t for t in args.other_targets.split(";") if t]:  # the recipe with other targets, to compare
        runs[f"{default} {targets}"] = (args.lora_config, [f"--lora_targets={targets}"])
    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lora_sweep_"))
    keep.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}

    def run_all(batch: dict[str, tuple[str, list[str]]]) -> None:
        names = list(batch)
        for first in range(0, len(names), args.parallel):
            group = names[first:first + args.parallel]
            print(f"training {', '.join(group)} ...", flush=True)
            started = {}
            for name in group:
                out = keep / name.replace(" ", "_")
                if (out / "best.pt").is_file():  # kept from an earlier, interrupted sweep: scored as it is
                    started[name] = None
                    continue
                config, flags = batch[name]
                started[name] = start_training(out, args.base, str(tasks / "train.jsonl"), args.steps,
                                               [*common, *flags], args.data_dir, config)
            for name in group:
                wall = finish_training(started[name]) if started[name] else {}
                results[name] = scored(keep / name.replace(" ", "_"), tasks, wall, args.threads)
                r = results[name]
                print(f"  {name}: val {r['val_loss']:.3f}, exact match {100 * r['exact_match']:.1f}% "
                      f"({', '.join(f'{g} {100 * v:.1f}%' for g, v in r['groups'].items())})", flush=True)

    run_all(runs)
    if args.equal_time:  # the LoRA recipe given the full run's time instead of its steps: wall clock, so load matters
        seconds = results["full"]["run_seconds"]
        run_all({f"{default} equal time": (args.lora_config, [f"--max_seconds={seconds:.1f}", "--max_iters=1000000"])})
    full = results["full"]
    headline = {"full": full, "lora": results[default], "lora_name": default,
                "gap_new_inputs": full["groups"]["new_inputs"] - results[default]["groups"]["new_inputs"],
                "gap_held_out_tasks": full["groups"]["held_out_tasks"] - results[default]["groups"]["held_out_tasks"],
                "gap_all": full["exact_match"] - results[default]["exact_match"]}
    headline["other_targets"] = [{"targets": t, **results[f"{default} {t}"]} for t in args.other_targets.split(";") if t]
    if args.equal_time:
        headline["lora_equal_time"] = results[f"{default} equal time"]
    path = harness.write("lora", {"base": args.base, "tasks": str(tasks), "steps": args.steps,
                                  "full_config": args.full_config, "lora_config": args.lora_config,
                                  "threads": args.threads, "headline": headline, "results": results})
    print(f"wrote {path}")
    rows = [[name, f"{r['trained_pct']:.2f}%", r["steps"], f"{r['run_seconds']:.0f}", f"{r['val_loss']:.3f}",
             *[f"{100 * r['groups'].get(g, 0):.1f}%" for g in TASK_GROUPS], f"{100 * r['exact_match']:.1f}%"]
            for name, r in results.items()]
    print(harness.table(["run", "trained", "steps", "run s", "val loss", *TASK_GROUPS, "all"], rows))


def parts(args: argparse.Namespace) -> None:
    """Which parts of full fine-tuning's change carry what it learned: its model with parts of the change taken
    back to the base (the embedding, the norms) or cut to a rank (each matrix's change to its top singular
    directions, as a rank-r adapter could hold it), each scored by exact match on --test."""
    import torch

    base = torch.load(Path(args.base) / "best.pt" if Path(args.base).is_dir() else args.base, map_location="cpu",
                      weights_only=False)["model"]
    full_path = Path(args.full) / "best.pt" if Path(args.full).is_dir() else Path(args.full)
    full = torch.load(full_path, map_location="cpu", weights_only=False)

    def cut(change: torch.Tensor, rank: int | None) -> torch.Tensor:
        if rank is None:
            return change
        u, s, vh = torch.linalg.svd(change, full_matrices=False)
        return (u[:, :rank] * s[:rank]) @ vh[:rank]

    def variant(blocks: int | None, embedding: int | None | str, norms: bool) -> dict:
        """blocks, embedding: the rank their change is cut to (None: whole; "base": none of it)."""
        weights = {}
        for name, tuned in full["model"].items():
            start = base[name]
            if tuned.dim() == 1:
                weights[name] = tuned if norms else start
                continue
            rows = start.shape[0]  # rows past the base's are tokens new to it (the chat markers): kept as tuned
            if name == "transformer.wte.weight":
                kept = start if embedding == "base" else start + cut(tuned[:rows] - start, embedding)
            elif name == "lm_head.weight":
                kept = tuned[:rows]
            else:
                kept = start + cut(tuned - start, blocks)
            weights[name] = torch.cat([kept, tuned[rows:]])
        return weights

    # One part changed at a time; the head's change is always kept whole (a rank-8 adapter holds 92% or more of it).
    variants = {"full fine-tuning": (None, None, True), "norms back to the base": (None, None, False),
                "embedding back to the base": (None, "base", True), "embedding cut to rank 8": (None, 8, True),
                **{f"blocks cut to rank {r}": (r, None, True) for r in (8, 32)}}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in variants.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.pt"
            torch.save({**full, "model": variant(*spec)}, path)
            report = exact_match(path, Path(args.test), args.threads)
            results[name] = {"exact_match": report["exact_match"],
                             "groups": {g: v["exact_match"] for g, v in report.get("groups", {}).items()}}
            print(f"{name}: {100 * results[name]['groups'].get('new_inputs', 0):.1f}% of new inputs", flush=True)
    path = harness.write("lora_parts", {"base": args.base, "full": args.full, "test": args.test, "results": results})
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------
# The GPT-2 124M shape: memory in a process of its own per variant; speed in one process, steps alternating


def build(rank: int, block: int):
    """A model of GPT-2 124M's shape (LoRA at `rank`, or trained in full when 0) and its optimizer."""
    import torch

    from gpt.post import adapters, lora
    from gpt.model import GPT, GPTConfig
    from gpt.optim import make_optimizer
    from gpt.trainer import TrainConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block))
    if rank:
        adapters.attach(model, lora.LoRASettings(rank=rank))
    return model, make_optimizer(model, TrainConfig())


def train_step(model, optimizer, ids) -> None:
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated, as between the steps of a run


def memory_of(rank: int, batch: int, block: int) -> dict:
    """In this process: two training steps, then the bytes of weights, gradients and optimizer state."""
    import torch

    model, optimizer = build(rank, block)
    ids = torch.randint(model.config.vocab_size, (batch, block + 1))
    for _ in range(2):
        train_step(model, optimizer, ids)

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    params = list(model.parameters())
    return {"weights_bytes": nbytes(params), "grad_bytes": nbytes(p.grad for p in params if p.grad is not None),
            "optimizer_state_bytes": nbytes(t for s in optimizer.state.values() for t in s.values()
                                            if isinstance(t, torch.Tensor) and t.dim() > 0),
            "trained_params": sum(p.numel() for p in params if p.requires_grad),
            "total_params": sum(p.numel() for p in params)}


def shape(args: argparse.Namespace) -> None:
    import torch

    names = {0: "full", args.rank: f"lora r{args.rank}"}
    results: dict[str, dict] = {}
    for rank, name in names.items():  # peak RSS needs a process per variant
        cmd = [sys.executable, __file__, "_memory", str(rank), str(args.batch), str(args.block)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the measurement failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    # Speed: both models in this process, one step of each in turn, so that a busy moment of the machine
    # falls on both alike.
    models = {name: build(rank, args.block) for rank, name in names.items()}
    ids = torch.randint(50257, (args.batch, args.block + 1))
    times = harness.interleaved({name: (lambda m=m: train_step(*m, ids)) for name, m in models.items()},
                                repeats=args.repeats)
    full_step = statistics.median(times["full"])
    rows = []
    for name, r in results.items():
        r["step_s"] = harness.stats(times[name])
        r["step_vs_full"] = r["step_s"]["median"] / full_step
        tensors = r["weights_bytes"] + r["grad_bytes"] + r["optimizer_state_bytes"]
        rows.append([name, f"{r['trained_params']:,}", f"{100 * r['trained_params'] / r['total_params']:.2f}%",
                     f"{r['weights_bytes'] / 1e6:,.0f}", f"{r['grad_bytes'] / 1e6:,.1f}",
                     f"{r['optimizer_state_bytes'] / 1e6:,.1f}", f"{tensors / 1e6:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                     f"{r['step_s']['median']:.2f} ({r['step_s']['min']:.2f}-{r['step_s']['max']:.2f})",
                     f"{r['step_vs_full']:.2f}"])
    path = harness.write("lora_shape", {"shape": "GPT-2 124M", "batch": args.batch, "block": args.block,
                                        "repeats": args.repeats, "results": results})
    print(f"wrote {path}")
    print(harness.table(["variant", "trained", "% of model", "weights MB", "grads MB", "optimizer MB",
                         "sum MB", "RSS MB", "s/step (min-max)", "vs full"], rows))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_memory":  # a child process of `shape`
        import resource

        rank, batch, block = (int(a) for a in sys.argv[2:5])
        result = memory_of(rank, batch, block)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("runs", help="train.py runs: full fine-tuning against LoRA at several ranks")
    p.add_argument("--base", default="out/default", help="the model both start from (init_from)")
    p.add_argument("--data", default="shakespeare", help="the text to fine-tune on")
    p.add_argument("--tasks", default="", help="a task-suite folder (train/val/test.jsonl): train on it, score exact match")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--ranks", default="1,4,16")
    p.add_argument("--full_lr", type=float, default=5e-4, help="full fine-tuning's learning rate (configs/finetune_shakespeare.toml)")
    p.add_argument("--lora_lr", type=float, default=5e-3, help="LoRA's learning rate (configs/lora_shakespeare.toml)")
    p.add_argument("--extra", default="", help="more train.py flags for every run, e.g. '--threads=1 --batch_size=8'")
    p.add_argument("--timing_steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--config", default="", help="a train.py config file every run starts from (flags override it), e.g. configs/sft_tasks_cpu.toml")
    p.add_argument("--parallel", type=int, default=1, help="quality runs at a time (each its own process)")
    p.add_argument("--reuse", default="", help="take the quality runs from a folder an earlier --keep wrote (no peak RSS then)")
    p.add_argument("--keep", default="", help="copy each quality run's out_dir into this folder")
    w = sub.add_parser("sweep", help="the task suite: LoRA's recipe against full fine-tuning's, a rank and a rate sweep, "
                                     "equal steps (and --equal_time); writes bench/results/lora.json")
    w.add_argument("--base", default="out/default", help="the model every run starts from (init_from)")
    w.add_argument("--tasks", default="data/tasks", help="the task suite (python -m gpt.tasks make --out DIR)")
    w.add_argument("--full_config", default="configs/sft_tasks_cpu.toml", help="full fine-tuning's recipe")
    w.add_argument("--lora_config", default="configs/lora_tasks.toml", help="LoRA's recipe (its rank and rate are the defaults)")
    w.add_argument("--steps", type=int, default=500, help="optimizer steps of every run (equal steps)")
    w.add_argument("--ranks", default="2,8,32", help="LoRA ranks to try, at the recipe's learning rate")
    w.add_argument("--lrs", default="3e-3,1e-2,3e-2", help="LoRA learning rates to try, at the recipe's rank (min_lr a tenth of each)")
    w.add_argument("--equal_time", action="store_true", help="also the LoRA recipe given the full run's seconds "
                   "instead of its steps (a wall-clock figure: measure on a quiet machine)")
    w.add_argument("--other_targets", default="attn,mlp,head", help="the LoRA recipe again with these lora_targets "
                   "instead of its own (';' between several; '' for none): attn,mlp,head is the default without tokens")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--parallel", type=int, default=1, help="runs at a time (each its own process; exact match does "
                   "not depend on it, the equal-time run does: keep 1 for it)")
    w.add_argument("--keep", default="", help="keep each run's out_dir here; runs already there are scored, not retrained")
    w.add_argument("--extra", default="", help="more train.py flags for every run")
    w.add_argument("--data_dir", default=str(REPO / "data"))
    q = sub.add_parser("parts", help="which parts of a full fine-tune's change carry what it learned (exact match "
                                     "with parts taken back or cut to a rank); writes bench/results/lora_parts.json")
    q.add_argument("--base", default="out/default", help="the model the full fine-tune started from")
    q.add_argument("--full", required=True, help="the full fine-tune (an out_dir or a .pt), e.g. the sweep's full run")
    q.add_argument("--test", default="data/tasks/test.jsonl", help="the prompts to score")
    q.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("shape", help="one training step at GPT-2 124M's shape: full against LoRA")
    s.add_argument("--rank", type=int, default=8)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--repeats", type=int, default=6, help="timed steps of each variant, alternating")
    args = parser.parse_args()
    {"runs": runs, "sweep": sweep, "parts": parts, "shape": shape}[args.part](args)


if __name__ == "__main__":
    main()
