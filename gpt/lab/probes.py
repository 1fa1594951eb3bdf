"""Looking inside any checkpoint (ours, or GPT-2 from a local folder): `attention`, `icl` and `lens`.

  attention   heat maps of every head's attention on a prompt, and every head's induction and previous-token
              scores measured on repeated random tokens: which heads of this model are induction heads?
  icl         the mean loss at each position of block_size-token windows of a text: does the model predict
              better the more context it has read? Its in-context learning score (gpt/lab/scores.py).
  lens        the logit lens: the residual stream after the embedding and after each block, read out through
              the final norm and the LM head as if it were the last layer: where does the prediction form?
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt.checkpoint import Loaded
from gpt.config import parse_args, setting
from gpt.inference import ModelSettings, open_model
from gpt.errors import UserError, exit_on_user_error
from gpt.lab import plots
from gpt.lab.output import table, write_json
from gpt.lab.scores import (forward_with_attention, icl_score, icl_windows, induction_scores,
                            previous_token_scores, token_losses)
from gpt.lab.synthetic import RepeatBatch

def load(settings: ModelSettings) -> tuple[Loaded, torch.device]:
    """The model to look inside, opened as every command opens one (an adapter merged into its base; the weights
    as --weights says). Its layers must stay reachable: no compiled wrapper."""
    if settings.compile:
        raise UserError("the lab looks inside the model's layers, which a compiled model hides: drop --compile")
    opened = open_model(settings, what="the model to look inside")
    opened.loaded.model = opened.model
    return opened.loaded, opened.device


def token_strings(loaded: Loaded, ids: list[int]) -> list[str]:
    return [loaded.tokenizer.decode_bytes([i]).decode("utf-8", errors="replace") for i in ids]


def encode_prompt(loaded: Loaded, prompt: str, say=print) -> list[int]:
    if not prompt:
        raise UserError('give a prompt: --prompt "some text"')
    ids = loaded.tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt encodes to no tokens: give some text")
    block_size = loaded.model.config.block_size
    if len(ids) > block_size:
        say(f"the prompt is {len(ids)} tokens long; the model reads {block_size}: using its last {block_size}")
        ids = ids[-block_size:]
    return ids


def out_path(out_dir: str) -> Path:
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"out_dir {path} is a file: give a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------
# attention


@dataclass
class AttentionConfig(ModelSettings):
    prompt: str = setting("", "the text whose attention is drawn (cut to its last block_size tokens)")
    out_dir: str = setting("out/lab/attention", "where attention.png and attention.json go (replaced if there)")
    repeat_length: int = setting(50, "length of the random token sequence that is repeated to score the heads (at most block_size // 2)")
    repeat_sequences: int = setting(16, "random sequences the head scores average over")
    threshold: float = setting(0.2, "heads with an induction score above this are listed as induction heads")
    seed: int = setting(0, "seeds the random tokens")


def head_scores(model, vocab_size: int, eot_id: int | None, length: int, sequences: int, seed: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction and previous-token scores [n_layer, nh] on `length` random tokens followed by the same tokens again.

    The tokens are uniform over the tokenizer's vocabulary (without <|endoftext|>), as in Olsson et al.
    """
    generator = torch.Generator().manual_seed(seed)
    usable = torch.tensor([i for i in range(vocab_size) if i != eot_id])
    first = usable[torch.randint(len(usable), (sequences, length), generator=generator)]
    ids = torch.cat([first, first], dim=1)  # [S, 2 * length]
    zeros = torch.zeros(sequences, dtype=torch.long)
    probe = RepeatBatch(torch.cat([ids, ids[:, :1]], dim=1), zeros, zeros + length, zeros + length)
    scores_ind, scores_prev = [], []
    for start in range(0, sequences, 4):  # a few sequences at a time: [n_layer, b, nh, T, T] can be large
        part = probe.ids[start : start + 4].to(device)
        _, weights = forward_with_attention(model, part[:, :-1])
        weights = weights.float()
        keys = RepeatBatch(part, zeros[: len(part)], zeros[: len(part)] + length, zeros[: len(part)] + length).induction_keys()
        scores_ind.append(induction_scores(weights, keys.to(device)) * len(part))
        scores_prev.append(previous_token_scores(weights) * len(part))
    return (sum(scores_ind) / sequences).cpu(), (sum(scores_prev) / sequences).cpu()


def run_attention(cfg: AttentionConfig, say=print) -> dict[str, Any]:
    if cfg.repeat_length < 2 or cfg.repeat_sequences < 1:
        raise UserError("repeat_length must be at least 2 and repeat_sequences at least 1")
    loaded, device = load(cfg)
    model, config = loaded.model, loaded.model.config
    ids = encode_prompt(loaded, cfg.prompt, say)
    tokens = token_strings(loaded, ids)
    _, weights = forward_with_attention(model, torch.tensor([ids], device=device))
    weights = weights[:, 0].float().cpu()  # [n_layer, nh, T, T]

    length = min(cfg.repeat_length, config.block_size // 2)
    if length < 2:
        raise UserError(f"block_size {config.block_size} is too short to score heads on repeated tokens")
    induction, previous = head_scores(model, loaded.tokenizer.vocab_size, loaded.tokenizer.eot_id, length,
                                      cfg.repeat_sequences, cfg.seed, device)
    heads = [{"head": plots.head_name(l, h), "layer": l, "index": h, "induction": float(induction[l, h]),
              "previous_token": float(previous[l, h])}
             for l in range(config.n_layer) for h in range(config.n_head)]
    ranked = sorted(heads, key=lambda r: -r["induction"])
    report = {
        "ckpt": str(loaded.path),
        "tokens": tokens,
        "repeat_length": length,
        "repeat_sequences": cfg.repeat_sequences,
        "threshold": cfg.threshold,
        "induction_heads": [r["head"] for r in ranked if r["induction"] > cfg.threshold],
        "heads": heads,
    }
    if weights.numel() <= 1_000_000:  # the weights themselves, when they are not too many to read as JSON
        report["attention"] = [[[[round(float(w), 4) for w in row] for row in head] for head in layer]
                               for layer in weights]
    out = out_path(cfg.out_dir)
    write_json(out / "attention.json", report)
    drawn = plots.draw_attention_grid(out / "attention.png", weights.numpy(), tokens,
                                      f"{loaded.path}: attention on the prompt (row: query, column: key)")

    shown = ranked if len(ranked) <= 16 else ranked[:16]
    say(f"head scores on {cfg.repeat_sequences} sequences of {length} random tokens, repeated")
    say(table([[r["head"], r["induction"], r["previous_token"]] for r in shown],
              ["head", "induction", "previous token"]) + ("\n..." if len(ranked) > len(shown) else ""))
    found = report["induction_heads"]
    say(f"induction heads (score > {cfg.threshold}): {', '.join(found) if found else 'none'}")
    say(f"wrote {out / 'attention.json'}" + (f" and {out / 'attention.png'}" if drawn else ""))
    return report


# ---------------------------------------------------------------------------------------------------
# icl


@dataclass
class IclConfig(ModelSettings):
    data: list[str] = setting([], "the text: a file, a folder (its text files), or a named corpus (stdlib, shakespeare); repeat for several")
    include: str | None = setting(None, "glob that files found in folders must match, e.g. '*.md'")
    data_dir: str = setting("data", "where a named corpus is looked for")
    block_size: int = setting(0, "context length to measure over (0 = the model's block_size)")
    max_windows: int = setting(256, "windows of block_size tokens to average over, spread evenly over the text")
    batch_size: int = setting(8, "windows per forward pass")
    out_dir: str = setting("out/lab/icl", "where icl.png and icl.json go (replaced if there)")


def text_windows(texts, tokenizer, length: int, max_windows: int) -> tuple[np.ndarray, int]:
    """Up to max_windows windows of `length` tokens, each inside one document, spread evenly over all of them.

    Returns the windows [N, length] and how many whole windows the text holds.
    """
    starts: list[tuple[int, int]] = []
    docs: list[np.ndarray] = []
    for text in texts:
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        for s in range(0, len(ids) - length + 1, length):
            starts.append((len(docs), s))
        docs.append(ids)
    if not starts:
        return np.zeros((0, length), dtype=np.int64), 0
    chosen = np.linspace(0, len(starts) - 1, num=min(max_windows, len(starts))).round().astype(int)
    windows = np.stack([docs[starts[i][0]][starts[i][1] : starts[i][1] + length] for i in chosen])
    return windows, len(starts)


@torch.no_grad()
def loss_by_position(model, windows: np.ndarray, batch_size: int, device: torch.device) -> list[float]:
    """Mean loss at each position of the windows [N, T + 1]: entry t is the loss of predicting token t + 1 from t + 1 tokens."""
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    for start in range(0, len(windows), batch_size):
        batch = torch.as_tensor(windows[start : start + batch_size], device=device)
        logits, _ = model(batch[:, :-1], all_logits=True)
        total += token_losses(logits, batch[:, 1:]).double().sum(dim=0).cpu()
    return (total / len(windows)).tolist()


def run_icl(cfg: IclConfig, say=print) -> dict[str, Any]:
    from gpt.evaluate import read_documents

    if not cfg.data:
        raise UserError("give the text to measure on: --data FILE, a folder, or a named corpus (stdlib, shakespeare)")
    if cfg.max_windows < 1 or cfg.batch_size < 1:
        raise UserError("max_windows and batch_size must be at least 1")
    loaded, device = load(cfg)
    model_block = loaded.model.config.block_size
    block_size = cfg.block_size or model_block
    if not 4 <= block_size <= model_block:
        raise UserError(f"block_size must be between 4 and the model's block_size {model_block}, got {block_size}")
    texts = read_documents(cfg.data, include=cfg.include, data_dir=cfg.data_dir)
    windows, available = text_windows(texts, loaded.tokenizer, block_size + 1, cfg.max_windows)
    if available == 0:
        raise UserError(f"no document of the text holds {block_size + 1} tokens: give a longer text, or a smaller "
                        f"--block_size")
    losses = loss_by_position(loaded.model, windows, cfg.batch_size, device)
    early, late = icl_windows(block_size)
    score = icl_score(losses)
    report = {"ckpt": str(loaded.path), "data": cfg.data, "block_size": block_size, "windows": len(windows),
              "windows_available": available, "loss_by_position": losses, "mean_loss": sum(losses) / len(losses),
              "early_positions": [early.start + 1, early.stop], "late_positions": [late.start + 1, late.stop],
              "icl_score": score}
    out = out_path(cfg.out_dir)
    write_json(out / "icl.json", report)
    drawn = plots.draw_loss_by_position(out / "icl.png", losses, early, late,
                                        f"{loaded.path}: loss by position ({len(windows)} windows); ICL score {score:.3f}")
    marks = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, block_size} & set(range(1, block_size + 1)))
    say(f"loss by position, mean over {len(windows)} windows of {block_size} tokens ({available} in the text)")
    say(table([[m, losses[m - 1]] for m in marks], ["tokens of context", "loss"]))
    say(f"in-context learning score: {score:+.3f} nats (mean loss with {late.start + 1}-{late.stop} tokens of context "
        f"minus with {early.start + 1}-{early.stop}; negative: more context helps)")
    say(f"wrote {out / 'icl.json'}" + (f" and {out / 'icl.png'}" if drawn else ""))
    return report


# ---------------------------------------------------------------------------------------------------
# lens


@dataclass
class LensConfig(ModelSettings):
    prompt: str = setting("", "the text to read the predictions of (cut to its last block_size tokens)")
    top_k: int = setting(5, "next tokens to show after each layer")
    positions: int = setting(16, "positions (the last ones of the prompt) in lens.png")
    out_dir: str = setting("out/lab/lens", "where lens.png and lens.json go (replaced if there)")


@torch.no_grad()
def logit_lens(model, ids: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The next-token probabilities read out of the residual stream after the embedding and after each block.

    ids [1, T] -> layer names and probabilities [n_layer + 1, T, V]. The last row is the model's own output.
    """
    residuals: list[torch.Tensor] = []
    hooks = [model.transformer.drop.register_forward_hook(lambda m, i, out: residuals.append(out))]
    hooks += [block.register_forward_hook(lambda m, i, out: residuals.append(out)) for block in model.transformer.h]
    try:
        model(ids, all_logits=True)
    finally:
        for hook in hooks:
            hook.remove()
    stream = torch.cat(residuals)  # [n_layer + 1, T, C]
    probs = model.lm_head(model.transformer.ln_f(stream)).float().softmax(dim=-1)
    names = ["embedding"] + [f"block {i}" for i in range(len(model.transformer.h))]
    return names, probs


def run_lens(cfg: LensConfig, say=print) -> dict[str, Any]:
    if cfg.top_k < 1 or cfg.positions < 1:
        raise UserError("top_k and positions must be at least 1")
    loaded, device = load(cfg)
    ids = encode_prompt(loaded, cfg.prompt, say)
    tokens = token_strings(loaded, ids)
    names, probs = logit_lens(loaded.model, torch.tensor([ids], device=device))
    vocab = loaded.tokenizer.vocab_size
    probs = probs[..., :vocab].cpu()
    k = min(cfg.top_k, vocab)
    top = probs.topk(k, dim=-1)  # [n_layer + 1, T, k]
    layers = []
    for r, name in enumerate(names):
        layers.append({"layer": name, "top": [[[tok, round(float(p), 5)] for tok, p in
                                               zip(token_strings(loaded, top.indices[r, t].tolist()), top.values[r, t])]
                                              for t in range(len(ids))]})
    report = {"ckpt": str(loaded.path), "tokens": tokens, "layers": layers}
    out = out_path(cfg.out_dir)
    write_json(out / "lens.json", report)
    shown = slice(max(0, len(ids) - cfg.positions), len(ids))
    drawn = plots.draw_lens(out / "lens.png",
                            [[layer["top"][t][0][0] for t in range(len(ids))[shown]] for layer in layers],
                            [[layer["top"][t][0][1] for t in range(len(ids))[shown]] for layer in layers],
                            tokens[shown], names)
    say(f"logit lens at the last position: the next token after {plots._label(tokens[-1], 20)!s} read out after each layer")
    say(table([[layer["layer"]] + [f"{plots._label(tok, 12)} {p:.3f}" for tok, p in layer["top"][-1]] for layer in layers],
              ["after"] + [f"top {i + 1}" for i in range(k)]))
    say(f"wrote {out / 'lens.json'}" + (f" and {out / 'lens.png'}" if drawn else ""))
    return report


# ---------------------------------------------------------------------------------------------------
# Command lines


@exit_on_user_error
def attention_main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(AttentionConfig, argv, prog="python -m gpt.lab attention", description=(
        "Attention heat maps of every head on a prompt, and each head's induction and previous-token scores on "
        "repeated random tokens.\nExample:\n  python -m gpt.lab attention --ckpt out/default --prompt \"def f(x):\""))
    run_attention(cfg)
    return 0


@exit_on_user_error
def icl_main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(IclConfig, argv, prog="python -m gpt.lab icl", description=(
        "The mean loss at each position of the context on a text, and the in-context learning score.\n"
        "Example:\n  python -m gpt.lab icl --ckpt out/default --data stdlib"))
    run_icl(cfg)
    return 0


@exit_on_user_error
def lens_main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(LensConfig, argv, prog="python -m gpt.lab lens", description=(
        "The logit lens: the top next tokens read out of the residual stream after each layer.\n"
        "Example:\n  python -m gpt.lab lens --ckpt out/default --prompt \"import os\""))
    run_lens(cfg)
    return 0
