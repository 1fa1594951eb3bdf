"""LoRA adapters: fine-tune a frozen model by learning a small, low-rank change to some of its weight matrices.

Its place in the flow: between the model a run starts from (gpt/runtime.py:starting_model) and the training loop,
which does not know about adapters (it trains whatever requires a gradient); and between a checkpoint and the
model that sampling, evaluation and serving use (gpt/checkpoint.py:load_model opens adapter checkpoints through
the hook gpt/post registers in gpt/layers.py).

The idea (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): fine-tuning changes a weight
matrix W [out, in] by some ΔW, and that change has low "intrinsic rank". So learn it as a product of two thin
matrices and leave W alone:

    ΔW = (alpha / r) · B A            A [r, in], B [out, r], rank r << in, out
    y  = x Wᵀ + (alpha / r) · (x Aᵀ) Bᵀ          W frozen; only A and B train

B starts at zero, so a fresh adapter changes nothing: training starts exactly from the base model. A starts
random (as a Linear layer's weight), so B's first gradients are not zero. For a 768 x 768 matrix, rank 8 is
12,288 trained numbers instead of 589,824; AdamW keeps two more numbers per trained one, so optimizer memory
shrinks with them, and an adapter file is megabytes where the model is hundreds. One base can serve many tasks,
one small adapter each. Fixing alpha while trying ranks keeps the update's size roughly the same (the paper's
advice), so the learning rate need not be tuned again for each rank.

Which matrices (`lora_targets`) are named as in the model, relative to a block: "attn.c_attn" (queries, keys,
values), "attn.c_proj", "mlp.c_fc", "mlp.c_proj", a whole sub-layer ("attn", "mlp"), and outside the blocks
"wte" (a low-rank change of the token embedding), "lm_head" (when it is not tied to wte), or "head": the LM
head when it is untied, nothing when it is tied; and "tokens", which is not a low-rank change: every row of
the token embedding trains in full. The default is every Linear layer of the blocks, the untied head and the
embedding's rows ("attn", "mlp", "head", "tokens"). The LoRA paper adapted only attention, but later work
(QLoRA, Dettmers et al. 2023) found that adapting all of a block's Linear layers is what brings LoRA close to
full fine-tuning, for a cost that is still small (16 r C numbers per block of width C, against 12 C² in the
block itself). The head is adapted because a new task changes what the model says most of all: measured on
the task suite, full fine-tuning moved an untied head by 73% of its norm (the blocks' matrices 20-40%),
nearly all of it within rank 8. The embedding's rows train because a new task gives familiar tokens new
jobs: on the task suite, full fine-tuning's model with its embedding change put back (every other weight
kept) answered 24% of new inputs instead of 65% (BENCHMARKS.md), and no adapter behind the embedding can
tell apart two tokens the base gave the same row. They cost V x C numbers, a few percent of a character-level
model (222 x 128 here), but a third of GPT-2 124M (50,257 x 768): there, "attn,mlp,head" keeps the adapter
small, and "wte" gives the embedding a low-rank change instead. In GPT-2's architecture the head is the
token embedding (tied): "head" adds nothing there, and "tokens" or "wte" change both ends.

The adapter, in four modules of gpt/post, each with one job:
    gpt/post/lora.py           the settings and the adapted layers' math (this file: read it like gpt/model.py)
    gpt/post/adapters.py       attach, remove, switch off, merge: adapters on a GPT, from outside (model.py unchanged)
    gpt/post/adapter_files.py  an adapter in a checkpoint: its base's fingerprint, finding the base, opening both,
                               and the `LoRA` adaptation the core's hooks call (gpt/layers.py)
    gpt/post/export.py         python -m gpt.lora merge / export (an adapter -> a plain checkpoint, or peft's format)

An adapter run's checkpoints (best.pt, ckpt.pt) hold the adapter instead of the model's weights:

    adapter   {"settings": {rank, alpha, dropout, targets}, "weights": {name: tensor},
               "base": {"path", "from_out_dir", "fingerprint", "model_config"}, "new_rows_from": id or None}

next to the usual model_config (the adapted model's shape), tokenizer, config, step (and, in ckpt.pt, the
optimizer state of the adapter's parameters only). Loading one finds the base where the run found it (or
beside the out_dir, if both moved together, or at an explicit --base), checks its shape and fingerprint, and
applies the adapter.

New tokens. Tuning on conversations adds special tokens that a pretrained base may not have, and its embedding
(and tied head) grows rows for them. Those rows were never trained, so an adapter run trains them as well, in
full (a few rows of n_embd numbers each), and saves them with the adapter ("new_rows"; rows new_rows_from..
of both matrices): the base file stays as it was, and the adapter alone carries what the new tokens mean.
The "tokens" target uses the same mechanism for the whole embedding: its "new_rows" are all of its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.errors import UserError
from gpt.model import GPT

# "head": the LM head when it is a matrix of its own (untied: the "modern" arch), and nothing more when it is the
# token embedding (tied: GPT-2's), which only a "wte" or "tokens" target changes. A new task changes the head
# most: full fine-tuning on the task suite moved the untied head by 73% of its norm against 20-40% for the
# blocks' matrices, and 99% of that change lay in 8 directions (docs/adapters.md): a frozen head held every
# adapter back.
HEAD = "head"
# "tokens": every row of the token embedding trained in full (V x C numbers), not a low-rank change to it. A task
# suite gives familiar characters new jobs (letters to copy, reverse, count): measured on it, full fine-tuning's
# embedding change carried more than half of what it learned (BENCHMARKS.md), and a frozen embedding held the
# adapters back.
TOKENS = "tokens"
DEFAULT_TARGETS = ["attn", "mlp", HEAD, TOKENS]
ADAPTER_KEYS = ("lora_A", "lora_B", "new_rows")  # the names of an adapter's parameters inside each adapted layer


@dataclass(frozen=True)
class LoRASettings:
    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(DEFAULT_TARGETS)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoRASettings:
        return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]))


def split_targets(targets: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """lora_targets as given ("attn,mlp", or a list) -> ("attn", "mlp")."""
    return tuple(name.strip() for item in targets for name in str(item).split(",") if name.strip())


def check_settings(rank: int, alpha: float, dropout: float, targets: list[str] | tuple[str, ...]) -> None:
    """The LoRA settings of a run, before anything is loaded: one line saying what to change."""
    if rank < 0:
        raise UserError(f"lora_rank must be at least 1, or 0 for full fine-tuning; got {rank}")
    if alpha <= 0:
        raise UserError(f"lora_alpha must be positive (the update is scaled by lora_alpha / lora_rank); got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"lora_dropout must be in [0, 1), got {dropout}")
    if rank and not split_targets(targets):
        raise UserError(f"lora_targets is empty: name the layers to adapt, e.g. --lora_targets={','.join(DEFAULT_TARGETS)}")


def settings_of(cfg: Any) -> LoRASettings:
    """The LoRASettings of a training config (its lora_* settings)."""
    return LoRASettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, split_targets(cfg.lora_targets))


# ---------------------------------------------------------------------------------------------------
# The adapted layers. Each takes the place of a layer of the model and shares that layer's parameters under
# their original names (weight, bias), so the base's state_dict keys are unchanged and its tensors are the
# same objects; the adapter adds lora_A and lora_B beside them (and new_rows: see LoRALayer.add_new_rows).


class LoRALayer(nn.Module):
    """What every adapted layer has: the base layer's own weight (frozen, shared), the low-rank factors A and B
    with their scale (none at rank 0), a switch for them, and, for the token embedding and the LM head, rows
    trained for the tokens the base never saw (a vocabulary grown for new special tokens)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None):
        super().__init__()
        self.weight = weight
        self.register_parameter("bias", bias)  # None for a layer without bias
        self.register_parameter("lora_A", None)
        self.register_parameter("lora_B", None)
        self.register_parameter("new_rows", None)
        self.first_new_row = weight.shape[0]
        self.scaling = 1.0
        self.enabled = True  # False: the low-rank change is off, and the layer computes what the base layer does

    @property
    def rank(self) -> int:
        return 0 if self.lora_A is None else self.lora_A.shape[0]

    def add_new_rows(self, first: int) -> None:
        """Train rows first.. of the weight (one per token, in the embedding [V, C] as in the head [V, C]), starting
        from their values now. The base's rows for those tokens were never trained (a grown or padded vocabulary),
        and one row of a matrix cannot train while the others stay frozen: they become a parameter of their own."""
        self.first_new_row = first
        self.new_rows = nn.Parameter(self.weight[first:].detach().clone())

    def matrix(self) -> torch.Tensor:
        """The base's weight with the trained rows in place of its last ones (the base's own, when switched off)."""
        if self.new_rows is None or not self.enabled:
            return self.weight
        return torch.cat([self.weight[: self.first_new_row], self.new_rows])

    def delta(self) -> torch.Tensor:
        """ΔW, the low-rank change to the base layer's weight, in that weight's layout."""
        raise NotImplementedError


class LoRALinear(LoRALayer):
    """y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ, with W and b the base layer's own (frozen) parameters."""

    def __init__(self, base: nn.Linear, rank: int, scaling: float, dropout: float):
        super().__init__(base.weight, base.bias)
        self.in_features, self.out_features = base.in_features, base.out_features
        if rank:
            like = {"device": base.weight.device, "dtype": base.weight.dtype}
            self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))  # [r, in]
            self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))  # [out, r]: zero, a no-op at first
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # how nn.Linear initialises its own weight
        self.scaling = scaling
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.matrix(), self.bias)  # [..., out]: the base layer
        if not self.enabled or self.lora_A is None:
            return y
        # [..., in] -> [..., r] -> [..., out]: two thin matmuls; the full [out, in] update is never formed. Scaled
        # while r wide, and added in place (the backward pass does not need y): no more [..., out] tensors than that.
        h = F.linear(self.lora_dropout(x), self.lora_A) * self.scaling  # [..., r]
        return y.add_(F.linear(h, self.lora_B))

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # [out, in]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


class LoRAEmbedding(LoRALayer):
    """The token embedding E [V, C] plus a low-rank change (alpha / r) · (B A)ᵀ, A [r, V], B [C, r].

    An embedding is a Linear layer applied to one-hot vectors [V] -> [C] whose weight is Eᵀ, so the factors keep
    LoRALinear's layout: looking up token t reads column t of A (r numbers), and B maps them to the C channels.
    A starts from N(0, 1) rather than a Linear's small init: a lookup reads single entries of A, not sums of many.
    """

    def __init__(self, base: nn.Embedding, rank: int, scaling: float):
        super().__init__(base.weight)
        self.num_embeddings, self.embedding_dim = base.weight.shape
        if rank:
            like = {"device": base.weight.device, "dtype": base.weight.dtype}
            self.lora_A = nn.Parameter(torch.randn(rank, self.num_embeddings, **like))  # [r, V]
            self.lora_B = nn.Parameter(torch.zeros(self.embedding_dim, rank, **like))  # [C, r]
        self.scaling = scaling

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        y = F.embedding(idx, self.matrix())  # [B, T, C]
        if not self.enabled or self.lora_A is None:
            return y
        return y.add_(F.linear(F.embedding(idx, self.lora_A.t()) * self.scaling, self.lora_B))  # [B, T, r] -> [B, T, C]

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).t() * self.scaling  # [V, C], E's layout


class LoRATiedHead(LoRALayer):
    """The LM head of a model whose head IS its token embedding (tied weights): when the embedding is adapted, the
    head scores with the adapted matrix too, so that merging the change into the one shared matrix gives the same
    model. logits = h (E + ΔE)ᵀ = h Eᵀ + (alpha / r) · (h B) A. Factors and new rows are the embedding's (tied too)."""

    def __init__(self, head: nn.Linear, embedding: LoRAEmbedding):
        super().__init__(head.weight, head.bias)
        self.in_features, self.out_features = head.in_features, head.out_features
        self.lora_A, self.lora_B, self.new_rows = embedding.lora_A, embedding.lora_B, embedding.new_rows
        self.first_new_row, self.scaling = embedding.first_new_row, embedding.scaling

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = F.linear(h, self.matrix(), self.bias)  # [..., V]
        if not self.enabled or self.lora_A is None:
            return y
        return y.add_((h @ self.lora_B * self.scaling) @ self.lora_A)  # [..., C] -> [..., r] -> [..., V]

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).t() * self.scaling  # the embedding's change: one matrix, merged once


# ---------------------------------------------------------------------------------------------------
# Which layers can be adapted, by name.


def short_name(module_name: str) -> str:
    """A layer's name as targets spell it: transformer.h.3.attn.c_attn -> attn.c_attn; transformer.wte -> wte."""
    parts = module_name.split(".")
    if len(parts) > 3 and parts[:2] == ["transformer", "h"]:
        return ".".join(parts[3:])
    return parts[-1]


def adaptable_layers(model: nn.Module) -> dict[str, str]:
    """Every layer an adapter can wrap: the Linear layers and the token embedding, full name -> target name."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Embedding) and name == "transformer.wte"):
            layers[name] = short_name(name)
    return layers


def valid_targets(model: nn.Module) -> list[str]:
    """The target names this model accepts: each layer's name, and each sub-layer that groups several."""
    names = set(adaptable_layers(model).values())
    return sorted(names | {name.split(".")[0] for name in names if "." in name} | {HEAD, TOKENS})


def head_is_tied(model: GPT) -> bool:
    return model.lm_head.weight is model.transformer.wte.weight


def resolve_targets(model: GPT, targets: tuple[str, ...]) -> list[str]:
    """The full names of the layers `targets` name, in the model's order; a UserError for a name that fits none."""
    layers = adaptable_layers(model)
    chosen: set[str] = set()
    for target in targets:
        if target == HEAD:  # the untied head; a tied one is the embedding, adapted only when wte is a target
            chosen |= set() if head_is_tied(model) else {"lm_head"}
            continue
        if target == TOKENS:  # trained rows, not a low-rank change: attach gives the embedding those (trains_rows)
            continue
        matches = {full for full, short in layers.items() if short == target or short.startswith(target + ".")}
        if not matches:
            hint = ""
            if target.split(".")[0] == "mlp" and getattr(model.config, "attention_only", False):
                hint = " (this model's blocks are attention-only: they have no MLP)"
            raise UserError(f"lora target {target!r} names no layer of this model{hint}; valid targets: "
                            f"{', '.join(valid_targets(model))}")
        chosen |= matches
    if "lm_head" in chosen and head_is_tied(model):
        raise UserError("lora target lm_head: this model's head is its token embedding (tied, one matrix), so it is "
                        "adapted with it: target wte instead, which changes both ends")
    return [name for name in layers if name in chosen]


