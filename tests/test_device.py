"""Devices and precision choices."""

import pytest
import torch

from gpt.device import autocast, measure_matmul_flops, peak_flops, pick_device, pick_dtype
from gpt.errors import UserError


def test_auto_picks_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32


def test_missing_cuda_and_unknown_names_are_user_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    with pytest.raises(UserError, match="unknown dtype 'half-ish'"):
        pick_dtype("half-ish", torch.device("cpu"))
    with pytest.raises(UserError, match="float16 is not supported on the CPU"):
        pick_dtype("float16", torch.device("cpu"))


def test_autocast_is_a_no_op_in_fp32_and_bf16_on_cpu():
    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.float32):
        assert (a @ a).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


def test_peak_flops_sources():
    assert peak_flops(torch.device("cpu"), torch.float32, override=1e12) == (1e12, "setting")
    flops = measure_matmul_flops(torch.device("cpu"), n=128, seconds=0.05)
    assert 0 < flops < float("inf")  # a rate, whatever the load on the machine (no timing bound here)


def test_the_cpu_peak_is_measured_once_and_cached(monkeypatch, tmp_path):
    import gpt.device as device_mod

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    readings = iter([50e9, 60e9, 55e9, 40e9, 10e9, 10e9, 10e9, 10e9])
    monkeypatch.setattr(device_mod, "measure_matmul_flops", lambda *a, **kw: next(readings))
    said = []
    flops, source = peak_flops(torch.device("cpu"), torch.float32, say=said.append)
    assert flops == 60e9 and "measured now" in source  # the best of several timings
    assert said == [f"measuring this machine's peak FLOP/s for MFU (about 2 s, once: cached in "
                    f"{device_mod.peak_cache_path()})..."]  # said before the seconds it takes
    assert device_mod.peak_cache_path().is_file()
    flops, source = peak_flops(torch.device("cpu"), torch.float32, say=said.append)
    assert flops == 60e9 and "cached" in source and len(said) == 1  # no new timing, nothing to say
    # Recalibrating on a busy machine (10 GFLOP/s readings) never lowers the figure.
    assert device_mod.cpu_peak_flops(torch.float32, recalibrate=True)[0] == 60e9
