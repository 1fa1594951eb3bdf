"""Benchmark: preparing a large generated text file (gpt.data.prepare) — throughput and peak memory.

Generates a UTF-8 file of --size_mb MB (the Python standard library's source, repeated with a varying line
prefix so the text is not one block copied, plus some non-ASCII), then prepares it in a fresh subprocess
while sampling the resident memory of that process and its worker processes. Reported per run:
wall time, throughput (MB/s of input text), peak RSS of the main process and of the largest worker, and
the peak memory of the whole process tree (main + pool workers: PSS summed at each sample).
A last run with the same inputs measures the cache being reused.

    .venv/bin/python bench/prepare.py --size_mb 2000 --tokenizer char --repeats 1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import harness

from gpt.config import parse_args, setting

REPO = harness.REPO


@dataclass
class BenchConfig:
    size_mb: int = setting(2000, "size of the generated text file in MB (10^6 bytes)")
    tokenizer: str = setting("char", "tokenizer spec to prepare with (char, bpe:<N>, ...)")
    repeats: int = setting(1, "timed cold prepares (each into a fresh data_dir); the median is reported")
    warmup: bool = setting(True, "one untimed prepare of a small file first (page cache, imports)")
    workdir: str = setting("", "where to write the generated file and caches (default: a temp dir under /tmp)")
    keep: bool = setting(False, "keep the generated file and caches")


CHILD = r"""
import json, resource, sys, time
from gpt.data import prepare
started = time.perf_counter()
p = prepare(sys.argv[1], sys.argv[2], data_dir=sys.argv[3], progress=False)
elapsed = time.perf_counter() - started
print(json.dumps({
    "seconds": elapsed, "reused": p.reused,
    "tokens": p.meta["splits"]["train"]["tokens"] + p.meta["splits"]["val"]["tokens"],
    "bytes": p.meta["splits"]["train"]["bytes"] + p.meta["splits"]["val"]["bytes"],
    "vocab_size": p.meta["vocab_size"],
    "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "largest_worker_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def generate(path: Path, size: int) -> None:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    base = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py")))
    base += "\n# naïve café — 日本語 🙂\n"
    block = base.encode("utf-8")
    written = 0
    with open(path, "wb") as f:
        copy = 0
        while written < size:
            piece = f"# copy {copy}\n".encode() + block
            piece = piece[: size - written]
            if len(piece) < len(block):  # end on a whole character
                piece = piece.decode("utf-8", errors="ignore").encode("utf-8")
            f.write(piece)
            written += len(piece)
            copy += 1
            if not piece:
                break


def _tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS of pid, summed PSS of pid and its descendants) in MB, from /proc.

    PSS (proportional set size) divides pages shared between processes, such as the forked workers'
    libraries, among them: the sum is the memory the process tree really uses (a sum of RSS counts
    each shared page once per process).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))

    def field_kb(p: int, name: str, file: str) -> float:
        try:
            with open(f"/proc/{p}/{file}") as f:
                for line in f:
                    if line.startswith(name):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += field_kb(p, "Pss:", "smaps_rollup")
        stack += children.get(p, [])
    return field_kb(pid, "VmRSS:", "status") / 1024, total / 1024


def run_once(text: Path, tokenizer: str, data_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(text), tokenizer, str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_main = peak_tree = 0.0
    done = threading.Event()

    def sample():
        nonlocal peak_main, peak_tree
        while not done.is_set():
            main, tree = _tree_memory_mb(proc.pid)
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    result["sampled_main_peak_mb"] = peak_main
    result["sampled_tree_peak_mb"] = peak_tree
    return result


def main() -> None:
    cfg, _ = parse_args(BenchConfig, prog="bench/prepare.py", description=__doc__.splitlines()[0])
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="bench_prepare_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    text = work / f"generated_{cfg.size_mb}mb.txt"
    size = cfg.size_mb * 10**6
    if not text.exists() or text.stat().st_size != size:
        t0 = time.perf_counter()
        generate(text, size)
        print(f"generated {text} ({text.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s", flush=True)
    if cfg.warmup:
        small = work / "warmup.txt"
        generate(small, 2 * 10**6)
        run_once(small, cfg.tokenizer, work / "cache_warmup")
    runs = []
    for i in range(cfg.repeats):
        data_dir = work / f"cache_{i}"
        r = run_once(text, cfg.tokenizer, data_dir)
        assert not r["reused"]
        r["mb_per_s"] = r["bytes"] / 1e6 / r["seconds"]
        runs.append(r)
        print(f"run {i}: {r['seconds']:.1f} s, {r['mb_per_s']:.1f} MB/s, main peak RSS {r['self_maxrss_mb']:.0f} MB, "
              f"tree peak PSS {r['sampled_tree_peak_mb']:.0f} MB", flush=True)
    reuse = run_once(text, cfg.tokenizer, work / "cache_0")
    assert reuse["reused"]

    def stat(key):
        return harness.stats([r[key] for r in runs])

    summary = {
        "config": asdict(cfg),
        "input_mb": size / 1e6,
        "tokens": runs[0]["tokens"],
        "vocab_size": runs[0]["vocab_size"],
        "seconds": stat("seconds"),
        "mb_per_s": stat("mb_per_s"),
        "main_peak_rss_mb": stat("self_maxrss_mb"),
        "largest_worker_peak_rss_mb": stat("largest_worker_maxrss_mb"),
        "tree_peak_pss_mb": stat("sampled_tree_peak_mb"),
        "cache_reuse_seconds": reuse["seconds"],
        "runs": runs,
    }
    out = harness.write(f"prepare_{cfg.tokenizer.replace(':', '')}_{cfg.size_mb}mb", summary)
    if not cfg.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    m = harness.machine()
    print(f"\nprepare {cfg.size_mb} MB with {cfg.tokenizer} on {m['cores']} cores ({m['cpu']}), {cfg.repeats} run(s):")
    print(f"{'metric':<34}{'median':>10}{'min':>10}{'max':>10}")
    for label, key in (("time (s)", "seconds"), ("throughput (MB/s)", "mb_per_s"),
                       ("peak RSS, main process (MB)", "main_peak_rss_mb"),
                       ("peak RSS, largest worker (MB)", "largest_worker_peak_rss_mb"),
                       ("peak PSS, main + workers (MB)", "tree_peak_pss_mb")):
        s = summary[key]
        print(f"{label:<34}{s['median']:>10.1f}{s['min']:>10.1f}{s['max']:>10.1f}")
    print(f"{'cache reuse (s, hashing ' + str(cfg.size_mb) + ' MB)':<34}{reuse['seconds']:>10.2f}")
    print(f"written {out}")


if __name__ == "__main__":
    main()
