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
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution the next token is drawn from: logits [B, V] -> probabilities [B, V] (rows sum to 1).

    temperature 0 gives the greedy distribution: all the probability on the most likely token.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)
    # Shifting the largest logit to 0 first changes no probability, and keeps the division safe for any
    # temperature: with a tiny one the others overflow to -inf (probability 0), never to inf - inf = nan.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if 0 < top_k < logits.shape[-1]:  # k >= the vocabulary keeps every token: nothing to filter
        logits = top_k_filter(logits, top_k)
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (exactly k, ties broken by position); the others become -inf."""
    k = min(k, logits.shape[-1])
    best = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, best.indices, best.values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p; the others -> -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
    # A token is needed while the tokens before it have not reached p yet; the first always is.
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Pick the next token of each row: logits [B, V] -> ids [B]. Greedy (argmax) at temperature 0.

    `generator` is one random stream for the whole batch, or one per row (`sample_generators`): then each
    row's draws depend only on its own stream, not on how many other rows are in the batch.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    if len(generator) != probs.shape[0]:
        raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
    return torch.cat([torch.multinomial(probs[b : b + 1], 1, generator=g)[0] for b, g in enumerate(generator)])


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
