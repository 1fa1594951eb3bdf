"""Preparing a corpus: the second step of the flow, text files -> token bins.

    documents (gpt/corpus.py) ──prepare──▶ data/<corpus>/<key>/{train.bin, val.bin, tokenizer.json, meta.json}

`prepare` fits or takes a tokenizer, splits the text into train and val, tokenizes it in bounded-size chunks on
all cores and writes uint16 (or uint32) token bins that `np.memmap` reads (gpt/batches.py draws from them).

The cache folder's name `<key>` is a hash of everything the bins depend on (the files' contents, the
tokenizer, the include glob, the split), so unchanged inputs are reused and any change prepares again.
A folder is built under a temporary name and renamed into place only when complete (meta.json last), so a
prepare killed midway leaves nothing that a later run trusts.

Command line: `python -m gpt.data <data...> --tokenizer char` prepares and prints a summary.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import multiprocessing as mp
import os
import secrets
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from gpt.atomic import check_writable, write_text
from gpt.config import parse_args, setting
from gpt.corpus import Document, file_hash, read_chunks, cut_near, decode_utf8, resolve_sources
from gpt.errors import UserError, exit_on_user_error, plural
from gpt.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_dict
from gpt.tokenizer_files import TokenizerChoice, from_json_data, to_json_data

FORMAT_VERSION = 1  # bump when the bin layout or the meta changes: old caches are then prepared again

# Tuning knobs (module constants so tests can shrink them to exercise chunking and the worker pool).
_CHUNK_BYTES = 1 << 20  # text handed to one worker at a time; bounds memory per worker
_POOL_MIN_BYTES = 16 << 20  # below this, starting worker processes costs more than it saves
BPE_SAMPLE_BYTES = 20 << 20  # a trained BPE sees at most this much text (the start of the train split)


# ---------------------------------------------------------------------------------------------------
# Workers: each turns one chunk of bytes into a character set or token ids.

_worker_tokenizer: Tokenizer | None = None
_worker_char_table: np.ndarray | None = None  # a CharTokenizer's fast path (see _set_worker_tokenizer)


def _set_worker_tokenizer(tokenizer: Tokenizer | None) -> None:
    global _worker_tokenizer, _worker_char_table
    _worker_tokenizer = tokenizer
    _worker_char_table = None
    if type(tokenizer) is CharTokenizer:
        # A dense code point -> id table (-1: not in the vocabulary); at most 4.4 MB, for all of Unicode.
        codes = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
        _worker_char_table = np.full(int(codes.max()) + 1, -1, dtype=np.int32)
        _worker_char_table[codes] = np.arange(len(codes), dtype=np.int32)


def _init_worker(tokenizer_dict: dict | None) -> None:
    if tokenizer_dict is not None:  # spawned (not forked) workers rebuild the tokenizer from plain data
        _set_worker_tokenizer(tokenizer_from_dict(tokenizer_dict))


def _encode_text(text: str, dtype: np.dtype) -> np.ndarray:
    tokenizer = _worker_tokenizer
    assert tokenizer is not None
    table = _worker_char_table
    if table is not None:
        # CharTokenizer.encode, vectorized: one table lookup per code point.
        codes = _code_points(text)
        if codes.size == 0:
            return np.zeros(0, dtype=dtype)
        if int(codes.max()) < len(table):
            ids = table[codes]
            if int(ids.min()) >= 0:
                return ids.astype(dtype)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)  # raises the tokenizer's own error for unknown chars
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise RuntimeError(f"tokenizer {tokenizer.name} returned ids outside [0, {tokenizer.vocab_size})")
    return ids.astype(dtype)


def _encode_job(job: tuple) -> tuple:
    segment, first, offset, data, path, errors, dtype = job
    text = decode_utf8(data, path, offset, errors)
    nbytes = len(data) if errors == "strict" else len(text.encode("utf-8"))
    return segment, first, _encode_text(text, dtype), len(text), nbytes


def _code_points(text: str) -> np.ndarray:
    if text.isascii():  # the common case: one byte per code point, no 4-byte copy
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _charset_job(job: tuple) -> tuple:
    segment, first, offset, data, path, errors, _ = job
    text = decode_utf8(data, path, offset, errors)
    if text.isascii():
        present = np.flatnonzero(np.bincount(_code_points(text), minlength=128))
    else:
        seen = np.zeros(0x110000, dtype=bool)
        seen[_code_points(text)] = True
        present = np.flatnonzero(seen)
    return segment, first, "".join(map(chr, present.tolist())), len(text), len(data)


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _map_chunks(
    fn: Callable[[tuple], tuple], jobs: Iterable[tuple], tokenizer: Tokenizer | None, total_bytes: int, bar
) -> Iterator[tuple]:
    """fn over jobs, results in order; at most 2 chunks per worker in flight, so memory stays bounded."""
    _set_worker_tokenizer(tokenizer)
    workers = _workers()
    try:
        if workers < 2 or total_bytes < _POOL_MIN_BYTES:
            for job in jobs:
                result = fn(job)
                bar.update(len(job[3]))
                yield result
            return
        fork = "fork" in mp.get_all_start_methods()
        context = mp.get_context("fork" if fork else "spawn")
        init_arg = None if fork or tokenizer is None else tokenizer.to_dict()
        with context.Pool(workers, initializer=_init_worker, initargs=(init_arg,)) as pool:
            pending: collections.deque = collections.deque()
            for job in jobs:
                pending.append((len(job[3]), pool.apply_async(fn, (job,))))
                if len(pending) >= 2 * workers:
                    size, result = pending.popleft()
                    yield result.get()
                    bar.update(size)
            while pending:
                size, result = pending.popleft()
                yield result.get()
                bar.update(size)
    finally:
        _set_worker_tokenizer(None)


# ---------------------------------------------------------------------------------------------------
# The split into train and val.


@dataclass(frozen=True)
class Segment:
    doc: int  # index into the documents
    start: int  # byte range of the document
    end: int
    split: str  # "train" or "val"


def _plan_split(docs: list[Document], val_fraction: float) -> tuple[list[Segment], dict[str, Any]]:
    """Which bytes go to which split, in document order.

    Several documents: whole documents go to val, picked in an order fixed by a hash of their relative paths
    (so val is spread over the corpus, not its alphabetical tail) until about val_fraction of the bytes.
    When no pick comes within 0.5x..1.5x of that (e.g. two big files), or there is one document, val is the
    end of the text, cut at a line boundary.
    """
    total = sum(d.size for d in docs)
    target = val_fraction * total
    if val_fraction == 0:
        return [Segment(i, 0, d.size, "train") for i, d in enumerate(docs)], {"method": "none"}
    if len(docs) > 1:
        order = sorted(range(len(docs)), key=lambda i: hashlib.blake2b(docs[i].label.encode()).digest())
        val: set[int] = set()
        val_bytes = 0
        for i in order:
            if val_bytes >= target:
                break
            if val_bytes + docs[i].size <= 1.5 * target:
                val.add(i)
                val_bytes += docs[i].size
        if 0.5 * target <= val_bytes and len(val) < len(docs):
            segments = [Segment(i, 0, d.size, "val" if i in val else "train") for i, d in enumerate(docs)]
            info = {"method": "documents", "val_documents": [docs[i].label for i in sorted(val)]}
            return segments, info
    # The end of the text: whole documents from the back, then the one that straddles the boundary is cut.
    remaining = math.ceil(target)
    boundary_doc = len(docs) - 1
    while boundary_doc > 0 and docs[boundary_doc].size <= remaining:
        remaining -= docs[boundary_doc].size
        boundary_doc -= 1
    doc = docs[boundary_doc]
    cut = cut_near(doc.path, max(0, doc.size - remaining)) if remaining > 0 else doc.size
    segments = [Segment(i, 0, d.size, "train") for i, d in enumerate(docs[:boundary_doc])]
    if cut > 0:
        segments.append(Segment(boundary_doc, 0, cut, "train"))
    if cut < doc.size:
        segments.append(Segment(boundary_doc, cut, doc.size, "val"))
    segments += [Segment(i, 0, docs[i].size, "val") for i in range(boundary_doc + 1, len(docs))]
    if not any(s.split == "train" for s in segments):
        raise UserError(f"val_fraction={val_fraction} leaves no text for training: lower it")
    info = {"method": "end", "val_starts_at": {"path": doc.label, "byte_offset": cut}}
    return segments, info


def split_texts(data: str | list[str], split: str, *, include: str | None = None, val_fraction: float = 0.1,
                data_dir: str | Path = "data", on_invalid_utf8: str = "error") -> Iterator[str]:
    """The text of each document of `data` ("all"), or of the part that `prepare` puts in one split ("train",
    "val") for this val_fraction: the same cut, so a model can be scored on exactly the text it was held out from."""
    if split not in ("all", "train", "val"):
        raise UserError(f"split must be all, train or val, got {split!r}")
    errors = "strict" if on_invalid_utf8 == "error" else "replace"
    _, docs = resolve_sources(data, include, data_dir)
    if split == "all":
        segments = [Segment(i, 0, d.size, "all") for i, d in enumerate(docs)]
    else:
        if not 0 < val_fraction < 1:
            raise UserError(f"val_fraction must be between 0 and 1 to pick a {split} split, got {val_fraction}")
        segments = [seg for seg in _plan_split(docs, val_fraction)[0] if seg.split == split]
    for seg in segments:
        with open(docs[seg.doc].path, "rb") as f:
            f.seek(seg.start)
            yield decode_utf8(f.read(seg.end - seg.start), str(docs[seg.doc].path), seg.start, errors)


def _jobs(docs: list[Document], segments: list[Segment], errors: str, dtype, only: str | None = None) -> Iterator[tuple]:
    for index, seg in enumerate(segments):
        if only is not None and seg.split != only:
            continue
        doc = docs[seg.doc]
        first = True
        for offset, data in read_chunks(doc.path, seg.start, seg.end, _CHUNK_BYTES):
            yield index, first, offset, data, str(doc.path), errors, dtype
            first = False


# ---------------------------------------------------------------------------------------------------
# prepare


@dataclass
class Prepared:
    dir: Path
    meta: dict
    tokenizer: Tokenizer
    train_bin: Path
    val_bin: Path
    dtype: np.dtype
    reused: bool = False  # true when an existing cache folder was used without tokenizing again


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def trusted_meta(folder: Path, key: str) -> dict | None:
    """The meta of a complete cache folder for `key`, or None (missing, half-written, or for other inputs)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("complete") is not True:
            return None
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            if (folder / f"{split}.bin").stat().st_size != meta["splits"][split]["tokens"] * itemsize:
                return None
        if not (folder / "tokenizer.json").is_file():
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_prepared(folder: str | Path) -> Prepared:
    """A prepared folder (as made by `prepare`) opened again, e.g. to evaluate on its val split."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a prepared corpus (no meta.json): run python -m gpt.data on your text first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if trusted_meta(folder, meta.get("key", "")) is None:
        raise UserError(f"{folder} is incomplete or damaged: delete it and prepare again")
    return _open(folder, meta, tokenizer=None, reused=True)


def _open(folder: Path, meta: dict, tokenizer: Tokenizer | None, reused: bool) -> Prepared:
    if tokenizer is None:
        tokenizer_data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        tokenizer = tokenizer_from_dict(from_json_data(tokenizer_data))
    return Prepared(
        dir=folder,
        meta=meta,
        tokenizer=tokenizer,
        train_bin=folder / "train.bin",
        val_bin=folder / "val.bin",
        dtype=np.dtype(meta["dtype"]),
        reused=reused,
    )


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _write_meta(folder: Path, meta: dict) -> None:
    _write_json(folder / "meta.json", meta)


def _remove_dead_temporaries(corpus_dir: Path) -> None:
    """Delete temporary build folders whose process no longer runs (a prepare that was killed)."""
    for tmp in corpus_dir.glob(".tmp-*"):
        parts = tmp.name.split("-")
        try:
            pid = int(parts[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            pass


def prepare(
    data: str | list[str],
    tokenizer: str | Tokenizer | TokenizerChoice,
    *,
    include: str | None = None,
    val_fraction: float = 0.1,
    data_dir: str | Path = "data",
    on_invalid_utf8: str = "error",
    progress: bool = True,
) -> Prepared:
    """Tokenize a corpus into train.bin / val.bin (or reuse the cache for the same inputs).

    `tokenizer` is a spec ("char": the characters of the whole corpus; "bpe:<N>": trained on at most the first
    20 MB of the train split; "gpt2", "<file>.tiktoken"), a Tokenizer (e.g. a checkpoint's, to fine-tune), or the
    TokenizerChoice a run settled on (gpt/tokenizer_files.py).
    `on_invalid_utf8`: "error" (the file and byte offset) or "replace" (bad bytes become U+FFFD).
    """
    started = time.perf_counter()
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be at least 0 and below 1 (e.g. 0.1), got {val_fraction!r}")
    if on_invalid_utf8 not in ("error", "replace"):
        raise UserError(f"on_invalid_utf8 must be error or replace, got {on_invalid_utf8!r}")
    choice = TokenizerChoice.of(tokenizer)
    errors = "strict" if on_invalid_utf8 == "error" else "replace"
    data_dir = Path(data_dir)
    corpus, docs = resolve_sources(data, include, data_dir)
    sources = [{"path": str(d.path), "label": d.label, "size": d.size, "blake2b": file_hash(d.path)} for d in docs]

    key_inputs = {
        "format": FORMAT_VERSION,
        "sources": [[s["path"], s["size"], s["blake2b"]] for s in sources],
        "tokenizer": choice.identity(),
        "include": include,
        "val_fraction": float(val_fraction),
        "on_invalid_utf8": on_invalid_utf8,
    }
    key = cache_key(key_inputs)
    final, meta, reused = cached_folder(
        data_dir, corpus, key, lambda tmp: _build(tmp, docs, sources, choice, key, key_inputs, corpus,
                                                  val_fraction, include, on_invalid_utf8, errors, progress, started))
    return _open(final, meta, tokenizer=choice.ready, reused=reused)


def cache_key(key_inputs: dict[str, Any]) -> str:
    """The name of a cache folder: a hash of everything its content depends on."""
    return hashlib.blake2b(json.dumps(key_inputs, sort_keys=True).encode(), digest_size=8).hexdigest()


def cached_folder(data_dir: Path, name: str, key: str, build: Callable[[Path], dict],
                  trusted: Callable[[Path, str], dict | None] | None = None) -> tuple[Path, dict, bool]:
    """The complete cache folder data_dir/name/key: (folder, meta, reused).

    Found and trusted (`trusted(folder, key)` gives its meta; by default that of token bins), it is reused;
    otherwise `build(tmp)` fills a temporary folder and returns the meta it wrote (meta.json last), and the
    folder is renamed into place whole. Preparing text (`prepare`) and rendering conversations
    (gpt/post/chat_data.py) share this mechanism.
    """
    trusted = trusted or trusted_meta
    corpus_dir = data_dir / name
    final = corpus_dir / key
    meta = trusted(final, key)
    if meta is not None:
        return final, meta, True

    # Nothing cached: check the folder can be written before any work, and take the corpus's lock, so that two
    # prepares of the same inputs at once do the work once (the second waits, then finds the first's result).
    check_writable(data_dir, "data_dir")
    made = [folder for folder in (data_dir, corpus_dir) if not folder.exists()]
    try:
        corpus_dir.mkdir(parents=True, exist_ok=True)
        with _prepare_lock(corpus_dir / f".{key}.lock"):
            meta = trusted(final, key)
            if meta is not None:
                return final, meta, True
            meta = _build_into(final, key, name, build, trusted)
    except BaseException:
        # A refused or failed prepare leaves nothing behind: the folders it made go again if they are empty.
        for folder in reversed(made):
            if folder.is_dir() and not [p for p in folder.iterdir() if not p.name.endswith(".lock")]:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    return final, meta, False


def _build_into(final: Path, key: str, name: str, build: Callable[[Path], dict],
                trusted: Callable[[Path, str], dict | None]) -> dict:
    """Build the cache folder under a temporary name and rename it into place when complete."""
    corpus_dir = final.parent
    _remove_dead_temporaries(corpus_dir)
    tmp = corpus_dir / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        meta = build(tmp)
        if final.exists() and trusted(final, key) is None:
            shutil.rmtree(final)  # half-made by something else (e.g. copied partially): never trusted
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same folder first (without our lock: e.g. an older version): use theirs.
            other = trusted(final, key)
            if other is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            meta = other
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            free = shutil.disk_usage(corpus_dir).free if corpus_dir.exists() else 0
            raise UserError(f"cannot prepare {name}: no space left on the device holding {corpus_dir} "
                            f"({free / 1e6:,.1f} MB free; the bins take about 2-4 bytes per token): free some space "
                            "or choose another --data_dir") from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(f"cannot prepare {name} in {corpus_dir}: {e.strerror}; choose a writable "
                            "--data_dir") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


@contextlib.contextmanager
def _prepare_lock(path: Path):
    """An OS lock on `path` for the time of a prepare (released by the kernel if the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent prepares still never trust a half-made folder
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is preparing the same corpus ({path.parent})", file=sys.stderr,
                  flush=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _progress_bar(total: int, desc: str, progress: bool):
    from gpt.runlog import progress_bar

    return progress_bar(total, desc, "B", progress)


def _build(tmp: Path, docs, sources, choice: TokenizerChoice, key, key_inputs, corpus, val_fraction, include,
           on_invalid_utf8, errors, progress, started) -> dict:
    segments, split_info = _plan_split(docs, val_fraction)
    total_bytes = sum(s.end - s.start for s in segments)
    if progress:  # the slow part of a first run: said before it starts, once, since the result is cached
        size = f"{total_bytes / 1e6:,.1f} MB" if total_bytes >= 100_000 else plural(total_bytes, "byte")
        print(f"preparing {corpus} ({choice.spec} tokens; {plural(len(docs), 'document')}, {size}): once, then cached "
              f"in {tmp.parent}...", file=sys.stderr, flush=True)
    fitted_on, tok = None, choice.ready
    if tok is None and choice.spec == "char":
        chars: set[str] = set()
        with _progress_bar(total_bytes, "vocabulary", progress) as bar:
            for _, _, charset, _, _ in _map_chunks(_charset_job, _jobs(docs, segments, errors, None), None, total_bytes, bar):
                chars.update(charset)
        tok = CharTokenizer("".join(chars))
        fitted_on = "the whole corpus"
    elif tok is None:
        sample, sample_bytes = [], 0
        for _, _, offset, data, path, _, _ in _jobs(docs, segments, errors, None, only="train"):
            sample.append(decode_utf8(data, path, offset, errors))
            sample_bytes += len(data)
            if sample_bytes >= BPE_SAMPLE_BYTES:
                break
        tok = choice.fit("".join(sample), progress=progress)
        fitted_on = f"the first {sample_bytes} bytes of the train split"
        del sample

    dtype = dtype_for(tok.vocab_size)
    eot = tok.eot_id
    stats = {split: {"tokens": 0, "bytes": 0, "characters": 0, "documents": 0} for split in ("train", "val")}
    with open(tmp / "train.bin", "wb") as train_file, open(tmp / "val.bin", "wb") as val_file:
        files = {"train": train_file, "val": val_file}
        with _progress_bar(total_bytes, "tokenizing", progress) as bar:
            for index, first, ids, n_chars, n_bytes in _map_chunks(
                _encode_job, _jobs(docs, segments, errors, dtype), tok, total_bytes, bar
            ):
                split = segments[index].split
                s = stats[split]
                if first:
                    if eot is not None and s["documents"] > 0:
                        files[split].write(np.array([eot], dtype=dtype).tobytes())
                        s["tokens"] += 1
                    s["documents"] += 1
                files[split].write(ids.tobytes())
                s["tokens"] += int(ids.size)
                s["characters"] += n_chars
                s["bytes"] += n_bytes
    _write_json(tmp / "tokenizer.json", to_json_data(tok.to_dict()))
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "corpus": corpus,
        "tokenizer": {
            "spec": tok.name,
            "requested": "(a Tokenizer object)" if choice.given_as_object else choice.spec,
            "fitted_on": fitted_on,
            "vocab_size": tok.vocab_size,
            "eot_id": eot,
            "file": "tokenizer.json",
        },
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "documents": len(docs),
        "sources": sources,
        "include": include,
        "val_fraction": val_fraction,
        "on_invalid_utf8": on_invalid_utf8,
        "separator": "eot" if eot is not None else None,
        "split": split_info,
        "splits": stats,
        "key_inputs": key_inputs,
        "seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": True,
    }
    _write_meta(tmp, meta)  # last: a folder without it is never trusted
    return meta


# ---------------------------------------------------------------------------------------------------
# Command line


@dataclass
class PrepareConfig:
    data: list[str] = setting([], "text files, folders, or named corpora (stdlib, shakespeare); positional arguments land here")
    tokenizer: str = setting("char", "char, bpe:<vocab_size>, gpt2, or a path to a .tiktoken file")
    include: str | None = setting(None, "glob that files found in folders must match, e.g. '*.md'")
    val_fraction: float = setting(0.1, "share of the text kept for validation (whole documents when there are several)")
    data_dir: str = setting("data", "where prepared corpora are cached (data_dir/<corpus>/<key>/)")
    on_invalid_utf8: str = setting("error", "error (with file and byte offset) or replace (bad bytes become U+FFFD)")
    progress: bool = setting(True, "report progress on stderr (a bar on a terminal, else a line every 10 s)")


def _positional_to_data(argv: list[str]) -> list[str]:
    """Turn bare positional arguments into --data=... (a first .toml positional stays the config file)."""
    types_ = {f.name: f.type for f in dataclasses.fields(PrepareConfig)}
    out: list[str] = []
    config_seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            out.append(arg)
            name = arg[2:].replace("-", "_")
            is_bool = "bool" in str(types_.get(name, ""))
            if "=" not in arg and i + 1 < len(argv):
                nxt = argv[i + 1]
                if (name == "config" or (name in types_ and not is_bool)) or (is_bool and nxt.lower() in ("true", "false")):
                    out.append(nxt)
                    i += 1
                    config_seen |= name == "config"
        elif arg.endswith(".toml") and not config_seen:
            out.append(arg)
            config_seen = True
        else:
            out.append(f"--data={arg}")
        i += 1
    return out


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.2f}{unit}"
        n /= 1000
    return f"{n:.2f}T"


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, _ = parse_args(
        PrepareConfig, _positional_to_data(argv), prog="python -m gpt.data",
        description="Tokenize text into train.bin / val.bin (cached) and print a summary.",
    )
    if not cfg.data:
        raise UserError("give the text to prepare: python -m gpt.data PATH_OR_CORPUS... --tokenizer char")
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    started = time.perf_counter()
    prepared = prepare(cfg.data, cfg.tokenizer, include=cfg.include, val_fraction=cfg.val_fraction,
                       data_dir=cfg.data_dir, on_invalid_utf8=cfg.on_invalid_utf8, progress=cfg.progress)
    elapsed = time.perf_counter() - started
    meta = prepared.meta
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    chars = train["characters"] + val["characters"]
    nbytes = train["bytes"] + val["bytes"]
    print(f"corpus      {meta['corpus']}: {plural(meta['documents'], 'document')}, {_human(chars)} characters, {_human(nbytes)} bytes")
    print(f"tokenizer   {meta['tokenizer']['spec']}, vocabulary {meta['vocab_size']}, {meta['dtype']}")
    for name, s in (("train", train), ("val", val)):
        print(f"{name:<11} {plural(s['tokens'], 'token')}, {plural(s['bytes'], 'byte')}, {plural(s['documents'], 'document')}")
    status = "reused (nothing tokenized)" if prepared.reused else f"built in {meta['seconds']:.2f} s"
    print(f"cache       {prepared.dir} ({status})")
    print(f"time        {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
