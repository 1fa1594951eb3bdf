"""Tests for gpt/data.py: preparing corpora into token bins, the cache, and the prepare command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt.data as data
from conftest import REPO
from gpt.corpus import DataWarning, resolve_sources
from gpt.data import Prepared, load_prepared, prepare
from gpt.errors import UserError
from gpt.tokenizer import CharTokenizer
from gpt.tokenizer_files import load_tokenizer


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


def read_bin(path: Path, dtype) -> np.ndarray:
    return np.fromfile(path, dtype=dtype)


def split_docs(ids: np.ndarray, eot: int | None) -> list[list[int]]:
    if eot is None:
        return [ids.tolist()]
    docs, current = [], []
    for t in ids.tolist():
        if t == eot:
            docs.append(current)
            current = []
        else:
            current.append(t)
    docs.append(current)
    return docs


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of ~300 bytes and the worker pool even for tiny corpora, to exercise the streaming path."""
    monkeypatch.setattr(data, "_CHUNK_BYTES", 300)
    monkeypatch.setattr(data, "_POOL_MIN_BYTES", 0)


# ---------------------------------------------------------------------------------------------------
# Round trips: the bins decode back to the source text, split by split.


@pytest.mark.parametrize("chunked", [False, True])
def test_char_single_file_round_trip(tmp_path, monkeypatch, chunked):
    if chunked:
        monkeypatch.setattr(data, "_CHUNK_BYTES", 300)
        monkeypatch.setattr(data, "_POOL_MIN_BYTES", 0)
    text = make_text(0, 400)
    src = tmp_path / "book.txt"
    src.write_text(text, encoding="utf-8")
    p = prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    assert isinstance(p, Prepared) and not p.reused
    assert p.dtype == np.uint16 and p.meta["dtype"] == "uint16"
    assert p.tokenizer.vocab_size == len(set(text)) == p.meta["vocab_size"]
    train = p.tokenizer.decode(read_bin(p.train_bin, p.dtype))
    val = p.tokenizer.decode(read_bin(p.val_bin, p.dtype))
    assert train + val == text
    assert p.meta["split"]["method"] == "end"
    assert abs(len(val.encode()) / len(text.encode()) - 0.1) < 0.02
    # The cut is at a line start, and the byte/token counts are those of each split's text.
    assert train.endswith("\n")
    for name, part in (("train", train), ("val", val)):
        assert p.meta["splits"][name]["bytes"] == len(part.encode("utf-8"))
        assert p.meta["splits"][name]["tokens"] == len(part)
        assert p.meta["splits"][name]["characters"] == len(part)
    # The vectorized char path gives what the tokenizer itself gives.
    assert read_bin(p.train_bin, p.dtype).tolist() == p.tokenizer.encode(train)
    # meta.json on disk says what the returned meta says.
    on_disk = json.loads((p.dir / "meta.json").read_text(encoding="utf-8"))
    assert on_disk == p.meta
    assert on_disk["sources"][0]["size"] == len(text.encode()) and on_disk["sources"][0]["blake2b"]
    assert on_disk["tokenizer"]["spec"] == "char"


def make_folder(root: Path, n: int, seed: int = 1) -> dict[str, str]:
    texts = {}
    for i in range(n):
        rel = f"part{i % 3}/doc{i:02d}.txt"
        texts[rel] = make_text(seed + i, 20 + 7 * i)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(texts[rel], encoding="utf-8")
    return texts


def test_char_folder_splits_at_documents(tmp_path, small_chunks):
    texts = make_folder(tmp_path / "corpus", 12)
    p = prepare(str(tmp_path / "corpus"), "char", data_dir=tmp_path / "d", progress=False)
    assert p.meta["split"]["method"] == "documents"
    val_docs = set(p.meta["split"]["val_documents"])
    assert val_docs and len(val_docs) < len(texts)
    order = sorted(texts)
    expected_train = "".join(texts[k] for k in order if k not in val_docs)
    expected_val = "".join(texts[k] for k in order if k in val_docs)
    assert p.tokenizer.decode(read_bin(p.train_bin, p.dtype)) == expected_train
    assert p.tokenizer.decode(read_bin(p.val_bin, p.dtype)) == expected_val
    assert p.meta["splits"]["val"]["documents"] == len(val_docs)
    assert p.meta["splits"]["train"]["bytes"] == len(expected_train.encode())
    # Deterministic: the same folder elsewhere picks the same validation documents.
    make_folder(tmp_path / "copy" / "corpus", 12)
    q = prepare(str(tmp_path / "copy" / "corpus"), "char", data_dir=tmp_path / "d2", progress=False)
    assert q.meta["split"]["val_documents"] == p.meta["split"]["val_documents"]


def test_include_glob_and_several_paths(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.md").write_text("# notes\nhello\n")
    (tmp_path / "a" / "y.txt").write_text("skipped by the glob\n")
    (tmp_path / "b.txt").write_text("second path\n")
    name, docs = resolve_sources([str(tmp_path / "a"), str(tmp_path / "b.txt")], include="*.md")
    assert [d.label for d in docs] == ["x.md", "b.txt"]
    assert name == "a+b"
    _, docs = resolve_sources(f"{tmp_path / 'a'},{tmp_path / 'b.txt'}", include="*.md")  # the trainer's spelling
    assert [d.label for d in docs] == ["x.md", "b.txt"]
    (tmp_path / "c,d.txt").write_text("a comma in the name\n")
    assert [d.label for d in resolve_sources(str(tmp_path / "c,d.txt"))[1]] == ["c,d.txt"]


def test_bpe_multi_file_round_trip_with_separators(tmp_path, small_chunks):
    texts = make_folder(tmp_path / "corpus", 8)
    tok = load_tokenizer("bpe:300", corpus="".join(texts.values()))
    assert tok.eot_id is not None
    p = prepare(str(tmp_path / "corpus"), "bpe:300", data_dir=tmp_path / "d", progress=False)
    assert p.tokenizer.vocab_size == 300 and p.meta["separator"] == "eot"
    assert "first" in p.meta["tokenizer"]["fitted_on"]
    val_docs = set(p.meta["split"]["val_documents"])
    for split, bin_path in (("train", p.train_bin), ("val", p.val_bin)):
        pieces = split_docs(read_bin(bin_path, p.dtype), p.tokenizer.eot_id)
        expected = [texts[k] for k in sorted(texts) if (k in val_docs) == (split == "val")]
        assert [p.tokenizer.decode_bytes(ids).decode("utf-8") for ids in pieces] == expected
        assert p.meta["splits"][split]["bytes"] == sum(len(t.encode()) for t in expected)
        # Chunked encoding (300-byte chunks cut at safe newlines) equals encoding each document whole.
        assert pieces == [p.tokenizer.encode(t) for t in expected]


def test_bpe_single_file_round_trip(tmp_path):
    text = make_text(3, 300)
    load_tokenizer("bpe:300", corpus=text)
    src = tmp_path / "one.txt"
    src.write_text(text, encoding="utf-8")
    p = prepare(str(src), "bpe:300", data_dir=tmp_path / "d", progress=False)
    train = p.tokenizer.decode_bytes(read_bin(p.train_bin, p.dtype)).decode("utf-8")
    val = p.tokenizer.decode_bytes(read_bin(p.val_bin, p.dtype)).decode("utf-8")
    assert train + val == text




# ---------------------------------------------------------------------------------------------------
# The cache


def test_cache_reused_without_tokenizing(tmp_path, monkeypatch):
    src = tmp_path / "t.txt"
    src.write_text(make_text(0, 200), encoding="utf-8")
    first = prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    mtime = (first.dir / "meta.json").stat().st_mtime_ns

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data, "_build", no_tokenizing)
    second = prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    assert second.reused and second.dir == first.dir
    assert (second.dir / "meta.json").stat().st_mtime_ns == mtime
    assert second.tokenizer.to_dict() == first.tokenizer.to_dict()
    assert second.meta == first.meta
    assert load_prepared(first.dir).meta == first.meta


def test_cache_files_get_the_permissions_a_plain_write_gives(tmp_path):
    import stat

    src = tmp_path / "t.txt"
    src.write_text(make_text(0, 50), encoding="utf-8")
    previous = os.umask(0o022)
    try:
        p = prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    finally:
        os.umask(previous)
    for name in ("meta.json", "tokenizer.json", "train.bin", "val.bin"):
        assert stat.S_IMODE((p.dir / name).stat().st_mode) == 0o644, name  # readable by a teammate


def test_cache_invalidated_by_any_change(tmp_path):
    src = tmp_path / "t.txt"
    text = make_text(0, 200)
    src.write_text(text, encoding="utf-8")
    d = tmp_path / "d"
    base = prepare(str(src), "char", data_dir=d, progress=False)
    dirs = {base.dir}
    # Same size, different content.
    src.write_text(text[:-2] + "q\n", encoding="utf-8")
    changed = prepare(str(src), "char", data_dir=d, progress=False)
    assert not changed.reused and changed.dir not in dirs
    dirs.add(changed.dir)
    # Another tokenizer: a Tokenizer object with more characters.
    wider = CharTokenizer(text + "qQZ")
    other_tok = prepare(str(src), wider, data_dir=d, progress=False)
    assert not other_tok.reused and other_tok.dir not in dirs and other_tok.tokenizer is wider
    dirs.add(other_tok.dir)
    other_val = prepare(str(src), "char", val_fraction=0.2, data_dir=d, progress=False)
    assert not other_val.reused and other_val.dir not in dirs
    dirs.add(other_val.dir)
    globbed = prepare(str(tmp_path), "char", include="t.txt", data_dir=d, progress=False)
    assert globbed.dir not in dirs
    # And back to a known input: reused.
    assert prepare(str(src), wider, data_dir=d, progress=False).reused


def test_interrupted_prepare_leaves_nothing_trusted(tmp_path, monkeypatch):
    src = tmp_path / "t.txt"
    src.write_text(make_text(0, 200), encoding="utf-8")
    d = tmp_path / "d"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_write_meta", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(src), "char", data_dir=d, progress=False)
    assert not d.exists()  # nothing is left behind: not even the folders the prepare made
    monkeypatch.undo()
    good = prepare(str(src), "char", data_dir=d, progress=False)
    assert not good.reused
    # A folder at the final place without (or with a stale) meta.json is rebuilt, not trusted.
    (good.dir / "meta.json").unlink()
    again = prepare(str(src), "char", data_dir=d, progress=False)
    assert not again.reused and (again.dir / "meta.json").is_file()
    # A truncated bin is not trusted either.
    with open(again.dir / "train.bin", "r+b") as f:
        f.truncate(10)
    assert not prepare(str(src), "char", data_dir=d, progress=False).reused
    # A temporary folder left by a killed process is removed by the next build.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = d / "t" / f".tmp-abc-{int(dead.stdout)}-0000"
    leftover.mkdir()
    prepare(str(src), "char", val_fraction=0.3, data_dir=d, progress=False)
    assert not leftover.exists()


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="not found"):
        prepare(str(tmp_path / "nope.txt"), "char", data_dir=tmp_path / "d", progress=False)


def test_empty_file_and_folder_without_text(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        prepare(str(tmp_path / "empty.txt"), "char", data_dir=tmp_path / "d", progress=False)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="no .*text files"):
        prepare(str(tmp_path / "folder"), "char", data_dir=tmp_path / "d", progress=False)
    (tmp_path / "folder" / "a.txt").write_text("text")
    with pytest.raises(UserError, match=r"matching '\*\.md'"):
        prepare(str(tmp_path / "folder"), "char", include="*.md", data_dir=tmp_path / "d", progress=False)


def test_binary_files_skipped_with_warning(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "text.txt").write_text(make_text(0, 100), encoding="utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(100))
    with pytest.warns(DataWarning, match="image.png"):
        p = prepare(str(folder), "char", data_dir=tmp_path / "d", progress=False)
    assert [s["label"] for s in p.meta["sources"]] == ["text.txt"]
    with pytest.warns(DataWarning, match="image.png"), pytest.raises(UserError, match="binary"):
        prepare(str(folder / "image.png"), "char", data_dir=tmp_path / "d", progress=False)


def test_invalid_utf8_names_file_and_offset(tmp_path, small_chunks):
    good = make_text(0, 100).encode("utf-8")
    bad_at = len(good) + 3
    src = tmp_path / "bad.txt"
    src.write_bytes(good + b"abc\xff\xfedef\n" + good)
    with pytest.raises(UserError, match=rf"bad\.txt is not valid UTF-8 at byte offset {bad_at}\b"):
        prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    with pytest.raises(UserError, match=rf"byte offset {bad_at}\b"):
        prepare(str(src), CharTokenizer(good.decode()), data_dir=tmp_path / "d", progress=False)
    p = prepare(str(src), "char", on_invalid_utf8="replace", data_dir=tmp_path / "d", progress=False)
    decoded = p.tokenizer.decode(read_bin(p.train_bin, p.dtype)) + p.tokenizer.decode(read_bin(p.val_bin, p.dtype))
    assert decoded == src.read_bytes().decode("utf-8", errors="replace")


def test_char_tokenizer_missing_characters_is_its_error(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("hello wörld\n" * 50, encoding="utf-8")
    with pytest.raises(UserError, match="not in this char tokenizer's vocabulary: 'ö'"):
        prepare(str(src), CharTokenizer("helo wrd\n"), data_dir=tmp_path / "d", progress=False)


def test_bad_settings(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("some text\n")
    for bad in (-0.1, 1.0):
        with pytest.raises(UserError, match="val_fraction"):
            prepare(str(src), "char", val_fraction=bad, data_dir=tmp_path / "d", progress=False)
    with pytest.raises(UserError, match="on_invalid_utf8"):
        prepare(str(src), "char", on_invalid_utf8="ignore", data_dir=tmp_path / "d", progress=False)
    with pytest.raises(UserError, match="unknown tokenizer"):
        prepare(str(src), "nonsense", data_dir=tmp_path / "d", progress=False)


def test_val_fraction_zero(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(make_text(0, 50), encoding="utf-8")
    p = prepare(str(src), "char", val_fraction=0, data_dir=tmp_path / "d", progress=False)
    assert p.meta["splits"]["val"]["tokens"] == 0 and p.val_bin.stat().st_size == 0



# ---------------------------------------------------------------------------------------------------
# Command line


def test_positional_arguments_become_data():
    argv = ["a.txt", "--tokenizer", "char", "folder", "--progress", "cfg.toml", "--val_fraction=0.2", "b.toml"]
    assert data._positional_to_data(argv) == [
        "--data=a.txt", "--tokenizer", "char", "--data=folder", "--progress", "cfg.toml", "--val_fraction=0.2", "--data=b.toml",
    ]


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gpt.data", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_cli_summary_and_bad_input(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(make_text(0, 200), encoding="utf-8")
    ok = run_cli(str(src), "--tokenizer", "char", "--data_dir", str(tmp_path / "d"), "--progress=false", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    for word in ("characters", "tokens", "vocabulary", "train", "val", "cache", "built in"):
        assert word in ok.stdout
    # One file is one document, in the right number (never "1 documents").
    assert ": 1 document, " in ok.stdout.splitlines()[0] and "1 documents" not in ok.stdout
    bad = run_cli(str(tmp_path / "missing.txt"), "--tokenizer", "char", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: data path") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------------
# Faults of the machine


def test_two_prepares_of_one_corpus_at_once_give_one_complete_result(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(make_text(3, 3000), encoding="utf-8")
    code = ("import sys; from gpt.data import prepare; "
            "p = prepare(sys.argv[1], 'bpe:300', data_dir=sys.argv[2], progress=False); print(p.dir, p.reused)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "d")], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    folders = {out.split()[0] for out, _ in results}
    assert len(folders) == 1  # the same cache folder, complete (loadable) for both
    assert sorted(out.split()[1] for out, _ in results) == ["False", "True"]  # built once; the other waited
    prepared = load_prepared(folders.pop())
    assert prepared.meta["complete"] and not list((tmp_path / "d" / "t").glob(".tmp-*"))


def test_a_refused_prepare_leaves_no_folder_behind(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("tiny text\n" * 20, encoding="utf-8")
    with pytest.raises(UserError, match="bpe:"):
        prepare(str(src), "bpe:4096", data_dir=tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()


def test_a_full_disk_while_preparing_is_one_line_and_nothing_is_trusted(tmp_path, monkeypatch):
    import errno

    src = tmp_path / "t.txt"
    src.write_text(make_text(0, 200), encoding="utf-8")
    (tmp_path / "d").mkdir()
    real_write_json = data._write_json

    def full(path, payload):
        if path.name == "tokenizer.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_json(path, payload)

    monkeypatch.setattr(data, "_write_json", full)
    with pytest.raises(UserError, match="no space left on the device holding") as e:
        prepare(str(src), "char", data_dir=tmp_path / "d", progress=False)
    assert "\n" not in str(e.value)
    assert list((tmp_path / "d").iterdir()) == []  # the data_dir existed before; nothing inside it is left
