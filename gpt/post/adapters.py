"""Adapters on a model: attach them, take them off, switch them off for a moment, merge them into the base.

Its place in the flow: between the model a run starts from and the training loop (a LoRA run trains the adapters
attached here, the base frozen), and between an adapter checkpoint and the model used for sampling (merged).
The adapted layers themselves, and the idea, are in gpt/post/lora.py; gpt/model.py is never changed: the
adapters replace some of a GPT's modules from outside, sharing (never copying) the base's parameters.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn

from gpt.checkpoint import clean_state_dict
from gpt.errors import UserError
from gpt.model import GPT
from gpt.post.lora import (ADAPTER_KEYS, TOKENS, LoRAEmbedding, LoRALayer, LoRALinear, LoRASettings, LoRATiedHead,
                           head_is_tied, resolve_targets)

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
    # When the base's vocabulary was grown to put this adapter on it (use_adapter on a loaded base): its own config
    # and token layers (full name -> layer), which removal puts back. A merge keeps the grown ones: it wrote into them.
    base_vocab: tuple[Any, dict[str, nn.Module]] | None = None


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
           weights: dict[str, torch.Tensor] | None = None, new_rows_from: int | None = None,
           base_vocab: tuple[Any, dict[str, nn.Module]] | None = None) -> GPT:
    """Freeze `model` and put adapters of `settings` on the layers its targets name (in place; returns the model).

    New adapters start as a no-op (B = 0); `weights` (from adapter_weights) gives trained ones instead.
    `base` records where the model came from, for the checkpoints of a run (see base_reference).
    `new_rows_from`: the rows of the token embedding and the head from this token id on belong to tokens the base
    never saw (a vocabulary grown for new special tokens): they train too, and are saved with the adapter. With the
    "tokens" target every row of the embedding trains (and is saved) that way.
    `base_vocab`: the model's config and token layers before its vocabulary was grown for this adapter, put back
    when the adapter comes off (see Attachment).
    """
    if attached(model) is not None:
        raise ValueError("the model already carries an adapter: remove_adapter (or use_adapter) first")
    if settings.rank < 1:
        raise ValueError(f"an adapter needs rank >= 1, got {settings.rank}")
    names = resolve_targets(model, settings.targets)
    tied = head_is_tied(model)
    # The layers that train some of their rows in full, from which row: the tokens new to the base in the embedding
    # and an untied head; every token's row of the embedding with the "tokens" target.
    first_row: dict[str, int] = {}
    has_new_tokens = new_rows_from is not None and new_rows_from < model.config.vocab_size
    if has_new_tokens:
        first_row = {name: new_rows_from for name in ["transformer.wte"] + ([] if tied else ["lm_head"])}
    if TOKENS in settings.targets:
        first_row["transformer.wte"] = 0
    record = Attachment(settings, base, new_rows_from=new_rows_from if has_new_tokens else None,
                        trainable={n: p.requires_grad for n, p in model.named_parameters()}, base_vocab=base_vocab)
    for p in model.parameters():
        p.requires_grad_(False)  # the base is frozen: only the adapters' parameters will train
    for name in names + [n for n in first_row if n not in names]:
        layer = model.get_submodule(name)
        record.originals[name] = layer
        rank = settings.rank if name in names else 0  # a token layer outside the targets: its new rows only
        if isinstance(layer, nn.Embedding):
            adapted: LoRALayer = LoRAEmbedding(layer, rank, settings.scaling)
        else:
            adapted = LoRALinear(layer, rank, settings.scaling, settings.dropout)
        if name in first_row:
            adapted.add_new_rows(first_row[name])
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
    if record.base_vocab is not None:  # last: the base's own token layers were never frozen, and come back as they were
        model.config, token_layers = record.base_vocab
        for name, layer in token_layers.items():
            _set_layer(model, name, layer)
    del model.lora
    return model


def merge_adapter(model: GPT) -> GPT:
    """Fold each adapter's ΔW into the weight it adapts and take the adapters off (in place): a plain model that
    computes what the adapted one did (to float rounding), at the base's speed. A no-op on a plain model."""
    record = attached(model)
    if record is None:
        return model
    record.base_vocab = None  # the merged model keeps the vocabulary the adapter needs
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
    return {name: tensor for name, tensor in clean_state_dict(model).items()
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
    if TOKENS in s.targets:
        rows = f" and every token's embedding row ({model.config.vocab_size} x {model.config.n_embd})" + \
            ("" if record.new_rows_from is None or head_is_tied(model) else f", the head's rows of tokens "
             f"{record.new_rows_from}..{model.config.vocab_size - 1} (new to the base)")
    return (f"LoRA rank {s.rank}, alpha {s.alpha:g}, on {','.join(s.targets)} ({layers} layers){rows}: {trained:,} "
            f"trainable parameters, {100 * trained / total:.2f}% of {total:,}; the base is frozen")


