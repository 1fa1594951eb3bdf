"""Export a checkpoint as a Hugging Face GPT-2 folder: `python -m gpt.hf --ckpt OUT --out FOLDER`.

Its place in the flow: after training, beside sampling. The checkpoint is opened like any model for use
(gpt/checkpoint.py's load_model: a LoRA run's adapter is merged into its base), then written in Hugging Face's
layout by gpt/hf.py, which also reads such folders back. This command line is a module of its own because it
loads models, and loading models uses gpt/hf.py: kept apart, the two import each other in one direction only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt.checkpoint import load_model
from gpt.config import parse_args, setting
from gpt.errors import UserError, exit_on_user_error
from gpt.hf import CONFIG_NAME, SAFETENSORS_NAME, save_hf_gpt2
from gpt.layers import plain
from gpt.tokenizer_files import OUR_TOKENIZER_FILE


@dataclass
class ExportConfig:
    ckpt: str = setting("", "the model to export: an out_dir (best.pt, else ckpt.pt) or a .pt checkpoint")
    out: str = setting("", "the Hugging Face folder to write (config.json, model.safetensors and the tokenizer)")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(ExportConfig, argv, prog="python -m gpt.hf",
                        description="Export a checkpoint as a Hugging Face GPT-2 folder, with its tokenizer.")
    if not cfg.ckpt or not cfg.out:
        raise UserError("give the checkpoint and the folder: python -m gpt.hf --ckpt OUT_DIR --out FOLDER")
    out = Path(cfg.out)
    if (out / CONFIG_NAME).exists() or (out / SAFETENSORS_NAME).exists():
        raise UserError(f"{out} already holds a model: choose another --out (nothing is overwritten)")
    loaded = load_model(cfg.ckpt)
    save_hf_gpt2(plain(loaded.model), out, loaded.tokenizer)  # a LoRA run's checkpoint: base + adapter, merged

    formats = "vocab.json + merges.txt and " + OUR_TOKENIZER_FILE if (out / "vocab.json").exists() \
        else OUR_TOKENIZER_FILE + " (Hugging Face has no GPT-2 form of a " + loaded.tokenizer.name + " tokenizer)"
    print(f"wrote {out}: config.json, model.safetensors; tokenizer as {formats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
