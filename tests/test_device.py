"""Devices and precision choices, and CPU threads."""

import dataclasses
import importlib
import os
import pkgutil
import re
import subprocess
import sys

import pytest
import torch

import gpt
from conftest import REPO
from gpt.config import parse_args
from gpt.device import THREADS_HELP, autocast, measure_matmul_flops, peak_flops, pick_device, pick_dtype, set_threads
from gpt.errors import UserError
from gpt.generate import main as sample_main
from test_decoding import train_tiny_checkpoint


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


# ---------------------------------------------------------------------------------------------------
# CPU threads: --threads on every command that computes, and OpenMP's wait policy set before torch loads


def settings_classes() -> dict[str, type]:
    """Every settings dataclass in the package with a device setting: the settings of the commands that compute."""
    found = {}
    for info in pkgutil.walk_packages(gpt.__path__, "gpt."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                    and any(f.name == "device" and "help" in f.metadata for f in dataclasses.fields(obj))):
                found[obj.__name__] = obj
    return found


def test_every_command_that_computes_takes_threads_with_the_one_help_text():
    classes = settings_classes()
    commands = {"TrainConfig", "SampleConfig", "EvalConfig", "ScoreConfig", "ServeConfig", "FewshotConfig",
                "AttentionConfig", "IclConfig", "LensConfig", "InductionConfig", "DeviceConfig"}
    assert commands <= set(classes)  # the search finds the commands (train.py, sample.py, gpt.*)
    for name, cls in classes.items():
        field = {f.name: f for f in dataclasses.fields(cls)}.get("threads")
        assert field is not None, f"{name} has --device but no --threads"
        assert field.metadata["help"] == THREADS_HELP, name
        assert parse_args(cls, ["--threads=3"])[0].threads == 3
        assert parse_args(cls, ["--threads", "1"])[0].threads == 1


def test_set_threads_sets_torch_threads_and_zero_keeps_the_default():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(0)
        assert torch.get_num_threads() == 1
        set_threads(2)
        assert torch.get_num_threads() == 2
        with pytest.raises(UserError, match="threads must be 0"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_sample_py_applies_threads_before_it_computes(tmp_path, capsys):
    train_tiny_checkpoint(tmp_path / "ckpt.pt")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert sample_main(["--ckpt", str(tmp_path / "ckpt.pt"), "--prompt", "the ", "--max_new_tokens", "3",
                            "--threads=1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.startswith("the ")


def python(code_or_args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, *code_or_args], cwd=REPO, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


def test_importing_gpt_sets_a_short_spin_before_torch_loads_and_keeps_the_users_settings():
    code = "import os, sys, gpt; print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))"
    assert python(["-c", code]).stdout.split() == ["False", "1000"]
    assert python(["-c", code], GOMP_SPINCOUNT="5").stdout.split() == ["False", "5"]
    # A wait policy the user chose is theirs: a spin count set beside it would override it.
    assert python(["-c", code], OMP_WAIT_POLICY="ACTIVE").stdout.split() == ["False", "None"]


def test_the_openmp_runtime_of_a_command_spins_briefly():
    """What the OpenMP runtime itself reports when train.py, sample.py or a gpt.* command starts (GNU OpenMP: a
    spin count of 1,000, where its default spins 300,000 times, about 3 ms)."""
    shown = python(["-m", "gpt.device", "--help"], OMP_DISPLAY_ENV="VERBOSE").stderr
    if "GOMP_SPINCOUNT" not in shown:
        pytest.skip("this torch's OpenMP runtime is not GNU OpenMP, or does not show its settings")
    assert re.search(r"GOMP_SPINCOUNT = '1000'", shown)
    user = python(["-m", "gpt.device", "--help"], OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="PASSIVE").stderr
    assert re.search(r"OMP_WAIT_POLICY = '?PASSIVE", user) and re.search(r"GOMP_SPINCOUNT = '0'", user)
