"""Where tokenizers come from and go to: a spec string, and the files of each format.

`load_tokenizer(spec, corpus)` turns a spec into a tokenizer (gpt/tokenizer.py's classes):
  "char"             the sorted set of the corpus's characters
  "bpe:<vocab_size>" a byte-level BPE trained on the corpus (gpt/bpe.py)
  "gpt2"             GPT-2's encoding, from local files (offline first)
  "<path>.tiktoken"  a BPE saved in tiktoken's file format

The formats, in this order: .tiktoken files; GPT-2's encoder.json + vocab.bpe (and tiktoken's cache of
them); a tokenizer beside a model in a Hugging Face folder; and the JSON form of `to_dict()` data that our
own files (gpt_tokenizer.json, the data caches' tokenizer.json) hold.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.atomic import write_bytes
from gpt.bpe import EOT, GPT2_PATTERN
from gpt.errors import UserError
from gpt.tokenizer import (CharTokenizer, TiktokenTokenizer, Tokenizer, check_ranks, tokenizer_from_dict,
                           train_bpe_tokenizer)

__all__ = [
    "load_tokenizer", "save_tiktoken", "load_tiktoken_file", "load_gpt2", "load_gpt2_from_hf_folder",
    "save_hf_tokenizer", "load_hf_tokenizer", "OUR_TOKENIZER_FILE", "to_json_data", "from_json_data",
]


# ---------------------------------------------------------------------------------------------------
# A spec string: the kinds fitted to a corpus are built here, the others read from their files below.


def load_tokenizer(
    spec: str, corpus: str | None = None, gpt2_dir: str | os.PathLike[str] | None = None, *, progress: bool = False
) -> Tokenizer:
    """The tokenizer named by `spec`; `corpus` is the training text, for the kinds fitted to it.

    spec: "char" | "bpe:<vocab_size>" | "gpt2" (offline, see `load_gpt2`; `gpt2_dir` names a folder with
    GPT-2's files) | a path ending in ".tiktoken". `progress` shows a bar while a BPE trains.
    """
    if spec == "char":
        if corpus is None:
            raise UserError("the char tokenizer is built from a corpus: give the training text")
        return CharTokenizer(corpus)
    if spec.startswith("bpe:"):
        vocab_size = _parse_bpe_spec(spec)
        if corpus is None:
            raise UserError(f"{spec} is trained on a corpus: give the training text")
        return train_bpe_tokenizer(corpus, vocab_size, progress=progress)
    if spec == "gpt2":
        return load_gpt2(gpt2_dir)
    if spec.endswith(".tiktoken"):
        return load_tiktoken_file(spec)
    raise UserError(f"unknown tokenizer {spec!r}: use char, bpe:<vocab_size>, gpt2, or a path to a .tiktoken file")


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """A hash of everything a tokenizer maps: the part of a cache key that names it."""
    text = json.dumps(to_json_data(tokenizer.to_dict()), sort_keys=True, ensure_ascii=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def is_fitted_spec(spec: str) -> bool:
    """Specs whose tokenizer is fitted to the corpus: it is then a function of the (hashed) text and the spec."""
    return spec == "char" or spec.startswith("bpe:")


@dataclass(frozen=True)
class TokenizerChoice:
    """The tokenizer a corpus is to be tokenized with, settled once where a run starts: a Tokenizer `ready` to use
    (a checkpoint's, GPT-2's, a .tiktoken file), or a `spec` fitted to the corpus itself ("char": its characters;
    "bpe:N": a BPE trained on the start of its train split). The data path (gpt/data.py, gpt/datasets.py and the
    kinds of data the layers add) asks it the same questions whichever it is, and calls `fit` when it must."""

    spec: str  # what was asked for: a spec, or the ready tokenizer's name
    ready: Tokenizer | None = None
    given_as_object: bool = False  # a Tokenizer handed over (e.g. a checkpoint's), not named by a spec

    @classmethod
    def of(cls, choice: str | Tokenizer | TokenizerChoice) -> TokenizerChoice:
        """The edge: a spec (loaded now unless fitted to the corpus) or a Tokenizer becomes a TokenizerChoice."""
        if isinstance(choice, TokenizerChoice):
            return choice
        if isinstance(choice, Tokenizer):
            return cls(choice.name, choice, given_as_object=True)
        if not isinstance(choice, str):
            raise UserError(f"tokenizer must be a spec such as 'char' or a Tokenizer, got {choice!r}")
        return cls(choice) if is_fitted_spec(choice) else cls(choice, load_tokenizer(choice))

    def identity(self) -> dict[str, Any]:
        """What a cache key records of the tokenizer: a fitted one is a function of the text and the spec."""
        if self.ready is None:
            return {"spec": self.spec}
        return {"object" if self.given_as_object else "spec": self.spec, "blake2b": tokenizer_digest(self.ready)}

    @property
    def has_eot(self) -> bool:
        """Whether the tokenizer separates documents with <|endoftext|> (a fitted BPE has it; characters do not)."""
        return self.ready.eot_id is not None if self.ready is not None else self.spec != "char"

    def fit(self, corpus: str, *, progress: bool = False) -> Tokenizer:
        """The tokenizer: the ready one, or the spec fitted to `corpus` (all of it for "char", a sample for BPE)."""
        return self.ready if self.ready is not None else load_tokenizer(self.spec, corpus=corpus, progress=progress)


def _parse_bpe_spec(spec: str) -> int:
    size = spec.split(":", 1)[1]
    try:
        return int(size)
    except ValueError:
        raise UserError(f"tokenizer {spec!r}: the vocabulary size must be an integer, e.g. bpe:4096") from None


# ---------------------------------------------------------------------------------------------------
# .tiktoken files: one line per token, "<base64 of its bytes> <rank>", in rank order. The format has no
# room for the pattern or special tokens: as for GPT-2's r50k_base, the pattern is GPT-2's and
# <|endoftext|> takes the id after the last rank.


def save_tiktoken(tokenizer: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write a byte-level BPE as a .tiktoken file (atomically); `load_tokenizer(path)` reads it back."""
    path = Path(path)
    if not isinstance(tokenizer, TiktokenTokenizer):
        raise UserError(f"only byte-level BPE tokenizers can be saved as .tiktoken files, not {tokenizer.name!r}")
    if tokenizer.pat_str != GPT2_PATTERN or tokenizer.special_tokens != {EOT: len(tokenizer.ranks)}:
        raise UserError(
            f"the {tokenizer.name} tokenizer does not use GPT-2's pattern and <|endoftext|> layout, "
            "which a .tiktoken file cannot record: keep its to_dict() form instead"
        )
    if path.suffix != ".tiktoken":
        raise UserError(f"{path}: name the file with a .tiktoken suffix, so load_tokenizer recognises it")
    lines = b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in enumerate(tokenizer.ranks))
    try:
        write_bytes(path, lines)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; check the folder exists and is writable") from None
    return path


def _parse_tiktoken(data: bytes, source: str) -> list[bytes]:
    by_rank: dict[int, bytes] = {}
    for line_no, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            shown = line[:60].decode("utf-8", "replace")
            raise UserError(
                f"{source} is not a valid .tiktoken file: line {line_no} ({shown!r}) is not "
                "'<base64 token> <rank>'; give a file written by save_tiktoken or tiktoken"
            ) from None
        if rank in by_rank:
            raise UserError(f"{source} is not a valid .tiktoken file: rank {rank} appears twice (line {line_no})")
        by_rank[rank] = token
    if not by_rank:
        raise UserError(f"{source} is not a valid .tiktoken file: it holds no tokens")
    if sorted(by_rank) != list(range(len(by_rank))):
        gap = min(set(range(len(by_rank))) - set(by_rank))
        raise UserError(f"{source} is not a valid .tiktoken file: ranks must run 0..{len(by_rank) - 1}, {gap} is missing")
    ranks = [by_rank[i] for i in range(len(by_rank))]
    check_ranks(ranks, source)
    return ranks


def load_tiktoken_file(path: str | os.PathLike[str]) -> TiktokenTokenizer:
    """The BPE in a .tiktoken file; its name is the path as given, so the spec loads it again."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read tokenizer file {path}: {e.strerror}; check the path") from None
    return TiktokenTokenizer(str(path), "tiktoken", _parse_tiktoken(data, str(path)))


# ---------------------------------------------------------------------------------------------------
# gpt2, offline first. tiktoken's "gpt2" encoding downloads encoder.json and vocab.bpe on first use and
# caches them under sha1(url) in its cache folder; we only ever read, never download.

_GPT2_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
# The sha256 hashes tiktoken pins for these files (tiktoken_ext/openai_public.py); tests check they agree.
GPT2_FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# r50k_base holds the same ranks as gpt2 in .tiktoken form; a cached copy is just as good.
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_DIR_ENV = "GPT2_TOKENIZER_DIR"


def tiktoken_cache_dir() -> Path | None:
    """The folder tiktoken caches downloads in (None when caching is turned off), by tiktoken's rules."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def tiktoken_cache_path(url: str) -> Path | None:
    """Where tiktoken keeps its copy of `url`: the cache folder, file named by the sha1 of the url."""
    cache = tiktoken_cache_dir()
    return None if cache is None else cache / hashlib.sha1(url.encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_if_verified(path: Path | None, sha256: str) -> bytes | None:
    """The file's bytes when it exists and has the pinned hash (tiktoken, too, ignores a bad cached copy)."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if _sha256(data) == sha256 else None


def gpt2_byte_to_char() -> dict[int, str]:
    """GPT-2's files spell bytes as printable characters: printable Latin-1 bytes stand for themselves,
    the others (control bytes, space, soft hyphen, ...) are shifted to U+0100 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def _gpt2_ranks(encoder_json: bytes, vocab_bpe: bytes, source: str) -> list[bytes]:
    """GPT-2's ranks: the 256 bytes in the files' order, then one token per merge line of vocab.bpe."""
    byte_to_char = gpt2_byte_to_char()
    char_to_byte = {c: b for b, c in byte_to_char.items()}

    def token_bytes(spelled: str) -> bytes:
        return bytes(char_to_byte[c] for c in spelled)

    ranks = [bytes([b]) for b in byte_to_char]  # dict order = GPT-2's byte order
    for line in vocab_bpe.decode("utf-8").split("\n"):
        if not line or line.startswith("#version"):
            continue
        first, second = line.split(" ")
        ranks.append(token_bytes(first) + token_bytes(second))
    encoder = {token_bytes(k): v for k, v in json.loads(encoder_json).items() if k != EOT}
    if encoder != {token: rank for rank, token in enumerate(ranks)} or json.loads(encoder_json).get(EOT) != len(ranks):
        raise UserError(f"GPT-2's encoder.json and vocab.bpe in {source} do not agree: download both again")
    return ranks


def load_gpt2(gpt2_dir: str | os.PathLike[str] | None = None) -> TiktokenTokenizer:
    """GPT-2's tokenizer without touching the network.

    Looks in order at: tiktoken's cache (encoder.json + vocab.bpe, or r50k_base.tiktoken, each only if
    its sha256 is the one tiktoken pins); the folder `gpt2_dir`, else the one named by $GPT2_TOKENIZER_DIR,
    which must hold encoder.json and vocab.bpe with the pinned hashes (a r50k_base.tiktoken there is also
    accepted). Otherwise a UserError says which files to download and where to put them.
    """
    cached = {name: _read_if_verified(tiktoken_cache_path(_GPT2_BASE_URL + name), sha) for name, sha in GPT2_FILES.items()}
    if all(cached.values()):
        ranks = _gpt2_ranks(cached["encoder.json"], cached["vocab.bpe"], "tiktoken's cache")  # type: ignore[arg-type]
        return TiktokenTokenizer("gpt2", "gpt2", ranks)
    r50k = _read_if_verified(tiktoken_cache_path(R50K_URL), R50K_SHA256)
    if r50k is not None:
        return TiktokenTokenizer("gpt2", "gpt2", _parse_tiktoken(r50k, "tiktoken's cached r50k_base.tiktoken"))

    folder = gpt2_dir if gpt2_dir is not None else os.environ.get(GPT2_DIR_ENV) or None
    if folder is None:
        raise UserError(
            f"GPT-2's tokenizer files are not available offline: download encoder.json and vocab.bpe from "
            f"{_GPT2_BASE_URL} into a folder and set {GPT2_DIR_ENV} to it (or pass gpt2_dir)"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"GPT-2 tokenizer folder {folder} does not exist: put encoder.json and vocab.bpe from {_GPT2_BASE_URL} there")
    present = {name: (folder / name).is_file() for name in GPT2_FILES}
    if not all(present.values()) and (folder / "r50k_base.tiktoken").is_file():
        data = (folder / "r50k_base.tiktoken").read_bytes()
        if _sha256(data) != R50K_SHA256:
            raise UserError(
                f"{folder / 'r50k_base.tiktoken'} has sha256 {_sha256(data)[:16]}..., not the {R50K_SHA256[:16]}... "
                f"tiktoken pins: download it again from {R50K_URL}"
            )
        return TiktokenTokenizer("gpt2", "gpt2", _parse_tiktoken(data, str(folder / "r50k_base.tiktoken")))
    missing = [name for name, ok in present.items() if not ok]
    if missing:
        raise UserError(
            f"GPT-2 tokenizer folder {folder} lacks {' and '.join(missing)}: download "
            f"{' and '.join(_GPT2_BASE_URL + m for m in missing)} into it"
        )
    contents = {}
    for name, sha in GPT2_FILES.items():
        try:
            data = (folder / name).read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {folder / name}: {e.strerror}; check its permissions") from None
        if _sha256(data) != sha:
            raise UserError(
                f"{folder / name} has sha256 {_sha256(data)[:16]}..., not the {sha[:16]}... tiktoken pins for "
                f"GPT-2's {name}: download it again from {_GPT2_BASE_URL + name}"
            )
        contents[name] = data
    return TiktokenTokenizer("gpt2", "gpt2", _gpt2_ranks(contents["encoder.json"], contents["vocab.bpe"], str(folder)))


def load_gpt2_from_hf_folder(folder: str | os.PathLike[str]) -> TiktokenTokenizer | None:
    """GPT-2's tokenizer from a Hugging Face model folder's vocab.json + merges.txt (the same content as
    encoder.json + vocab.bpe under other names), or None when the folder lacks them. Their agreement with
    each other is checked; no pinned hash applies, since such folders may be re-serialised."""
    folder = Path(folder)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        return None
    try:
        ranks = _gpt2_ranks(vocab.read_bytes(), merges.read_bytes(), str(folder))
    except (ValueError, KeyError, UnicodeDecodeError, UserError):
        raise UserError(f"{folder}'s vocab.json and merges.txt are not GPT-2's tokenizer files: remove them "
                        f"or replace them with GPT-2's") from None
    return TiktokenTokenizer("gpt2", "gpt2", ranks)


# ---------------------------------------------------------------------------------------------------
# A tokenizer beside a model exported as a Hugging Face folder (gpt/hf.py).
#
# OUR_TOKENIZER_FILE holds any tokenizer exactly (its to_dict() as JSON) and is what we read back first. A
# byte-level BPE with GPT-2's pre-split pattern (gpt2, bpe:<N>) is also written as vocab.json + merges.txt, the
# files Hugging Face's GPT2Tokenizer reads; a char tokenizer has no such form, so it is written in ours only.

OUR_TOKENIZER_FILE = "gpt_tokenizer.json"


def save_hf_tokenizer(tokenizer: Tokenizer, folder: str | os.PathLike[str]) -> str:
    """Write `tokenizer` into a Hugging Face model folder; returns which formats were written (for the user)."""
    folder = Path(folder)
    write_bytes(folder / OUR_TOKENIZER_FILE,
                (json.dumps(to_json_data(tokenizer.to_dict()), ensure_ascii=False) + "\n").encode("utf-8"))
    if not (isinstance(tokenizer, TiktokenTokenizer) and tokenizer.pat_str == GPT2_PATTERN):
        return f"{OUR_TOKENIZER_FILE} only (a {tokenizer.name} tokenizer has no Hugging Face GPT-2 form)"
    spell = gpt2_byte_to_char()
    spelled = ["".join(spell[b] for b in token) for token in tokenizer.ranks]
    vocab = {text: rank for rank, text in enumerate(spelled)}
    vocab.update(tokenizer.special_tokens)
    merges = ["#version: 0.2"] + [" ".join("".join(spell[b] for b in part) for part in pair)
                                  for pair in merges_from_ranks(tokenizer.ranks)]
    write_bytes(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    write_bytes(folder / "merges.txt", ("\n".join(merges) + "\n").encode("utf-8"))
    specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1_000_000_000, "add_prefix_space": False}
    if EOT in tokenizer.special_tokens:
        config.update(bos_token=EOT, eos_token=EOT, unk_token=EOT)
    extra = [t for t in specials if t != EOT]
    if extra:
        config["additional_special_tokens"] = extra
    write_bytes(folder / "tokenizer_config.json", (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    return f"vocab.json + merges.txt (Hugging Face's GPT2Tokenizer reads them) and {OUR_TOKENIZER_FILE}"


def merges_from_ranks(ranks: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge rules that rebuild each token of rank >= 256 from two tokens of lower rank: the pair a rank-based
    BPE (tiktoken) ends with when it encodes the token's bytes using only the tokens ranked before it."""
    rank_of = {token: rank for rank, token in enumerate(ranks)}
    merges = []
    for rank in range(256, len(ranks)):
        parts = [bytes([b]) for b in ranks[rank]]
        while len(parts) > 2:
            candidates = [(rank_of.get(parts[i] + parts[i + 1], math.inf), i) for i in range(len(parts) - 1)]
            best, i = min(candidates)
            if best >= rank:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:  # not reachable in rank order: any split into two known tokens stands for it
            token = ranks[rank]
            parts = next([token[:k], token[k:]] for k in range(1, len(token))
                         if token[:k] in rank_of and token[k:] in rank_of)
        merges.append((parts[0], parts[1]))
    return merges


def load_hf_tokenizer(folder: str | os.PathLike[str]) -> Tokenizer | None:
    """The tokenizer saved beside a Hugging Face model: ours exactly when present, else vocab.json + merges.txt
    (GPT-2's format), else None."""
    folder = Path(folder)
    ours = folder / OUR_TOKENIZER_FILE
    if ours.is_file():
        try:
            data = from_json_data(json.loads(ours.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{ours} is damaged ({e}): delete it to use the folder's vocab.json + merges.txt") from None
        return tokenizer_from_dict(data)
    return load_gpt2_from_hf_folder(folder)


# ---------------------------------------------------------------------------------------------------
# Plain-data (JSON) form of a tokenizer's to_dict(), which may hold bytes and non-string keys.


def to_json_data(obj: Any) -> Any:
    """`to_dict()` data as JSON-ready data: bytes as base64, dicts with non-string keys as item lists."""
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes_b64__": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: to_json_data(v) for k, v in obj.items()}
        return {"__items__": [[to_json_data(k), to_json_data(v)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [to_json_data(v) for v in obj]
    return obj


def from_json_data(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__bytes_b64__"}:
            return base64.b64decode(obj["__bytes_b64__"])
        if set(obj) == {"__items__"}:
            return {_hashable(from_json_data(k)): from_json_data(v) for k, v in obj["__items__"]}
        return {k: from_json_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_data(v) for v in obj]
    return obj


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
