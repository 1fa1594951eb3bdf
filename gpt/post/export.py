"""`python -m gpt.lora merge` and `export`: an adapter as a plain checkpoint, or in Hugging Face peft's format.

Its place in the flow: after a LoRA run (gpt/post/adapter_files.py opens its adapter over its base), beside
gpt/hf_export.py (a whole model as a Hugging Face folder).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from gpt import checkpoint as ckpt_io
from gpt.atomic import write_text
from gpt.config import parse_args, setting
from gpt.errors import UserError, exit_on_user_error
from gpt.hf import check_gpt2_shape, save_hf_gpt2, write_safetensors
from gpt.model import GPTConfig
from gpt.post.adapter_files import Adapter, adapted_model, find_base, read_adapter
from gpt.post.adapters import merge_adapter
from gpt.post.lora import HEAD, TOKENS, short_name

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
    targets = sorted({short_name(name.rpartition(".")[0]) for name in adapter.weights})
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

    check_gpt2_shape(GPTConfig(**adapter.model_config))
    if adapter.new_rows_from is not None:
        raise UserError("this adapter trains the rows of tokens its base does not have (a grown vocabulary), which a "
                        "peft adapter over the base cannot hold: merge it instead (python -m gpt.lora merge) and export "
                        "the merged model (python -m gpt.hf)")
    if TOKENS in adapter.settings.targets:
        raise UserError("this adapter trains the token embedding's rows in full (lora target tokens), which a peft "
                        "LoRA adapter cannot hold: merge it instead (python -m gpt.lora merge) and export the merged "
                        "model (python -m gpt.hf), or train with --lora_targets=attn,mlp,head for an exportable one")
    outside = [t for t in adapter.settings.targets if t not in GPT2_BLOCK_TARGETS + ("attn", "mlp", HEAD)]  # head: none when tied
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
