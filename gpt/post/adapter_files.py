"""An adapter in a checkpoint: what it records of its base, finding that base again, and opening the two as one.

Its place in the flow: a LoRA run's checkpoints hold its adapter instead of the model's weights (kilobytes, not
megabytes), with the path and a fingerprint of the base it adapts. Loading one (gpt/checkpoint.py:load_model,
through the `LoRA` adaptation this module registers in gpt/layers.py) finds the base where the run found it, or
beside the out_dir, or at --base, checks its shape and fingerprint, and attaches the adapter (gpt/post/adapters.py).
Resuming a LoRA run and starting one go through the same functions, so that both build the same model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from gpt import checkpoint as ckpt_io
from gpt.errors import UserError
from gpt.model import GPT, GPTConfig
from gpt.post.adapters import adapter_weights, attach, attached, merge_adapter, remove_adapter, trainable_summary
from gpt.post.lora import ADAPTER_KEYS, LoRASettings, check_settings, settings_of
from gpt.reshape import grow_vocab, rebuild
from gpt.tokenizer import tokenizer_from_dict

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


def grown_for(model: GPT, adapter: Adapter) -> GPT:
    """`model`, the adapter's base, with rows for the tokens the adapter's run added to it, grown exactly as the run
    grew them (gpt/reshape.py: the same rows from the same weights, its vocab_multiple); the model itself when the
    run added none."""
    vocab_size = adapter.model_config["vocab_size"]
    if vocab_size > model.config.vocab_size or adapter.new_rows_from is not None:
        tokenizer = adapter.checkpoint.get("tokenizer")  # the run's: its size is how far the start grew the base
        needed = tokenizer_from_dict(tokenizer).vocab_size if tokenizer is not None else vocab_size
        known = adapter.new_rows_from if adapter.new_rows_from is not None else model.config.vocab_size
        vocab_multiple = int((adapter.checkpoint.get("config") or {}).get("vocab_multiple", 1))
        model = grow_vocab(model, known, needed, vocab_multiple)
    if model.config.vocab_size != vocab_size:
        raise UserError(f"adapter {adapter.path}: its base grown for the run's tokens has {model.config.vocab_size} "
                        f"rows, the run had {vocab_size}: the file is damaged")
    return model


def adapted_model(base_model: GPT, adapter: Adapter, *, dropout: float = 0.0,
                  lora_dropout: float | None = None) -> GPT:
    """`adapter` applied to a checked base model: the base rebuilt to the run's shape (its block_size, this dropout,
    and rows for the tokens new to the base: grown_for), then the adapter attached with its trained weights. A base
    that is itself adapted is merged first."""
    model = rebuild(merge_adapter(base_model), dropout=dropout, block_size=adapter.model_config["block_size"])
    model = grown_for(model, adapter)
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


def load_with_adapter(adapter_spec: str | Path, *, base: str | Path | None = None, device: torch.device | str = "cpu",
                      state: dict[str, Any] | None = None) -> ckpt_io.Loaded:
    """A base model with an adapter applied, ready to use (what gpt/checkpoint.py:load_model returns for adapters)."""
    if state is not None:
        adapter = adapter_from_checkpoint(state, ckpt_io.resolve_checkpoint_path(adapter_spec))
    else:
        adapter = read_adapter(adapter_spec)
    base_loaded = find_base(adapter, base)
    model = adapted_model(base_loaded.model, adapter)
    tokenizer = tokenizer_from_dict(adapter.checkpoint["tokenizer"])
    # The chat template: the adapter run's own (its checkpoint records it: gpt/post/chat.py's on-load hook reads
    # it), else its base's.
    return ckpt_io.Loaded(model.to(device).eval(), tokenizer, adapter.path, adapter.checkpoint,
                          None if "chat_template" in adapter.checkpoint else base_loaded.chat_template,
                          base_path=base_loaded.path)


def use_adapter(model: GPT, adapter: Adapter) -> GPT:
    """Switch `model` to `adapter` (in place), taking off the adapter it carries, if any: load a base once, then move
    between adapters at the cost of their small weights. The model must be the adapter's base (fingerprint).

    An adapter whose run grew its base's vocabulary (rows for a chat template's markers) needs that vocabulary: the
    model takes the token layers of its base grown as the run grew it (grown_for, as loading the adapter does),
    and gets its own back when the adapter comes off (remove_adapter, or a switch to another adapter)."""
    current = attached(model)
    have = current.base["fingerprint"] if current is not None and current.base else None
    if have is None:
        have = _base_fingerprint(model)
    if have != adapter.base["fingerprint"]:
        raise UserError(f"adapter {adapter.path} was trained on another base: it expects {adapter.describe_base()}")
    remove_adapter(model)
    grown = grown_for(model, adapter)
    base_vocab = None
    if grown is not model:  # only its token layers are taken: the rest of `grown` is a copy of the model's weights
        base_vocab = (model.config, {name: model.get_submodule(name) for name in ("transformer.wte", "lm_head")})
        like = model.transformer.wte.weight  # grow_vocab builds on the CPU; the model may be elsewhere
        model.config, model.transformer.wte, model.lm_head = (grown.config, grown.transformer.wte.to(like),
                                                              grown.lm_head.to(like))
    return attach(model, adapter.settings, adapter.base, adapter.weights, new_rows_from=adapter.new_rows_from,
                  base_vocab=base_vocab)


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
# The adaptation the core's training and loading call (gpt/layers.py's Adaptation; registered by gpt/post).


class LoRA:
    """LoRA adapters as the core sees them: started over a run's init_from when lora_rank > 0, saved as the
    "adapter" entry of its checkpoints, resumed and opened from them, merged for inference."""

    key = "adapter"

    def check_settings(self, cfg: Any) -> None:
        check_settings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        if cfg.lora_rank and cfg.init_from == "scratch":
            raise UserError("lora_rank trains adapters over a frozen model: give --init_from (a checkpoint, an out_dir, "
                            "a .pt or a Hugging Face GPT-2 folder), or set --lora_rank=0 to train from scratch")

    def active(self, cfg: Any) -> bool:
        return cfg.lora_rank > 0

    def carried_by(self, model: nn.Module) -> bool:
        return attached(model) is not None

    def describe_base(self, loaded: ckpt_io.Loaded, cfg: Any) -> dict[str, Any]:
        return base_reference(loaded, cfg.out_dir)

    def start(self, model: GPT, base: dict[str, Any], cfg: Any) -> GPT:
        return attach(model, settings_of(cfg), base)

    def resume(self, state: dict[str, Any], path: Path, cfg: Any) -> GPT:
        adapter = adapter_from_checkpoint(state, path)
        base = find_base(adapter)
        return adapted_model(base.model, adapter, dropout=cfg.dropout, lora_dropout=cfg.lora_dropout)

    def open(self, spec: str | Path, *, base: str | Path | None, state: dict[str, Any] | None,
             device: torch.device | str) -> ckpt_io.Loaded:
        if state is None:  # --ckpt BASE --adapter spec
            return load_with_adapter(spec, base=base, device=device)
        return load_with_adapter(spec, base=base, device=device, state=state)

    def with_grown_vocab(self, model: GPT, first_new: int, grow: Callable[[GPT], GPT]) -> GPT:
        return with_new_token_rows(model, first_new, grow)

    def merge(self, model: GPT) -> GPT:
        return merge_adapter(model)

    def checkpoint_entry(self, model: GPT) -> dict[str, Any]:
        return checkpoint_entry(model)

    def summary(self, model: GPT) -> str:
        return trainable_summary(model)


LORA = LoRA()
