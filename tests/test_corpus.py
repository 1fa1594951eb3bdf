"""Tests for gpt/corpus.py: where the text comes from (named corpora, folders, downloads) and safe chunk cuts."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import gpt.corpus as corpus
from conftest import shared_path
from gpt.batches import Batches
from gpt.corpus import resolve_sources
from gpt.data import prepare
from gpt.errors import UserError


def make_text(seed: int, n_lines: int) -> str:
    """Deterministic prose-like text with some non-ASCII, indentation and blank lines."""
    rng = np.random.default_rng(seed)
    words = ["the", "king", "über", "naïve", "café", "speak", "def", "return", "x", "(1, 2)", "—", "日本", "🙂", "a.b"]
    lines = []
    for _ in range(n_lines):
        indent = " " * int(rng.integers(0, 3)) * 4
        line = indent + " ".join(rng.choice(words, size=int(rng.integers(0, 10))))
        lines.append(line)
    return "\n".join(lines) + "\n"



def gpt2_encoding():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(shared_path("gpt2", "r50k_base.tiktoken")))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("r50k_test", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def test_chunk_cuts_keep_gpt2_encoding(tmp_path):
    """Cutting at the chosen positions never changes GPT-2's encoding (for text that has such newlines)."""
    enc = gpt2_encoding()
    text = "".join(Path(f).read_text(encoding="utf-8") for f in sorted(Path(corpus.__file__).parent.glob("*.py")))
    text += make_text(5, 500) + "x\n\n\ny\r\nz\n  w\n"
    src = tmp_path / "t.txt"
    src.write_bytes(text.encode("utf-8"))
    chunks = [c for _, c in corpus.read_chunks(src, 0, src.stat().st_size, 2000)]
    assert len(chunks) > 20 and b"".join(chunks) == text.encode("utf-8")
    pieces = [t for c in chunks for t in enc.encode_ordinary(c.decode("utf-8"))]
    assert pieces == enc.encode_ordinary(text)


def test_chunks_without_newlines_cut_at_character_boundaries(tmp_path):
    text = "é日🙂a" * 500  # no newline at all: cuts fall back to UTF-8 boundaries
    src = tmp_path / "t.txt"
    src.write_text(text, encoding="utf-8")
    chunks = [c for _, c in corpus.read_chunks(src, 0, src.stat().st_size, 100)]
    assert len(chunks) > 10
    assert "".join(c.decode("utf-8") for c in chunks) == text



# ---------------------------------------------------------------------------------------------------
# Named corpora


def test_stdlib_corpus_documents():
    name, docs = resolve_sources("stdlib")
    assert name == "stdlib"
    labels = [d.label for d in docs]
    assert labels == sorted(labels) and all(label.endswith(".py") for label in labels)
    parts = {part for label in labels for part in label.split("/")[:-1]}
    assert not parts & {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    assert sum(d.size for d in docs) > 3_000_000


def test_stdlib_prepares_with_char(tmp_path):
    p = prepare("stdlib", "char", data_dir=tmp_path, progress=False)
    assert p.meta["split"]["method"] == "documents"
    assert p.meta["splits"]["train"]["tokens"] > 2_000_000
    assert p.meta["vocab_size"] < 1000 and p.dtype == np.uint16
    x, y = Batches(p.train_bin, 64, 4, seed=0).next()
    assert x.shape == (4, 64)


def test_shakespeare_from_data_dir_then_shared(tmp_path, monkeypatch):
    local = tmp_path / "shakespeare" / "input.txt"
    local.parent.mkdir(parents=True)
    local.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    _, docs = resolve_sources("shakespeare", data_dir=tmp_path)
    assert docs[0].path == local.resolve()
    shared = shared_path("corpora", "tinyshakespeare.txt")
    _, docs = resolve_sources("shakespeare", data_dir=tmp_path / "elsewhere")
    assert docs[0].path == shared.resolve() and docs[0].size == corpus.SHAKESPEARE_BYTES


def test_shakespeare_offline_and_absent(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(corpus, "_shared_dir", lambda: tmp_path / "no-shared")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"put the file at .*shakespeare/input\.txt") as e:
        prepare("shakespeare", "char", data_dir=tmp_path / "d", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "d" / "shakespeare" / "input.txt").exists()


def test_shakespeare_download_is_atomic(tmp_path, monkeypatch):
    payload = b"x" * corpus.SHAKESPEARE_BYTES

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return payload

    monkeypatch.setattr(corpus, "_shared_dir", lambda: tmp_path / "no-shared")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response())
    _, docs = resolve_sources("shakespeare", data_dir=tmp_path / "d")
    assert docs[0].path.read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / "d" / "shakespeare").iterdir()) == ["input.txt"]
