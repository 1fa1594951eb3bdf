"""Opening a model for use, one way for every command: the settings that name it, and a model ready to decode.

Its place in the flow: after training, before decoding (sample.py, gpt.serve) or scoring (gpt.evaluate,
gpt.tasks eval, gpt.lab). Every command that loads a model embeds `ModelSettings` (checkpoint, adapter, base,
device, dtype, weights, compile, threads: declared once, with one help text) and calls `open_model`, which loads it
(gpt/checkpoint.py's load_model: an out_dir, a .pt, a Hugging Face folder, an adapter over its base), folds an
adapter into its base, and converts the weights below. A new command gets --adapter right by default.

Cheaper decoding: the weights in fewer bytes, and a compiled forward pass. Generating one token at a time
reads every weight once per step and does only two operations with each, so on a CPU a step's time is set by
the bytes of weights it reads (and, for small models, by the overhead of launching many small operations):

  weights = "float32"   4 bytes a weight, as training saved them
  weights = "bfloat16"  2 bytes: every weight rounded to bf16 (8 bits of mantissa), every operation in bf16
  weights = "int8"      1 byte (CPU only): each Linear layer's weight, the LM head included, scaled into
                        [-127, 127] and rounded, by torch.ao's dynamic quantization. Each matmul also rounds
                        its input to int8 on the fly (one scale per call), multiplies in integers and rescales
                        the result to float32: the fast integer kernels of x86 (VNNI) and ARM do the work.
  compile = true        torch.compile fuses the small operations of a step into fewer kernels; the first
                        calls pay for compiling (a minute or more on a CPU), so it suits a server or long runs
                        (with float32 or bfloat16 weights: it cannot trace the int8 layers)

The lossy options change the model's predictions a little: `python -m gpt.evaluate --weights int8` measures
by how much, in bits per byte (BENCHMARKS.md has the figures, and the weight-only int8 kernel we measured and
left out because it was slower than float32 on our CPU).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from gpt.checkpoint import Loaded, load_model
from gpt.config import setting
from gpt.device import THREADS_HELP, pick_device, pick_dtype, set_threads
from gpt.errors import UserError
from gpt.layers import plain

WEIGHTS = ("float32", "bfloat16", "int8")
WEIGHTS_HELP = ("how the weights are held for inference: float32; bfloat16 (half the bytes); int8 (a quarter: "
                "dynamic int8 quantization of every Linear layer, CPU only, the fastest there)")
COMPILE_HELP = "torch.compile the model's forward pass: faster steps after a slow first call (a minute or more on a CPU)"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Every nn.Linear of `model` (the LM head included) with int8 weights, by torch.ao's dynamic quantization.

    A tied LM head gets its own int8 copy of the embedding matrix; the embedding lookup keeps the float one
    (it reads one row per token, which costs nothing next to the head's full read).
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao points to torchao for the future; today's API does the job
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def prepare_for_inference(model: nn.Module, weights: str = "float32", compile: bool = False,
                          dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model as sampling, serving and evaluation run it: weights converted once, optionally compiled.

    Call it after load_model; it returns the model to use (a compiled wrapper when compile is set). `dtype`
    is the autocast dtype the caller computes in, checked to make sense with the weights.
    """
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}: use {', '.join(WEIGHTS)}")
    if weights == "int8" and dtype != torch.float32:
        raise UserError("weights = int8 computes in float32: drop --dtype (or set --dtype=float32)")
    if weights == "int8" and compile:
        # torch.compile cannot trace the quantized layers: the graph breaks at each, and measured slower than
        # int8 alone (BENCHMARKS.md).
        raise UserError("compile does not combine with weights = int8 (it made int8 slower): choose one of them")
    # A LoRA adapter is folded into its base first: a plain model, as fast as the base, whose Linear layers the
    # options below convert (int8 would leave an adapter's layers in float32).
    model = plain(model).eval()
    if weights == "bfloat16":
        model.to(torch.bfloat16)
    elif weights == "int8":
        if next(model.parameters()).device.type != "cpu":
            raise UserError("weights = int8 runs on the CPU only: use --device=cpu, or --weights=bfloat16 on a GPU")
        model = quantize_int8(model)
    if compile:
        # dynamic=True: the batch, the prompt length and the number of cached positions change from call to
        # call; without it every new length would compile again.
        model = torch.compile(model, dynamic=True)
    return model


# ---------------------------------------------------------------------------------------------------
# The settings of a model to open, declared once for every command that loads one


CKPT_HELP = "an out_dir (best.pt, else ckpt.pt), a .pt checkpoint, or a local Hugging Face GPT-2 folder"


@dataclass
class ModelSettings:
    """The model a command opens and how it runs it: every CLI's settings dataclass inherits these (a CLI changes
    a default by declaring the field again, e.g. ckpt's)."""

    ckpt: str = setting("", "the model: " + CKPT_HELP)
    adapter: str | None = setting(None, "a LoRA adapter (the out_dir or .pt of a run with lora_rank > 0) to apply to the --ckpt model, its base")
    base: str | None = setting(None, "with a LoRA run's checkpoint as --ckpt: where its base model is, if it moved since training")
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "compute dtype: auto (bf16 on CUDA, fp32 elsewhere), float32, bfloat16 or float16")
    weights: str = setting("float32", WEIGHTS_HELP)
    compile: bool = setting(False, COMPILE_HELP)
    threads: int = setting(0, THREADS_HELP)


@dataclass
class Opened:
    """A model opened for use: `model` to call (weights converted, perhaps compiled), what was loaded (`loaded`:
    tokenizer, chat template, path, checkpoint; its model is the plain one), and where and how it computes."""

    model: nn.Module
    loaded: Loaded
    device: torch.device
    dtype: torch.dtype


def open_model(settings: ModelSettings, *, what: str = "the model") -> Opened:
    """Load the model `settings` name (an adapter applied to its base), then prepare it for inference (which
    merges an adapter into its base: `loaded.model` is then the plain model too). Sets the CPU threads first."""
    if not settings.ckpt:
        raise UserError(f"give {what}: --ckpt OUT_DIR, a .pt file, or a Hugging Face GPT-2 folder")
    set_threads(settings.threads)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    loaded = load_model(settings.ckpt, device, adapter=settings.adapter, base=settings.base)
    model = prepare_for_inference(loaded.model, settings.weights, settings.compile, dtype)
    return Opened(model, loaded, device, dtype)
