"""Optimizers and learning-rate schedules: how the loss's gradient becomes a change of the weights.

Its place in the flow: gpt/trainer.py computes the gradient of the loss (model -> loss -> backward) and
asks here for the optimizer that applies it and for the learning rate at each step.

Two optimizers: AdamW for every weight (GPT-2's choice), or Muon for the 2-D weight matrices inside the
blocks with AdamW for the rest (embeddings, LM head, norm gains, biases). Two schedule shapes after a linear
warmup: a cosine, or warmup-stable-decay. Either runs over max_iters steps, or over max_seconds of wall
clock when that is set, so that a run given N seconds finishes its decay within them on any machine.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gpt.errors import UserError


def run_progress(step: int, cfg, elapsed: float = 0.0) -> float:
    """How far the run is past its warmup towards its end, from 0 to 1: in steps (up to lr_decay_iters, or
    max_iters) or, with max_seconds, in seconds of run time: whichever is further, since the run ends
    when either budget is spent."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    if cfg.max_seconds > 0:
        progress = max(progress, elapsed / cfg.max_seconds)
    return min(1.0, max(0.0, progress))


def learning_rate_at(step: int, cfg, elapsed: float = 0.0) -> float:
    """Linear warmup over warmup_iters, then learning_rate follows the schedule down to min_lr at the run's end.

    cosine: half a cosine from learning_rate to min_lr over the whole run (GPT-2, nanoGPT).
    wsd: warmup-stable-decay (MiniCPM, Hu et al. 2024; modded-nanogpt): learning_rate held until the last
    decay_fraction of the run, then a straight line down to min_lr. Most of the loss drops in that final
    decay; holding the peak rate until then makes faster progress than a cosine's early decline.
    """
    if not cfg.decay_lr:
        return cfg.learning_rate
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    progress = run_progress(step, cfg, elapsed)
    if cfg.lr_schedule == "wsd":
        remaining = 1.0 - progress
        shape = min(1.0, remaining / cfg.decay_fraction) if cfg.decay_fraction > 0 else 1.0 if remaining else 0.0
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + shape * (cfg.learning_rate - cfg.min_lr)


def set_learning_rate(optimizer, lr: float) -> None:
    """Each parameter group steps at lr times its lr_scale (Muon's rate is a multiple of AdamW's)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay the matrices (and embeddings), not the biases and LayerNorm gains: shrinking a gain or a bias
    towards zero is not a useful prior, shrinking large weights is."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]], cfg) -> torch.optim.AdamW:
    # The fused kernel updates each parameter in one pass instead of about ten separate operations: fewer
    # launches on a GPU, 1.1x a whole training step on the CPU for small models (BENCHMARKS.md). Devices
    # (or torch versions) without it get the default implementation.
    try:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


def make_optimizer(model: torch.nn.Module, cfg):
    """AdamW for every weight, or (optimizer = "muon") Muon for the blocks' matrices and AdamW for the rest.

    On a GPU, Muon is torch.optim.Muon (torch >= 2.9). On a CPU it is the Muon class below, the same step with
    the orthogonalisation in fp32: torch's runs it in bf16, 3-6x slower on this project's CPU (BENCHMARKS.md).
    """
    hidden = hidden_matrices(model)
    if cfg.optimizer == "adamw" or not hidden:  # (a LoRA run trains no hidden matrix of the model's own)
        return adamw(param_groups(model, cfg.weight_decay), cfg)
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not h for h in hidden)]
    # Muon's orthogonalised steps have a fixed size, about 1 per singular direction, and take a rate about 10x
    # AdamW's (modded-nanogpt: 0.05 against 0.008 for the head). It follows the same schedule, scaled.
    muon_settings = dict(lr=cfg.learning_rate * cfg.muon_lr_scale, momentum=cfg.muon_momentum,
                         weight_decay=cfg.weight_decay)
    muon = muon_class(hidden[0].device)(hidden, **muon_settings)
    muon.param_groups[0]["lr_scale"] = cfg.muon_lr_scale
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    return MuonAndAdamW(muon, adamw(groups, cfg))


def muon_class(device: torch.device) -> type[torch.optim.Optimizer]:
    """torch.optim.Muon on a GPU (torch >= 2.9), the fp32 Muon below elsewhere."""
    if device.type != "cuda":
        return Muon
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"optimizer = 'muon' on a GPU needs torch >= 2.9 (this is {torch.__version__}): upgrade "
                        "torch, or use optimizer = 'adamw'")
    return torch.optim.Muon


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the Transformer blocks: Muon's share. The embeddings and the LM head stay with
    AdamW: a lookup table's rows and the head's scores are not the hidden-layer maps Muon is built for."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and ".h." in f".{name}" and name.endswith("weight")]


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """About U V^T for g = U S V^T: the same directions as g, every singular value near 1.

    A quintic Newton-Schulz iteration, x <- a x + (b A + c A^2) x with A = x x^T, whose coefficients (Jordan
    et al. 2024) push the singular values up fast rather than exactly: they land around 0.7 to 1.2 in 5 steps.
    In fp32 by default: on this project's CPU torch's bf16 iteration ran 3-6x slower for these small matrices.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype or torch.float32)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix x x^T
    x = x / x.norm().clamp(min=1e-7)  # Frobenius norm >= spectral norm: every singular value now <= 1
    for _ in range(steps):
        A = x @ x.T
        x = torch.addmm(x, torch.addmm(A, A, A, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024, from the modded-nanogpt speedrun): momentum, then step along the momentum's
    orthogonalised form, for 2-D weight matrices.

    A gradient matrix is dominated by a few directions; orthogonalising it moves the weights by the same
    amount along every direction it has, rare ones included. The step is torch.optim.Muon's (torch >= 2.9,
    checked against it in tests/test_optim.py): Nesterov momentum, decoupled weight decay, and the learning
    rate scaled by sqrt(rows / columns) for tall matrices; only the orthogonalisation runs in fp32.
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0, ns_steps: int = 5,
                 ns_dtype: torch.dtype | None = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        if any(p.dim() != 2 for group in self.param_groups for p in group["params"]):
            raise ValueError("Muon only takes 2-D weight matrices")

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])  # a running average of the gradients
                update = p.grad.lerp(buf, group["momentum"])  # Nesterov: the gradient, then most of the average
                update = orthogonalize(update, group["ns_steps"], self.ns_dtype)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)


class MuonAndAdamW:
    """Muon for the hidden matrices, AdamW for the rest, stepped together as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"muon", "adamw"}:
            raise UserError("the checkpoint's optimizer state is AdamW's, not Muon's: resume with optimizer = "
                            "'adamw', or start a new run")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def set_hyperparameters(optimizer, cfg) -> None:
    """Put the run's betas, momentum and weight decay into the optimizer's groups.

    Loading a saved optimizer state (on resume) brings back the saved groups' hyperparameters; the settings of
    the resumed run (which the command line may change) must win, or they would be recorded but not applied.
    The learning rate is set at every step by the schedule. Matrices decay, gains and biases do not.
    """
    for group in optimizer.param_groups:
        if "betas" in group:  # AdamW's
            group["betas"] = (cfg.beta1, cfg.beta2)
        else:  # Muon's
            group["momentum"] = cfg.muon_momentum
        group["weight_decay"] = cfg.weight_decay if all(p.dim() >= 2 for p in group["params"]) else 0.0


def schedule_note(cfg: Any) -> str | None:
    """One line when the run will end before its learning-rate schedule does (lr_decay_iters past max_iters):
    the last steps, where most of the loss drops, would then run near the peak rate instead of decaying."""
    if not cfg.decay_lr or cfg.max_iters == 0 or cfg.lr_decay_iters <= cfg.max_iters:
        return None
    share = learning_rate_at(cfg.max_iters - 1, cfg) / cfg.learning_rate
    unless = " (unless max_seconds ends it first)" if cfg.max_seconds else ""
    return (f"note: lr_decay_iters={cfg.lr_decay_iters} is past max_iters={cfg.max_iters}: the run ends{unless} with "
            f"the learning rate still at {share:.0%} of its peak, not min_lr; --lr_decay_iters=0 makes the schedule "
            "follow max_iters")
