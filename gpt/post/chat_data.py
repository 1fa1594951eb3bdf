"""Conversations as training data: JSONL files -> rendered token ids -> packed windows the loop trains on.

Its place in the flow, beside plain text (gpt/data.py -> gpt/batches.py):

    train.jsonl ──gpt/post/chat.py: read, check, render with the template──▶ data/<name>.chat/<key>/
        {train,val}.bin (token ids), {train,val}.learned.bin (1 where the loss counts), {train,val}.offsets.bin
    ──PackedBatches──▶ x, y, answer, pos: [batch_size, block_size]   (y = x shifted by one; -1 at padding;
                       pos: each token's position in its own conversation)
    ──ChatData.loss──▶ the model, each conversation attending to itself only (document_mask(pos)); cross-entropy
                       on the assistant's tokens only (targets -1 elsewhere), or on every token

Preparing renders every conversation once and caches the result the way text is cached (gpt/data.py's
`cached_folder`: a hash of the files, the tokenizer and the split names the folder; built aside, renamed
into place whole).

Packing. A window holds block_size + 1 tokens (block_size predictions). Conversations are packed whole:
each one, in a seeded shuffled order, goes into the open window with the least room that still holds it
(best fit), so windows fill up with little padding; the rest of a window is padding, which no loss ever
counts. A conversation longer than a window is left out (never cut: a cut answer would teach the model to
stop mid-sentence, or to never write <|end|>), and the log says how many. Windows of one pass over the data
(an "epoch") come in a seeded random order; the next epoch packs again with another shuffle. The stream's
state is (epoch, position), so a resumed run continues exactly, and N processes take slices of one global
batch as with text (gpt/batches.py).

Packed, each conversation still gets its own attention: positions restart at 0 at each conversation (pos),
and a block-diagonal causal mask (document_mask) lets a token see only the earlier tokens of its own
conversation. The model then computes each one exactly as it would alone, which is what sampling and the
server see. A plain causal mask would let every answer read the conversations packed before it (often the
same task: unannounced few-shot examples), and validation would measure that packed context instead.

Validation: a share of the conversations (val_fraction, picked by a hash of their content, so the pick is the
same whatever the order or the seed), or the conversations of separate files (val_data). Its loss counts the
assistant's tokens only, with masking on or off, so runs with and without masking compare.

The kind registers itself with the core (gpt/layers.py, `CONVERSATIONS`): train.py recognises conversation
files by their first line and opens them here; plain {"text"} JSONL stays the core's (gpt/datasets.py).
"""

from __future__ import annotations

import bisect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt.atomic import write_text
from gpt.bpe import EOT
from gpt.corpus import file_hash
from gpt.data import BPE_SAMPLE_BYTES, dtype_for, trusted_meta, cache_key, cached_folder
from gpt.datasets import TrainingData, check_lengths, held_out, jsonl_files
from gpt.errors import UserError
from gpt.post.chat import FORM_HELP, TEMPLATE, ChatTemplate, Conversation, read_records
from gpt.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_dict
from gpt.tokenizer_files import TokenizerChoice, from_json_data, to_json_data

FORMAT_VERSION = 1
LOSS_ON = ("assistant", "all")


def _sources(files: list[Path]) -> list[list[Any]]:
    return [[str(f), f.stat().st_size, file_hash(f)] for f in files]


# ---------------------------------------------------------------------------------------------------
# Preparing conversations: read, split, fit or take the tokenizer, render, cache


class RenderedSplit:
    """One split's rendered conversations: ids and learned flags end to end, and where each conversation starts."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype):
        self.offsets = np.fromfile(folder / f"{split}.offsets.bin", dtype=np.int64)  # [n + 1]
        n_tokens = int(self.offsets[-1])
        self.ids = np.memmap(folder / f"{split}.bin", dtype=dtype, mode="r", shape=(n_tokens,)) if n_tokens else \
            np.zeros(0, dtype=dtype)
        self.learned = np.memmap(folder / f"{split}.learned.bin", dtype=np.uint8, mode="r", shape=(n_tokens,)) \
            if n_tokens else np.zeros(0, dtype=np.uint8)
        self.lengths = np.diff(self.offsets)  # [n] tokens of each conversation

    def __len__(self) -> int:
        return len(self.lengths)


def _trusted_chat(folder: Path, key: str) -> dict | None:
    meta = trusted_meta(folder, key)
    if meta is None:
        return None
    for split in ("train", "val"):
        info = meta["splits"][split]
        if (folder / f"{split}.learned.bin").stat().st_size != info["tokens"] or \
                (folder / f"{split}.offsets.bin").stat().st_size != 8 * (info["conversations"] + 1):
            return None
    return meta


def _fit_tokenizer(choice: TokenizerChoice, conversations: list[Conversation], train: list[Conversation]) -> Tokenizer:
    if choice.spec == "char":
        chars = set()
        for c in conversations:
            for m in c.messages:
                chars.update(m.content)
        return CharTokenizer("".join(chars) or " ")
    sample, size = [], 0
    for c in train:  # a BPE learns from the train split's text, conversations kept apart by <|endoftext|>
        text = "\n".join(m.content for m in c.messages)
        sample.append(text)
        size += len(text)
        if size >= BPE_SAMPLE_BYTES:
            break
    return choice.fit(EOT.join(sample))


def _render(template: ChatTemplate, conversation: Conversation) -> tuple[list[int], list[bool]]:
    try:
        return template.render(conversation.messages)
    except UserError as e:
        raise UserError(f"{conversation.where}: {e}") from None


def prepare_conversations(files: list[Path], val_files: list[Path], tokenizer: TokenizerChoice, *,
                          val_fraction: float, data_dir: str | Path) -> tuple[Path, dict, Tokenizer]:
    """Render the conversations of `files` (and `val_files`) into a cache folder: (folder, meta, tokenizer)."""
    started = time.perf_counter()
    key_inputs = {"format": FORMAT_VERSION, "kind": "conversations", "sources": _sources(files),
                  "val_sources": _sources(val_files), "tokenizer": tokenizer.identity(),
                  "val_fraction": None if val_files else float(val_fraction), "template": TEMPLATE}
    key = cache_key(key_inputs)
    name = files[0].stem if len(files) == 1 else files[0].parent.name

    def build(tmp: Path) -> dict:
        splits: dict[str, list[Conversation]] = {"train": [], "val": []}
        for path in files:
            splits["train"] += _conversations(path)
        for path in val_files:
            splits["val"] += _conversations(path)
        if not val_files:
            everything = splits["train"]
            where = everything[0].where.rsplit(":", 1)[0] if everything else "the data"
            held = held_out(len(everything), val_fraction, what="conversation", where=where, content=lambda i: json.dumps(
                [[m.role, m.content] for m in everything[i].messages], ensure_ascii=False))
            splits = {"train": [c for i, c in enumerate(everything) if i not in held],
                      "val": [c for i, c in enumerate(everything) if i in held]}
        fitted = tokenizer.ready or _fit_tokenizer(tokenizer, splits["train"] + splits["val"], splits["train"])
        template = ChatTemplate.for_tokenizer(fitted)
        dtype = dtype_for(template.tokenizer.vocab_size)
        stats = {}
        for split, conversations in splits.items():
            offsets, ids_out, learned_out, tasks = [0], [], [], {}
            for c in conversations:
                ids, learned = _render(template, c)
                ids_out.append(np.asarray(ids, dtype=dtype))
                learned_out.append(np.asarray(learned, dtype=np.uint8))
                offsets.append(offsets[-1] + len(ids))
                tasks[c.task or ""] = tasks.get(c.task or "", 0) + 1
            ids_all = np.concatenate(ids_out) if ids_out else np.zeros(0, dtype=dtype)
            learned_all = np.concatenate(learned_out) if learned_out else np.zeros(0, dtype=np.uint8)
            ids_all.tofile(tmp / f"{split}.bin")
            learned_all.tofile(tmp / f"{split}.learned.bin")
            np.asarray(offsets, dtype=np.int64).tofile(tmp / f"{split}.offsets.bin")
            lengths = np.diff(np.asarray(offsets))
            stats[split] = {"conversations": len(conversations), "tokens": int(ids_all.size),
                            "learned_tokens": int(learned_all.sum()),
                            "longest": int(lengths.max()) if lengths.size else 0, "tasks": tasks}
        write_text(tmp / "tokenizer.json", json.dumps(to_json_data(template.tokenizer.to_dict()), indent=1) + "\n")
        meta = {"format": FORMAT_VERSION, "key": key, "kind": "conversations", "name": name,
                "tokenizer": {"spec": template.tokenizer.name, "vocab_size": template.tokenizer.vocab_size},
                "vocab_size": template.tokenizer.vocab_size, "dtype": dtype.name, "chat_template": template.to_dict(),
                "sources": key_inputs["sources"], "val_sources": key_inputs["val_sources"],
                "val_fraction": key_inputs["val_fraction"], "splits": stats, "key_inputs": key_inputs,
                "seconds": round(time.perf_counter() - started, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "complete": True}
        write_text(tmp / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")  # last
        return meta

    folder, meta, reused = cached_folder(Path(data_dir), f"{name}.chat", key, build, _trusted_chat)
    if tokenizer.ready is None or reused:
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        result = tokenizer_from_dict(from_json_data(data))
    else:
        result = ChatTemplate.add_tokens(tokenizer.ready)
    return folder, meta, result


def _conversations(path: Path) -> list[Conversation]:
    form, records = read_records(path)
    if form == "text":
        raise UserError(f"{path} holds plain text ({{\"text\"}} lines) but the other files are conversations: "
                        "train on one kind at a time")
    return records  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Packing


def pack(lengths: np.ndarray, window: int, order: np.ndarray) -> list[list[int]]:
    """Conversations (indices in `order`, each at most `window` tokens) packed whole into windows, best fit:
    each goes into the open window with the least room that still holds it, else into a new one."""
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []  # (room left, row), sorted
    smallest = int(lengths[order].min()) if len(order) else 1
    for i in order.tolist():
        n = int(lengths[i])
        at = bisect.bisect_left(open_rows, (n, -1))
        if at < len(open_rows):
            room, row = open_rows.pop(at)
        else:
            room, row = window, len(rows)
            rows.append([])
        rows[row].append(i)
        if room - n >= smallest:  # a window with less room than the shortest conversation is full
            bisect.insort(open_rows, (room - n, row))
    return rows


def document_mask(pos: torch.Tensor) -> torch.Tensor:
    """The attention mask of documents packed in rows, from their positions pos [B, T], which restart at 0 at
    each document: query i may see key j when both are in the same document and j <= i. Returns [B, 1, T, T]
    (1: the same for every head), block-diagonal and causal."""
    doc = (pos == 0).cumsum(-1)  # [B, T]: which document of its row each token is in
    same = doc[:, :, None] == doc[:, None, :]  # [B, T, T]
    return (same & torch.ones_like(same[0]).tril()).unsqueeze(1)


class PackedBatches:
    """A resumable stream of batches of packed conversations: (x, y, answer, pos), each [batch_size, block_size].

    y[b, t] is the token after x[b, t] (-1 where that is padding); answer[b, t] is True where y[b, t] is an
    assistant's token or its <|end|>; pos[b, t] is x[b, t]'s position in its conversation (the padding after
    the last one counts as one more, from 0). Deterministic from `seed`: one epoch's windows depend on
    (seed, epoch).
    """

    def __init__(self, split: RenderedSplit, block_size: int, batch_size: int, *, seed: int,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, pad_id: int = 0):
        if block_size < 1 or batch_size < 1:
            raise UserError(f"block_size and batch_size must be at least 1, got {block_size} and {batch_size}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world_size {world_size}")
        self.split, self.block_size, self.batch_size = split, int(block_size), int(batch_size)
        self.window = self.block_size + 1
        self.seed, self.rank, self.world_size, self.pad_id = int(seed), int(rank), int(world_size), int(pad_id)
        self.device = torch.device(device)
        self.conversations = len(split)
        self.usable = np.flatnonzero(split.lengths <= self.window)
        if self.usable.size == 0:
            raise UserError(f"every conversation is longer than block_size + 1 = {self.window} tokens: raise "
                            "block_size")
        self.epoch, self.position, self.batches_drawn = 0, 0, 0
        self._rows: list[list[int]] | None = None
        self._rows_epoch = -1

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """The windows of one epoch, in the order they are drawn."""
        if self._rows_epoch != epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            rows = pack(self.split.lengths, self.window, rng.permutation(self.usable))
            self._rows = [rows[i] for i in rng.permutation(len(rows))]
            self._rows_epoch = epoch
        assert self._rows is not None
        return self._rows

    def next(self) -> tuple[torch.Tensor, ...]:
        wanted = self.batch_size * self.world_size  # one global batch; this process takes its slice
        rows: list[list[int]] = []
        while len(rows) < wanted:
            epoch_rows = self.epoch_rows(self.epoch)
            taken = epoch_rows[self.position: self.position + wanted - len(rows)]
            rows += taken
            self.position += len(taken)
            if self.position >= len(epoch_rows):
                self.epoch, self.position = self.epoch + 1, 0
        self.batches_drawn += 1
        mine = rows[self.rank * self.batch_size: (self.rank + 1) * self.batch_size]
        return self._tensors(mine)

    __next__ = next

    def __iter__(self) -> "PackedBatches":
        return self

    def _tensors(self, rows: list[list[int]]) -> tuple[torch.Tensor, ...]:
        B, W = len(rows), self.window
        ids = np.full((B, W), self.pad_id, dtype=np.int64)
        learned = np.zeros((B, W), dtype=bool)
        positions = np.zeros((B, W), dtype=np.int64)
        filled = np.zeros(B, dtype=np.int64)
        offsets = self.split.offsets
        for b, row in enumerate(rows):
            at = 0
            for i in row:
                start, end = int(offsets[i]), int(offsets[i + 1])
                ids[b, at: at + end - start] = self.split.ids[start:end]
                learned[b, at: at + end - start] = self.split.learned[start:end]
                positions[b, at: at + end - start] = np.arange(end - start)  # each conversation from 0
                at += end - start
            positions[b, at:] = np.arange(W - at)  # the padding: a document of its own
            filled[b] = at
        targets = ids[:, 1:].copy()
        targets[np.arange(W - 1)[None, :] + 1 >= filled[:, None]] = -1  # padding: never a target
        x = torch.from_numpy(np.ascontiguousarray(ids[:, :-1]))
        y = torch.from_numpy(targets)
        answer = torch.from_numpy(np.ascontiguousarray(learned[:, 1:]))
        pos = torch.from_numpy(np.ascontiguousarray(positions[:, :-1]))
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in (x, y, answer, pos))
        return tuple(t.to(self.device) for t in (x, y, answer, pos))

    def padding_share(self) -> float:
        """The share of the target positions of epoch 0 that are padding."""
        rows = self.epoch_rows(0)
        real = sum(int(self.split.lengths[row].sum()) - 1 for row in rows)
        return 1 - real / (len(rows) * self.block_size)

    def state_dict(self) -> dict:
        return {"version": 1, "kind": "packed", "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "batches_drawn": self.batches_drawn, "block_size": self.block_size, "batch_size": self.batch_size,
                "conversations": self.conversations, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, position, drawn = int(state["epoch"]), int(state["position"]), int(state["batches_drawn"])
        except (KeyError, TypeError, ValueError):
            raise UserError("the saved batch stream state is not one of conversations (or is damaged): start the "
                            "run afresh") from None
        mismatched = [k for k in ("block_size", "conversations") if state.get(k) != getattr(self, k)]
        if mismatched:
            raise UserError(f"cannot resume the conversation batches with a different {', '.join(mismatched)}: "
                            "resume with the same data and block_size, or start a new run")
        self.epoch, self.position, self.batches_drawn = epoch, position, drawn


# ---------------------------------------------------------------------------------------------------
# The kind of training data


class ChatData(TrainingData):
    """Conversations, rendered with the chat template and packed into windows; the loss on the answers."""

    kind = "conversations"

    def __init__(self, folder: Path, meta: dict, tokenizer: Tokenizer, loss_on: str = "assistant"):
        if loss_on not in LOSS_ON:
            raise UserError(f"loss_on must be assistant (the answers only) or all (every token), got {loss_on!r}")
        self.folder, self.meta, self.loss_on = folder, meta, loss_on
        self.tokenizer = tokenizer
        self.template = ChatTemplate(tokenizer)
        dtype = np.dtype(meta["dtype"])
        self.splits = {split: RenderedSplit(folder, split, dtype) for split in ("train", "val")}
        self.fit_note = ""

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"chat_template": self.template.to_dict()}

    def describe(self) -> str:
        s = self.meta["splits"]
        train, val = s["train"], s["val"]
        answers = train["learned_tokens"] / max(train["tokens"], 1)
        tasks = [t for t in train["tasks"] if t]
        return (f"{train['conversations']:,} train / {val['conversations']:,} val conversations "
                f"({train['tokens']:,} / {val['tokens']:,} tokens, {answers:.0%} of them answers"
                + (f", {len(tasks)} task{'s' if len(tasks) > 1 else ''}" if tasks else "") + "); loss on "
                + ("the answers only" if self.loss_on == "assistant" else "every token") + self.fit_note)

    def check_fits(self, block_size: int, batch_size: int, world_size: int) -> None:
        notes = check_lengths(self.splits, block_size, "conversation")
        stream = self.batches("train", block_size, batch_size, seed=0)
        per_window = len(stream.usable) / len(stream.epoch_rows(0))
        notes.insert(0, f"{per_window:.1f} conversations per window, {stream.padding_share():.1%} padding")
        self.fit_note = "; " + "; ".join(notes)

    def batches(self, split: str, block_size: int, batch_size: int, *, seed: int, device: torch.device | str = "cpu",
                rank: int = 0, world_size: int = 1) -> PackedBatches:
        return PackedBatches(self.splits[split], block_size, batch_size, seed=seed, device=device, rank=rank,
                             world_size=world_size, pad_id=self.template.end_id)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y, answer, pos = batch
        _, loss = model(x, y.masked_fill(~answer, -1) if self.loss_on == "assistant" else y, pos=pos,
                        mask=document_mask(pos))
        return loss

    def metrics(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The loss on the answers only, whatever the training loss counts: comparable across loss_on. Each
        conversation sees only itself, as in training and sampling."""
        x, y, answer, pos = batch
        _, loss = model(x, y.masked_fill(~answer, -1), pos=pos, mask=document_mask(pos))
        return {"loss": loss}


def open_conversations(files: list[Path], cfg: Any, tokenizer: TokenizerChoice) -> ChatData:
    """ChatData for the conversation files (cfg: val_data, val_fraction, data_dir, include, loss_on)."""
    val_files: list[Path] = []
    val_data = getattr(cfg, "val_data", None)
    if val_data:
        found = jsonl_files(val_data, None, cfg.data_dir)
        if found is None:
            raise UserError(f"val_data {val_data} is not conversations in .jsonl files: give a .jsonl file or a "
                            "folder of them")
        val_files = found
    folder, meta, tok = prepare_conversations(files, val_files, tokenizer, val_fraction=cfg.val_fraction,
                                              data_dir=cfg.data_dir)
    return ChatData(folder, meta, tok, getattr(cfg, "loss_on", "assistant"))


class Conversations:
    """The kind of training data this module adds to train.py (registered in gpt/layers.py by gpt/post)."""

    name = "conversations"
    line_help = FORM_HELP.removesuffix(', or {"text"}')

    def recognises(self, line: dict[str, Any]) -> bool:
        return not ("chosen" in line or "rejected" in line) and any(k in line for k in ("messages", "prompt",
                                                                                       "instruction"))

    def chosen_by(self, cfg: Any) -> bool:
        return False  # known by its lines

    def open(self, files: list[Path], cfg: Any, tokenizer: TokenizerChoice) -> ChatData:
        return open_conversations(files, cfg, tokenizer)


CONVERSATIONS = Conversations()
