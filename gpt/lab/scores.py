"""Measurements inside a model: attention weights, head scores, loss by position, switching heads off.

Everything here works on any GPT of gpt/model.py, from outside it:

  attention      the blocks' plain attention path (q·kᵀ/sqrt(hs), causal mask, softmax) keeps each
                 layer's weights [B, nh, T, T]; `recording_attention` turns it on for a forward pass.
  head scores    induction score: the attention a head pays, from a token of a repeated segment, to the
                 token after that token's earlier occurrence (1 for an ideal induction head).
                 previous-token score: the attention from each token to the one just before it.
  loss           per-token cross-entropy [B, T], then averaged by position or over masks.
  ICL score      Olsson et al. (2022): loss late in the context minus loss early (they took token 500 minus
                 token 50); here the mean over the last tenth of the block minus the mean over positions
                 block/20 .. block/10. Negative: the model predicts better the more context it has read.
  ablation       `heads_off` zeroes chosen heads' outputs before the attention's output projection.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def recording_attention(model) -> Iterator[None]:
    """Run attention through the plain path, which keeps its weights in block.attn.weights; restore on exit."""
    blocks = list(model.transformer.h)
    before = [block.attn.plain for block in blocks]
    for block in blocks:
        block.attn.plain = True
    try:
        yield
    finally:
        for block, plain in zip(blocks, before):
            block.attn.plain = plain
            block.attn.weights = None


def attention_weights(model) -> torch.Tensor:
    """The weights of the last forward pass under `recording_attention`: [n_layer, B, nh, T, T]."""
    return torch.stack([block.attn.weights for block in model.transformer.h])


@torch.no_grad()
def forward_with_attention(model, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss [B, T] (or logits [B, T, V] when y is None) and attention [n_layer, B, nh, T, T]."""
    with recording_attention(model):
        logits, _ = model(x, all_logits=True)
        weights = attention_weights(model)
    if y is None:
        return logits, weights
    return token_losses(logits, y), weights


def token_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log p(true next token) at every position: logits [B, T, V], y [B, T] -> [B, T]."""
    return F.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def induction_scores(weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Mean attention from each query to the key an induction head would attend to.

    weights [..., B, nh, T, T] (any leading dims, e.g. layers); keys [B, T] holds, for each query position,
    that key position, or -1 where the query is not part of a repeat. Returns [..., nh].
    """
    queries = keys >= 0  # [B, T]
    picked = weights.gather(-1, keys.clamp(min=0)[:, None, :, None].expand(*weights.shape[:-1], 1)).squeeze(-1)
    # picked [..., B, nh, T]: each query's weight on its induction key; average over the queries that have one.
    mask = queries[:, None, :].to(picked.dtype)
    return (picked * mask).sum(dim=(-3, -1)) / (mask.sum() * 1.0).clamp(min=1)


def previous_token_scores(weights: torch.Tensor) -> torch.Tensor:
    """Mean attention from each token to the one before it: weights [..., B, nh, T, T] -> [..., nh]."""
    previous = weights.diagonal(offset=-1, dim1=-2, dim2=-1)  # [..., B, nh, T - 1]: query t+1 -> key t
    return previous.mean(dim=-1).mean(dim=-2)


def icl_windows(block_size: int) -> tuple[range, range]:
    """The early and late positions the in-context learning score compares (see the module docstring)."""
    early = range(max(1, block_size // 20), max(2, block_size // 10 + 1))
    late = range(block_size - max(1, block_size // 10), block_size)
    return early, late


def icl_score(loss_by_position: list[float] | torch.Tensor) -> float:
    """Mean loss late in the context minus mean loss early: negative when more context helps."""
    losses = torch.as_tensor(loss_by_position, dtype=torch.float64)
    early, late = icl_windows(len(losses))
    return float(losses[list(late)].mean() - losses[list(early)].mean())


@contextlib.contextmanager
def heads_off(model, heads: Iterable[tuple[int, int]]) -> Iterator[None]:
    """Zero the outputs of the given (layer, head) pairs: a forward pre-hook on each layer's output projection
    sets those heads' slices of its input [B, T, nh * hs] to zero, as if the heads were not there."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, layer_heads in by_layer.items():
        attn = model.transformer.h[layer].attn
        keep = torch.ones(attn.n_head)
        keep[layer_heads] = 0.0

        def zero_heads(module, args, keep=keep, n_head=attn.n_head):
            (x,) = args
            B, T, C = x.shape
            kept = x.view(B, T, n_head, C // n_head) * keep.to(x)[:, None]  # [B, T, nh, hs]
            return (kept.view(B, T, C),)

        hooks.append(attn.c_proj.register_forward_pre_hook(zero_heads))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
