"""Synthetic sequences for the induction experiment: random tokens in which one random segment appears twice.

    filler ... [a b c d e] ... filler ... [a b c d e] ... filler
               first occurrence            the copy (the "repeat")

Every token is drawn uniformly from the vocabulary, so nothing is predictable except the copy: once its
first token `a` has been read, a model that finds the earlier `a` and copies what came after it (an
induction head) predicts `b`, `c`, `d`, `e` exactly. The segment's length and both of its positions are
drawn anew for every sequence, so the distance between the copies varies: a model cannot cheat by
looking a fixed number of positions back (a positional shortcut), it has to match tokens.

Each sequence comes with masks saying which predictions are which (targets inside the first occurrence,
targets inside the copy), and, for every position of the copy, the position an ideal induction head
attends to: the token after the earlier occurrence of the current one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt.tokenizer import CharTokenizer


@dataclass
class RepeatBatch:
    """B sequences of T + 1 tokens; inputs x = ids[:, :-1] and targets y = ids[:, 1:], each [B, T]."""

    ids: torch.Tensor  # [B, T + 1]
    first_start: torch.Tensor  # [B]: where the segment first appears
    copy_start: torch.Tensor  # [B]: where its copy starts
    length: torch.Tensor  # [B]: the segment's length

    @property
    def x(self) -> torch.Tensor:
        return self.ids[:, :-1]

    @property
    def y(self) -> torch.Tensor:
        return self.ids[:, 1:]

    def _target_positions(self) -> torch.Tensor:
        return torch.arange(self.ids.shape[1] - 1)[None, :] + 1  # [1, T]: the position each target y[:, t] sits at

    def first_mask(self) -> torch.Tensor:
        """[B, T] True where the target is a token of the first occurrence after its first one (unpredictable)."""
        pos = self._target_positions()
        start, length = self.first_start[:, None], self.length[:, None]
        return (pos > start) & (pos < start + length)

    def repeat_mask(self) -> torch.Tensor:
        """[B, T] True where the target is a token of the copy after its first one: predictable by copying.
        (The copy's first token is as random as any filler: nothing announces where the copy starts.)"""
        pos = self._target_positions()
        start, length = self.copy_start[:, None], self.length[:, None]
        return (pos > start) & (pos < start + length)

    def induction_keys(self) -> torch.Tensor:
        """[B, T]: for each query position of the copy, the key position an induction head attends to (-1 elsewhere).

        A query at copy_start + i holds the segment's token i; its earlier occurrence sits at first_start + i,
        and the token after that, at first_start + i + 1, is the one to copy.
        """
        T = self.ids.shape[1] - 1
        query = torch.arange(T)[None, :]  # [1, T]
        offset = query - self.copy_start[:, None]  # [B, T]: index inside the copy
        inside = (offset >= 0) & (offset < self.length[:, None])
        return torch.where(inside, self.first_start[:, None] + offset + 1, torch.full_like(offset, -1))


def repeat_batch(batch_size: int, block_size: int, vocab_size: int, min_len: int, max_len: int,
                 generator: torch.Generator, skip_rule: torch.Tensor | None = None, skip_prob: float = 0.0) -> RepeatBatch:
    """Sequences of block_size + 1 uniform random tokens, each with a segment of min_len..max_len tokens copied later.

    Per sequence: the length L is uniform in [min_len, max_len]; the first occurrence starts uniformly where
    the copy still fits after it; the copy starts uniformly anywhere after the first occurrence ends.
    """
    n = block_size + 1
    if not 2 <= min_len <= max_len:
        raise ValueError(f"segment lengths must satisfy 2 <= min_len <= max_len, got {min_len}..{max_len}")
    if 2 * max_len > n:
        raise ValueError(f"two copies of a {max_len}-token segment do not fit in {n} tokens")
    ids = torch.randint(vocab_size, (batch_size, n), generator=generator)
    if skip_rule is not None and skip_prob > 0:
        # Some tokens follow from the token two before them (a fixed rule): reading the previous token's
        # predecessor then pays off on its own, as in natural text, which is what gets previous-token heads going.
        follows = torch.rand(batch_size, n, generator=generator) < skip_prob
        for t in range(2, n):
            ids[:, t] = torch.where(follows[:, t], skip_rule[ids[:, t - 2]], ids[:, t])
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=generator)
    # Uniform draws in ranges that differ per row: scale a uniform [0, 1) number by the range's size.
    first = (torch.rand(batch_size, generator=generator) * (n - 2 * lengths + 1)).long()
    copy = first + lengths + (torch.rand(batch_size, generator=generator) * (n - first - 2 * lengths + 1)).long()
    segments = torch.randint(vocab_size, (batch_size, max_len), generator=generator)  # uniform, whatever the filler
    for b in range(batch_size):
        L, s1, s2 = int(lengths[b]), int(first[b]), int(copy[b])
        ids[b, s1 : s1 + L] = segments[b, :L]
        ids[b, s2 : s2 + L] = segments[b, :L]
    return RepeatBatch(ids, first, copy, lengths)


def repeated_random_tokens(batch_size: int, half: int, vocab_size: int, generator: torch.Generator) -> RepeatBatch:
    """The standard probe for induction heads: `half` random tokens, then the same tokens again (2 * half in all)."""
    ids = torch.randint(vocab_size, (batch_size, half), generator=generator)
    ids = torch.cat([ids, ids, ids[:, :1]], dim=1)  # one more token so that x holds both halves whole
    zeros = torch.zeros(batch_size, dtype=torch.long)
    return RepeatBatch(ids, zeros, zeros + half, zeros + half)


def synthetic_tokenizer(vocab_size: int) -> CharTokenizer:
    """A character tokenizer for the synthetic vocabulary, so that the lab's models save as ordinary checkpoints
    and `gpt.lab attention --prompt` can be typed at them: ids 0..61 are 0-9, A-Z, a-z; more come from Latin letters."""
    chars = [chr(c) for c in range(ord("0"), ord("9") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] \
        + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    code = 0xC0
    while len(chars) < vocab_size:
        if chr(code).isalpha():
            chars.append(chr(code))
        code += 1
    return CharTokenizer("".join(chars[:vocab_size]))
