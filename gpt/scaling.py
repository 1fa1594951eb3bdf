"""One dial for size: `--depth N` sets the rest of a model's recipe by one rule, and the laws the rule comes from.

Its place in the flow: gpt/trainer.py's resolve_config calls `apply_rule` on the settings before checking them,
and, once the model is built, `steps_for_budget` turns a compute budget (max_flops) into optimizer steps.
`python -m gpt.lab scaling` (gpt/lab/scaling.py) trains the miniseries that measured the constants below, with
this same rule, and fits the laws with the functions at the end of this module.

The rule, for depth d (every value set here yields to one given explicitly, on the command line or in a TOML):

    n_layer = d,  n_embd = ASPECT * d,  n_head = n_embd / HEAD_DIM  (= d)
    learning_rate = BASE_LR * sqrt(BASE_WIDTH / n_embd)   (AdamW's: embeddings, head)
    muon_lr_scale = BASE_MUON_SCALE * sqrt(n_embd / BASE_WIDTH), so Muon's rate stays BASE_LR * BASE_MUON_SCALE
    min_lr = learning_rate / 10;  batch_size = max(16, 4 * d)
    max_flops = the compute at which this size is the compute-optimal one, by the fitted law N_opt(C)
    warmup_iters = 5% of the run's steps

Given a budget (max_flops) and no depth, the depth is the one whose size is nearest (in log) to N_opt(budget).

N, the size, is Kaplan et al.'s (2020) non-embedding parameter count: the blocks' weights, without the token
embedding and the LM head. It depends on the depth alone (not on the vocabulary, which the data decides later),
and it is what the laws are fitted in. C is the exact training compute: steps x tokens per step x
gpt/runtime.py's training_flops_per_token (the head and attention included).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from gpt.errors import UserError

# The shape: 16 channels per layer, in heads of 16. Kaplan et al. found the loss nearly independent of the aspect
# ratio (width / depth) over a wide range, so one fixed ratio loses little; a narrow one makes the sizes a CPU can
# train in minutes (depths 1 to 5: 3k to 380k parameters) fine enough steps apart to find an optimum among them
# (N grows as depth^3: 2x per step at depth 5; at 32 per layer depth 1 to 2 would be 8x). Depth 8 is 128 wide.
ASPECT = 16
HEAD_DIM = 16

# The learning rates, measured at the default shape (128 wide; BENCHMARKS.md "Quality per second" chose 2e-3 and
# Muon at 10x). AdamW's rate for the embeddings and head falls as 1/sqrt(width), as in nanochat (its
# dmodel_lr_scale); Muon's orthogonalised step already has the same size per direction at any width, so its rate
# is held fixed.
BASE_WIDTH = 128
BASE_LR = 2e-3
BASE_MUON_SCALE = 10.0

# The fitted law N_opt(C) = NOPT_COEF * C ** NOPT_EXP (N: non-embedding parameters, C: training FLOPs), from
#     python -m gpt.lab scaling --threads 1 --out_dir out/lab/scaling
# the default miniseries (Tiny Shakespeare, characters, block 64, depths 1-5 at 1e11, 3e11 and 1e12 FLOPs), run
# 2026-12-05 on the 2-core CPU machine; its report is kept in bench/results/scaling_lab.json. IsoFLOP optima 11.5k,
# 25.6k and 50.1k parameters (r2 0.994): depth 1 is the optimum for about 1.2e10 FLOPs, depth 2 for 3e11,
# depth 3 for 2e12, depth 4 for 8e12, depth 8 for 2e14. (Chinchilla's exponent is 0.50, Kaplan's 0.73.)
NOPT_COEF = 1.156e-3
NOPT_EXP = 0.6375

WARMUP_FRACTION = 0.05  # of the run's steps: about nanoGPT's 100 of 2000, enough for a few hundred steps' run


def shape(depth: int) -> dict[str, int]:
    width = ASPECT * depth
    return {"n_layer": depth, "n_embd": width, "n_head": max(1, width // HEAD_DIM)}


def block_params(n_layer: int, n_embd: int) -> int:
    """Non-embedding parameters of a block without biases: attention's 4 E^2 and the MLP's 8 E^2 per layer (the norms'
    gains, under 1% more, left out; the lab counts the model's own)."""
    return 12 * n_layer * n_embd * n_embd


def depth_params(depth: int) -> int:
    s = shape(depth)
    return block_params(s["n_layer"], s["n_embd"])


def optimal_params(flops: float) -> float:
    """N_opt(C): the compute-optimal non-embedding size for a budget of `flops`, by the fitted law."""
    return NOPT_COEF * flops ** NOPT_EXP


def optimal_flops(params: float) -> float:
    """The budget at which `params` is the compute-optimal size: the inverse of optimal_params."""
    return (params / NOPT_COEF) ** (1.0 / NOPT_EXP)


def best_depth(flops: float, max_depth: int = 64) -> int:
    """The depth whose size is nearest, in log, to N_opt(flops)."""
    target = math.log(optimal_params(flops))
    return min(range(1, max_depth + 1), key=lambda d: abs(math.log(depth_params(d)) - target))


def estimated_steps(cfg: Any, vocab_size: int = 0) -> int:
    """Steps that max_flops buys, before the vocabulary is known (the head's FLOPs left out unless vocab_size is
    given): for the warmup's length. The run's exact count is steps_for_budget's, once the model is built."""
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    flops_per_token = 6 * (block_params(cfg.n_layer, cfg.n_embd) + vocab_size * cfg.n_embd) \
        + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return max(1, int(cfg.max_flops // (flops_per_token * tokens_per_step)))


def steps_for_budget(cfg: Any, flops_per_token: float) -> int:
    """The steps of a run given max_flops: as many as the budget pays for (at least one)."""
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    return max(1, int(cfg.max_flops // (flops_per_token * tokens_per_step)))


def apply_rule(cfg: Any, given: set[str]) -> Any:
    """The settings with the rule applied: from cfg.depth (or, with a budget and no depth, the best depth for it),
    every derived setting not in `given` (the names set explicitly) is set. Unchanged when neither is set."""
    depth = cfg.depth
    if depth < 0:
        raise UserError(f"depth must be 0 (off) or a number of layers, got {depth}")
    if cfg.max_flops < 0:
        raise UserError(f"max_flops must not be negative, got {cfg.max_flops}")
    if depth == 0 and cfg.max_flops > 0 and not given & {"n_layer", "n_embd", "n_head"}:
        depth = best_depth(cfg.max_flops)
    out = cfg
    if depth > 0:
        derived: dict[str, Any] = dict(shape(depth), depth=depth)
        width = cfg.n_embd if "n_embd" in given else derived["n_embd"]
        if "n_embd" in given and "n_head" not in given:  # heads follow an explicit width
            derived["n_head"] = max(1, width // HEAD_DIM)
        derived["learning_rate"] = BASE_LR * math.sqrt(BASE_WIDTH / width)
        derived["muon_lr_scale"] = BASE_MUON_SCALE * math.sqrt(width / BASE_WIDTH)
        lr = cfg.learning_rate if "learning_rate" in given else derived["learning_rate"]
        derived["min_lr"] = lr / 10
        derived["batch_size"] = max(16, 4 * depth)
        if cfg.max_flops == 0 and "max_iters" not in given:
            # Train this size as long as the fitted law says it is the compute-optimal one for.
            derived["max_flops"] = float(f"{optimal_flops(depth_params(depth)):.3g}")
        out = dataclasses.replace(cfg, **{k: v for k, v in derived.items() if k not in given})
    if out.max_flops > 0 and "max_iters" not in given:
        out = dataclasses.replace(out, max_iters=estimated_steps(out))  # a bound; steps_for_budget: exact
    if (depth > 0 or out.max_flops > 0) and "warmup_iters" not in given:
        steps = min(out.max_iters, estimated_steps(out)) if out.max_flops > 0 else out.max_iters
        out = dataclasses.replace(out, warmup_iters=max(1, round(WARMUP_FRACTION * steps)))
    return out


# ---------------------------------------------------------------------------------------------------
# Fits: the IsoFLOP parabola and power laws (used by gpt/lab/scaling.py, tested on points with known answers).


def power_law(x: list[float], y: list[float]) -> dict[str, float]:
    """y = coef * x ** exponent, fitted by least squares in log-log; r2 of that line."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise ValueError("a power law needs at least two distinct x")
    slope, intercept = np.polyfit(lx, ly, 1)
    fitted = slope * lx + intercept
    residual = float(np.sum((ly - fitted) ** 2))
    total = float(np.sum((ly - ly.mean()) ** 2))
    return {"coef": float(math.exp(intercept)), "exponent": float(slope),
            "r2": 1.0 - residual / total if total > 0 else 1.0}


def isoflop_minimum(params: list[float], losses: list[float]) -> dict[str, Any]:
    """The minimum of loss against log(size) at one budget: a parabola through the best point and its neighbours
    (up to two each side), its vertex the optimum. At the edge of the sizes, or for a parabola that opens down,
    the best measured point, flagged: the sizes do not bracket the optimum."""
    order = np.argsort(params)
    n = np.log(np.asarray(params, float)[order])
    loss = np.asarray(losses, float)[order]
    best = int(np.argmin(loss))
    if best in (0, len(n) - 1) or len(n) < 3:
        return {"params": float(math.exp(n[best])), "loss": float(loss[best]), "curvature": None, "bracketed": False}
    lo, hi = max(0, best - 2), min(len(n), best + 3)
    a, b, c = np.polyfit(n[lo:hi], loss[lo:hi], 2)
    if a <= 0:
        return {"params": float(math.exp(n[best])), "loss": float(loss[best]), "curvature": None, "bracketed": False}
    vertex = float(np.clip(-b / (2 * a), n[lo], n[hi - 1]))
    return {"params": float(math.exp(vertex)), "loss": float(a * vertex ** 2 + b * vertex + c),
            "curvature": float(a), "bracketed": True}
