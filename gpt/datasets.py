"""Kinds of training data: what the training loop draws batches from, and how it scores a batch.

Its place in the flow: between preparing the data (gpt/data.py: text -> token bins) and the loop
(gpt/trainer.py). The loop only knows this interface:

    data.batches(split, ...)   a stream of batches: .next(), and state_dict()/load_state_dict() for exact resume
    data.loss(model, batch)    the number to minimise
    data.metrics(model, batch) what an evaluation reports (averaged over batches)

Plain text (files, folders, named corpora, {"text"} JSONL) is TextData, here: random windows, next-token
cross-entropy. Other kinds live in the layers and register themselves (gpt/layers.py): conversations
(gpt/post/chat_data.py: packed windows, the loss on the assistant's tokens) and preference pairs
(gpt/post/dpo.py: the DPO loss against a frozen reference); and prompts to answer, chosen by a setting rather
than by the lines (gpt/post/rl.py, rl = true: reinforcement learning). `open_training_data` recognises the kind
from the first line of the .jsonl files (`detect_kind`: one detector for every kind), and every kind that holds out a
share of its examples for validation picks it with `held_out` (one val split); the loop does not change.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gpt import layers
from gpt.atomic import write_text
from gpt.batches import Batches
from gpt.bpe import EOT
from gpt.corpus import NAMED_CORPORA, file_hash, resolve_sources
from gpt.data import cache_key, cached_folder, prepare
from gpt.errors import UserError, plural
from gpt.tokenizer import Tokenizer
from gpt.tokenizer_files import TokenizerChoice

TEXT_FORMAT_VERSION = 1  # of the cached text written from {"text"} JSONL


class TrainingData(ABC):
    kind: str
    tokenizer: Tokenizer

    @abstractmethod
    def describe(self) -> str:
        """One line for the log: how much data, in which form."""

    @abstractmethod
    def check_fits(self, block_size: int, batch_size: int, world_size: int) -> None:
        """A UserError when the data cannot fill a batch of this shape."""

    @abstractmethod
    def batches(self, split: str, block_size: int, batch_size: int, *, seed: int, device: torch.device | str,
                rank: int = 0, world_size: int = 1) -> Any:
        """A resumable stream of batches of `split` ("train" or "val"): .next(), state_dict(), load_state_dict()."""

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Next-token cross-entropy: the batch is (x, y), y the next token at each position (-1: not scored)."""
        x, y = batch
        _, loss = model(x, y)
        return loss

    def metrics(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(model, batch)}

    def training_metrics(self) -> dict[str, float]:
        """What the training batches since the last call measured besides the loss, logged with it (RL: the sampled
        answers' mean reward); this process's batches only. None for most kinds."""
        return {}

    def bits_per_byte(self, split: str, loss: float) -> float | None:
        """The loss in bits per byte of text, where the data knows its bytes (None otherwise)."""
        return None

    def use_starting_model(self, model: torch.nn.Module, cfg: Any, *, resumed_from: dict[str, Any] | None,
                           log: Any) -> None:
        """Called once the model to train is built and on its device, before the first step. A kind of data whose
        loss needs the model the run started from (preference pairs: the frozen reference) takes it here.
        `resumed_from` is the checkpoint a resumed run continues (what checkpoint_extras saved in it), None for a
        new run."""

    def checkpoint_extras(self) -> dict[str, Any]:
        """What the run's checkpoints record besides the model and the tokenizer (conversations: the chat template
        that sampling and serving then use)."""
        return {}


def next_indices(stream: Any) -> list[int]:
    """This process's share of the next global batch of a stream that walks a seeded order of examples per epoch
    (conversations' pairs, RL's prompts): `stream.order(epoch)` is an epoch's order, and (epoch, position), its
    resumable state, moves on by one global batch, of which process `rank` takes the rank-th slice."""
    wanted = stream.batch_size * stream.world_size
    picked: list[int] = []
    while len(picked) < wanted:
        order = stream.order(stream.epoch)
        taken = order[stream.position: stream.position + wanted - len(picked)].tolist()
        picked += taken
        stream.position += len(taken)
        if stream.position >= len(order):
            stream.epoch, stream.position = stream.epoch + 1, 0
    return picked[stream.rank * stream.batch_size: (stream.rank + 1) * stream.batch_size]


class TextData(TrainingData):
    """Plain text, prepared into train.bin / val.bin; batches are random windows (gpt/batches.py)."""

    kind = "text"

    def __init__(self, prepared: Any):
        self.prepared = prepared
        self.tokenizer = prepared.tokenizer

    def split_size(self, split: str) -> tuple[int, int]:
        """(tokens, UTF-8 bytes of the text) of a split."""
        info = self.prepared.meta["splits"][split]
        return int(info["tokens"]), int(info["bytes"])

    def describe(self) -> str:
        return f"{self.split_size('train')[0]:,} train / {self.split_size('val')[0]:,} val tokens"

    def check_fits(self, block_size: int, batch_size: int, world_size: int) -> None:
        for split in ("train", "val"):
            tokens, _ = self.split_size(split)
            if tokens < block_size + 1:
                raise UserError(f"the {split} split has {tokens} tokens, fewer than block_size + 1 = {block_size + 1}: "
                                "lower --block_size or give more text")
        windows = self.split_size("train")[0] - block_size
        if batch_size * world_size > windows:
            raise UserError(f"batch_size {batch_size} x {plural(world_size, 'process', 'processes')} is more than the {windows:,} "
                            f"distinct windows of {block_size + 1} tokens in the train split: lower --batch_size "
                            "or --block_size, or give more text")

    def batches(self, split: str, block_size: int, batch_size: int, *, seed: int, device: torch.device | str,
                rank: int = 0, world_size: int = 1) -> Batches:
        path = self.prepared.train_bin if split == "train" else self.prepared.val_bin
        return Batches(path, block_size, batch_size, seed=seed, device=device, rank=rank, world_size=world_size)

    def bits_per_byte(self, split: str, loss: float) -> float:
        # The mean loss per token over the split's windows, times its tokens per byte: an estimate of the
        # bits per byte that gpt.evaluate measures exactly over the whole text.
        tokens, nbytes = self.split_size(split)
        return loss * tokens / (nbytes * math.log(2))


def open_training_data(cfg: Any, tokenizer: TokenizerChoice | str | Tokenizer, *, progress: bool) -> TrainingData:
    """The training data named by cfg.data, recognised by its form, prepared (or found in the cache): .jsonl files
    of a kind a layer registered (conversations, preference pairs) open as that kind; anything else, {"text"}
    JSONL included, is TextData."""
    tokenizer = TokenizerChoice.of(tokenizer)  # a spec becomes a choice once, here at the edge of the data path
    files = jsonl_files(cfg.data, cfg.include, cfg.data_dir)
    chosen = [kind for kind in layers.data_kinds() if kind.chosen_by(cfg)]  # a setting asks for it (rl = true)
    if chosen and files is None:
        raise UserError(f"{chosen[0].name} are read from .jsonl files of prompt/response lines: give --data=FILE.jsonl")
    kind = chosen[0] if chosen else detect_kind(files) if files is not None else None
    if kind is not None:
        return kind.open(files, cfg, tokenizer)
    if getattr(cfg, "val_data", None):
        raise UserError("val_data (a separate validation file) is for conversation data; plain text holds out "
                        "val_fraction of itself")
    data = cfg.data
    if files is not None:
        data = [str(jsonl_text_file(files, tokenizer, cfg.data_dir))]
    return TextData(prepare(data, tokenizer, include=None if files else cfg.include, val_fraction=cfg.val_fraction,
                            data_dir=cfg.data_dir, on_invalid_utf8=cfg.on_invalid_utf8, progress=progress))


# ---------------------------------------------------------------------------------------------------
# JSONL files: reading them, and recognising the kind of data they hold


def data_paths(data: str | list[str]) -> list[Path]:
    """The paths named by a data setting ('a,b' or a list), for recognising the form of the data."""
    items = [data] if isinstance(data, str) else list(data)
    return [Path(part) for item in items for part in str(item).split(",") if part]


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of each non-blank line; bad JSON or UTF-8 is a UserError with file:line."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    with handle:
        line_no = 0
        try:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno}): each line "
                                    "must be one JSON object") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}:{line_no + 1}: not valid UTF-8: save the file as UTF-8") from None


def jsonl_files(data: str | list[str], include: str | None, data_dir: str | Path) -> list[Path] | None:
    """The files of a data setting when every one of them is a .jsonl file (else None: plain text)."""
    paths = data_paths(data)
    if not paths or any(str(p) in NAMED_CORPORA for p in paths):
        return None
    if not any(p.is_dir() or (p.is_file() and p.suffix == ".jsonl") for p in paths):
        return None
    _, docs = resolve_sources([str(p) for p in paths], include, data_dir)
    files = [d.path for d in docs]
    return files if all(f.suffix == ".jsonl" for f in files) else None


def line_kind(line: Any, where: str) -> layers.DataKind | None:
    """The kind of data a JSONL line belongs to: a registered kind, or None for plain {"text"}."""
    kinds = layers.data_kinds()
    if isinstance(line, dict):
        for kind in kinds:
            if kind.recognises(line):
                return kind
        if "text" in line:
            return None
    forms = ", ".join([kind.line_help for kind in kinds if kind.line_help] + ['{"text"}'])
    if not isinstance(line, dict):
        raise UserError(f"{where}: a line must be a JSON object, one of {forms}")
    hint = "" if kinds else (" (conversations and preference pairs come from the gpt/post layer, which is not registered: "
                             "install the project with pip install -e .)")
    raise UserError(f"{where}: the line has none of the keys of a known form (it has {sorted(line)[:6]}); use {forms}"
                    + hint)


def detect_kind(files: list[Path]) -> layers.DataKind | None:
    """The kind of data every file holds, from its first line (each file's own lines are checked when read);
    None for plain {"text"} lines."""
    kinds: dict[Path, layers.DataKind | None] = {}
    for path in files:
        for line_no, line in read_jsonl(path):
            kinds[path] = line_kind(line, f"{path}:{line_no}")
            break
    if not kinds:
        raise UserError(f"{files[0]} holds no lines: give one JSON object per line")
    first_path, first = next(iter(kinds.items()))
    for path, kind in kinds.items():
        if kind is not first:
            raise UserError(f"{path} holds {kind_name(kind)} but {first_path} holds {kind_name(first)}: train on one "
                            "kind at a time")
    return first


def kind_name(kind: layers.DataKind | None) -> str:
    return "text" if kind is None else kind.name


def jsonl_kind(files: list[Path]) -> str:
    """"text", or the name of the registered kind ("conversations", "pairs") the files hold."""
    return kind_name(detect_kind(files))


# ---------------------------------------------------------------------------------------------------
# The validation split of a kind of data made of examples (conversations, pairs)


def check_lengths(splits: dict[str, Any], block_size: int, what: str) -> list[str]:
    """For data of whole records (conversations, pairs) that a window of block_size + 1 tokens must hold: a UserError
    when a split has no record or none that fits; else a note for each split on the records left out as too long.
    `splits` maps a split's name to its records, whose `lengths` (an array) are their lengths in tokens."""
    window, notes = block_size + 1, []
    for split, records in splits.items():
        if len(records) == 0:
            raise UserError(f"the {split} split holds no {what}s: give more data, or a --val_data file")
        over = int((records.lengths > window).sum())
        if over == len(records):
            raise UserError(f"every {what} of the {split} split is longer than block_size + 1 = {window} tokens "
                            f"(the shortest has {int(records.lengths.min())}): raise --block_size")
        if over:
            notes.append(f"{plural(over, split + ' ' + what)} longer than block_size + 1 = {window} tokens left out "
                         f"(the longest: {int(records.lengths.max())})")
    return notes


def held_out(count: int, val_fraction: float, content: Callable[[int], str], *, what: str, where: str) -> set[int]:
    """The indices of the examples held out for validation: the val_fraction share (at least 1, and at least one
    left to train on) whose content hashes lowest, so the pick is the same whatever the order of the lines or
    the seed. `content(i)` is example i's text."""
    if count < 2:
        raise UserError(f"{where} holds {plural(count, what)}: give at least 2 (one is held out for validation), or a "
                        "separate --val_data file")
    n_val = min(count - 1, max(1, round(val_fraction * count)))

    def digest(i: int) -> bytes:
        return hashlib.blake2b(content(i).encode(), digest_size=8).digest() + i.to_bytes(8, "big")

    return set(sorted(range(count), key=digest)[:n_val])


# ---------------------------------------------------------------------------------------------------
# Plain text in JSONL


def jsonl_text_file(files: list[Path], tokenizer: TokenizerChoice, data_dir: str | Path) -> Path:
    """The texts of {"text"} JSONL files as one text file in the data cache, for gpt/data.py to prepare.

    The texts are joined by <|endoftext|> where the tokenizer has it (documents keep their boundaries, as
    files do), else by a blank line.
    """
    separator = EOT if tokenizer.has_eot else "\n\n"
    name = files[0].stem if len(files) == 1 else files[0].parent.name
    sources = [[str(f), f.stat().st_size, file_hash(f)] for f in files]
    key = cache_key({"format": TEXT_FORMAT_VERSION, "sources": sources, "separator": separator})
    text_name = f"{name}.txt"

    def build(tmp: Path) -> dict:
        texts = [text for path in files for text in read_texts(path) if text]
        if not texts:
            raise UserError(f"{files[0]}: every text is empty: give some text")
        write_text(tmp / text_name, separator.join(texts))
        meta = {"key": key, "complete": True, "texts": len(texts)}
        write_text(tmp / "meta.json", json.dumps(meta) + "\n")
        return meta

    def trusted(folder: Path, key_: str) -> dict | None:
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = meta.get("key") == key_ and meta.get("complete") is True and (folder / text_name).is_file()
        return meta if ok else None

    folder, _, _ = cached_folder(Path(data_dir), f"{name}.jsonl-text", key, build, trusted)
    return folder / text_name


def read_texts(path: Path) -> list[str]:
    """The texts of a {"text"} JSONL file; a line of another form is an error (one form per file)."""
    texts = []
    for line_no, line in read_jsonl(path):
        where = f"{path}:{line_no}"
        kind = line_kind(line, where)
        if kind is not None:
            raise UserError(f"{where}: a {kind.name} line in a file whose first line is a 'text' line: use one "
                            "form per file")
        if not isinstance(line["text"], str):
            raise UserError(f"{where}: 'text' must be a string, got {type(line['text']).__name__}")
        texts.append(line["text"])
    return texts
