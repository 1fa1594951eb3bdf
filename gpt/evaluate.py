"""Evaluation: how well a trained model predicts a text, as loss, perplexity and bits per byte.

Its place in the flow: after training (gpt/trainer.py -> gpt/checkpoint.py). A checkpoint (or a local
GPT-2 folder) and a text go in; the same cross-entropy the model minimised in training comes out, averaged
over every token of the text:

    text ─▶ tokenizer ─▶ ids ─▶ windows of block_size ─▶ GPT forward ─▶ -log p(true next token) ─▶ mean

    loss            mean negative log-likelihood per token, in nats (natural log)
    perplexity      exp(loss): the model is as unsure as a uniform choice among this many tokens
    bits_per_byte   loss * tokens / (bytes * ln 2): total bits to encode the text with the model, per UTF-8
                    byte. Tokenizers cut text into different numbers of tokens, so loss per token is only
                    comparable between models with the same tokenizer; bits per byte is comparable across all.

The model reads at most block_size tokens, so a long text is scored in windows. A window starts every
`stride` tokens; the first window scores all its tokens, each later one scores only the tokens the previous
windows did not reach, and uses the rest as context (their targets are -1, which the loss leaves out). So
every token is scored exactly once, with at least block_size - stride tokens before it (fewer only at the
start of the text). A smaller stride means more context per token and more forward passes:

    stride = block_size       independent windows: the first token of each sees no context (fastest)
    stride = block_size // 2  (default) each token sees at least half a window
    stride = 1                every token sees a full window (block_size times the work)

Documents (files) are joined with <|endoftext|> between them where the tokenizer has it, as in the training
data, and an <|endoftext|> is put in front of the first, so that the text's first token is scored too.

Command line: `python -m gpt.evaluate --ckpt out/default --data stdlib --split val [--json]`.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gpt.config import parse_args, setting
from gpt.device import autocast
from gpt.errors import UserError, exit_on_user_error, plural
from gpt.inference import ModelSettings, open_model
from gpt.tokenizer import Tokenizer


@dataclass
class EvalConfig(ModelSettings):
    data: list[str] = setting([], "the text: a file, a folder (its text files), or a named corpus (stdlib, shakespeare); several: repeat --data or join with ','")
    split: str = setting("all", "all (every document), or the train or val part exactly as training cut it (same val_fraction)")
    val_fraction: float | None = setting(None, "with --split train/val: the held-out share (none = the checkpoint's training setting, else 0.1)")
    include: str | None = setting(None, "glob that files found in folders must match, e.g. '*.md'")
    stride: int = setting(0, "tokens between window starts; each token is scored once with >= block_size - stride tokens of context (0 = block_size // 2)")
    batch_size: int = setting(4, "windows per forward pass (lower it if memory runs out)")
    max_tokens: int = setting(0, "score only the first this many tokens of the text (0 = all)")
    data_dir: str = setting("data", "where a named corpus is looked for (and downloaded to, for shakespeare)")
    on_invalid_utf8: str = setting("error", "a file that is not UTF-8: error (with file and byte offset) or replace (bad bytes become U+FFFD)")
    json: bool = setting(False, "print one JSON object (loss, perplexity, bits_per_byte, tokens, bytes, stride) instead of a report")
    progress: bool = setting(True, "report progress on stderr (a bar on a terminal, else a line every 10 s)")


# ---------------------------------------------------------------------------------------------------
# Scoring


def plan_windows(num_predictions: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows that score predictions 0..num_predictions-1 once each, as (begin, first_scored, end).

    Prediction j is "token j+1 given tokens 0..j". A window feeds tokens begin..end-1 and scores the
    predictions first_scored..end-1; those before first_scored are context already scored by earlier windows.
    """
    windows = []
    scored_up_to = 0
    begin = 0
    while scored_up_to < num_predictions:
        end = min(begin + block_size, num_predictions)
        windows.append((begin, scored_up_to, end))
        scored_up_to = end
        begin += stride
    return windows


def evaluate(
    model: torch.nn.Module,
    token_ids: Sequence[int] | np.ndarray | torch.Tensor,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    num_bytes: int | None = None,
    progress: bool = False,
) -> dict:
    """Mean loss of `model` predicting each token of `token_ids` from the ones before it.

    Returns loss (nats/token), perplexity, tokens (predictions scored: len(token_ids) - 1), stride,
    block_size and windows; with `num_bytes` (the UTF-8 bytes the tokens stand for) also bytes and
    bits_per_byte. `stride` defaults to block_size // 2; `block_size` to the model's.
    """
    block_size, stride = _check_windows(model.config, block_size, stride)
    ids = _check_ids(token_ids, model.config.vocab_size)
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device

    num_predictions = len(ids) - 1
    windows = plan_windows(num_predictions, block_size, stride)
    total_nats, scored = _score_windows(model, ids, windows, block_size, batch_size, device, dtype, progress)
    assert scored == num_predictions, (scored, num_predictions)

    loss = total_nats / scored
    result = {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "tokens": scored,
        "stride": stride,
        "block_size": block_size,
        "windows": len(windows),
    }
    if num_bytes is not None:
        result["bytes"] = num_bytes
        result["bits_per_byte"] = total_nats / (num_bytes * math.log(2)) if num_bytes > 0 else math.inf
    return result


def _check_windows(config, block_size: int | None, stride: int | None) -> tuple[int, int]:
    """The window length and stride to use: the defaults filled in, and both checked against the model."""
    block_size = block_size or config.block_size
    if not 1 <= block_size <= config.block_size:
        raise UserError(f"block_size {block_size} must be between 1 and the model's block_size {config.block_size}")
    if stride is None or stride == 0:
        stride = max(1, block_size // 2)
    if not 1 <= stride <= block_size:
        raise UserError(f"stride {stride} must be between 1 and block_size ({block_size}), or 0 for block_size // 2: "
                        "windows may overlap, not leave tokens out")
    return block_size, stride


def _check_ids(token_ids: Sequence[int] | np.ndarray | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The ids as one int64 tensor, at least two long and all inside the model's vocabulary."""
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64)).reshape(-1)
    if len(ids) < 2:
        raise UserError(f"the text is {plural(len(ids), 'token')} long: at least 2 are needed to score one prediction")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise UserError(f"token id {low if low < 0 else high} is outside the model's vocabulary (0..{vocab_size - 1}): "
                        "the text was tokenized with another tokenizer")
    return ids


def _score_windows(model: torch.nn.Module, ids: torch.Tensor, windows: list[tuple[int, int, int]], block_size: int,
                   batch_size: int, device: torch.device, dtype: torch.dtype, progress: bool) -> tuple[float, int]:
    """The summed loss (nats) over the windows' scored tokens, and how many tokens were scored."""
    from gpt.runlog import progress_bar

    num_predictions = len(ids) - 1
    width = min(block_size, num_predictions)  # every window is this long; only the last may need padding
    was_training = model.training
    model.eval()
    total_nats = 0.0
    scored = 0
    bar = progress_bar(num_predictions, "evaluating", "tok", progress)
    try:
        with torch.inference_mode():
            for first in range(0, len(windows), batch_size):
                x, y = _window_batch(ids, windows[first : first + batch_size], width)
                x, y = x.to(device), y.to(device)
                with autocast(device, dtype):
                    logits, _ = model(x, all_logits=True)  # [B, T, V]
                keep = y != -1
                # Sum (not mean) per batch in fp32, accumulated in float64 on the host: every token weighs the same.
                nats = F.cross_entropy(logits[keep].float(), y[keep], reduction="sum")
                total_nats += float(nats)
                count = int(keep.sum())
                scored += count
                bar.update(count)
    finally:
        bar.close()
        model.train(was_training)
    return total_nats, scored


def _window_batch(ids: torch.Tensor, batch: list[tuple[int, int, int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets [len(batch), width] for a batch of windows (begin, first scored, end)."""
    inputs, targets = ids[:-1], ids[1:]
    x = torch.zeros(len(batch), width, dtype=torch.long)
    y = torch.full((len(batch), width), -1, dtype=torch.long)
    for row, (begin, first_scored, end) in enumerate(batch):
        x[row, : end - begin] = inputs[begin:end]
        # Context positions (and padding after a short last window) keep target -1: not scored.
        y[row, first_scored - begin : end - begin] = targets[first_scored:end]
    return x, y


# ---------------------------------------------------------------------------------------------------
# The text


def read_documents(data: str | list[str], include: str | None = None, data_dir: str | Path = "data",
                   on_invalid_utf8: str = "error", split: str = "all", val_fraction: float = 0.1) -> Iterator[str]:
    """The text of each document (file) of `data`, in the order the data preparation uses.

    split "train" or "val" gives only that part of the text, cut exactly as `gpt.data.prepare` cuts it for
    training with the same val_fraction (whole documents, or the end of the text); "all" gives everything.
    """
    from gpt.data import split_texts

    if on_invalid_utf8 not in ("error", "replace"):
        raise UserError(f"on_invalid_utf8 must be error or replace, got {on_invalid_utf8!r}")
    yield from split_texts(data, split, include=include, val_fraction=val_fraction, data_dir=data_dir,
                           on_invalid_utf8=on_invalid_utf8)


def encode_documents(texts: Iterable[str], tokenizer: Tokenizer, max_tokens: int = 0) -> tuple[np.ndarray, int]:
    """Token ids of the documents, and the UTF-8 bytes of exactly the tokens that will be scored.

    <|endoftext|> (where the tokenizer has it) goes before the first document and between documents. The first
    token is context only (nothing predicts it), so its bytes do not count; separators count as tokens scored
    but as no bytes. With max_tokens, only enough text for that many scored tokens is kept.
    """
    eot = tokenizer.eot_id
    limit = max_tokens + 1 if max_tokens > 0 else None
    parts: list[np.ndarray] = []
    length = 0
    for text in texts:
        doc = ([eot] if eot is not None else []) + tokenizer.encode(text)
        parts.append(np.asarray(doc, dtype=np.int64))
        length += len(doc)
        if limit is not None and length >= limit:
            break
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if limit is not None:
        ids = ids[:limit]
    return ids, scored_bytes(ids, tokenizer)


def scored_bytes(ids: np.ndarray, tokenizer: Tokenizer) -> int:
    """The UTF-8 bytes the scored tokens ids[1:] stand for (<|endoftext|> stands for none)."""
    if len(ids) < 2:
        return 0
    scored = ids[1:]
    used = np.unique(scored)
    lengths = {int(i): 0 if int(i) == tokenizer.eot_id else len(tokenizer.decode_bytes([int(i)])) for i in used}
    per_id = np.array([lengths[int(i)] for i in used], dtype=np.int64)
    return int(per_id[np.searchsorted(used, scored)].sum())


# ---------------------------------------------------------------------------------------------------
# Command line


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(
        EvalConfig, argv, prog="python -m gpt.evaluate",
        description="Loss (nats/token), perplexity and bits per byte of a model on a text. The text is scored in "
                    "windows of block_size tokens starting every --stride tokens (default block_size // 2): each "
                    "token is scored once, with at least block_size - stride tokens of context.",
    )
    if not cfg.data:
        raise UserError("give the text to evaluate on: --data FILE, a folder, or a named corpus (stdlib, shakespeare)")
    if cfg.max_tokens < 0:
        raise UserError(f"max_tokens must be 0 (all) or positive, got {cfg.max_tokens}")
    if cfg.batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {cfg.batch_size}")
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"

    opened = open_model(cfg, what="the model to evaluate")
    model, loaded, device, dtype = opened.model, opened.loaded, opened.device, opened.dtype
    block_size = loaded.model.config.block_size

    val_fraction = cfg.val_fraction
    if val_fraction is None:
        val_fraction = float(((loaded.checkpoint or {}).get("config") or {}).get("val_fraction", 0.1))
    texts = read_documents(cfg.data, include=cfg.include, data_dir=cfg.data_dir, on_invalid_utf8=cfg.on_invalid_utf8,
                           split=cfg.split, val_fraction=val_fraction)
    ids, num_bytes = encode_documents(texts, loaded.tokenizer, cfg.max_tokens)
    started = time.perf_counter()
    result = evaluate(model, ids, block_size=block_size, stride=cfg.stride, batch_size=cfg.batch_size,
                      device=device, dtype=dtype, num_bytes=num_bytes, progress=cfg.progress)
    seconds = time.perf_counter() - started

    if cfg.json:
        keys = ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "stride", "block_size")
        print(json.dumps({**{k: result[k] for k in keys}, "split": cfg.split}))
        return 0
    stride = result["stride"]
    weights = "" if cfg.weights == "float32" else f", {cfg.weights} weights"
    print(f"model          {loaded.path} ({loaded.tokenizer.name} tokenizer, block_size {block_size}{weights})")
    if cfg.split == "all":
        what = "all of it (a model trained on this text is scored on its training text too: --split val scores only " \
               "the part training held out)"
    else:
        what = f"its {cfg.split} split only, cut as training cuts it with val_fraction {val_fraction:g}"
    print(f"text           {', '.join(cfg.data)}, {what}: {result['tokens']:,} tokens scored, {num_bytes:,} bytes")
    print(f"stride         {stride} ({plural(result['windows'], 'window')}; each token scored once, with at least "
          f"{block_size - stride} tokens of context after the first window)")
    print(f"loss           {result['loss']:.4f} nats/token")
    print(f"perplexity     {result['perplexity']:.3f}")
    print(f"bits per byte  {result['bits_per_byte']:.4f}")
    print(f"time           {seconds:.2f} s on {device.type} ({result['tokens'] / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
