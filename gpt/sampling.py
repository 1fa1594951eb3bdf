"""Sampling: from the model's logits for the next token to the token itself.

Its place in the flow: text → tokens → batches → model → loss → optimizer → checkpoint → sampling/decoding.
The decode loop (gpt/decoding.py) asks the model for logits [B, V] at each step; this module turns them
into a probability distribution and picks a token from it. sample.py (gpt/generate.py) and the server
(gpt/serve) both pick their tokens here.

A language model does not output text: at each step it outputs a probability distribution over the
whole vocabulary for the next token. `next_token_probs` turns the logits into that distribution, shaped by
the sampling settings, and `sample` picks a token from it:

  temperature  divides the logits: below 1 sharpens the distribution, above 1 flattens it; 0 means greedy
               (always the most likely token, no randomness).
  top_k        keeps only the k most likely tokens (0 = off).
  top_p        "nucleus": keeps the smallest set of most likely tokens whose probabilities add up to at
               least p (always at least one token; 1.0 = off). Applied after top_k.

`sample.py --show_probs K` prints that distribution, so you can watch temperature sharpen or flatten it.

A server's batch holds rows of different requests: each setting may be given per row, and each row may draw
from a seeded stream of its own; one call then picks every row's token exactly as it would be picked alone,
at the cost of a few batched operations rather than a few per row.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

Setting = float | int | Sequence[float] | torch.Tensor  # one value for every row, or one per row


def next_token_probs(logits: torch.Tensor, temperature: Setting = 1.0, top_k: Setting = 0,
                     top_p: Setting = 1.0) -> torch.Tensor:
    """The distribution the next token is drawn from: logits [B, V] -> probabilities [B, V] (rows sum to 1).

    Each setting is one value for every row, or a sequence of B, one per row (a server's rows belong to
    different requests); a row's distribution is the same either way, and the same in any batch.
    temperature 0 gives the greedy distribution: all the probability on the most likely token.
    """
    logits = raw = logits.float()
    temperature = per_row(temperature, logits, torch.float32)  # [B, 1]
    greedy = temperature == 0
    # Shifting the largest logit to 0 first changes no probability, and keeps the division safe for any
    # temperature: with a tiny one the others overflow to -inf (probability 0), never to inf - inf = nan.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / torch.where(greedy, 1.0, temperature)
    top_k = per_row(top_k, logits, torch.long)
    if ((0 < top_k) & (top_k < logits.shape[-1])).any():  # k >= the vocabulary keeps every token: no filter
        logits = top_k_filter(logits, top_k)
    top_p = per_row(top_p, logits, torch.float32)
    if (top_p < 1.0).any():
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    if greedy.any():
        one_hot = torch.zeros_like(probs).scatter_(1, raw.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.where(greedy, one_hot, probs)
    return probs


def top_k_filter(logits: torch.Tensor, k: Setting) -> torch.Tensor:
    """Keep the k largest logits of each row (exactly k, ties broken by position); the others become -inf.
    k is one number or one per row ([B] or [B, 1]); a row whose k is 0 or covers the vocabulary keeps all."""
    V = logits.shape[-1]
    k = per_row(k, logits, torch.long)
    off = (k <= 0) | (k >= V)
    # One topk for the batch, as wide as the largest k asked for; each row keeps the first k of it.
    best = torch.topk(logits, int(k.masked_fill(off, 1).max()), dim=-1)  # sorted, likeliest first
    rank = torch.arange(best.values.shape[-1], device=logits.device)
    values = best.values.masked_fill(rank >= k, float("-inf"))
    filtered = torch.full_like(logits, float("-inf")).scatter_(-1, best.indices, values)
    return torch.where(off, logits, filtered)


def top_p_filter(logits: torch.Tensor, p: Setting, first: int = 64) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p; the others -> -inf.
    p is one number or one per row ([B] or [B, 1]); a row whose p is 1 keeps all.

    The set is found in the likeliest tokens in order, without sorting the whole vocabulary where it can: a
    trained model's nucleus is usually a few dozen tokens, so only the `first` likeliest are sorted (topk, a
    partial sort); only if some row's nucleus has not ended among them (a flat distribution, such as random
    weights give) is the whole vocabulary sorted.
    """
    V = logits.shape[-1]
    p = per_row(p, logits, torch.float32)
    # The probabilities of the whole row in vocabulary order, then taken in order of likelihood: the same
    # numbers whether a topk or a sort takes them, so the nucleus does not depend on how far we had to look.
    probs = torch.softmax(logits, dim=-1)
    for count in (min(first, V), V):
        if count < V:
            top, order = torch.topk(probs, count, dim=-1)  # [B, count], likeliest first
        else:
            top, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(top, dim=-1) - top  # probability of the more likely tokens
        # A token is needed while the tokens before it have not reached p yet; the first always is.
        drop_sorted = mass_before >= p
        drop_sorted[..., 0] = False
        # A row's nucleus has ended among the candidates when its last one is dropped (or p keeps every token).
        if bool((drop_sorted[:, -1] | (p[:, 0] >= 1.0)).all()):
            break
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, ~drop_sorted) | (p >= 1.0)
    return logits.masked_fill(~keep, float("-inf"))


def sample(logits: torch.Tensor, temperature: Setting = 1.0, top_k: Setting = 0, top_p: Setting = 1.0,
           generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Pick the next token of each row: logits [B, V] -> ids [B]. Greedy (argmax) at temperature 0.

    The settings are one value for every row or one per row (see next_token_probs). `generator` is one
    random stream for the whole batch, or one per row (`sample_generators`): then each row's draws depend
    only on its own stream, not on how many other rows are in the batch, so a server's batch of requests
    draws exactly what each request would draw alone.
    """
    temperatures = per_row(temperature, logits, torch.float32)[:, 0]
    if not bool(temperatures.any()):  # greedy everywhere: no distribution, no draws
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    # torch.multinomial(probs, 1) draws one exponential E_i per token and picks the token maximising p_i / E_i
    # (an exact way to draw from p). Written out here so that all rows are picked at once while each row's
    # draws come from its own stream: a row gets exactly the token multinomial would give it alone.
    noise = torch.ones_like(probs)  # greedy rows draw nothing: their probs are one-hot already
    if generator is None or isinstance(generator, torch.Generator):
        noise.exponential_(generator=generator)
    else:
        if len(generator) != probs.shape[0]:
            raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
        for row, (g, t) in enumerate(zip(generator, temperatures.tolist())):
            if t > 0:
                noise[row].exponential_(generator=g)
    return (probs / noise).argmax(dim=-1)


def per_row(value: Setting, logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A setting as a column [B, 1] for the rows of logits [B, V]: one value repeated, or one per row."""
    if isinstance(value, (int, float)):
        return torch.full((logits.shape[0], 1), value, dtype=dtype, device=logits.device)
    return torch.as_tensor(value, dtype=dtype, device=logits.device).reshape(-1, 1)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` (0, 1, ...) of a request seeded with `seed`: sample 0 uses `seed` itself, so
    asking for more samples never changes the first one; the others get well-separated seeds derived from both."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: torch.Generator takes any non-negative int64


def sample_generators(seed: int, count: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One random stream per sample, seeded with sample_seed(seed, i)."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, i)) for i in range(count)]
