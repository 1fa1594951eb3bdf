"""Checkpoints: the trained weights (and the whole training state) on disk, and back.

Its place in the flow: the training loop (gpt/trainer.py) saves here; sampling (gpt/decoding.py, sample.py),
evaluation (gpt/evaluate.py) and fine-tuning load from here. One format, a dict saved with torch.save:

    format_version  1
    model_config    GPTConfig as a dict        model      the model's state_dict
    tokenizer       Tokenizer.to_dict()        step       optimizer steps taken
    config          the training settings      optimizer, rng, sampler, best_val_loss (for resuming)
    chat_template   (models tuned on conversations) the template of gpt/post/chat.py, given back by load_model

A LoRA run's checkpoints hold `adapter` (its weights, settings and base: see gpt/post/adapter_files.py) instead
of `model`; `load_model` asks the layer that registered that key (gpt/layers.py) to find the base and apply it.

Saving is atomic (a temp file in the same folder, then a rename), so a kill at any instant leaves the
previous checkpoint whole. Loading uses torch.load(weights_only=True), which refuses to unpickle anything
but tensors and plain data: a crafted file cannot run code.
"""

from __future__ import annotations

import dataclasses
import errno
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt.atomic import atomic_write
from gpt import layers
from gpt.errors import UserError
from gpt.hf import load_hf_gpt2
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import Tokenizer, tokenizer_from_dict
from gpt.tokenizer_files import load_hf_tokenizer, load_tokenizer

FORMAT_VERSION = 1


class SaveError(UserError):
    """A checkpoint could not be written (a full disk, a read-only folder): the previous file, if any, is intact."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically: readers see the old file or the new one, never half of one.

    A failure of the disk (no space, read-only, no permission) is a SaveError that says in one line which file,
    and how much space it needed and had; no temporary file is left behind.
    """
    path = Path(path)
    needed = _nbytes(state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free
        if needed > free:
            raise SaveError(f"cannot save {path}: it needs about {_megabytes(needed)} and {path.parent} has "
                            f"{_megabytes(free)} free")
        with atomic_write(path) as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        if cause is None:
            raise  # not the disk: our bug
        if cause.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            free = _free_bytes(path.parent)
            raise SaveError(f"cannot save {path}: no space left on the device (it needs about {_megabytes(needed)}, "
                            f"{_megabytes(free)} free)") from None
        raise SaveError(f"cannot save {path}: {cause.strerror or cause}") from None


def _nbytes(obj: Any) -> int:
    """The bytes of the tensors in a nested state: about the size of the file torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind an exception (torch's serializer wraps a failed write in a RuntimeError)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint saved by save_checkpoint; never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any class or function a plain checkpoint never holds ("GLOBAL x.y"):
        # that is what a crafted file would need to run code. Anything else is a damaged file.
        lines = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line.upper()]
        if lines:
            raise UserError(
                f"refused to load {path}: it asks to import code a checkpoint never needs, which could run "
                f"anything ({lines[0][:160]}); only load checkpoints you trust"
            ) from None
        raise UserError(f"cannot read checkpoint {path}: the file is corrupt or not a checkpoint") from None
    except Exception as e:  # torch's readers raise many kinds (RuntimeError, EOFError, IndexError, ...) on damage
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: the file is corrupt or not a checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or not ("model" in state or "adapter" in state) or "model_config" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no model weights and config in it)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer version of this project (format {state['format_version']})")
    return state


def model_config_dict(model: GPT) -> dict[str, Any]:
    return dataclasses.asdict(model.config)


def clean_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights without the wrappers' name prefixes (torch.compile's _orig_mod., DDP's module.)."""
    state = model.state_dict()
    clean = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean


def model_from_checkpoint(state: dict[str, Any]) -> GPT:
    try:
        config = GPTConfig(**state["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model config is invalid: {e}") from None
    model = GPT(config)
    model.load_state_dict(state["model"])
    return model


@dataclass
class Loaded:
    """A model ready to use, the tokenizer it was trained with, its chat template, and where they came from."""

    model: GPT
    tokenizer: Tokenizer
    path: Path  # the checkpoint file, or the Hugging Face folder
    checkpoint: dict[str, Any] | None  # the full checkpoint; None for a Hugging Face folder
    # For a model tuned on conversations, its chat template (filled in by gpt/post/chat.py's on-load hook); else None.
    chat_template: Any = None
    base_path: Path | None = None  # for an adapter: where its base model was loaded from


def resolve_checkpoint_path(spec: str | Path) -> Path:
    """An out_dir means its best checkpoint (best.pt), else its latest (ckpt.pt); a file means itself."""
    path = Path(spec)
    if path.is_dir():
        for name in ("best.pt", "ckpt.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path} holds no checkpoint (best.pt or ckpt.pt): train first, or point --ckpt at a .pt file")
    if not path.exists():
        raise UserError(f"checkpoint {path} not found: give an out_dir, a .pt file, or a Hugging Face GPT-2 folder")
    return path


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "ckpt.pt").exists() \
        and not (path / "best.pt").exists()


def load_model(spec: str | Path, device: torch.device | str = "cpu", *, adapter: str | Path | None = None,
               base: str | Path | None = None) -> Loaded:
    """Load a model and its tokenizer from an out_dir, a checkpoint file, or a local Hugging Face GPT-2 folder.

    The checkpoint of a LoRA run loads its base model (from where the run found it, or from `base`) with the
    adapter applied; `adapter` applies a LoRA run's adapter to the model at `spec` (its base) instead. The layers'
    on-load hooks then complete it (the chat template of a model tuned on conversations).
    """
    loaded = _open(spec, device, adapter, base)
    for complete in layers.on_load_hooks():
        complete(loaded)
    return loaded


def _open(spec: str | Path, device: torch.device | str, adapter: str | Path | None,
          base: str | Path | None) -> Loaded:
    if adapter is not None:
        if base is not None:
            raise UserError("give the base once: --ckpt BASE --adapter ADAPTER, or --ckpt ADAPTER --base BASE")
        return _adaptation_opening(adapter, layers.adaptations()).open(adapter, base=spec, state=None, device=device)
    not_an_adapter = UserError(f"--base is for the checkpoint of a LoRA run, and {spec} is a whole model: drop --base "
                               "(or give --adapter to apply an adapter to it)")
    if is_hf_folder(spec):
        if base is not None:
            raise not_an_adapter
        model = load_hf_gpt2(spec)
        # The tokenizer saved beside the weights (ours, or vocab.json + merges.txt), else GPT-2's found offline.
        tokenizer = load_hf_tokenizer(spec) or load_tokenizer("gpt2")
        _check_vocabularies(tokenizer, model, Path(spec))
        return Loaded(model.to(device).eval(), tokenizer, Path(spec), None)
    path = resolve_checkpoint_path(spec)
    state = load_checkpoint(path)
    if "model" not in state:  # the weights of an adaptation (a LoRA run's "adapter") over a base model
        adaptation = _adaptation_opening(path, [a for a in layers.adaptations() if a.key in state])
        return adaptation.open(path, base=base, state=state, device=device)
    if base is not None:
        raise not_an_adapter
    model = model_from_checkpoint(state)
    tokenizer = tokenizer_from_dict(state["tokenizer"])
    _check_vocabularies(tokenizer, model, path)
    return Loaded(model.to(device).eval(), tokenizer, path, state)


def _adaptation_opening(spec: str | Path, found: list[Any]) -> Any:
    if not found:
        raise UserError(f"{spec} holds an adapter, but the layer that opens adapters (gpt/post) is not registered: "
                        "install the project (pip install -e .), which announces it in the package's metadata")
    return found[0]


def _check_vocabularies(tokenizer: Tokenizer, model: GPT, where: Path) -> None:
    """Every token id the tokenizer can produce must have a row in the model (the model may have spare rows)."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{where}: the {tokenizer.name} tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size}: they do not belong together (a Hugging Face folder without its "
                        "own tokenizer files is read with GPT-2's)")
