"""Sampling: the last step of the flow, where a trained model writes text.

    prompt ─encode─▶ ids ─▶ model ─▶ logits for the next token ─▶ probabilities ─▶ pick one ─▶ append ─┐
                            ▲                                                                          │
                            └───────────────────────── repeat max_new_tokens times ◀───────────────────┘

A language model does not output text: at each step it outputs a probability distribution over the
whole vocabulary for the next token. `next_token_probs` turns the logits into that distribution, shaped by
the sampling settings, and `sample` picks a token from it:

  temperature  divides the logits: below 1 sharpens the distribution, above 1 flattens it; 0 means greedy
               (always the most likely token, no randomness).
  top_k        keeps only the k most likely tokens (0 = off).
  top_p        "nucleus": keeps the smallest set of most likely tokens whose probabilities add up to at
               least p (always at least one token; 1.0 = off). Applied after top_k.

`sample.py --show_probs K` prints that distribution, so you can watch temperature sharpen or flatten it.

The KV cache and the context window
-----------------------------------
With the KV cache (the default) each step feeds the model only the newest token; the keys and values of
the earlier ones are kept (gpt/model.py, KVCache). The model has only block_size positions, so a long text
has to be cut. ONE policy, shared by both paths (the `Decoder` class), so that greedy output with and
without the cache is identical token for token at any length:

  * the model sees at most block_size tokens: a prompt longer than that is cut to its last block_size;
  * when the window is full and another token arrives, the window restarts at the last block_size // 2
    tokens: with the cache, the cache is rebuilt from them in one forward pass (a "prefill"), then
    generation goes on one token per step. This costs one prefill of block_size/2 tokens every
    block_size/2 steps, instead of a full forward pass every step;
  * without the cache (`--no_kv_cache`) the model recomputes every step from scratch over exactly the
    window the cached path is using at that step (the tokens since the last restart).

Other policies
--------------
- An empty prompt starts from <|endoftext|> when the tokenizer has one (GPT-2, BPE), else from "\\n" (a
  character tokenizer); that start token is not printed.
- A sample ends at max_new_tokens, at a stop string (which is not printed), or when the model produces
  <|endoftext|> or, for a model tuned on conversations, a marker of its chat template such as <|end|> (not
  printed either). With --chat the prompt is the user's message in that template (gpt/chat.py), and only
  the answer is printed; --interactive --chat keeps the conversation, dropping its oldest exchanges when
  they leave less than min(max_new_tokens, block_size // 2) tokens of the context for the answer. num_samples samples are generated together as one batch; each ends
  on its own, and the loop ends when all have.
- Output is decoded through the tokens' UTF-8 bytes and an incremental decoder, so a character split
  across byte-level tokens is printed only once it is whole. Text that could still be the start of a stop
  string is held back until it is clear that it is not.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TextIO

import torch

from gpt.post.chat import Message
from gpt.checkpoint import load_model
from gpt.config import parse_args, setting
from gpt.device import autocast, pick_device, pick_dtype
from gpt.errors import UserError, exit_on_user_error
from gpt.inference import COMPILE_HELP, WEIGHTS_HELP, prepare_for_inference
from gpt.tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------------
# Settings


@dataclass
class SampleConfig:
    ckpt: str = setting("out/default", "an out_dir (best.pt, else ckpt.pt), a .pt checkpoint, or a local Hugging Face GPT-2 folder")
    adapter: str | None = setting(None, "a LoRA adapter (the out_dir or .pt of a run with lora_rank > 0) to apply to the --ckpt model, its base")
    base: str | None = setting(None, "with a LoRA run's checkpoint as --ckpt: where its base model is, if it moved since training")
    prompt: str | None = setting(None, "the text to continue; empty starts from <|endoftext|> (or a newline for a char tokenizer)")
    prompt_file: str | None = setting(None, "read the prompt from this file (UTF-8); without --prompt/--prompt_file a piped stdin is read")
    temperature: float = setting(0.8, "divides the logits: <1 sharper, >1 flatter; 0 = greedy (always the most likely token)")
    top_k: int = setting(200, "sample only from the k most likely tokens; 0 = off")
    top_p: float = setting(1.0, "nucleus: sample from the smallest set of tokens with probability >= top_p, in (0, 1]; 1 = off")
    max_new_tokens: int = setting(500, "tokens to generate per sample (at most)")
    num_samples: int = setting(1, "samples to generate, together as one batch")
    seed: int = setting(1337, "random seed: the same seed and settings give the same text")
    stop: list[str] = setting([], "end a sample when this string appears (not printed; \\n, \\t and \\\\ are read as newline, tab and backslash); repeat for several")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "auto (bf16 on CUDA, fp32 elsewhere), float32, bfloat16 or float16")
    weights: str = setting("float32", WEIGHTS_HELP)
    compile: bool = setting(False, COMPILE_HELP)
    stream: bool | None = setting(None, "flush the first sample's text at every token (default on a terminal); otherwise it is written line by line as it is generated")
    interactive: bool = setting(False, "read prompts line by line from stdin until end of input; print a completion for each (with --chat: a conversation)")
    chat: bool = setting(False, "a model tuned on conversations: send the prompt as the user's message in its chat template, print only the answer, stop at the end of the turn")
    system: str | None = setting(None, "with --chat: a system message that comes before the conversation")
    no_kv_cache: bool = setting(
        False,
        "recompute the whole window every step instead of using the KV cache (slow; the reference path). Both paths "
        "use one window policy: at most block_size tokens; when full, restart from the last block_size//2 tokens",
    )
    show_probs: int = setting(0, "print the top K next tokens and their probabilities (after temperature, top_k, top_p; at temperature 0 shown at temperature 1) instead of sampling text (one sample); 0 = off")
    steps: int = setting(0, "with --show_probs: generate this many tokens, showing the table at each step and marking the pick")


DESCRIPTION = """Generate text from a trained model.

Examples (out/default is what `python train.py` makes; out/shakespeare_char_cpu is what
`python train.py configs/shakespeare_char_cpu.toml` makes, in about two minutes on a CPU):
  python sample.py --prompt "def " --max_new_tokens 300
  python sample.py --ckpt out/shakespeare_char_cpu --prompt "ROMEO:" --max_new_tokens 300
  python sample.py --ckpt out/shakespeare_char_cpu --prompt "ROMEO:" --temperature 0 --stop "\n\n"
  python sample.py --ckpt out/shakespeare_char_cpu --prompt "Listen to your" --show_probs 10 --steps 3
  echo "First Citizen:" | python sample.py --ckpt out/shakespeare_char_cpu
  python sample.py --ckpt out/sft_tasks --chat --prompt "Reverse the word stone."
  python sample.py --ckpt out/sft_tasks --chat --interactive         # a conversation, one message per line
  python sample.py --ckpt out/my_adapter --prompt "ROMEO:"     # a LoRA run: its base is found and checked
  python sample.py --ckpt out/shakespeare_char_cpu --adapter out/my_adapter --prompt "ROMEO:"   # the base named"""


def unescape(text: str) -> str:
    """Read \\n, \\t, \\r and \\\\ in a command-line string as newline, tab, carriage return and backslash."""
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def check_settings(cfg: SampleConfig) -> None:
    """Reject settings that make no sense, with one line that says what to do."""
    if not (0 <= cfg.temperature < math.inf):
        raise UserError(f"temperature must be a finite number >= 0 (0 = greedy), got {cfg.temperature}")
    if cfg.top_k < 0:
        raise UserError(f"top_k must be >= 1, or 0 to turn it off; got {cfg.top_k}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"top_p must be in (0, 1] (1 = off), got {cfg.top_p}")
    if cfg.max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {cfg.max_new_tokens}")
    if cfg.num_samples < 1:
        raise UserError(f"num_samples must be >= 1, got {cfg.num_samples}")
    if cfg.show_probs < 0:
        raise UserError(f"show_probs must be >= 1, or 0 to turn it off; got {cfg.show_probs}")
    if cfg.steps < 0:
        raise UserError(f"steps must be >= 0, got {cfg.steps}")
    if cfg.steps and not cfg.show_probs:
        raise UserError("--steps only applies with --show_probs K: add --show_probs 10, say")
    if any(s == "" for s in cfg.stop):
        raise UserError("a stop string must not be empty")
    if cfg.prompt is not None and cfg.prompt_file is not None:
        raise UserError("give the prompt by --prompt or by --prompt_file, not both")
    if cfg.interactive and (cfg.prompt is not None or cfg.prompt_file is not None):
        raise UserError("--interactive reads its prompts from stdin: drop --prompt/--prompt_file")
    if cfg.system is not None and not cfg.chat:
        raise UserError("--system is a message of a conversation: add --chat")
    if cfg.chat and cfg.interactive and cfg.num_samples > 1:
        raise UserError("an interactive chat keeps one answer per turn: drop --num_samples")


# ---------------------------------------------------------------------------------------------------
# From logits to a token


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


# ---------------------------------------------------------------------------------------------------
# The decode loop


@dataclass
class Row:
    """One sequence in the Decoder's batch."""

    ids: list[int]  # the prompt and everything generated so far
    start: int  # the first token the model sees (the window's start)
    cached: int = -1  # tokens of the window held in the KV cache row (-1: to be prefilled)


class Decoder:
    """Feeds a batch of growing sequences to the model and returns the next-token logits of each.

    It owns the context-window policy (see the module docstring), the same with and without the KV cache:
    the model sees a row's tokens from `row.start` on; when they would exceed block_size, `start` jumps so
    that the last block_size // 2 tokens remain (and that row of the cache is rebuilt from them).

    Rows may join (`add`) and leave (`remove`) between steps, and differ in length: this is how the server
    (gpt/serve) decodes requests that arrive at different times in one batch. A step first fills the cache
    of rows that are new or whose window restarted ("prefill", with all their tokens but the last), then
    runs one batched forward pass over every row's newest token.
    """

    def __init__(self, model, prompt_ids: torch.Tensor | None = None, use_kv_cache: bool = True,
                 dtype: torch.dtype = torch.float32, vocab_size: int | None = None, max_rows: int | None = None):
        self.model = model
        self.block_size = model.config.block_size
        self.keep = max(1, self.block_size // 2)  # tokens kept when the window restarts
        self.device = next(model.parameters()).device if prompt_ids is None else prompt_ids.device
        self.dtype = dtype  # autocast dtype (float32: none)
        self.vocab_size = vocab_size or model.config.vocab_size  # ids beyond the tokenizer's are never picked
        self.rows: list[Row] = []
        self.max_rows = max_rows or (1 if prompt_ids is None else prompt_ids.shape[0])
        # The cache stores keys/values in the dtype the attention computes in (bf16 under autocast).
        self.cache = model.new_kv_cache(self.max_rows, dtype=None if dtype == torch.float32 else dtype) \
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
                for buffers in (self.cache.keys, self.cache.values):
                    for layer in buffers:
                        layer[index, :, :filled] = layer[last, :, :filled]
                self.cache.lengths[index] = filled
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
                # Every row now has exactly one token the cache has not seen: its newest. One step for all.
                newest = torch.tensor([[row.ids[-1]] for row in self.rows], device=self.device)  # [rows, 1]
                full = len(self.rows) == self.max_rows
                cache = self.cache if full else self.cache.rows_view(0, len(self.rows))
                cache.length = max(row.cached for row in self.rows)  # the longest row, after any prefill
                logits, _ = self.model(newest, kv_cache=cache)
                for row in self.rows:
                    row.cached += 1
        return logits[:, -1, : self.vocab_size].float()

    def _prefill(self) -> None:
        """Fill the cache rows that are new or restarted with their window's tokens but the last, running
        neighbouring rows that have the same number of tokens together (the samples of one prompt)."""
        index = 0
        while index < len(self.rows):
            row = self.rows[index]
            if row.cached >= 0:
                index += 1
                continue
            window = len(row.ids) - row.start - 1
            end = index + 1
            while end < len(self.rows) and self.rows[end].cached < 0 and \
                    len(self.rows[end].ids) - self.rows[end].start - 1 == window:
                end += 1
            cache = self.cache.rows_view(index, end)
            cache.reset()
            if window > 0:
                tokens = torch.tensor([r.ids[r.start : r.start + window] for r in self.rows[index:end]],
                                      device=self.device)  # [rows, window]
                self.model(tokens, kv_cache=cache)
            for r in self.rows[index:end]:
                r.cached = window
            index = end

    def _recompute(self) -> torch.Tensor:
        """The obvious path: each row's whole window, from scratch, every step (rows of equal windows together)."""
        windows = [row.ids[row.start:] for row in self.rows]
        if all(len(w) == len(windows[0]) for w in windows):
            return self.model(torch.tensor(windows, device=self.device))[0]
        return torch.cat([self.model(torch.tensor([w], device=self.device))[0] for w in windows])

    def append(self, next_ids: torch.Tensor | Sequence[int]) -> None:
        """Add one token to each row: next_ids [rows]."""
        tokens = next_ids.view(-1).tolist() if isinstance(next_ids, torch.Tensor) else list(next_ids)
        if len(tokens) != len(self.rows):
            raise ValueError(f"{len(tokens)} tokens for {len(self.rows)} rows")
        for row, token in zip(self.rows, tokens):
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


# ---------------------------------------------------------------------------------------------------
# From tokens back to text


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


def show_token(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as a quoted string with whitespace visible ('\\n', ' the'); bytes that are part of a character as b'..'."""
    raw = tokenizer.decode_bytes([token_id])
    try:
        return repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(raw)


# ---------------------------------------------------------------------------------------------------
# The command line


def read_prompt(cfg: SampleConfig, stdin: TextIO) -> str:
    if cfg.prompt is not None:
        return cfg.prompt
    # One rule for every source: the bytes as they are (no newline translation), decoded as UTF-8.
    if cfg.prompt_file is not None:
        path = Path(cfg.prompt_file)
        if not path.is_file():
            raise UserError(f"prompt file {path} not found")
        return _utf8(path.read_bytes(), f"prompt file {path}")
    if not stdin.isatty():
        buffer = getattr(stdin, "buffer", None)
        return _utf8(buffer.read(), "standard input") if buffer is not None else stdin.read()
    return ""


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} is not UTF-8 text (byte offset {e.start}): convert it to UTF-8") from None


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


class Sampler:
    """A loaded model with the settings to sample from it: one `run(prompt)` per prompt."""

    def __init__(self, cfg: SampleConfig, out: TextIO):
        self.cfg = cfg
        self.out = out
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        loaded = load_model(cfg.ckpt, self.device, adapter=cfg.adapter, base=cfg.base)
        self.model = prepare_for_inference(loaded.model, cfg.weights, cfg.compile, self.dtype)
        self.tokenizer, self.template = loaded.tokenizer, loaded.chat_template
        self.stream = out.isatty() if cfg.stream is None else cfg.stream
        if cfg.chat and self.template is None:
            raise UserError(f"{loaded.path} has no chat template (it was not tuned on conversations): drop --chat, "
                            "or tune it first (python train.py --data=conversations.jsonl --init_from=...)")
        # A sample ends at <|endoftext|>, and, for a chat model, at the end of a turn (any marker of the template).
        self.stop_ids = set() if self.tokenizer.eot_id is None else {self.tokenizer.eot_id}
        if self.template is not None:
            self.stop_ids |= self.template.stop_ids
        self.history: list[Message] = []  # an interactive chat's conversation so far

    def _generators(self, count: int) -> list[torch.Generator]:
        # Re-seeded for every prompt, so a prompt's text does not depend on what came before it; one stream
        # per sample, so sample 1 is the same text whether or not more samples are asked for.
        return sample_generators(self.cfg.seed, count, self.device)

    def run(self, prompt: str) -> None:
        if self.cfg.chat:
            ids = self.chat_prompt(prompt)
        else:
            ids = encode_prompt(self.tokenizer, prompt)
        if self.cfg.show_probs:
            self.show_probs(prompt, ids)
        else:
            texts = self.write_samples(prompt, ids)
            if self.cfg.chat and self.cfg.interactive:
                self.history += [Message("user", prompt), Message("assistant", texts[0].text)]

    def chat_prompt(self, prompt: str) -> list[int]:
        """The template's prompt for the user's message: after the system message and, in an interactive chat,
        the turns so far, trimmed from the oldest when they leave too little of the context for the answer."""
        if not prompt.strip():
            raise UserError("the message is empty: type something to say to the model")
        system = [Message("system", self.cfg.system)] if self.cfg.system else []
        messages = system + self.history + [Message("user", prompt)]
        block_size = self.model.config.block_size
        room = min(self.cfg.max_new_tokens, block_size // 2)
        messages = self.template.trim_history(messages, block_size - room)
        self.history = messages[len(system):-1]
        return self.template.prompt(messages)

    def write_samples(self, prompt: str, ids: list[int]) -> list[TextStream]:
        """Generate num_samples samples as one batch. The first is written as it is produced (every token on a
        terminal or with --stream, else every line), the others when the batch ends. On Ctrl-C what was generated
        so far is written before the interruption goes on (exit 130). Returns the samples' texts."""
        cfg, out = self.cfg, self.out
        B = cfg.num_samples
        prompt_ids = torch.tensor([ids] * B, dtype=torch.long, device=self.device)
        texts = [TextStream(self.tokenizer, cfg.stop) for _ in range(B)]
        heading = "" if cfg.interactive or cfg.chat else prompt  # interactive: just typed; chat: only the answer
        self._emit(heading)
        tokens = generate_tokens(self.model, prompt_ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                                 self._generators(B), not cfg.no_kv_cache, self.dtype, self.tokenizer.vocab_size)
        interrupted = False
        try:
            for next_ids in tokens:
                for b, token in enumerate(next_ids.tolist()):
                    if texts[b].done:
                        continue
                    piece = texts[b].finish() if token in self.stop_ids else texts[b].push(token)
                    if b == 0:
                        self._emit(piece)
                if all(t.done for t in texts):
                    break
        except KeyboardInterrupt:
            interrupted = True
        self._emit(texts[0].finish() + "\n", flush=True)
        for text in texts[1:]:
            text.finish()
            out.write("-" * 15 + "\n" + heading + text.text + "\n")
        out.flush()
        if interrupted:
            raise KeyboardInterrupt
        return texts

    def _emit(self, text: str, flush: bool = False) -> None:
        """Write the first sample's text: flushed at every token when streaming, else at each line's end."""
        if text:
            self.out.write(text)
        if flush or (text and (self.stream or "\n" in text)):
            self.out.flush()

    def show_probs(self, prompt: str, ids: list[int]) -> None:
        """The next-token distribution as a table; with --steps, at each generated step, marking the pick."""
        cfg, out, tok = self.cfg, self.out, self.tokenizer
        shown_temperature = cfg.temperature if cfg.temperature > 0 else 1.0
        note = " (greedy picks; probabilities shown at temperature 1)" if cfg.temperature == 0 else ""
        filters = "".join([f", top_k {cfg.top_k}" if cfg.top_k else "", f", top_p {cfg.top_p}" if cfg.top_p < 1 else ""])
        out.write(f"prompt {prompt!r}: next-token probabilities at temperature {shown_temperature:g}{filters}{note}\n")
        decoder = Decoder(self.model, torch.tensor([ids], device=self.device), not cfg.no_kv_cache,
                          self.dtype, tok.vocab_size)
        generator = self._generators(1)
        picked_ids: list[int] = []
        for step in range(max(1, cfg.steps)):
            logits = decoder.next_logits()
            probs = next_token_probs(logits, shown_temperature, cfg.top_k, cfg.top_p)[0]
            picked = int(sample(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)[0]) if cfg.steps else None
            if cfg.steps:
                so_far = prompt + tok.decode(picked_ids)
                out.write(f"\nstep {step + 1}/{cfg.steps}, after {so_far[-40:]!r}:\n")
            out.write(probability_table(tok, probs, cfg.show_probs, picked) + "\n")
            if picked is not None:
                picked_ids.append(picked)
                decoder.append(torch.tensor([picked], device=self.device))
        if cfg.steps:
            out.write(f"\ntext: {prompt + tok.decode(picked_ids)!r}\n")
        out.flush()


def probability_table(tokenizer: Tokenizer, probs: torch.Tensor, k: int, picked: int | None = None,
                      bar_width: int = 30) -> str:
    """The k most likely tokens of one distribution probs [V], with a bar each; `picked` is marked."""
    k = min(k, probs.shape[-1])
    top = torch.topk(probs, k)
    rows = [(rank + 1, int(i), float(p)) for rank, (p, i) in enumerate(zip(top.values, top.indices))]
    if picked is not None and picked not in [i for _, i, _ in rows]:
        # The pick was less likely than the top k: show it too, with its rank.
        rank = int((probs > probs[picked]).sum()) + 1
        rows.append((rank, picked, float(probs[picked])))
    block = "█" if _can_print("█") else "#"
    names = [show_token(tokenizer, i) for _, i, _ in rows]
    total_label = f"top {k} sum"
    width = max(len(total_label), *(len(n) for n in names))
    lines = [f"  {'rank':>4}  {'token':<{width}}  {'prob':>6}"]
    for (rank, i, p), name in zip(rows, names):
        bar = block * round(p * bar_width)
        mark = "  <- picked" if i == picked else ""
        lines.append(f"  {rank:>4}  {name:<{width}}  {p:6.4f}  {bar}{mark}")
    lines.append(f"  {'':>4}  {total_label:<{width}}  {float(top.values.sum()):6.4f}")
    return "\n".join(lines)


def _can_print(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """sample.py: settings -> prompt -> model and tokenizer from the checkpoint -> text (or probability tables)."""
    cfg, _ = parse_args(SampleConfig, argv, prog="sample.py", description=DESCRIPTION)
    cfg.stop = [unescape(s) for s in cfg.stop]  # so that --stop "\n\n" means a blank line
    check_settings(cfg)
    stdin, out = sys.stdin, sys.stdout
    prompt = None if cfg.interactive else read_prompt(cfg, stdin)  # read before loading: fail fast
    sampler = Sampler(cfg, out)
    if not cfg.interactive:
        sampler.run(prompt)
        return 0
    if stdin.isatty():
        what = "a message" if cfg.chat else "a prompt"
        print(f"type {what} and press Enter (end with Ctrl-D)", file=sys.stderr)
    for line in stdin:
        line = line.rstrip("\r\n")
        if cfg.chat and not line.strip():
            continue  # an empty line says nothing to the model
        sampler.run(line)
        out.flush()
    return 0
