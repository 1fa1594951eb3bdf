"""Devices and precision: the one place that knows about CUDA, MPS and CPU.

Training, sampling and evaluation ask here which device to run on, which dtype to compute in, how many CPU
threads torch's math uses (every command's --threads, applied by `set_threads`), and how fast the device's
matmuls can go (the denominator of MFU, model FLOPs utilisation).

CPU threads on a busy machine: torch's math runs on OpenMP threads, one per core by default, and each parallel
operation ends when the last of its threads is done. OpenMP's default (GNU OpenMP's, in torch's Linux builds) is
for a thread that waits, for the others or for the next operation, to spin (300,000 times, some milliseconds)
before it sleeps. On an idle CPU that costs little; beside another program, the spinning threads take the cores
from the very threads they wait for, and the commands ran 12-19x slower, their CPU time growing with their wall
time (profiled on a busy machine, `gpt.tasks eval` spent 70% of its samples in OpenMP's spin loop, in both of its
threads). gpt/__init__.py therefore asks OpenMP, before torch loads, to spin only briefly before a waiting thread
sleeps (GOMP_SPINCOUNT=1000); --threads (set_threads) says how many threads to use. BENCHMARKS.md, 'Threads on a
busy CPU', has both measured, idle and busy.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gpt.atomic import write_text
from gpt.config import parse_args, setting
from gpt.errors import UserError, exit_on_user_error, plural

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s. Matched by substring
# of torch.cuda.get_device_name(); the first match wins, so more specific names come first.
GPU_BF16_PEAK = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),  # fp16
]


THREADS_HELP = "CPU threads for torch's math (0 = torch's default: one per core; fewer leave cores to other programs)"


def set_threads(threads: int) -> None:
    """Apply a command's --threads: the number of threads torch's CPU math runs on (0 leaves torch's default)."""
    if threads < 0:
        raise UserError(f"threads must be 0 (torch's default) or more, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def pick_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA, then Apple's MPS, then the CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here: use --device=cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device {name!r} asked for, but only {plural(count, 'CUDA device')} "
                        f"{'exists' if count == 1 else 'exist'}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' asked for, but MPS is not available here: use --device=cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {name!r} is not supported: use auto, cpu, cuda or mps")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype: "auto" is bf16 on CUDA where supported (else fp16), and fp32 elsewhere.

    On CPU fp32 is the default because bf16 autocast measured slower for these model sizes
    (see BENCHMARKS.md); it can still be asked for with --dtype=bfloat16.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        raise UserError("float16 is not supported on the CPU: use --dtype=bfloat16 or float32")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bfloat16: use --dtype=float16")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision: matmuls in `dtype`, weights and optimizer state kept in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def gpu_peak_flops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    for key, flops in GPU_BF16_PEAK:
        if key in name:
            return flops
    return None


def measure_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                         seconds: float = 0.5) -> float:
    """FLOP/s of an n x n matmul on this device, best of several timed runs: a practical peak for MFU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, override: float = 0.0,
               say: Callable[[str], None] | None = None) -> tuple[float | None, str]:
    """The device's peak FLOP/s for MFU and where the number came from ("n/a" when unknown).

    On a CPU there is no datasheet figure, so a matmul is timed: once per machine, thread count, torch version and
    dtype, and cached (`peak_cache_path()`), because a single timing on a busy machine reads low and would make
    every MFU after it too high. `override` (--peak_flops) pins it. `say` is told, before the timing, that it
    happens: seconds with nothing on screen otherwise.
    """
    if override > 0:
        return override, "setting"
    if device.type == "cuda":
        flops = gpu_peak_flops(device)
        return (flops, "datasheet") if flops else (None, "n/a")
    if device.type == "cpu":
        return cpu_peak_flops(dtype, say=say)
    return None, "n/a"


def peak_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpt" / "peak_flops.json"


def _cpu_key(dtype: torch.dtype) -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} | {torch.get_num_threads()} threads | torch {torch.__version__} | {str(dtype).replace('torch.', '')}"


def cpu_peak_flops(dtype: torch.dtype, recalibrate: bool = False,
                   say: Callable[[str], None] | None = None) -> tuple[float, str]:
    """The CPU's matmul peak: cached, else measured (best of several timings over about 2 s) and cached."""
    path, key = peak_cache_path(), _cpu_key(dtype)
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if not recalibrate and isinstance(cache.get(key), (int, float)) and cache[key] > 0:
        return float(cache[key]), f"measured on this machine, cached in {path}"
    if say is not None:
        say(f"measuring this machine's peak FLOP/s for MFU (about 2 s, once: cached in {path})...")
    flops = max(measure_matmul_flops(torch.device("cpu"), dtype, seconds=0.5) for _ in range(4))
    if recalibrate and isinstance(cache.get(key), (int, float)):
        flops = max(flops, float(cache[key]))  # a busy machine only ever reads low: keep the best seen
    cache[key] = flops
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(cache, indent=1) + "\n")
        where = f"measured now, cached in {path}"
    except OSError:
        where = "measured now (not cached: the cache folder is not writable)"
    return flops, where


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """python -m gpt.device: the device training would use, and its peak FLOP/s (--calibrate measures again)."""
    cfg, _ = parse_args(DeviceConfig, argv, prog="python -m gpt.device",
                        description="Show the device, dtype and peak FLOP/s that training would use (the denominator "
                                    "of MFU). On a CPU the peak is a matmul timed once and cached: run with "
                                    "--calibrate on a quiet machine to measure it again.")
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if cfg.calibrate and device.type == "cpu":
        flops, source = cpu_peak_flops(dtype, recalibrate=True)
    else:
        flops, source = peak_flops(device, dtype)
    print(f"device  {device} ({str(dtype).replace('torch.', '')}, {torch.get_num_threads()} threads)")
    print(f"peak    {'n/a' if flops is None else f'{flops / 1e9:,.0f} GFLOP/s'} ({source})")
    return 0


@dataclass
class DeviceConfig:
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "auto, float32, bfloat16 or float16")
    threads: int = setting(0, THREADS_HELP)
    calibrate: bool = setting(False, "on a CPU: time the matmul again (on a quiet machine) and replace the cached figure")


if __name__ == "__main__":
    raise SystemExit(main())
