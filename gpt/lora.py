"""LoRA adapters: fine-tune a frozen model by learning a small, low-rank change to some of its weight matrices.

Its place in the flow: between the model a run starts from (gpt/runtime.py:starting_model) and the training loop,
which does not know about adapters (it trains whatever requires a gradient); and between a checkpoint and the
model that sampling, evaluation and serving use (gpt/checkpoint.py:load_model sends adapter checkpoints here).

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
"wte" (the token embedding) and "lm_head" (when it is not tied to wte). The default is every Linear layer of
the blocks ("attn", "mlp"): the LoRA paper adapted only attention, but later work (QLoRA, Dettmers et al. 2023)
found that adapting all of a block's Linear layers is what brings LoRA close to full fine-tuning, for a cost
that is still small (16 r C numbers per block of width C, against 12 C² in the block itself). The embedding
and head are left out by default: they are the largest matrices (vocabulary x C) and a new task rarely needs
new meanings for its tokens. In this model the head is the token embedding (tied), so "wte" adapts both ends.

What this module offers:
    attach, remove_adapter       put adapter layers in place of a GPT's Linear layers (and its token
                                 embedding), from outside: gpt/model.py is unchanged. The base's parameters
                                 are shared, never copied, and frozen.
    adapters_disabled(model)     a context manager: inside, the model computes exactly the base's logits
                                 (the frozen reference of preference tuning, without a second copy)
    read_adapter, use_adapter    load an adapter file; switch a loaded base to it (no reloading of the base)
    merge_adapter                fold ΔW into W: a plain model, as fast as the base
    fingerprint                  a hash of a model's weights: an adapter names the exact base it adapts
    python -m gpt.lora merge     an adapter checkpoint -> a plain checkpoint
    python -m gpt.lora export    an adapter -> Hugging Face peft's format (adapter_config.json +
                                 adapter_model.safetensors), for GPT-2-shaped bases

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import checkpoint as ckpt_io
from gpt.config import parse_args, setting
from gpt.errors import UserError, exit_on_user_error
from gpt.model import GPT, GPTConfig

DEFAULT_TARGETS = ["attn", "mlp"]
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


def _short_name(module_name: str) -> str:
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
            layers[name] = _short_name(name)
    return layers


def valid_targets(model: nn.Module) -> list[str]:
    """The target names this model accepts: each layer's name, and each sub-layer that groups several."""
    names = set(adaptable_layers(model).values())
    return sorted(names | {name.split(".")[0] for name in names if "." in name})


def _head_is_tied(model: GPT) -> bool:
    return model.lm_head.weight is model.transformer.wte.weight


def resolve_targets(model: GPT, targets: tuple[str, ...]) -> list[str]:
    """The full names of the layers `targets` name, in the model's order; a UserError for a name that fits none."""
    layers = adaptable_layers(model)
    chosen: set[str] = set()
    for target in targets:
        matches = {full for full, short in layers.items() if short == target or short.startswith(target + ".")}
        if not matches:
            hint = ""
            if target.split(".")[0] == "mlp" and getattr(model.config, "attention_only", False):
                hint = " (this model's blocks are attention-only: they have no MLP)"
            raise UserError(f"lora target {target!r} names no layer of this model{hint}; valid targets: "
                            f"{', '.join(valid_targets(model))}")
        chosen |= matches
    if "lm_head" in chosen and _head_is_tied(model):
        raise UserError("lora target lm_head: this model's head is its token embedding (tied, one matrix), so it is "
                        "adapted with it: target wte instead, which changes both ends")
    return [name for name in layers if name in chosen]


# ---------------------------------------------------------------------------------------------------
# Attaching, removing, switching off, merging.


@dataclass
class Attachment:
    """What attach() records on the model (as `model.lora`): the settings, where the base came from, and what to
    put back on removal."""

    settings: LoRASettings
    base: dict[str, Any] | None  # {"path", "from_out_dir", "fingerprint", "model_config"}; None if unknown
    new_rows_from: int | None = None  # the first token id whose embedding (and head) row the adapter trains
    originals: dict[str, nn.Module] = field(default_factory=dict)  # full name -> the layer replaced
    trainable: dict[str, bool] = field(default_factory=dict)  # requires_grad of each base parameter before


def attached(model: nn.Module) -> Attachment | None:
    """The adapter a model carries (None for a plain model); sees through torch.compile's and DDP's wrappers."""
    return getattr(_unwrapped(model), "lora", None)


def _unwrapped(model: nn.Module) -> nn.Module:
    while hasattr(model, "_orig_mod") or (hasattr(model, "module") and isinstance(model.module, nn.Module)):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


def _set_layer(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, layer)


def attach(model: GPT, settings: LoRASettings, base: dict[str, Any] | None = None,
           weights: dict[str, torch.Tensor] | None = None, new_rows_from: int | None = None) -> GPT:
    """Freeze `model` and put adapters of `settings` on the layers its targets name (in place; returns the model).

    New adapters start as a no-op (B = 0); `weights` (from adapter_weights) gives trained ones instead.
    `base` records where the model came from, for the checkpoints of a run (see base_reference).
    `new_rows_from`: the rows of the token embedding and the head from this token id on belong to tokens the base
    never saw (a vocabulary grown for new special tokens): they train too, and are saved with the adapter.
    """
    if attached(model) is not None:
        raise ValueError("the model already carries an adapter: remove_adapter (or use_adapter) first")
    if settings.rank < 1:
        raise ValueError(f"an adapter needs rank >= 1, got {settings.rank}")
    names = resolve_targets(model, settings.targets)
    tied = _head_is_tied(model)
    token_layers: list[str] = []
    if new_rows_from is not None and new_rows_from < model.config.vocab_size:
        token_layers = ["transformer.wte"] + ([] if tied else ["lm_head"])
    record = Attachment(settings, base, new_rows_from=new_rows_from if token_layers else None,
                        trainable={n: p.requires_grad for n, p in model.named_parameters()})
    for p in model.parameters():
        p.requires_grad_(False)  # the base is frozen: only the adapters' parameters will train
    for name in names + [n for n in token_layers if n not in names]:
        layer = model.get_submodule(name)
        record.originals[name] = layer
        rank = settings.rank if name in names else 0  # a token layer outside the targets: its new rows only
        if isinstance(layer, nn.Embedding):
            adapted: LoRALayer = LoRAEmbedding(layer, rank, settings.scaling)
        else:
            adapted = LoRALinear(layer, rank, settings.scaling, settings.dropout)
        if name in token_layers:
            adapted.add_new_rows(new_rows_from)
        _set_layer(model, name, adapted)
    if isinstance(model.transformer.wte, LoRAEmbedding) and tied:
        record.originals["lm_head"] = model.lm_head
        model.lm_head = LoRATiedHead(model.lm_head, model.transformer.wte)
    model.lora = record
    if weights is not None:
        try:
            load_adapter_weights(model, weights)
        except UserError:
            remove_adapter(model)  # a file that does not fit leaves the model as it was
            raise
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    for name, module in _unwrapped(model).named_modules():
        if isinstance(module, LoRALayer):
            yield name, module


def remove_adapter(model: GPT) -> GPT:
    """Take the adapter off (in place): the plain base model again, its parameters as trainable as before."""
    record = attached(model)
    if record is None:
        return model
    for name, layer in record.originals.items():
        _set_layer(model, name, layer)
    for name, p in model.named_parameters():
        p.requires_grad_(record.trainable.get(name, True))
    del model.lora
    return model


def merge_adapter(model: GPT) -> GPT:
    """Fold each adapter's ΔW into the weight it adapts and take the adapters off (in place): a plain model that
    computes what the adapted one did (to float rounding), at the base's speed. A no-op on a plain model."""
    if attached(model) is None:
        return model
    merged: set[int] = set()
    with torch.no_grad():
        for _, layer in lora_layers(model):
            if id(layer.weight) in merged:  # a tied head shares its matrix, and its changes, with the embedding
                continue
            if layer.new_rows is not None:
                layer.weight[layer.first_new_row:] = layer.new_rows
            if layer.rank:
                layer.weight += layer.delta().to(layer.weight.dtype)
            merged.add(id(layer.weight))
    return remove_adapter(model)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this block the model computes exactly the base's logits: every adapter switched off, nothing copied.

    The reference model of preference tuning (DPO) is the model before tuning: with a LoRA run that is the same
    model with its adapters off, so no second copy of the weights is needed; a forward pass inside the block
    (under torch.no_grad) gives the reference's logits, one outside it the policy's. Switching costs a flag per
    adapted layer. The rows of tokens new to the base are the base's too (as they were when the run started).
    Works through torch.compile's and DDP's wrappers (compile traces the switched-off model once more, and its
    kernels give the base's logits to float rounding rather than bit for bit).
    A model without an adapter is an error: it has no frozen base inside it to fall back on (keep a copy).
    """
    if attached(model) is None:
        raise ValueError("the model carries no adapter, so there is no base to switch to: attach one (lora.attach, "
                         "use_adapter), or keep a frozen copy of the model as the reference")
    layers = [layer for _, layer in lora_layers(model)]
    before = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, state in zip(layers, before):
            layer.enabled = state


def adapter_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's parameters by name (transformer.h.0.attn.c_attn.lora_A, ...): what an adapter file stores."""
    return {name: tensor for name, tensor in ckpt_io.clean_state_dict(model).items()
            if name.rpartition(".")[2] in ADAPTER_KEYS}


def load_adapter_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter weights into the model's adapters; every name and shape must match."""
    own = adapter_weights(model)
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(f"the adapter's weights do not fit its settings ({len(missing)} missing, {len(unexpected)} "
                        f"unexpected, e.g. {example}): the file is damaged")
    with torch.no_grad():
        for name, tensor in own.items():
            if tuple(weights[name].shape) != tuple(tensor.shape):
                raise UserError(f"the adapter's weight {name} has shape {tuple(weights[name].shape)}, but this base "
                                f"needs {tuple(tensor.shape)}: the file is damaged")
            tensor.copy_(weights[name])


def trainable_summary(model: nn.Module) -> str:
    """One line for the log: how much of the model trains."""
    record = attached(model)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = sum(1 for _, layer in lora_layers(model) if layer.rank and not isinstance(layer, LoRATiedHead))
    s = record.settings
    rows = "" if record.new_rows_from is None else \
        f" and the rows of tokens {record.new_rows_from}..{model.config.vocab_size - 1} (new to the base)"
    return (f"LoRA rank {s.rank}, alpha {s.alpha:g}, on {','.join(s.targets)} ({layers} layers){rows}: {trained:,} "
            f"trainable parameters, {100 * trained / total:.2f}% of {total:,}; the base is frozen")


# ---------------------------------------------------------------------------------------------------
# The base an adapter belongs to: a fingerprint of its weights, and where it was found.


def fingerprint(model: nn.Module) -> str:
    """A SHA-256 of every weight of the model (names, dtypes, shapes and bytes). Equal fingerprints mean the same
    weights; a base trained one more step, or another model of the same shape, has another one. A model carrying
    an adapter has the fingerprint of both together (an adapter trained over it names that pair)."""
    return fingerprint_weights(ckpt_io.clean_state_dict(model))


def fingerprint_weights(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name} {str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}\n".encode())
        if t.numel():
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def base_reference(loaded: ckpt_io.Loaded, out_dir: str | Path) -> dict[str, Any]:
    """What an adapter run records about its base: the path it was loaded from (also relative to the run's out_dir,
    so that the two can move together), its weights' fingerprint and its shape."""
    path = Path(loaded.path).resolve()
    try:
        relative: str | None = os.path.relpath(path, Path(out_dir).resolve())
    except ValueError:  # another drive (Windows)
        relative = None
    return {"path": str(path), "from_out_dir": relative, "fingerprint": fingerprint(loaded.model),
            "model_config": dataclasses.asdict(loaded.model.config)}


def _describe(config: dict[str, Any]) -> str:
    return (f"{config['n_layer']} layers x {config['n_embd']} wide, {config['n_head']} heads, vocab "
            f"{config['vocab_size']}, block {config['block_size']}")


def _shape_mismatch(config: GPTConfig, expected: dict[str, Any]) -> str | None:
    have = dataclasses.asdict(config)
    differ = [f"{k} {have.get(k)} (expected {v})" for k, v in expected.items() if k != "dropout" and have.get(k) != v]
    return ", ".join(differ) or None


@dataclass
class Adapter:
    """An adapter file, read: settings and weights, the base it belongs to, and the rest of its checkpoint."""

    settings: LoRASettings
    weights: dict[str, torch.Tensor]
    base: dict[str, Any]
    model_config: dict[str, Any]  # the adapted model's shape: the base's, with the run's block_size
    path: Path | None
    checkpoint: dict[str, Any]  # tokenizer, config, step, ...
    new_rows_from: int | None = None  # see attach

    def describe_base(self) -> str:
        return f"{self.base['path']} (fingerprint {self.base['fingerprint'][:12]}, {_describe(self.base['model_config'])})"


def is_adapter_checkpoint(state: dict[str, Any]) -> bool:
    return "adapter" in state


def adapter_from_checkpoint(state: dict[str, Any], path: Path | None) -> Adapter:
    entry = state["adapter"]
    try:
        settings = LoRASettings.from_dict(entry["settings"])
        return Adapter(settings, entry["weights"], entry["base"], state["model_config"], path, state,
                       entry.get("new_rows_from"))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a valid adapter checkpoint (missing or malformed {e}): the file is damaged") \
            from None


def read_adapter(spec: str | Path) -> Adapter:
    """The adapter saved by a LoRA run: its out_dir (best.pt, else ckpt.pt) or a .pt file."""
    if ckpt_io.is_hf_folder(spec):
        raise UserError(f"{spec} is a Hugging Face model folder, not an adapter: give the out_dir or .pt of a run "
                        "trained with lora_rank > 0")
    path = ckpt_io.resolve_checkpoint_path(spec)
    state = ckpt_io.load_checkpoint(path)
    if not is_adapter_checkpoint(state):
        raise UserError(f"{path} is not an adapter but a whole model (its run had lora_rank 0): use it as the model "
                        "itself (--ckpt), or give the checkpoint of a run trained with lora_rank > 0")
    return adapter_from_checkpoint(state, path)


def find_base(adapter: Adapter, base: str | Path | None = None) -> ckpt_io.Loaded:
    """The base `adapter` was trained on, loaded on the CPU and checked (shape, then fingerprint): at `base` when
    given, else where the run found it, else at the same place relative to the adapter's out_dir."""
    ref = adapter.base
    if base is not None:
        candidates = [Path(base)]
    else:
        candidates = [Path(ref["path"])]
        if adapter.path is not None and ref.get("from_out_dir"):
            candidates.append(adapter.path.parent / ref["from_out_dir"])
    existing = [p for p in dict.fromkeys(candidates) if p.exists()]
    if not existing:
        where = f"{base} does not exist" if base is not None else f"it is no longer at {ref['path']}"
        raise UserError(f"cannot find the base model of adapter {adapter.path}: {where}; give --base PATH where the "
                        f"base now is (it expects {adapter.describe_base()})")
    problem = ""
    for path in existing:
        loaded = ckpt_io.load_model(path)
        mismatch = _shape_mismatch(loaded.model.config, ref["model_config"])
        if mismatch:
            problem = f"{path} is a model of another shape ({mismatch})"
            continue
        if fingerprint(loaded.model) != ref["fingerprint"]:
            problem = f"{path} has other weights than the base it was trained on (trained further, or another model)"
            continue
        return loaded
    raise UserError(f"adapter {adapter.path} does not fit this base: {problem}; it expects {adapter.describe_base()} "
                    "(give --base PATH to that model)")


def adapted_model(base_model: GPT, adapter: Adapter, *, dropout: float = 0.0, lora_dropout: float | None = None) -> GPT:
    """`adapter` applied to a checked base model: the base rebuilt to the run's shape (its block_size and vocabulary,
    this dropout), then the adapter attached with its trained weights. A base that is itself adapted is merged first."""
    from gpt.runtime import rebuild

    model = rebuild(merge_adapter(base_model), dropout=dropout, block_size=adapter.model_config["block_size"])
    model = with_vocab_size(model, adapter.model_config["vocab_size"])
    settings = adapter.settings
    if lora_dropout is not None:
        settings = dataclasses.replace(settings, dropout=lora_dropout)
    return attach(model, settings, adapter.base, adapter.weights, new_rows_from=adapter.new_rows_from)


def with_new_token_rows(model: GPT, first: int, grow: Callable[[GPT], GPT]) -> GPT:
    """The vocabulary of a LoRA run's model grows (the data brings tokens the base lacks, e.g. a chat template's
    markers): `grow` gives the plain base its rows for them (frozen, like the rest of the base), and the adapter,
    attached again, trains rows first.. of the embedding and the head and saves them. At a run's start only: the
    adapter there is fresh (B = 0), so starting it again loses nothing."""
    record = attached(model)
    if record is None:
        return grow(model)
    remove_adapter(model)
    return attach(grow(model), record.settings, record.base, new_rows_from=first)


def with_vocab_size(model: GPT, vocab_size: int) -> GPT:
    """The model with room for `vocab_size` tokens: rows of zeros added to the embedding and the head (an adapter's
    new rows then take their place); the model itself when it has that many already."""
    if vocab_size <= model.config.vocab_size:
        return model
    weights = ckpt_io.clean_state_dict(model)
    grown = GPT(dataclasses.replace(model.config, vocab_size=vocab_size))
    for name in ("transformer.wte.weight", "lm_head.weight"):
        old = weights[name]
        weights[name] = torch.cat([old, old.new_zeros(vocab_size - old.shape[0], old.shape[1])])
    grown.load_state_dict(weights)  # a tied head is one tensor again: load_state_dict copies into the shared one
    return grown


def load_with_adapter(adapter_spec: str | Path, *, base: str | Path | None = None, device: torch.device | str = "cpu",
                      state: dict[str, Any] | None = None) -> ckpt_io.Loaded:
    """A base model with an adapter applied, ready to use (what gpt/checkpoint.py:load_model returns for adapters)."""
    from gpt.chat import ChatTemplate
    from gpt.tokenizer import tokenizer_from_dict

    if state is not None:
        adapter = adapter_from_checkpoint(state, ckpt_io.resolve_checkpoint_path(adapter_spec))
    else:
        adapter = read_adapter(adapter_spec)
    base_loaded = find_base(adapter, base)
    model = adapted_model(base_loaded.model, adapter)
    tokenizer = tokenizer_from_dict(adapter.checkpoint["tokenizer"])
    template = adapter.checkpoint.get("chat_template")  # a run on conversations: the template it trained with
    template = ChatTemplate.from_dict(template, tokenizer) if template is not None else base_loaded.chat_template
    return ckpt_io.Loaded(model.to(device).eval(), tokenizer, adapter.path, adapter.checkpoint, template,
                          base_path=base_loaded.path)


def use_adapter(model: GPT, adapter: Adapter) -> GPT:
    """Switch `model` to `adapter` (in place), taking off the adapter it carries, if any: load a base once, then move
    between adapters at the cost of their small weights. The model must be the adapter's base (fingerprint)."""
    current = attached(model)
    have = current.base["fingerprint"] if current is not None and current.base else None
    if have is None:
        have = _base_fingerprint(model)
    if have != adapter.base["fingerprint"]:
        raise UserError(f"adapter {adapter.path} was trained on another base: it expects {adapter.describe_base()}")
    remove_adapter(model)
    return attach(model, adapter.settings, adapter.base, adapter.weights)


def _base_fingerprint(model: nn.Module) -> str:
    """The fingerprint of the base under an adapter: the model's weights without the adapter's (attach leaves the
    base's names and tensors as they were)."""
    return fingerprint_weights({name: t for name, t in ckpt_io.clean_state_dict(model).items()
                                if name.rpartition(".")[2] not in ADAPTER_KEYS})


# ---------------------------------------------------------------------------------------------------
# Checkpoints of an adapter run (gpt/runtime.py:training_state calls this instead of saving every weight).


def checkpoint_entry(model: nn.Module) -> dict[str, Any]:
    """The "adapter" entry of an adapter run's checkpoints: settings, weights, base."""
    record = attached(model)
    return {"settings": record.settings.to_dict(), "weights": adapter_weights(model), "base": record.base,
            "new_rows_from": record.new_rows_from}


# ---------------------------------------------------------------------------------------------------
# Merge and export (python -m gpt.lora ...)


@dataclass
class MergeConfig:
    ckpt: str = setting("", "the adapter: the out_dir or .pt of a run trained with lora_rank > 0")
    out: str = setting("", "the plain checkpoint to write (a .pt file); an existing file is never overwritten")
    base: str | None = setting(None, "where the adapter's base model is, if it moved since training")


@dataclass
class ExportConfig:
    ckpt: str = setting("", "the adapter: the out_dir or .pt of a run trained with lora_rank > 0")
    out: str = setting("", "the folder to write adapter_config.json and adapter_model.safetensors into (new or empty)")
    base: str | None = setting(None, "where the adapter's base model is, if it moved since training (only --base_out needs it)")
    base_out: str | None = setting(None, "also write the base as a Hugging Face GPT-2 folder here (new or empty), for peft to load the adapter onto")


PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
GPT2_BLOCK_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _new_file(path: Path, what: str) -> Path:
    if path.is_dir():
        raise UserError(f"--out {path} is a folder: give the file to write the {what} to, e.g. {path / 'merged.pt'}")
    if path.exists():
        raise UserError(f"{path} already exists: choose another --out (nothing was overwritten)")
    return path


def _empty_folder(path: Path, setting_name: str) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"--{setting_name} {path} is a file: give a folder")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"--{setting_name} {path} is not empty: give a new or empty folder (nothing was overwritten)")
    return path


def merge_to_checkpoint(adapter_spec: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """Write the base with the adapter merged into it as a plain checkpoint: usable wherever a checkpoint is."""
    out = _new_file(Path(out), "merged checkpoint")
    adapter = read_adapter(adapter_spec)
    base_loaded = find_base(adapter, base)
    model = merge_adapter(adapted_model(base_loaded.model, adapter))
    # The adapter run's record (tokenizer, settings, step, ...) without what only resuming it needs.
    state = {key: value for key, value in adapter.checkpoint.items() if key not in _ADAPTER_RUN_KEYS}
    if "chat_template" not in state and base_loaded.chat_template is not None:  # tuned on text over a chat model
        state["chat_template"] = base_loaded.chat_template.to_dict()
    state.update({"model_config": dataclasses.asdict(model.config), "model": ckpt_io.clean_state_dict(model),
                  "merged_from": {"adapter": str(adapter.path.resolve()), "base": adapter.base["path"],
                                  "base_fingerprint": adapter.base["fingerprint"]}})
    ckpt_io.save_checkpoint(state, out)
    return out


# What an adapter run's checkpoint holds that a merged, plain checkpoint must not (no resuming from it).
_ADAPTER_RUN_KEYS = {"format_version", "adapter", "optimizer", "sampler", "rng", "scaler"}


def export_peft(adapter_spec: str | Path, out: str | Path, base: str | Path | None = None,
                base_out: str | Path | None = None) -> Path:
    """Write the adapter in Hugging Face peft's LoRA format, for a GPT-2-shaped base (see the module docstring)."""
    from gpt.atomic import write_text
    from gpt.hf import save_hf_gpt2, write_safetensors

    out = _empty_folder(Path(out), "out")
    if base_out is not None:
        base_out = _empty_folder(Path(base_out), "base_out")
    adapter = read_adapter(adapter_spec)
    check_exportable(adapter)
    tensors = {}
    for name, tensor in adapter.weights.items():
        layer, _, key = name.rpartition(".")  # transformer.h.0.attn.c_attn, lora_A
        # peft names a LoRA factor after the Linear layer that holds it; the layout is ours: A [r, in], B [out, r].
        tensors[f"base_model.model.{layer}.{key}.weight"] = tensor.contiguous()
    targets = sorted({_short_name(name.rpartition(".")[0]) for name in adapter.weights})
    base_path = None
    if base_out is not None:
        found = find_base(adapter, base)
        save_hf_gpt2(merge_adapter(found.model), base_out, found.tokenizer)
        base_path = str(Path(base_out).resolve())
    elif ckpt_io.is_hf_folder(adapter.base["path"]):
        base_path = adapter.base["path"]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_path,
        "r": adapter.settings.rank,
        "lora_alpha": adapter.settings.alpha,
        "lora_dropout": adapter.settings.dropout,
        "target_modules": targets,  # peft matches them as suffixes of module names: "attn.c_proj" is not "mlp.c_proj"
        "fan_in_fan_out": True,  # GPT-2's Hugging Face layers (Conv1D) store their weights as (in, out)
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,  # the scale is alpha / r, as here
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, out / PEFT_WEIGHTS, metadata={"format": "pt"})
    write_text(out / PEFT_CONFIG, json.dumps(config, indent=2) + "\n")
    return out


def check_exportable(adapter: Adapter) -> None:
    """A UserError when peft's GPT-2 adapters cannot express `adapter`."""
    from gpt.hf import check_gpt2_shape

    check_gpt2_shape(GPTConfig(**adapter.model_config))
    if adapter.new_rows_from is not None:
        raise UserError("this adapter trains the rows of tokens its base does not have (a grown vocabulary), which a "
                        "peft adapter over the base cannot hold: merge it instead (python -m gpt.lora merge) and export "
                        "the merged model (python -m gpt.hf)")
    outside = [t for t in adapter.settings.targets if t not in GPT2_BLOCK_TARGETS + ("attn", "mlp")]
    if outside:
        raise UserError(f"this adapter also adapts {', '.join(outside)}, which peft's GPT-2 adapters cannot express the "
                        "same way (a tied embedding and head): merge it instead (python -m gpt.lora merge) and export "
                        "the merged model (python -m gpt.hf)")


COMMANDS = {
    "merge": (MergeConfig, "fold an adapter into its base: a plain checkpoint, usable wherever a checkpoint is",
              "python -m gpt.lora merge --ckpt out/my_adapter --out merged.pt"),
    "export": (ExportConfig, "write an adapter in Hugging Face peft's format (adapter_config.json + "
                             "adapter_model.safetensors), for GPT-2-shaped bases",
               "python -m gpt.lora export --ckpt out/my_adapter --out my_adapter_peft --base_out base_hf"),
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m gpt.lora {merge,export} --ckpt ADAPTER --out PATH [--base PATH] (--help for each)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\n" + "\n".join(f"  {name:<7}{what}\n         e.g. {example}"
                                         for name, (_, what, example) in COMMANDS.items()))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}: {usage}")
    cls, what, example = COMMANDS[command]
    cfg, _ = parse_args(cls, rest, prog=f"python -m gpt.lora {command}", description=f"{what}.\n\nExample:\n  {example}")
    if not cfg.ckpt or not cfg.out:
        raise UserError(f"give the adapter and where to write: {example}")
    if command == "merge":
        path = merge_to_checkpoint(cfg.ckpt, cfg.out, cfg.base)
        print(f"wrote {path}: the base with the adapter merged in (sample with: python sample.py --ckpt {path})")
    else:
        folder = export_peft(cfg.ckpt, cfg.out, cfg.base, cfg.base_out)
        print(f"wrote {folder / PEFT_CONFIG} and {folder / PEFT_WEIGHTS}"
              + (f", and the base as a Hugging Face GPT-2 folder in {cfg.base_out}" if cfg.base_out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
