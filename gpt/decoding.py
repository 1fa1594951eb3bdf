"""Decoding: the loop that writes text one token at a time, for sample.py, the server and the lab.

Its place in the flow: text → tokens → batches → model → loss → optimizer → checkpoint → sampling/decoding.
A trained model (gpt/model.py) gives logits for the next token; a token is picked from them (gpt/sampling.py);
it is appended and the model is asked again:

    prompt ─encode─▶ ids ─▶ model ─▶ logits for the next token ─▶ probabilities ─▶ pick one ─▶ append ─┐
                            ▲                                                                          │
                            └───────────────────────── repeat max_new_tokens times ◀───────────────────┘

`Decoder` runs that loop for a batch of rows, `generate_tokens` wraps it as an iterator of picked tokens,
`TextStream` turns a row's tokens back into printable text, and `encode_prompt` starts a row from a prompt.

The KV cache and the context window
-----------------------------------
With the KV cache (the default) each step feeds the model only the newest token; the keys and values of
the earlier ones are kept (`RaggedKVCache` below, whose rows may differ in length; gpt/model.py's KVCache is
the simple one-length version). The model has only block_size positions, so a long text has to be cut. ONE
policy, shared by both paths (the `Decoder` class), so that greedy output with and without the cache is
identical token for token at any length:

  * the model sees at most block_size tokens: a prompt longer than that is cut to its last block_size;
  * when the window is full and another token arrives, the window restarts at the last block_size // 2
    tokens: with the cache, the cache is rebuilt from them in one forward pass (a "prefill"), then
    generation goes on one token per step. This costs one prefill of block_size/2 tokens every
    block_size/2 steps, instead of a full forward pass every step;
  * without the cache (`use_kv_cache=False`, sample.py's `--no_kv_cache`) the model recomputes every step
    from scratch over exactly the window the cached path is using at that step (the tokens since the last
    restart).
"""

from __future__ import annotations

import codecs
import copy
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from gpt.device import autocast
from gpt.errors import UserError
from gpt.sampling import sample
from gpt.tokenizer import Tokenizer


class RaggedKVCache:
    """A KV cache whose rows are sequences of different lengths: a server decodes requests that started at
    different times side by side, and rows join, leave and restart their windows independently.

    It answers the model's calls like gpt/model.py's KVCache (`length`, `positions`, `update`), with each row
    continuing from its own length (`lengths`): `positions(T)` gives every row its next T positions, pos
    [B, T]; each attention layer then stores its new keys and values at those positions and attends with a
    mask that lets each query see only its own row's keys, up to its own position.
    """

    def __init__(self, config, batch_size: int, device=None, dtype=None):
        head_size = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, head_size)  # [B, nh, block_size, hs]
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B] positions filled in each row
        self.length = 0  # the longest row's: attention reads positions 0..length-1
        self.capacity = config.block_size

    @classmethod
    def for_model(cls, model, batch_size: int, dtype: torch.dtype | None = None) -> RaggedKVCache:
        """An empty cache on the model's device, in its dtype (or `dtype`: the autocast dtype, if any)."""
        weight = model.transformer.wte.weight
        return cls(model.config, batch_size, device=weight.device, dtype=dtype or weight.dtype)

    def positions(self, T: int) -> torch.Tensor:
        """Take the next T positions of every row for a forward pass's new tokens; returns them, pos [B, T]."""
        device = self.lengths.device
        pos = self.lengths[:, None] + torch.arange(T, device=device)  # [B, T]: each row from its own length
        self.lengths += T
        self.length += T
        # Query t of row b may see that row's keys 0..pos[b, t]: [B, 1, T, L], the same for every head.
        self.allowed = (torch.arange(self.length, device=device) <= pos[:, :, None]).unsqueeze(1)
        _, nh, _, hs = self.keys[0].shape
        self.index = pos[:, None, :, None].expand(-1, nh, -1, hs)  # [B, nh, T, hs]: where each new value goes
        return pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values k, v [B, nh, T, hs] at their rows' positions; return every key
        and value held so far, [B, nh, L, hs] each (L = the longest row's length), and the mask [B, 1, T, L]."""
        self.keys[layer].scatter_(2, self.index, k)  # [B, nh, T, hs] into [B, nh, block_size, hs]
        self.values[layer].scatter_(2, self.index, v)
        return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length], self.allowed

    def rows_view(self, start: int, stop: int) -> RaggedKVCache:
        """Rows start..stop-1 as a cache of their own that shares this one's memory (to fill some rows only)."""
        view = copy.copy(self)
        view.keys = [k[start:stop] for k in self.keys]
        view.values = [v[start:stop] for v in self.values]
        view.lengths = self.lengths[start:stop]
        view.length = int(view.lengths.max()) if stop > start else 0
        return view

    def move_row(self, source: int, target: int, filled: int) -> None:
        """Copy the first `filled` positions of row `source` into row `target` (a row leaving the batch)."""
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[target, :, :filled] = layer[source, :, :filled]
        self.lengths[target] = filled

    def reset(self) -> None:
        self.lengths.zero_()
        self.length = 0


@dataclass
class Row:
    """One sequence in the Decoder's batch."""

    ids: list[int]  # the prompt and everything generated so far
    start: int  # the first token the model sees (the window's start)
    cached: int = -1  # tokens of the window held in the KV cache row (-1: to be prefilled)
    filling: bool = False  # still filling its cache in chunks: the last step's logits are not a next token's

    def decoding(self) -> bool:
        """Only its newest token is not in the cache yet: the next step gives its next token."""
        return 0 <= self.cached == len(self.ids) - self.start - 1


class Decoder:
    """Feeds a batch of growing sequences to the model and returns the next-token logits of each.

    It owns the context-window policy (see the module docstring), the same with and without the KV cache:
    the model sees a row's tokens from `row.start` on; when they would exceed block_size, `start` jumps so
    that the last block_size // 2 tokens remain (and that row of the cache is rebuilt from them).

    Rows may join (`add`) and leave (`remove`) between steps, and differ in length: this is how the server
    (gpt/serve) decodes requests that arrive at different times in one batch. A step first fills the cache
    of rows that are new or whose window restarted ("prefill", with all their tokens but the last), then
    runs one batched forward pass over every row's newest token.

    With `prefill_chunk` (the server's), a long prompt is filled at most that many tokens per step while
    other rows are decoding, so that they are not stalled by one long forward pass (with none decoding, it
    is read whole); meanwhile the row takes part in each step with its next prompt token, and is marked
    `filling`: its logits are not a next token's, and `append` skips it. Without it (sample.py's), every row
    is ready after the first step's prefill.
    """

    def __init__(self, model, prompt_ids: torch.Tensor | None = None, use_kv_cache: bool = True,
                 dtype: torch.dtype = torch.float32, vocab_size: int | None = None, max_rows: int | None = None,
                 prefill_chunk: int = 0):
        self.model = model
        self.block_size = model.config.block_size
        self.keep = max(1, self.block_size // 2)  # tokens kept when the window restarts
        self.device = next(model.parameters()).device if prompt_ids is None else prompt_ids.device
        self.dtype = dtype  # autocast dtype (float32: none)
        self.vocab_size = vocab_size or model.config.vocab_size  # ids beyond the tokenizer's are never picked
        self.rows: list[Row] = []
        self.prefill_chunk = prefill_chunk or self.block_size  # most tokens a row's prefill adds in one step
        self.max_rows = max_rows or (1 if prompt_ids is None else prompt_ids.shape[0])
        # The cache stores keys/values in the dtype the attention computes in (bf16 under autocast).
        self.cache = RaggedKVCache.for_model(model, self.max_rows, None if dtype == torch.float32 else dtype) \
            if use_kv_cache else None
        for ids in [] if prompt_ids is None else prompt_ids.tolist():
            self.add(ids)

    def add(self, ids: Sequence[int]) -> int:
        """A new row that continues `ids` (at least one token); returns its index."""
        if len(self.rows) == self.max_rows:
            raise ValueError(f"the batch is full ({self.max_rows} rows)")
        if not ids:
            raise ValueError("a row needs at least one token to continue")
        self.rows.append(Row(list(ids), start=max(0, len(ids) - self.block_size)))
        return len(self.rows) - 1

    def remove(self, index: int) -> None:
        """Drop row `index`; the last row moves into its place (so remove from the highest index down)."""
        last = len(self.rows) - 1
        if index != last:
            self.rows[index] = self.rows[last]
            filled = self.rows[index].cached
            if self.cache is not None and filled > 0:
                self.cache.move_row(last, index, filled)
        self.rows.pop()

    @torch.inference_mode()  # like no_grad, and lighter per operation: a step is many small ops
    def next_logits(self) -> torch.Tensor:
        """Logits [rows, V] for the token after each row's ids."""
        for row in self.rows:
            if len(row.ids) - row.start > self.block_size:
                row.start = len(row.ids) - self.keep  # window full: restart from the last block_size // 2 tokens
                row.cached = -1
        with autocast(self.device, self.dtype):
            if self.cache is None:
                logits = self._recompute()
            else:
                self._prefill()
                # Every row now has exactly one token the cache has not seen, its newest, unless its prefill is
                # still going on in chunks: then its next prompt token. One step for all.
                for row in self.rows:
                    row.filling = not row.decoding()
                newest = torch.tensor([[row.ids[row.start + row.cached]] for row in self.rows], device=self.device)
                full = len(self.rows) == self.max_rows
                cache = self.cache if full else self.cache.rows_view(0, len(self.rows))
                cache.length = max(row.cached for row in self.rows)  # the longest row, after any prefill
                logits, _ = self.model(newest, kv_cache=cache)  # [rows, 1, V]
                for row in self.rows:
                    row.cached += 1
        return logits[:, -1, : self.vocab_size].float()

    def _prefill(self) -> None:
        """Fill the cache rows that are new, restarted or filling with their window's tokens but the last (at
        most prefill_chunk tokens each), running neighbouring rows at the same point together (the samples of
        one prompt). Chunks are only for the sake of rows that are decoding: with none, a prompt is read whole."""
        chunk = self.prefill_chunk if any(row.decoding() for row in self.rows) else self.block_size

        def point(r: Row) -> tuple[int, int]:  # how far its filling is, and of how long a window
            return r.cached, len(r.ids) - r.start

        index = 0
        while index < len(self.rows):
            row = self.rows[index]
            if row.decoding():
                index += 1
                continue
            end = index + 1
            while end < len(self.rows) and point(self.rows[end]) == point(row):
                end += 1
            group = self.rows[index:end]
            cache = self.cache.rows_view(index, end)
            if row.cached < 0:  # new or restarted: the row starts over
                cache.reset()
                for r in group:
                    r.cached = 0
            take = min(chunk, len(row.ids) - row.start - 1 - row.cached)
            if take > 0:
                tokens = torch.tensor([r.ids[r.start + r.cached : r.start + r.cached + take] for r in group],
                                      device=self.device)  # [rows, take]
                self.model(tokens, kv_cache=cache)
                for r in group:
                    r.cached += take
            index = end

    def _recompute(self) -> torch.Tensor:
        """The obvious path: each row's whole window, from scratch, every step (rows of equal windows together)."""
        windows = [row.ids[row.start:] for row in self.rows]
        if all(len(w) == len(windows[0]) for w in windows):
            return self.model(torch.tensor(windows, device=self.device))[0]
        return torch.cat([self.model(torch.tensor([w], device=self.device))[0] for w in windows])

    def append(self, next_ids: torch.Tensor | Sequence[int]) -> None:
        """Add one token to each row: next_ids [rows] (a row still `filling` takes none: its entry is ignored)."""
        tokens = next_ids.view(-1).tolist() if isinstance(next_ids, torch.Tensor) else list(next_ids)
        if len(tokens) != len(self.rows):
            raise ValueError(f"{len(tokens)} tokens for {len(self.rows)} rows")
        for row, token in zip(self.rows, tokens):
            if not row.filling:
                row.ids.append(token)


def generate_tokens(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None,
                    use_kv_cache: bool = True, dtype: torch.dtype = torch.float32,
                    vocab_size: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence in the batch, step by step: prompt_ids [B, n] -> ids [B] each step."""
    decoder = Decoder(model, prompt_ids, use_kv_cache, dtype, vocab_size)
    for _ in range(max_new_tokens):
        next_ids = sample(decoder.next_logits(), temperature, top_k, top_p, generator)
        decoder.append(next_ids)
        yield next_ids


class TextStream:
    """Turns one sample's tokens into text that is safe to print as it comes.

    Two things are held back: the bytes of a character not complete yet (byte-level tokens can split a
    character), and text that could still be the start of a stop string. Once a stop string appears the
    sample is done, and neither it nor anything after it is returned.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded, not returned yet
        self.done = False
        self.text = ""  # everything returned so far

    def push(self, token_id: int) -> str:
        """Add one token; return the text that can be printed now (maybe empty)."""
        if self.done:
            return ""
        self.pending += self.utf8.decode(self.tokenizer.decode_bytes([token_id]))
        return self._release(final=False)

    def finish(self) -> str:
        """End of the sample: return whatever was held back (an unfinished character becomes U+FFFD)."""
        if self.done:
            return ""
        self.pending += self.utf8.decode(b"", final=True)
        out = self._release(final=True)
        self.done = True
        return out

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending, self.done = self.pending[: min(hits)], "", True
        else:
            hold = 0 if final else self._possible_stop_start()
            out = self.pending[: len(self.pending) - hold]
            self.pending = self.pending[len(self.pending) - hold:]
        self.text += out
        return out

    def _possible_stop_start(self) -> int:
        """Length of the longest end of the pending text that a stop string starts with."""
        longest = 0
        for s in self.stop:
            for length in range(min(len(s) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(s[:length]):
                    longest = length
                    break
        return longest


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from <|endoftext|>, or else from a newline."""
    if prompt:
        return tokenizer.encode(prompt)
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n")
    except UserError:
        raise UserError("the prompt is empty and this tokenizer has neither <|endoftext|> nor a newline to "
                        "start from: give one with --prompt") from None
