"""Optimizers and learning-rate schedules: how the loss's gradient becomes a change of the weights.

Its place in the flow: gpt/trainer.py computes the gradient of the loss (model -> loss -> backward) and
asks here for the optimizer that applies it and for the learning rate at each step.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def learning_rate_at(step: int, cfg) -> float:
    """Linear warmup over warmup_iters, then a cosine from learning_rate down to min_lr at lr_decay_iters."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay the matrices (and embeddings), not the biases and LayerNorm gains: shrinking a gain or a bias
    towards zero is not a useful prior, shrinking large weights is."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over param_groups, with the run's learning rate, betas and weight decay."""
    groups = param_groups(model, cfg.weight_decay)
    # The fused kernel updates each parameter in one pass instead of about ten separate operations: fewer
    # launches on a GPU, 1.1x a whole training step on the CPU for small models (BENCHMARKS.md). Devices
    # (or torch versions) without it get the default implementation.
    try:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


def set_hyperparameters(optimizer: torch.optim.Optimizer, cfg) -> None:
    """Put the run's betas and weight decay into the optimizer's groups.

    Loading a saved optimizer state (on resume) brings back the saved groups' hyperparameters; the settings of
    the resumed run (which the command line may change) must win, or they would be recorded but not applied.
    The learning rate is set at every step by the schedule. The groups are param_groups' two: decay, no decay.
    """
    for group, weight_decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
        group["betas"] = (cfg.beta1, cfg.beta2)
        group["weight_decay"] = weight_decay
