"""The one place that changes a model's shape: a new config for the same weights, and a larger vocabulary.

Its place in the flow: between a checkpoint (gpt/checkpoint.py) and what uses the model. A fine-tune reads a
pretrained model with its own dropout and perhaps a shorter context (`rebuild`); data that brings tokens the
model never saw (a chat template's markers) needs embedding rows for them (`grow_vocab`). Starting a run,
resuming it, opening an adapter over its base and scoring against a reference all call these two, so every
path builds the same model from the same weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from gpt.checkpoint import clean_state_dict
from gpt.errors import plural
from gpt.model import GPT


def rebuild(model: GPT, **changes: Any) -> GPT:
    """The same weights in a model whose config differs in dropout and/or a shorter block_size."""
    config = dataclasses.replace(model.config, **changes)
    weights = clean_state_dict(model)
    if config.block_size < model.config.block_size:
        # A shorter context only needs the first positions' embeddings.
        if "transformer.wpe.weight" in weights:  # (rotary positions have no weights)
            weights["transformer.wpe.weight"] = weights["transformer.wpe.weight"][: config.block_size].clone()
    new = GPT(config)
    new.load_state_dict(weights)
    return new


def grow_vocab(model: GPT, known: int, needed: int, vocab_multiple: int = 1,
               log: Callable[[str], None] = lambda text: None) -> GPT:
    """The model with embedding rows (and the LM head's) for tokens known..needed-1, which it never saw.

    A new token's row starts at the mean of the known tokens' rows plus a little noise: its logit is then about
    an average one, neither dominating the next-token distribution nor unreachable, and the new rows differ
    from each other. The noise is seeded by `needed`, so the same model grown the same way gets the same rows
    (a resumed run, an adapter opened over its base, a reference model: each rebuilds exactly the start).
    The known rows are untouched, so every known token's logit is exactly what it was. Rows that padding
    already provides (the vocabulary rounded up to vocab_multiple) are reused; otherwise the matrix grows.
    """
    if needed <= known:
        return model
    weights = clean_state_dict(model)
    size = max(model.config.vocab_size, -(-needed // vocab_multiple) * vocab_multiple)
    generator = torch.Generator().manual_seed(needed)
    grown: dict[int, torch.Tensor] = {}  # one new matrix per distinct tensor (tied: the embedding and the head)
    for name in ("transformer.wte.weight", "lm_head.weight"):
        old = weights[name]
        if id(old) not in grown:
            rows = torch.zeros(size, old.shape[1], dtype=old.dtype)
            rows[: old.shape[0]] = old
            base = old[:known].float()
            noise = torch.randn(needed - known, old.shape[1], generator=generator) * base.std(dim=0) * 0.1
            rows[known:needed] = (base.mean(dim=0) + noise).to(old.dtype)
            grown[id(old)] = rows
        weights[name] = grown[id(old)]
    new = GPT(dataclasses.replace(model.config, vocab_size=size))
    new.load_state_dict(weights)
    room = f"grows from {model.config.vocab_size} to {size}" if size > model.config.vocab_size else "has room for them"
    log(f"vocabulary: {plural(needed - known, 'new token')} for the data (ids {known}..{needed - 1}), started at the mean of "
        f"the known tokens' embeddings; the model's vocabulary {room}")
    return new
