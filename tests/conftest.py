"""Shared test helpers: where the repository and the optional shared files are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gpt  # noqa: F401  before torch: gpt sets OpenMP's wait policy as torch loads it (gpt/__init__.py)
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def _private_cache_folder(tmp_path_factory):
    """The CPU's peak FLOP/s calibration (gpt/device.py) is cached in the user's cache folder: the tests, and the
    commands they run, use a folder of their own instead."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test saying it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the optional folder ../shared beside the checkout, which "
                    "holds Tiny Shakespeare and GPT-2's tokenizer files (README, 'Start here')")
    return path
