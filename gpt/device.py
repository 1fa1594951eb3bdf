"""Devices and precision: the one place that knows about CUDA, MPS and CPU.

Training, sampling and evaluation ask here which device to run on, which dtype to compute in,
and how fast the device's matmuls can go (the denominator of MFU, model FLOPs utilisation).
"""

from __future__ import annotations

import contextlib
import time

import torch

from gpt.errors import UserError

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
        raise UserError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
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


def peak_flops(device: torch.device, dtype: torch.dtype, override: float = 0.0) -> tuple[float | None, str]:
    """The device's peak FLOP/s for MFU and where the number came from ("n/a" when unknown)."""
    if override > 0:
        return override, "setting"
    if device.type == "cuda":
        flops = gpu_peak_flops(device)
        return (flops, "datasheet") if flops else (None, "n/a")
    if device.type == "cpu":
        return measure_matmul_flops(device, dtype), "measured matmul"
    return None, "n/a"
