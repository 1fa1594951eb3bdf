"""Tokenizers: the first step of the flow, text -> token ids (and back, when sampling).

text ──encode──▶ list[int] ──(data.py writes bins)──▶ ... ──(decoding.py)──▶ list[int] ──decode──▶ text

One small interface, `Tokenizer`, with two kinds behind it:
  CharTokenizer       "char": the sorted set of the corpus's characters
  TiktokenTokenizer   a byte-level BPE run by tiktoken: "bpe:<vocab_size>" (trained on the corpus by
                      gpt/bpe.py), "gpt2" (GPT-2's encoding) or "<path>.tiktoken"

A checkpoint stores `tokenizer.to_dict()` (plain data) and `tokenizer_from_dict` rebuilds the same
tokenizer, so sampling never has to be told which one was used.

Turning a spec string into a tokenizer (`load_tokenizer(spec, corpus)`) and the files tokenizers are read
from and written to (GPT-2's, tiktoken's, a Hugging Face folder's) are in gpt/tokenizer_files.py, which
builds on this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np
import tiktoken

from gpt.bpe import EOT, GPT2_PATTERN, train_bpe
from gpt.errors import UserError, plural

__all__ = [
    "EOT", "Tokenizer", "CharTokenizer", "TiktokenTokenizer", "check_ranks", "train_bpe_tokenizer",
    "tokenizer_from_dict",
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
                f"{plural(len(unknown), 'character')} not in this char tokenizer's vocabulary: {shown}; "
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
        check_ranks(ranks, f"the {name} tokenizer")
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


def check_ranks(ranks: list[bytes], what: str) -> None:
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


# ---------------------------------------------------------------------------------------------------
# Plain data: what a checkpoint stores (to_dict) and how it becomes a tokenizer again.


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
