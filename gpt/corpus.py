"""Where the text comes from: the first step of the flow, before any token exists.

    a file, a folder, several paths, or a named corpus ──resolve_sources──▶ [Document(path, size, label), ...]

Named corpora: "stdlib" (the Python standard library's own source, on every machine) and "shakespeare" (Tiny
Shakespeare: data/shakespeare/input.txt, else ../shared/corpora/tinyshakespeare.txt beside the repository,
else downloaded once). Folders give every text file below them (binary files are skipped with a warning).

Also here: reading a file in chunks cut where a tokenizer would cut anyway (so chunks can be tokenized in
parallel), and UTF-8 decoding with an error that names the file and the byte offset. gpt/data.py turns the
documents into token bins.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import sysconfig
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gpt.atomic import write_bytes
from gpt.errors import UserError, plural

NAMED_CORPORA = ("stdlib", "shakespeare")
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_BYTES = 1_115_394
# Folders of the standard library that are not its own source: tests (and their data files, some of them
# deliberately broken), IDLE's tests, and third-party packages.
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})

_BINARY_PROBE_BYTES = 8192  # a NUL byte in a file's first 8 KB marks it as binary
_HASH_BLOCK = 1 << 20


class DataWarning(UserWarning):
    """Something about the corpus the user should know (e.g. skipped binary files), but not an error."""


# ---------------------------------------------------------------------------------------------------
# Finding the documents: files, folders and named corpora.


@dataclass(frozen=True)
class Document:
    path: Path  # absolute
    size: int  # bytes
    label: str  # the path relative to what the user named; orders the validation pick independently of location


def _repo_root() -> Path:
    import gpt

    return Path(gpt.__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return _repo_root().parent / "shared"


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(_BINARY_PROBE_BYTES)


def _stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if not root.is_dir():
        raise UserError(f"the Python standard library was not found at {root}: give a path to your own text instead")
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                size = path.stat().st_size
                if size:
                    docs.append(Document(path, size, path.relative_to(root).as_posix()))
    docs.sort(key=lambda d: d.label)
    if not docs:
        raise UserError(f"no .py files found in the standard library at {root}: give a path to your own text instead")
    return docs


def _shakespeare_path(data_dir: Path) -> Path:
    local = data_dir / "shakespeare" / "input.txt"
    if local.is_file():
        return local
    shared = _shared_dir() / "corpora" / "tinyshakespeare.txt"
    if shared.is_file():
        return shared
    _download(SHAKESPEARE_URL, local, expected_size=SHAKESPEARE_BYTES)
    return local


def _download(url: str, dest: Path, *, expected_size: int | None = None) -> None:
    """Fetch `url` into `dest` atomically; any failure is a UserError that says where to put the file by hand."""
    where = f"put the file at {dest} (or ../shared/corpora/tinyshakespeare.txt beside the repository)"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"Tiny Shakespeare is not on this machine and downloading {url} failed ({reason}): {where}") from None
    if expected_size is not None and len(payload) != expected_size:
        raise UserError(f"downloaded {len(payload)} bytes from {url}, expected {expected_size}: {where}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(dest, payload)
    except OSError as e:
        raise UserError(f"cannot save the downloaded Tiny Shakespeare to {dest}: {e.strerror or e}; choose a writable "
                        "--data_dir") from None


def _folder_documents(root: Path, include: str | None, binaries: list[Path]) -> list[Document]:
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden folders (.git, .venv) and byte-code caches are never text the user meant.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if include and not (fnmatch.fnmatch(rel, include) or fnmatch.fnmatch(name, include)):
                continue
            if not path.is_file():
                continue
            size = path.stat().st_size
            if size == 0:
                continue
            if _is_binary(path):
                binaries.append(path)
                continue
            docs.append(Document(path, size, rel))
    docs.sort(key=lambda d: d.label)
    return docs


def resolve_sources(
    data: str | list[str], include: str | None = None, data_dir: str | Path = "data"
) -> tuple[str, list[Document]]:
    """The corpus name and its documents (files), in a deterministic order.

    Named corpora ("stdlib", "shakespeare") take precedence over a path of the same name: write ./stdlib for
    the folder. The include glob filters the files found in folders (matched against the path relative to
    the folder, and against the file name); a file named directly is always taken.
    """
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    # "a.txt,b.txt" names several paths (the trainer's data setting is one string), unless a path has the comma.
    items = [part for item in items for part in
             (str(item).split(",") if "," in str(item) and not Path(str(item)).exists() else [item]) if str(part)]
    if not items:
        raise UserError("no data given: name a text file, a folder, or a named corpus (stdlib, shakespeare)")
    data_dir = Path(data_dir)
    names: list[str] = []
    docs: list[Document] = []
    binaries: list[Path] = []
    for item in items:
        item = str(item)
        if item in NAMED_CORPORA:
            names.append(item)
            if item == "stdlib":
                docs += _stdlib_documents()
            else:
                path = _shakespeare_path(data_dir).resolve()
                docs.append(Document(path, path.stat().st_size, "input.txt"))
            continue
        path = Path(item).expanduser()
        if not path.exists():
            raise UserError(
                f"data path {item} not found: give a text file, a folder of text files, "
                f"or a named corpus ({', '.join(NAMED_CORPORA)})"
            )
        path = path.resolve()
        names.append(path.stem if path.is_file() else path.name)
        if path.is_dir():
            found = _folder_documents(path, include, binaries)
            if not found:
                matching = f" matching {include!r}" if include else ""
                raise UserError(f"folder {item} has no (non-empty) text files{matching}: point to a folder that has some")
            docs += found
        else:
            size = path.stat().st_size
            if size == 0:
                raise UserError(f"{item} is empty: give a file with some text in it")
            if _is_binary(path):
                binaries.append(path)
                continue
            docs.append(Document(path, size, path.name))
    if binaries:
        shown = ", ".join(str(p) for p in binaries[:10]) + (f" and {len(binaries) - 10} more" if len(binaries) > 10 else "")
        warnings.warn(f"skipped {plural(len(binaries), 'binary file')} (NUL bytes in the first 8 KB): {shown}", DataWarning, stacklevel=3)
    if not docs:
        raise UserError("no text to prepare: every file given is binary; give text files (UTF-8)")
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(names))[:60].strip(".") or "corpus"
    return name, docs


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Cutting text into chunks that tokenize the same apart as together.
#
# A byte-level BPE first splits text with a regex (GPT-2's, cl100k's) and encodes each piece alone. Two
# kinds of position are never inside a piece and leave the pieces on both sides unchanged, so cutting there
# gives the same tokens as encoding the text whole:
#   - right after a newline with a printable ASCII character on each side ("x\n|y"): a line start;
#   - between an ASCII letter or digit and a following space, tab or newline ("word| next").
# A chunk is cut at the last line start in its second half, else at the last word end there. Only text
# with neither (e.g. a long run of non-ASCII without spaces) is cut after any newline, or else at a UTF-8
# character boundary: there a BPE may encode the few characters around the cut differently than it would
# have uncut (a char tokenizer never does).


def _is_printable_ascii(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E


_ASCII_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _safe_cut(buf: bytes, lo: int) -> int:
    """The last position in (lo, len(buf)) at which `buf` may be cut (see above); at least 1 when len(buf) > 1."""
    n = len(buf)
    lo = max(lo, 1)
    i = buf.rfind(b"\n", lo, n - 1)
    last_newline = i
    while i >= lo:
        if _is_printable_ascii(buf[i - 1]) and _is_printable_ascii(buf[i + 1]):
            return i + 1
        i = buf.rfind(b"\n", lo, i)
    i = buf.rfind(b" ", lo, n)
    while i >= lo:
        if buf[i - 1] in _ASCII_ALNUM:
            return i
        i = buf.rfind(b" ", lo, i)
    if last_newline >= lo:
        return last_newline + 1
    cut = n - 1
    while cut > 0 and (buf[cut] & 0xC0) == 0x80:  # a UTF-8 continuation byte: back off to the character start
        cut -= 1
    return cut if cut > 0 else n


def read_chunks(path: Path, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(file offset, bytes) pieces of path[start:end], each about chunk_bytes, cut at safe positions."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        carry = b""
        while True:
            data = f.read(max(0, min(chunk_bytes, end - pos)))
            pos += len(data)
            buf = carry + data if carry else data
            if pos >= end or not data:  # the end of the segment (or the file shrank while we read it)
                if buf:
                    yield pos - len(buf), buf
                return
            cut = _safe_cut(buf, len(buf) // 2)
            yield pos - len(buf), buf[:cut]
            carry = buf[cut:]


def cut_near(path: Path, offset: int) -> int:
    """A safe cut position in the file at or before `offset` (for splitting one document into train/val)."""
    window = 1 << 20
    lo = max(0, offset - window)
    with open(path, "rb") as f:
        f.seek(lo)
        buf = f.read(offset + 1 - lo)
    if len(buf) <= 1:
        return offset
    return lo + _safe_cut(buf, 0)


def decode_utf8(data: bytes, path: str, offset: int = 0, errors: str = "strict") -> str:
    """`data` (read from `path` at byte `offset`) as text; invalid UTF-8 is a UserError naming file and offset."""
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not valid UTF-8 at byte offset {offset + e.start} ({e.reason}): convert it to UTF-8, "
            "or set on_invalid_utf8=replace to replace bad bytes with U+FFFD"
        ) from None
