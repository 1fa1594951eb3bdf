"""`python -m gpt.lab induction`: watch induction heads form, in a two-layer model and not in a one-layer one.

Olsson et al. (2022), "In-context Learning and Induction Heads": a two-layer circuit finds the earlier
occurrence of the current token and copies the token that followed it. A head in the first layer attends
to the previous token and writes "my previous token was a" into each position; a head in the second layer
(the induction head) then looks, from the current token `a`, for the position whose previous token was
`a`, and copies what is there. One layer cannot do this: its heads only see tokens, not what came before
them. The circuit forms abruptly during training: the loss on repeated text falls in a few hundred steps.

The experiment: train attention-only models (gpt/model.py with attention_only=True) of n_layer and of
control_n_layer layers, on the same batches with the same budget, on random sequences in which a random
segment appears twice (gpt/lab/synthetic.py). Every eval_interval steps, on a fixed set of held-out
sequences: the loss on the first occurrence (unpredictable: about ln V), the loss on the repeat, the
in-context learning score, and each head's induction and previous-token scores (gpt/lab/scores.py). At the
end, each head is switched off in turn, then all heads with an induction score above the threshold at once,
and the loss on the repeat measured again. Results go to out_dir: report.json, losses.png, head_scores.png,
attention.png, ablation.png, and each trained model as a checkpoint the other lab commands read.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from gpt.checkpoint import clean_state_dict, save_checkpoint
from gpt.config import parse_args, setting
from gpt.device import THREADS_HELP, pick_device, set_threads
from gpt.errors import UserError, exit_on_user_error
from gpt.lab import plots
from gpt.lab.output import prepare_out_dir, table, write_json
from gpt.lab.scores import (forward_with_attention, heads_off, icl_score, induction_scores, masked_mean,
                            previous_token_scores)
from gpt.lab.synthetic import RepeatBatch, repeat_batch, synthetic_tokenizer
from gpt.lab.training import train
from gpt.model import ARCHITECTURES, GPT, GPTConfig


@dataclass
class InductionConfig:
    out_dir: str = setting("out/lab/induction", "where the report, the PNGs and the two trained models go")
    overwrite: bool = setting(False, "replace the results of an earlier run in out_dir")
    seed: int = setting(0, "seeds the models' initialisation and the training and held-out sequences")
    # The data
    vocab_size: int = setting(256, "distinct tokens; the loss of a uniform guess is ln(vocab_size)")
    block_size: int = setting(48, "tokens per sequence")
    min_segment: int = setting(12, "shortest repeated segment")
    max_segment: int = setting(24, "longest repeated segment (two copies must fit in block_size + 1 tokens)")
    skip_prob: float = setting(0.0, "probability that a filler token is fixed by the token two before it (0 = all uniform)")
    # The models
    n_layer: int = setting(2, "layers of the model that can form induction heads")
    control_n_layer: int = setting(1, "layers of the control model, trained the same way (0 = no control)")
    n_head: int = setting(4, "attention heads per layer")
    n_embd: int = setting(64, "width of the residual stream")
    tie_embeddings: bool = setting(False, "share the token embedding with the output layer (GPT-2); untied (the default), the head starts as a copy of the embedding and trains on its own")
    # Training (gpt/optim.py reads these)
    max_iters: int = setting(5000, "training steps of each model")
    batch_size: int = setting(32, "sequences per step")
    learning_rate: float = setting(1e-3, "peak learning rate (AdamW)")
    warmup_iters: int = setting(100, "steps of linear warmup")
    decay_lr: bool = setting(False, "decay the learning rate on a cosine after warmup (down to min_lr)")
    lr_decay_iters: int = setting(0, "steps of the cosine decay (0 = max_iters)")
    min_lr: float = setting(1e-4, "learning rate at the end of the decay")
    weight_decay: float = setting(0.0, "AdamW weight decay of the matrices")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.98, "AdamW beta2")
    # The lab's results were measured with AdamW and a cosine: pinned, whatever train.py's defaults become.
    optimizer: ClassVar[str] = "adamw"
    lr_schedule: ClassVar[str] = "cosine"
    grad_clip: float = setting(1.0, "clip the gradient norm at this value")
    # Measuring
    eval_interval: int = setting(100, "measure every this many steps")
    eval_sequences: int = setting(256, "held-out sequences the measurements average over")
    ablation_threshold: float = setting(0.2, "heads with an induction score above this are switched off together")
    device: str = setting("cpu", "auto, cpu, cuda, cuda:N or mps (these models are small: the CPU is fine)")
    threads: int = setting(1, THREADS_HELP)  # 1: one is faster for models this small, on a busy CPU
    save_models: bool = setting(True, "save each trained model as out_dir/<model>/ckpt.pt for the other lab commands")


def check_settings(cfg: InductionConfig) -> None:
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "max_iters", "batch_size",
                 "eval_interval", "eval_sequences"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.skip_prob <= 1.0:
        raise UserError(f"skip_prob is a probability: give a number from 0 to 1, got {cfg.skip_prob}")
    if cfg.control_n_layer < 0:
        raise UserError(f"control_n_layer must be 0 (no control) or more, got {cfg.control_n_layer}")
    if cfg.vocab_size < 2:
        raise UserError(f"vocab_size must be at least 2, got {cfg.vocab_size}")
    if not 2 <= cfg.min_segment <= cfg.max_segment:
        raise UserError(f"segments need 2 <= min_segment <= max_segment, got {cfg.min_segment} and {cfg.max_segment}")
    if 2 * cfg.max_segment > cfg.block_size + 1:
        raise UserError(f"two copies of a {cfg.max_segment}-token segment do not fit in block_size {cfg.block_size} "
                        f"+ 1 tokens: lower max_segment to {(cfg.block_size + 1) // 2} or raise block_size")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if cfg.learning_rate <= 0:
        raise UserError(f"learning_rate must be positive, got {cfg.learning_rate}")


MODEL_NAMES = {1: "one_layer", 2: "two_layer", 3: "three_layer", 4: "four_layer"}


def model_name(n_layer: int) -> str:
    return MODEL_NAMES.get(n_layer, f"{n_layer}_layer")


def head_labels(n_layer: int, n_head: int) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(n_layer) for head in range(n_head)]


# ---------------------------------------------------------------------------------------------------
# Measuring a model on the held-out sequences


@torch.no_grad()
def measure(model: GPT, held_out: RepeatBatch, keys: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """The losses and head scores of `model` on the held-out sequences, and its attention [n_layer, B, nh, T, T]."""
    losses, weights = forward_with_attention(model, held_out.x, held_out.y)
    repeat, first = held_out.repeat_mask(), held_out.first_mask()
    record = {
        "first_loss": masked_mean(losses, first),
        "repeat_loss": masked_mean(losses, repeat),
        "other_loss": masked_mean(losses, ~(repeat | first)),
        "icl_score": icl_score(losses.mean(dim=0)),
        "induction": induction_scores(weights, keys).tolist(),  # [n_layer][nh]
        "previous_token": previous_token_scores(weights).tolist(),
    }
    return record, weights


def repeat_loss_with_heads_off(model: GPT, held_out: RepeatBatch, heads: list[tuple[int, int]]) -> float:
    with torch.no_grad(), heads_off(model, heads):
        logits, _ = model(held_out.x, all_logits=True)
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), held_out.y, reduction="none")
    return masked_mean(losses, held_out.repeat_mask())


def ablation(model: GPT, held_out: RepeatBatch, induction: list[list[float]], threshold: float) -> dict[str, Any]:
    """The repeat's loss with every head on, with each head off, and with all induction heads off at once."""
    n_layer, n_head = len(induction), len(induction[0])
    heads = head_labels(n_layer, n_head)
    chosen = [(layer, head) for layer, head in heads if induction[layer][head] > threshold]
    baseline = repeat_loss_with_heads_off(model, held_out, [])
    both_off = repeat_loss_with_heads_off(model, held_out, chosen) if chosen else baseline
    return {
        "threshold": threshold,
        "baseline": baseline,
        "each_head": {plots.head_name(l, h): repeat_loss_with_heads_off(model, held_out, [(l, h)]) for l, h in heads},
        "induction_heads": [plots.head_name(l, h) for l, h in chosen],
        "induction_heads_off": both_off,
        "increase": both_off - baseline,
    }


def change_step(history: list[dict[str, Any]]) -> int | None:
    """The step of the phase change: the first measurement where the best induction score has come half way from
    its start to its end. None when no head ends as an induction head (best score below 0.3)."""
    best = [max(max(row) for row in h["induction"]) for h in history]
    if best[-1] < 0.3:
        return None
    half = best[0] + 0.5 * (best[-1] - best[0])
    return next(h["step"] for h, b in zip(history, best) if b >= half)


# ---------------------------------------------------------------------------------------------------
# The experiment


def make_skip_rule(cfg: InductionConfig) -> torch.Tensor:
    """The fixed rule of the filler: token t is rule[token t - 2] (with probability skip_prob)."""
    return torch.randperm(cfg.vocab_size, generator=torch.Generator().manual_seed(cfg.seed + 7))


def build_model(cfg: InductionConfig, n_layer: int, device: torch.device) -> GPT:
    torch.manual_seed(cfg.seed)
    # GPT-2's architecture pinned (learned positions, LayerNorm, no QK-norm, GPT-2's init), whatever the model's
    # defaults become: the measurements in BENCHMARKS.md are of it. Only the output layer's tying is a setting.
    architecture = dict(ARCHITECTURES["gpt2"], tie_embeddings=cfg.tie_embeddings)
    config = GPTConfig(vocab_size=cfg.vocab_size, block_size=cfg.block_size, n_layer=n_layer, n_head=cfg.n_head,
                       n_embd=cfg.n_embd, attention_only=True, **architecture)
    model = GPT(config)
    if not cfg.tie_embeddings:
        # The output layer starts as a copy of the token embedding, as if tied, then trains on its own: a head
        # that copies a token's embedding forward then already raises that token's logit, which is what the
        # induction circuit's second head has to do. (From an independent random init, the runs measured found
        # a different, diffuse way to predict the repeat, with no head scoring as an induction head.)
        with torch.no_grad():
            model.lm_head.weight.copy_(model.transformer.wte.weight)
    return model.to(device)


def train_and_measure(cfg: InductionConfig, n_layer: int, held_out: RepeatBatch, device: torch.device,
                      say=print) -> tuple[GPT, dict[str, Any]]:
    """Train one model, measuring it every eval_interval steps; then ablate its heads."""
    model = build_model(cfg, n_layer, device)
    keys = held_out.induction_keys()
    data = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches for every model
    skip_rule = make_skip_rule(cfg)
    history: list[dict[str, Any]] = []
    example_attention: list[torch.Tensor] = []  # [n_layer, nh, T, T] of held-out sequence 0, at each measurement
    started = time.perf_counter()

    def record(step: int) -> None:
        entry, weights = measure(model, held_out, keys)
        history.append({"step": step, "seconds": round(time.perf_counter() - started, 2), **entry})
        example_attention.append(weights[:, 0].float().cpu())
        if step % (cfg.eval_interval * 5) == 0 or step == cfg.max_iters:
            best = max(max(row) for row in entry["induction"])
            best_previous = max(max(row) for row in entry["previous_token"])
            say(f"  {model_name(n_layer)} step {step:>5}: repeat loss {entry['repeat_loss']:.3f}, first occurrence "
                f"{entry['first_loss']:.3f}, best induction score {best:.2f}, best previous-token score {best_previous:.2f}")

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = repeat_batch(cfg.batch_size, cfg.block_size, cfg.vocab_size, cfg.min_segment, cfg.max_segment, data,
                             skip_rule, cfg.skip_prob)
        return batch.x.to(device), batch.y.to(device)

    train(model, cfg, next_batch, record, grad_clip=cfg.grad_clip)
    model.eval()
    final = history[-1]
    flat = [(score, layer, head) for layer, row in enumerate(final["induction"]) for head, score in enumerate(row)]
    best_score, best_layer, best_head = max(flat)
    prev = [(score, layer, head) for layer, row in enumerate(final["previous_token"]) for head, score in enumerate(row)]
    prev_score, prev_layer, prev_head = max(prev)
    step_of_change = change_step(history)
    result = {
        "n_layer": n_layer,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
        "final": {k: final[k] for k in ("first_loss", "repeat_loss", "other_loss", "icl_score")},
        "best_induction_head": plots.head_name(best_layer, best_head),
        "best_induction_score": best_score,
        "best_previous_token_head": plots.head_name(prev_layer, prev_head),
        "best_previous_token_score": prev_score,
        "change_step": step_of_change,
        "ablation": ablation(model, held_out, final["induction"], cfg.ablation_threshold),
        "history": history,
    }
    result["_attention"] = attention_moments(history, example_attention, step_of_change)
    return model, result


def attention_moments(history: list[dict[str, Any]], attention: list[torch.Tensor],
                      step_of_change: int | None) -> list[tuple[str, torch.Tensor]]:
    """The example's attention before the change (the last measurement whose best induction score had risen less
    than a fifth of the way) and at the end; without a change, at the start and at the end."""
    best = [max(max(row) for row in h["induction"]) for h in history]
    before = 0
    if step_of_change is not None:
        low = best[0] + 0.2 * (best[-1] - best[0])
        before = max(i for i, b in enumerate(best) if b <= low and history[i]["step"] <= step_of_change)
    return [(f"step {history[before]['step']}", attention[before]), (f"step {history[-1]['step']}", attention[-1])]


def save_model(model: GPT, cfg: InductionConfig, path) -> None:
    save_checkpoint({"model_config": dataclasses.asdict(model.config), "model": clean_state_dict(model),
                     "tokenizer": synthetic_tokenizer(cfg.vocab_size).to_dict(), "step": cfg.max_iters,
                     "config": {"lab": "induction", **dataclasses.asdict(cfg)}}, path)


def verdicts(report: dict[str, Any], cfg: InductionConfig) -> dict[str, bool]:
    """The results the experiment is expected to show (README: "The lab"), each true or false."""
    models = report["models"]
    checks: dict[str, bool] = {}
    main_run = models.get(model_name(cfg.n_layer))
    if main_run:
        checks["repeat loss <= 1.0 nats"] = main_run["final"]["repeat_loss"] <= 1.0
        checks["best induction score >= 0.5"] = main_run["best_induction_score"] >= 0.5
        checks["induction heads off raise the repeat loss by >= 1 nat"] = main_run["ablation"]["increase"] >= 1.0
    control = models.get(model_name(cfg.control_n_layer)) if cfg.control_n_layer else None
    if control and cfg.control_n_layer < cfg.n_layer:
        checks["control's repeat loss >= 3.0 nats"] = control["final"]["repeat_loss"] >= 3.0
    return checks


def run(cfg: InductionConfig, say=print) -> dict[str, Any]:
    check_settings(cfg)
    set_threads(cfg.threads)
    out = prepare_out_dir(cfg.out_dir, "report.json", cfg.overwrite)
    device = pick_device(cfg.device)
    held_out = repeat_batch(cfg.eval_sequences, cfg.block_size, cfg.vocab_size, cfg.min_segment, cfg.max_segment,
                            torch.Generator().manual_seed(cfg.seed + 1_000_003), make_skip_rule(cfg), cfg.skip_prob)
    held_out = RepeatBatch(held_out.ids.to(device), held_out.first_start.to(device), held_out.copy_start.to(device),
                           held_out.length.to(device))
    started = time.perf_counter()
    say(f"induction: {cfg.max_iters} steps of {cfg.batch_size} x {cfg.block_size} tokens per model, vocabulary "
        f"{cfg.vocab_size} (uniform guess: {math.log(cfg.vocab_size):.2f} nats), on {device.type}")
    layer_counts = [cfg.n_layer] + ([cfg.control_n_layer] if cfg.control_n_layer else [])
    runs: dict[str, dict[str, Any]] = {}
    for n_layer in layer_counts:
        model, result = train_and_measure(cfg, n_layer, held_out, device, say)
        runs[model_name(n_layer)] = result
        if cfg.save_models:
            save_model(model, cfg, out / model_name(n_layer) / "ckpt.pt")

    report = {
        "settings": dataclasses.asdict(cfg),
        "uniform_loss": math.log(cfg.vocab_size),
        "seconds": round(time.perf_counter() - started, 1),
        "models": {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in runs.items()},
    }
    report["checks"] = verdicts(report, cfg)
    write_json(out / "report.json", report)

    main_run = runs[model_name(cfg.n_layer)]
    drawn = plots.draw_losses(out / "losses.png", runs)
    if drawn:
        plots.draw_head_scores(out / "head_scores.png", runs)
        plots.draw_attention_snapshots(out / "attention.png", [(t, w.numpy()) for t, w in main_run["_attention"]])
        plots.draw_ablation(out / "ablation.png", model_name(cfg.n_layer), main_run["ablation"])
    say(summary(report))
    say(f"wrote {out / 'report.json'}" + (", losses.png, head_scores.png, attention.png, ablation.png" if drawn else "")
        + (f"; models in {out}/<model>/ckpt.pt" if cfg.save_models else ""))
    return report


def summary(report: dict[str, Any]) -> str:
    rows = []
    for name, r in report["models"].items():
        rows.append([name, r["final"]["first_loss"], r["final"]["repeat_loss"], r["final"]["icl_score"],
                     f"{r['best_induction_head']} {r['best_induction_score']:.2f}",
                     f"{r['best_previous_token_head']} {r['best_previous_token_score']:.2f}",
                     r["change_step"], r["ablation"]["induction_heads_off"]])
    lines = [table(rows, ["model", "first occ.", "repeat", "ICL score", "best induction head",
                          "best prev-token head", "change at step", "repeat, induction heads off"])]
    for name, r in report["models"].items():
        ab = r["ablation"]
        each = ", ".join(f"{head} {loss:.2f}" for head, loss in ab["each_head"].items())
        lines.append(f"{name} ablation: none {ab['baseline']:.2f}; each head off: {each}")
        if ab["induction_heads"]:
            lines.append(f"  induction heads (score > {ab['threshold']}) {', '.join(ab['induction_heads'])} off together: "
                         f"{ab['induction_heads_off']:.2f} ({ab['increase']:+.2f} nats)")
    for check, ok in report["checks"].items():
        lines.append(f"{'pass' if ok else 'FAIL'}  {check}")
    lines.append(f"time {report['seconds']:.0f} s")
    return "\n".join(lines)


DESCRIPTION = """Train a two-layer attention-only model and a one-layer control on random sequences with a repeated
segment; record the losses, the in-context learning score and every head's induction and previous-token
scores during training; switch heads off at the end. Example:
  python -m gpt.lab induction --out_dir out/lab/induction"""


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(InductionConfig, argv, prog="python -m gpt.lab induction", description=DESCRIPTION)
    run(cfg)
    return 0
