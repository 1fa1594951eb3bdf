"""CPU threads on an idle and on a busy machine: torch's defaults against the project's, for inference and training.

    python bench/threads.py            # about 6 minutes on a 2-core CPU (idle apart from the load it starts)
    python bench/threads.py --quick    # one round of each, about 2 minutes: a smoke run

Two workloads, each a real command in a fresh process (wall time and CPU time of the whole command, start-up
included, as a user meets them):

  eval   `python -m gpt.tasks eval` of a small chat model on 200 prompts of the task suite (greedy, batches of 64)
  train  `train.py`, a few LoRA steps over that model (rank 4, the sft_tasks_cpu recipe)

Four ways to run each:

  torch defaults   torch imported before gpt, as any program that does so: the OpenMP runtime keeps its own wait
                   policy (libgomp: spin 300,000 times, about 3 ms, before sleeping), one thread per core
  short spin       the command as typed: gpt sets GOMP_SPINCOUNT=1000 before torch loads (a waiting thread spins
                   some microseconds, then sleeps), one thread per core; the project's default
  passive          OMP_WAIT_POLICY=PASSIVE in the environment (waiting threads sleep at once), one thread per core
  short spin, 1 thread  the default with --threads=1

Two loads: idle (nothing started here; the load average is recorded, to show how idle it was) and busy, with a
competing program started here: a torch job of --load_threads threads (default 2, with torch's default wait
policy) multiplying 512 x 512 matrices in a loop, as another program on the machine would. Rounds are taken side by
side (A, B, C, A, B, C, ...); medians, and ratios of medians: torch defaults' time over each way's (the speed-up)
and each way's busy time over its idle time (the slowdown a busy machine causes). The setup (a task suite and a
30-step chat model, in a temporary folder) takes about half a minute. Writes bench/results/threads.json.
"""

from __future__ import annotations

import os

# Captured before anything imports gpt (which sets GOMP_SPINCOUNT in this process): the commands timed here get the
# environment the user started with, less the OpenMP and MKL settings that would decide the comparison.
ENV = {k: v for k, v in os.environ.items()
       if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}

import argparse  # noqa: E402
import itertools  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import harness  # noqa: E402

REPO = harness.REPO
CASES = ("torch defaults", "short spin", "passive", "short spin, 1 thread")

# A competing program: another torch job, as a user would run it (no gpt, so torch's default wait policy).
LOAD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
a @ a
print("ready", flush=True)
while True:
    a @ a
"""


def command(case: str, argv: list[str]) -> list[str]:
    """The command line of a workload (`argv`: a script or `-m module`, then its arguments) run the `case` way."""
    if case == "torch defaults":
        # torch loads first, so the OpenMP runtime reads the environment before gpt can set the wait policy.
        if argv[0] == "-m":
            run = f"runpy.run_module({argv[1]!r}, run_name='__main__', alter_sys=True)"
            args = argv[2:]
        else:
            run = f"runpy.run_path({argv[0]!r}, run_name='__main__')"
            args = argv[1:]
        code = f"import sys, runpy, torch; sys.argv = {[argv[1] if argv[0] == '-m' else argv[0], *args]!r}; {run}"
        return [sys.executable, "-c", code]
    policy = ["env", "OMP_WAIT_POLICY=PASSIVE"] if case == "passive" else []  # env execs python: one process
    return [*policy, sys.executable, *argv, *(["--threads=1"] if case == "short spin, 1 thread" else [])]


def timed(cmd: list[str]) -> dict:
    """Run one command to its end: wall and CPU seconds, and context switches (voluntary: it slept; involuntary:
    the scheduler took its core)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    proc.stderr.close()
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "voluntary_switches": usage.ru_nvcsw,
            "involuntary_switches": usage.ru_nivcsw}


def wait_settings(case: str) -> str:
    """What the OpenMP runtime says it runs with, the `case` way (OMP_DISPLAY_ENV). GNU OpenMP's spin count is the
    number that matters: how long a waiting thread spins before it sleeps (it shows OMP_WAIT_POLICY as PASSIVE
    when it is not set, spinning all the same)."""
    cmd = command(case, ["-m", "gpt.device", "--help"])
    out = subprocess.run(cmd, cwd=REPO, env={**ENV, "OMP_DISPLAY_ENV": "VERBOSE"}, capture_output=True, text=True)
    found = re.findall(r"(GOMP_SPINCOUNT)\s*=\s*'([^']*)'", out.stderr)
    return ", ".join(f"{k}={v}" for k, v in found) or "not shown (not GNU OpenMP?)"


def setup(folder: Path) -> Path:
    """A small task suite and a chat model trained 30 steps on it (its answers do not matter, only its work)."""
    def run(argv: list[str]) -> None:
        subprocess.run([sys.executable, *argv], cwd=REPO, env=ENV, check=True, stdout=subprocess.DEVNULL)

    run(["-m", "gpt.tasks", "make", f"--out={folder / 'tasks'}", "--train_per_task=100", "--val_per_task=10",
         "--test_per_task=20"])
    run(["train.py", "configs/sft_tasks_cpu.toml", "--init_from=scratch", *data_flags(folder),
         f"--out_dir={folder / 'chat'}", "--max_iters=30", "--lr_decay_iters=30", "--warmup_iters=5",
         "--eval_interval=30", "--eval_iters=1", "--threads=1"])
    return folder / "chat"


def data_flags(folder: Path) -> list[str]:
    return [f"--data={folder / 'tasks' / 'train.jsonl'}", f"--val_data={folder / 'tasks' / 'val.jsonl'}",
            f"--data_dir={folder / 'data'}", "--plot=false", "--progress=false", "--peak_flops=1e11"]


def workloads(folder: Path, chat: Path, prompts: int, steps: int) -> dict:
    runs = itertools.count()
    return {
        "eval": lambda: ["-m", "gpt.tasks", "eval", f"--ckpt={chat}", f"--data={folder / 'tasks' / 'test.jsonl'}",
                         f"--limit={prompts}", "--progress=false"],
        # A fresh out_dir each run: a run never resumes another.
        "train": lambda: ["train.py", "configs/sft_tasks_cpu.toml", f"--init_from={chat}", "--lora_rank=4",
                          *data_flags(folder), f"--out_dir={folder / 'lora' / str(next(runs))}",
                          f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--warmup_iters=2",
                          "--eval_interval=1000", "--eval_iters=1"],
    }


def start_load(threads: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LOAD, str(threads)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            text=True)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the competing load did not start")
    return proc


def measure(work: dict, repeats: int) -> dict:
    """Rounds of every workload in every way, side by side; the load average before and after."""
    samples = {name: {case: [] for case in CASES} for name in work}
    before = os.getloadavg()[0]
    for _ in range(repeats):
        for name, argv in work.items():
            for case in CASES:
                samples[name][case].append(timed(command(case, argv())))
                print(f"  {name}, {case}: {samples[name][case][-1]['wall_s']:.1f} s", flush=True)
    return {"loadavg_1min": [before, os.getloadavg()[0]], "runs": samples}


def summarise(results: dict) -> tuple[dict, list[list]]:
    summary, rows = {}, []
    for name in results["idle"]["runs"]:
        for case in CASES:
            cell = {}
            for load in ("idle", "busy"):
                runs = results[load]["runs"][name][case]
                cell[load] = {key: harness.stats([r[key] for r in runs])["median"] for key in runs[0]}
                default = results[load]["runs"][name]["torch defaults"]
                cell[load]["speedup_over_torch_defaults"] = (harness.stats([r["wall_s"] for r in default])["median"]
                                                             / cell[load]["wall_s"])
            cell["busy_over_idle"] = cell["busy"]["wall_s"] / cell["idle"]["wall_s"]
            summary.setdefault(name, {})[case] = cell
            rows.append([name, case, cell["idle"]["wall_s"], cell["idle"]["cpu_s"], cell["busy"]["wall_s"],
                         cell["busy"]["cpu_s"], f"{cell['idle']['speedup_over_torch_defaults']:.2f}x",
                         f"{cell['busy']['speedup_over_torch_defaults']:.2f}x", f"{cell['busy_over_idle']:.2f}x"])
    return summary, rows


def headline(summary: dict) -> dict:
    """The figures the documentation quotes, under names without spaces (bench/figures.py reads them by path)."""
    short = {"torch defaults": "defaults", "short spin": "short_spin", "passive": "passive",
             "short spin, 1 thread": "one_thread"}
    return {f"{name}_{load}_{short[case]}_{key}": summary[name][case][load][key]
            for name in summary for case in CASES for load in ("idle", "busy")
            for key in ("wall_s", "cpu_s", "speedup_over_torch_defaults", "voluntary_switches")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of each (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each workload, way and load")
    parser.add_argument("--prompts", type=int, default=200, help="prompts the eval workload answers")
    parser.add_argument("--steps", type=int, default=10, help="LoRA steps the train workload takes")
    parser.add_argument("--load_threads", type=int, default=2, help="threads of the competing program (busy load)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        folder = Path(tmp)
        print("setup: a task suite and a 30-step chat model...", flush=True)
        chat = setup(folder)
        work = workloads(folder, chat, args.prompts, args.steps)
        waits = {case: wait_settings(case) for case in CASES}
        for case, wait in waits.items():
            print(f"  {case}: {wait}")
        for argv in work.values():  # warm the file cache: the first run of a command reads torch from disk
            timed(command("passive", argv()))
        results = {}
        print(f"idle: {repeats} round(s)...", flush=True)
        results["idle"] = measure(work, repeats)
        print(f"busy, beside a {args.load_threads}-thread torch job: {repeats} round(s)...", flush=True)
        load = start_load(args.load_threads)
        try:
            results["busy"] = measure(work, repeats)
        finally:
            load.kill()
            load.wait()
    summary, rows = summarise(results)
    path = harness.write("threads", {
        "workloads": {"eval": f"python -m gpt.tasks eval, {args.prompts} prompts, a 30-step chat model (4L/128)",
                      "train": f"train.py configs/sft_tasks_cpu.toml, {args.steps} LoRA steps (rank 4) over it"},
        "busy_load": f"a torch job of {args.load_threads} threads multiplying 512 x 512 matrices",
        "repeats": repeats, "wait_settings": waits, "summary": summary, "headline": headline(summary),
        "loadavg_1min": {load: results[load]["loadavg_1min"] for load in ("idle", "busy")}, "results": results,
        "bench_seconds": time.perf_counter() - started})
    print(f"\nmedians of {repeats} run(s), seconds; speed-up = torch defaults' wall time / this way's (same load); "
          "busy/idle = this way's slowdown beside the competing job")
    print(harness.table(["work", "way", "idle wall", "idle cpu", "busy wall", "busy cpu", "speed-up idle",
                         "speed-up busy", "busy/idle"], rows))
    print(f"\nload average (1 min) idle {results['idle']['loadavg_1min']}, busy {results['busy']['loadavg_1min']}; "
          f"{time.perf_counter() - started:.0f} s in all; wrote {path}")


if __name__ == "__main__":
    main()
