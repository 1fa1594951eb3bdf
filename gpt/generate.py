"""sample.py: the command line that writes text from a trained model.

Its place in the flow: text → tokens → batches → model → loss → optimizer → checkpoint → sampling/decoding.
This module is the last step's command line: it reads the settings and the prompt, loads the checkpoint, and
prints what the decode loop (gpt/decoding.py) generates with the tokens that gpt/sampling.py picks. Those two
modules explain temperature, top_k and top_p, the KV cache and the context window; this one adds what is
particular to a command line: prompts from --prompt, a file or stdin, streaming to a terminal, chat, and
`--show_probs K`, which prints the next-token distribution as a table.

Other policies
--------------
- An empty prompt starts from <|endoftext|> when the tokenizer has one (GPT-2, BPE), else from "\\n" (a
  character tokenizer); that start token is not printed.
- A sample ends at max_new_tokens, at a stop string (which is not printed), or when the model produces
  <|endoftext|> or, for a model tuned on conversations, a marker of its chat template such as <|end|> (not
  printed either). With --chat the prompt is the user's message in that template (gpt/post/chat.py), and only
  the answer is printed; --interactive --chat keeps the conversation, dropping its oldest exchanges when
  they leave less than min(max_new_tokens, block_size // 2) tokens of the context for the answer.
  num_samples samples are generated together as one batch; each ends on its own, and the loop ends when all
  have. They are parted by a line of dashes; --interactive (without --chat) ends each prompt's completion with
  a line of '=', since a completion may span lines.
- Output is decoded through the tokens' UTF-8 bytes and an incremental decoder, so a character split
  across byte-level tokens is printed only once it is whole. Text that could still be the start of a stop
  string is held back until it is clear that it is not.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from gpt.config import parse_args, setting
from gpt.decoding import Decoder, TextStream, encode_prompt, generate_tokens
from gpt.errors import UserError, exit_on_user_error
from gpt.inference import CKPT_HELP, ModelSettings, open_model
from gpt.sampling import next_token_probs, sample, sample_generators
from gpt.tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------------
# Settings


@dataclass
class SampleConfig(ModelSettings):
    ckpt: str = setting("out/default", "the model: " + CKPT_HELP)
    prompt: str | None = setting(None, "the text to continue; empty starts from <|endoftext|> (or a newline for a char tokenizer)")
    prompt_file: str | None = setting(None, "read the prompt from this file (UTF-8); without --prompt/--prompt_file a piped stdin is read")
    temperature: float = setting(0.8, "divides the logits: <1 sharper, >1 flatter; 0 = greedy (always the most likely token)")
    top_k: int = setting(200, "sample only from the k most likely tokens; 0 = off")
    top_p: float = setting(1.0, "nucleus: sample from the smallest set of tokens with probability >= top_p, in (0, 1]; 1 = off")
    max_new_tokens: int = setting(500, "tokens to generate per sample (at most)")
    num_samples: int = setting(1, "samples to generate, together as one batch")
    seed: int = setting(1337, "random seed: the same seed and settings give the same text")
    stop: list[str] = setting([], "end a sample when this string appears (not printed; \\n, \\t and \\\\ are read as newline, tab and backslash); repeat for several")
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

Examples (--ckpt defaults to out/default, what `python train.py` makes; out/sft_tasks and out/lora_tasks are
made in docs/assistant.md and docs/adapters.md):
  python sample.py --prompt "def " --max_new_tokens 300
  python sample.py --prompt "class " --temperature 0 --stop "\\n\\n"
  python sample.py --prompt "for i in ran" --show_probs 10 --steps 3
  echo "import os" | python sample.py
  python sample.py --ckpt out/sft_tasks --chat --prompt "Reverse the word stone."
  python sample.py --ckpt out/sft_tasks --chat --interactive         # a conversation, one message per line
  python sample.py --ckpt out/lora_tasks --chat --prompt "Spell cat."   # a LoRA run: its base is found and checked
  python sample.py --ckpt out/default --adapter out/lora_tasks --chat --prompt "Spell cat."   # the base named"""


# After each completion of --interactive (not --chat): where one ends and the next prompt's begins. Samples of one
# prompt (--num_samples) are parted by a line of dashes.
COMPLETION_END = "=" * 15 + "\n"


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


def message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


class Sampler:
    """A loaded model with the settings to sample from it: one `run(prompt)` per prompt."""

    def __init__(self, cfg: SampleConfig, out: TextIO):
        self.cfg = cfg
        self.out = out
        opened = open_model(cfg)
        self.model, self.device, self.dtype, loaded = opened.model, opened.device, opened.dtype, opened.loaded
        self.tokenizer, self.template = loaded.tokenizer, loaded.chat_template
        self.stream = out.isatty() if cfg.stream is None else cfg.stream
        if cfg.chat and self.template is None:
            raise UserError(f"{loaded.path} has no chat template (it was not tuned on conversations): drop --chat, "
                            "or tune it first (python train.py --data=conversations.jsonl --init_from=...)")
        if self.template is not None and not cfg.chat:
            # Tuning on conversations trades plain continuation for answering: without the template around it, a
            # prompt gets text that looks like neither. Said once, on stderr, so the output stays the samples.
            print(f"note: {loaded.path} was tuned on conversations and continues plain text poorly: add --chat to "
                  "send the prompt as a user message", file=sys.stderr, flush=True)
        # A sample ends at <|endoftext|>, and, for a chat model, at the end of a turn (any marker of the template).
        self.stop_ids = set() if self.tokenizer.eot_id is None else {self.tokenizer.eot_id}
        if self.template is not None:
            self.stop_ids |= self.template.stop_ids
        # An interactive chat's conversation so far: {"role", "content"} messages, as the chat template (gpt/post/chat.py,
        # found on the loaded model) and the server's API take them.
        self.history: list[dict[str, str]] = []

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
                self.history += [message("user", prompt), message("assistant", texts[0].text)]

    def chat_prompt(self, prompt: str) -> list[int]:
        """The template's prompt for the user's message: after the system message and, in an interactive chat,
        the turns so far, trimmed from the oldest when they leave too little of the context for the answer."""
        if not prompt.strip():
            raise UserError("the message is empty: type something to say to the model")
        system = [message("system", self.cfg.system)] if self.cfg.system else []
        messages = system + self.history + [message("user", prompt)]
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


def show_token(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as a quoted string with whitespace visible ('\\n', ' the'); bytes that are part of a character as b'..'."""
    raw = tokenizer.decode_bytes([token_id])
    try:
        return repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(raw)


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
        if not cfg.chat:  # a completion may span lines: mark where it ends (a chat's answers are one turn each)
            out.write(COMPLETION_END)
        out.flush()
    return 0
