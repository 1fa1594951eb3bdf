"""Tokenizers: the first step of the flow, text -> token ids (and back, when sampling).

text ──encode──▶ list[int] ──(data.py writes bins)──▶ ... ──(decoding.py)──▶ list[int] ──decode──▶ text

One small interface, `Tokenizer`, with several kinds behind `load_tokenizer(spec, corpus)`:
  "char"             the sorted set of the corpus's characters
  "bpe:<vocab_size>" a byte-level BPE trained on the corpus (gpt/bpe.py)
  "gpt2"             GPT-2's encoding, from local files (offline first)
  "<path>.tiktoken"  a BPE saved in tiktoken's file format

A checkpoint stores `tokenizer.to_dict()` (plain data) and `tokenizer_from_dict` rebuilds the same
tokenizer, so sampling never has to be told which one was used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np
import tiktoken

from gpt.bpe import EOT, GPT2_PATTERN, train_bpe
from gpt.atomic import write_bytes
from gpt.errors import UserError

__all__ = [
    "EOT", "Tokenizer", "CharTokenizer", "TiktokenTokenizer", "load_tokenizer", "tokenizer_from_dict",
    "save_tiktoken", "train_bpe_tokenizer", "load_gpt2", "load_tiktoken_file",
]


class Tokenizer(ABC):
    """Maps text to token ids and back."""

    name: str  # the spec that loads it again, e.g. "char", "bpe:4096", "gpt2"
    vocab_size: int
    eot_id: int | None  # the id of <|endoftext|>, where the tokenizer has one
    # spelling -> id of the tokens that stand for no text (e.g. a chat template's markers); none by default
    special_tokens: Mapping[str, int] = MappingProxyType({})

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_ordinary(self, text: str) -> list[int]:
        """The ids of `text` as plain text: a special token's spelling in it ("<|end|>") is text, never that token.
        What user-supplied text (a chat message) is encoded with, so that it cannot forge a template's markers."""
        return self.encode(text)

    def with_special_tokens(self, names: Iterable[str]) -> "Tokenizer":
        """This tokenizer plus the special tokens `names` it lacks, at new ids after its vocabulary (in order);
        the ids of everything it already had are unchanged."""
        raise UserError(f"the {self.name} tokenizer cannot take special tokens (such as a chat template's): use "
                        "a char, bpe:<N>, gpt2 or .tiktoken tokenizer")

    @abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The UTF-8 bytes of the tokens; a character may be split across tokens (byte-level BPE)."""

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, bytes, lists, dicts) that `tokenizer_from_dict` turns back into this tokenizer."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} vocab_size={self.vocab_size}>"


class CharTokenizer(Tokenizer):
    """One token per character: the vocabulary is the sorted set of the corpus's characters.

    Unknown-character policy: encoding a character outside the vocabulary is an error that lists them.
    Special tokens (a chat template's markers) take the ids after the characters; text never encodes to them.
    """

    def __init__(self, chars: str, special_tokens: dict[str, int] | None = None):
        if not chars:
            raise UserError("cannot build a char tokenizer from an empty corpus: give it some text")
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = dict(special_tokens or {})
        if sorted(self.special_tokens.values()) != list(range(len(self.chars), len(self.chars) + len(self.special_tokens))):
            raise UserError("a char tokenizer's special tokens must take the ids right after its characters: "
                            "the saved tokenizer is damaged")
        self.special_names = {i: name for name, i in self.special_tokens.items()}
        self.name = "char"
        self.vocab_size = len(self.chars) + len(self.special_tokens)
        self.eot_id = None

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - set(self.stoi))
            shown = ", ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise UserError(
                f"{len(unknown)} character(s) not in this char tokenizer's vocabulary: {shown}; "
                "remove them from the text, or train on a corpus that contains them"
            ) from None

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.special_names[i] for i in ids)

    def with_special_tokens(self, names: Iterable[str]) -> "CharTokenizer":
        added = dict(self.special_tokens)
        for name in names:
            added.setdefault(name, len(self.chars) + len(added))
        return CharTokenizer(self.chars, added)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": "char", "chars": self.chars}
        if self.special_tokens:  # absent when empty: older checkpoints and caches keep their exact form
            data["special_tokens"] = dict(self.special_tokens)
        return data


class TiktokenTokenizer(Tokenizer):
    """A byte-level BPE run by tiktoken: `bpe:<N>` (trained here), `gpt2`, or a `.tiktoken` file.

    It is fully described by its ranks (token bytes in id order), the pre-split pattern and the special
    tokens, which is exactly what `to_dict` stores, so a checkpoint rebuilds it with no file or network.
    The literal text "<|endoftext|>" encodes to the end-of-text token (as in GPT-2's Hugging Face
    tokenizer), so documents joined with it keep their boundaries; decode gives the same text back.
    No other special token (a chat template's markers) is ever produced from text, and `encode_ordinary`
    produces none at all.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        ranks: list[bytes],
        *,
        pat_str: str = GPT2_PATTERN,
        special_tokens: dict[str, int] | None = None,
    ):
        _check_ranks(ranks, f"the {name} tokenizer")
        if special_tokens is None:
            special_tokens = {EOT: len(ranks)}
        self.name = name
        self.kind = kind
        self.ranks = list(ranks)
        self.pat_str = pat_str
        self.special_tokens = dict(special_tokens)
        self.vocab_size = max([len(ranks) - 1, *special_tokens.values()]) + 1
        self.eot_id = special_tokens.get(EOT)
        try:
            self._encoding = tiktoken.Encoding(
                name=name,
                pat_str=pat_str,
                mergeable_ranks={token: rank for rank, token in enumerate(self.ranks)},
                special_tokens=self.special_tokens,
            )
        except ValueError as e:
            raise UserError(f"the {name} tokenizer's data is inconsistent ({e}): load or train it again") from None
        self._text_specials = frozenset(name for name in self.special_tokens if name == EOT)

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special=self._text_specials, disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def with_special_tokens(self, names: Iterable[str]) -> "TiktokenTokenizer":
        added = dict(self.special_tokens)
        for name in names:
            added.setdefault(name, max([len(self.ranks) - 1, *added.values()]) + 1)
        return TiktokenTokenizer(self.name, self.kind, self.ranks, pat_str=self.pat_str, special_tokens=added)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [int(i) for i in ids]  # numpy/torch integers -> int, which tiktoken needs
        try:
            return self._encoding.decode_bytes(ids)
        except KeyError:
            bad = sorted({i for i in ids if not 0 <= i < self.vocab_size})
            raise ValueError(f"token ids {bad[:10]} are not in the {self.name} tokenizer's vocabulary") from None

    def to_dict(self) -> dict[str, Any]:
        # The ranks go in as two byte strings (all tokens joined, and their lengths as little-endian
        # uint32) rather than a list of 50k small bytes objects, which torch.load(weights_only=True)
        # unpickles ten times slower (about 1.3 s for GPT-2's).
        return {
            "kind": self.kind,
            "name": self.name,
            "pat_str": self.pat_str,
            "token_bytes": b"".join(self.ranks),
            "token_lengths": np.array([len(t) for t in self.ranks], dtype="<u4").tobytes(),
            "special_tokens": dict(self.special_tokens),
        }


def _check_ranks(ranks: list[bytes], what: str) -> None:
    """A byte-level BPE needs unique tokens and every single byte, or some text could not be encoded."""
    if len(set(ranks)) != len(ranks):
        raise UserError(f"{what} has duplicate tokens: it is corrupt; load or train it again")
    missing = set(range(256)) - {t[0] for t in ranks if len(t) == 1}
    if missing:
        raise UserError(
            f"{what} lacks {len(missing)} of the 256 single-byte tokens (e.g. byte {min(missing)}), "
            "so it cannot encode every text: use a complete byte-level BPE"
        )


# ---------------------------------------------------------------------------------------------------
# bpe:<N>


def train_bpe_tokenizer(corpus: str, vocab_size: int, *, progress: bool = False) -> TiktokenTokenizer:
    """A byte-level BPE of `vocab_size` tokens trained on `corpus` (see gpt/bpe.py)."""
    ranks = train_bpe(corpus, vocab_size, progress=progress)
    return TiktokenTokenizer(f"bpe:{vocab_size}", "bpe", ranks)


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
    _check_ranks(ranks, source)
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


def _gpt2_byte_to_char() -> dict[int, str]:
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
    byte_to_char = _gpt2_byte_to_char()
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
    spell = _gpt2_byte_to_char()
    spelled = ["".join(spell[b] for b in token) for token in tokenizer.ranks]
    vocab = {text: rank for rank, text in enumerate(spelled)}
    vocab.update(tokenizer.special_tokens)
    merges = ["#version: 0.2"] + [" ".join("".join(spell[b] for b in part) for part in pair)
                                  for pair in _merges_of(tokenizer.ranks)]
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


def _merges_of(ranks: list[bytes]) -> list[tuple[bytes, bytes]]:
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



def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict()` form (e.g. as stored in a checkpoint): no file or network."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "char":
        return CharTokenizer(data["chars"], data.get("special_tokens"))
    if kind in ("bpe", "gpt2", "tiktoken"):
        missing = [k for k in ("name", "pat_str", "token_bytes", "token_lengths", "special_tokens") if k not in data]
        if missing:
            raise UserError(f"the saved {kind} tokenizer lacks {', '.join(missing)}: the checkpoint is damaged")
        try:
            lengths = np.frombuffer(data["token_lengths"], dtype="<u4")
        except (TypeError, ValueError):
            lengths = np.zeros(0, dtype="<u4")
        ends = np.cumsum(lengths, dtype=np.int64).tolist()
        blob = data["token_bytes"]
        if len(lengths) == 0 or not isinstance(blob, bytes) or ends[-1] != len(blob):
            raise UserError(f"the saved {kind} tokenizer's token bytes and lengths disagree: the checkpoint is damaged")
        ranks = [blob[end - n : end] for end, n in zip(ends, lengths.tolist())]
        return TiktokenTokenizer(
            data["name"], kind, ranks, pat_str=data["pat_str"], special_tokens=dict(data["special_tokens"])
        )
    raise UserError(f"unknown tokenizer kind {kind!r} in saved data: it was saved by a newer or different program")


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
