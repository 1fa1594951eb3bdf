"""Kinds of training data: what the training loop draws batches from, and how it scores a batch.

Its place in the flow: between preparing the data (gpt/data.py: text -> token bins) and the loop
(gpt/trainer.py). The loop only knows this interface:

    data.batches(split, ...)   a stream of batches: .next(), and state_dict()/load_state_dict() for exact resume
    data.loss(model, batch)    the number to minimise
    data.metrics(model, batch) what an evaluation reports (averaged over batches)

Each kind of data is one class here, picked from the form of the `data` setting by `open_training_data`:

    TextData     plain text (files, folders, named corpora, {"text"} JSONL): random windows; loss = next-token
                 cross-entropy
    ChatData     conversations in JSONL (gpt/chat_data.py): packed windows; loss on the assistant's tokens
    PreferenceData  preference pairs in JSONL (gpt/dpo.py): a chosen and a rejected answer per prompt; the DPO
                 loss against a frozen reference (the starting model)

A new kind (conversations, preference pairs, ...) is a new class beside TextData and one more case in
`open_training_data`; the loop does not change.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from gpt.batches import Batches
from gpt.errors import UserError
from gpt.tokenizer import Tokenizer


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

    def bits_per_byte(self, split: str, loss: float) -> float | None:
        """The loss in bits per byte of text, where the data knows its bytes (None otherwise)."""
        return None

    def use_starting_model(self, model: torch.nn.Module, cfg: Any, *, resumed: bool, log: Any) -> None:
        """Called once the model to train is built and on its device, before the first step. A kind of data whose
        loss needs the model the run started from (preference pairs: the frozen reference) takes it here."""

    @property
    def chat_template(self) -> Any:
        """The chat template (gpt/chat.py) checkpoints of this run record: the data's, or the one the tokenizer
        carries the markers of (a chat model fine-tuned further on text keeps it); None for plain text."""
        from gpt.chat import ChatTemplate

        return ChatTemplate.of_tokenizer(self.tokenizer)


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
            raise UserError(f"batch_size {batch_size} x {world_size} process(es) is more than the {windows} "
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


def open_training_data(cfg: Any, tokenizer: Tokenizer | str, *, progress: bool) -> TrainingData:
    """The training data named by cfg.data, recognised by its form, prepared (or found in the cache): .jsonl files
    of conversations are ChatData, of preference pairs PreferenceData; anything else, {"text"} JSONL included, is
    TextData."""
    from gpt.chat_data import jsonl_files, jsonl_kind, jsonl_text_file, open_conversations
    from gpt.data import prepare

    data = cfg.data
    files = jsonl_files(cfg.data, cfg.include, cfg.data_dir)
    kind = jsonl_kind(files) if files is not None else "text"
    if kind == "conversations":
        return open_conversations(files, cfg, tokenizer)
    if kind == "pairs":
        from gpt.dpo import open_pairs

        return open_pairs(files, cfg, tokenizer)
    if getattr(cfg, "val_data", None):
        raise UserError("val_data (a separate validation file) is for conversation data; plain text holds out "
                        "val_fraction of itself")
    if files is not None:
        data = [str(jsonl_text_file(files, tokenizer, cfg.data_dir))]
    return TextData(prepare(data, tokenizer, include=None if files else cfg.include, val_fraction=cfg.val_fraction,
                            data_dir=cfg.data_dir, on_invalid_utf8=cfg.on_invalid_utf8, progress=progress))


def data_paths(data: str | list[str]) -> list[Path]:
    """The paths named by a data setting ('a,b' or a list), for recognising the form of the data."""
    items = [data] if isinstance(data, str) else list(data)
    return [Path(part) for item in items for part in str(item).split(",") if part]
