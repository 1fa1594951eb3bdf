"""Tests for gpt/batches.py: random windows of the token bins, reproducible and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpt.batches import Batches
from gpt.data import prepare
from gpt.errors import UserError


@pytest.fixture
def arange_bin(tmp_path) -> Path:
    path = tmp_path / "train.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    return path


def test_batches_windows_match_memmap(arange_bin):
    b = Batches(arange_bin, 32, 8, seed=1, dtype=np.uint16)
    for _ in range(5):
        x, y = b.next()
        assert x.dtype == torch.int64 and x.shape == (8, 32) and y.shape == (8, 32)
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(y[:, :-1], x[:, 1:])
        starts = x[:, 0]
        assert bool((starts >= 0).all()) and bool((starts + 33 <= 5000).all())
        assert torch.equal(x, starts[:, None] + torch.arange(32))  # the window is the memmap's tokens
        assert torch.equal(y, x + 1)


def test_batches_reproducible_and_ranks_differ(arange_bin):
    def draws(**kw):
        b = Batches(arange_bin, 16, 4, dtype=np.uint16, **kw)
        return [b.next()[0] for _ in range(3)]

    a, again = draws(seed=7), draws(seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a, again))
    assert not torch.equal(draws(seed=8)[0], a[0])
    r0, r1 = draws(seed=7, rank=0, world_size=2), draws(seed=7, rank=1, world_size=2)
    assert not any(torch.equal(u, v) for u, v in zip(r0, r1))
    # Two ranks together see what one process sees in two consecutive calls: one global draw, sliced.
    b = Batches(arange_bin, 16, 4, seed=7, dtype=np.uint16)
    one_process = [b.next()[0] for _ in range(6)]
    assert all(torch.equal(r0[i], one_process[2 * i]) and torch.equal(r1[i], one_process[2 * i + 1]) for i in range(3))


def test_batches_resume_exactly(arange_bin, tmp_path):
    b = Batches(arange_bin, 16, 4, seed=3, dtype=np.uint16)
    for _ in range(3):
        b.next()
    state = b.state_dict()
    expected = [b.next() for _ in range(4)]
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    for restored_state in (state, loaded):
        c = Batches(arange_bin, 16, 4, seed=999, dtype=np.uint16)
        c.load_state_dict(restored_state)
        got = [c.next() for _ in range(4)]
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(expected, got))
    assert c.state_dict()["batches_drawn"] == 7


def test_batches_dtype_from_meta(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("the king spoke; über café.\n" * 100, encoding="utf-8")
    p = prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    x, _ = Batches(p.train_bin, 8, 2, seed=0).next()
    assert int(x.max()) < p.tokenizer.vocab_size
    with pytest.raises(UserError, match="no meta.json"):
        Batches(tmp_path / "t.txt", 8, 2, seed=0)


def test_batches_errors(tmp_path, arange_bin):
    small = tmp_path / "val.bin"
    np.arange(10, dtype=np.uint16).tofile(small)
    with pytest.raises(UserError, match=r"val.bin has 10 tokens but one block needs block_size \+ 1 = 33.*lower block_size"):
        Batches(small, 32, 1, seed=0, dtype=np.uint16)
    with pytest.raises(UserError, match=r"batch_size 8 is larger than the 2 distinct windows"):
        Batches(small, 8, 8, seed=0, dtype=np.uint16)
    with pytest.raises(UserError, match="not found"):
        Batches(tmp_path / "missing.bin", 8, 2, seed=0, dtype=np.uint16)
    with pytest.raises(UserError, match="rank"):
        Batches(arange_bin, 8, 2, seed=0, rank=2, world_size=2, dtype=np.uint16)
    with pytest.raises(UserError, match="damaged"):
        Batches(arange_bin, 8, 2, seed=0, dtype=np.uint16).load_state_dict({})


def test_corpus_too_small_for_a_block(tmp_path):
    src = tmp_path / "tiny.txt"
    src.write_text("a tiny corpus\n" * 3)
    p = prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    with pytest.raises(UserError, match=r"val.bin has \d+ tokens but one block needs block_size \+ 1 = 65"):
        Batches(p.val_bin, 64, 1, seed=0)
