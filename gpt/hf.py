"""GPT-2 weights from and to a local Hugging Face folder.

Its place in the flow: a side door into gpt/model.py. Instead of training from scratch, `load_hf_gpt2`
fills a `GPT` with OpenAI's GPT-2 weights (or any GPT-2 saved by `transformers`), which sampling,
evaluation and fine-tuning then use like a checkpoint of ours (gpt/checkpoint.py's `load_model` sends
Hugging Face folders here). `save_hf_gpt2` goes the other way, so a model trained here opens in
`transformers.GPT2LMHeadModel.from_pretrained`.

A folder holds `config.json` and the weights, as `model.safetensors` (preferred) or `pytorch_model.bin`.
Nothing is ever downloaded: the path must already exist on disk.

Two differences between the layouts:
  - GPT-2's original code used "Conv1D" layers, a Linear whose weight is stored transposed, (in, out);
    torch's nn.Linear stores (out, in). The c_attn, c_proj and c_fc weights are transposed on the way.
  - The names match ours (transformer.h.0.attn.c_attn.weight, ...), but files saved from the bare
    GPT2Model have no "transformer." prefix, the LM head is usually left out (it is the token embedding,
    tied), and older files carry the attention mask as buffers (attn.bias, attn.masked_bias) that our
    model builds on the fly.

The safetensors format is simple enough to read and write here, so the `safetensors` package is not a
runtime dependency: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw little-endian bytes.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from gpt.atomic import atomic_write, write_bytes
from gpt.errors import UserError, plural
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import Tokenizer
from gpt.tokenizer_files import save_hf_tokenizer

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_BIN_NAME = "pytorch_model.bin"

LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, which gpt/model.py uses; GPT-2's value too
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU with the tanh approximation, as ours
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
# The options of gpt/model.py that GPT-2 cannot compute, with GPT-2's value. (An untied LM head is
# tie_word_embeddings = false; zero_init only changes the initial weights.)
GPT2_ONLY = ("position", "norm", "mlp", "qk_norm", "logit_softcap", "attention_only")
# The weights GPT-2 stores as Conv1D, (in, out): nn.Linear wants them transposed.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers some files carry; our attention builds its mask itself, so they are dropped.
MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")

# GPT2Config's defaults, for config.json files that leave a value out.
HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}

# safetensors dtype names <-> torch dtypes
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES = {dtype: name for name, dtype in ST_DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a header is a few KB per tensor; anything huge is a corrupt file


def not_gpt2(config: GPTConfig) -> str | None:
    """Why Hugging Face's GPT-2 cannot compute this model (e.g. "position = 'rope'"), or None if it can."""
    gpt2 = GPTConfig()
    for name in GPT2_ONLY:
        if getattr(config, name) != getattr(gpt2, name):
            return f"{name} = {getattr(config, name)!r} is not GPT-2's ({getattr(gpt2, name)!r})"
    return None


# ---------------------------------------------------------------------------------------------------
# Reading


def load_hf_gpt2(path: str | Path) -> GPT:
    """A `GPT` holding the weights of the GPT-2 model saved in the local folder `path`."""
    folder = Path(path)
    if not folder.exists():
        raise UserError(f"Hugging Face folder {folder} not found: give a local folder with config.json and "
                        "model.safetensors (nothing is downloaded)")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: a Hugging Face GPT-2 model is a folder with config.json and "
                        "model.safetensors")
    hf_config = read_hf_config(folder / CONFIG_NAME)
    config = gpt_config_from_hf(hf_config, folder / CONFIG_NAME)
    tensors, weights_path = read_weights(folder)
    model = GPT(config)
    state = convert_from_hf(tensors, model, weights_path)
    model.load_state_dict(state)
    return model


def read_hf_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: a Hugging Face model folder needs its config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a model config (expected a JSON object)")
    return config


def gpt_config_from_hf(hf: dict[str, Any], where: Path | str = CONFIG_NAME) -> GPTConfig:
    """Our GPTConfig for a GPT-2 config.json; a UserError for any model this architecture cannot reproduce."""
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise UserError(f"{where}: model_type is {model_type!r}, but only GPT-2 models (model_type 'gpt2') "
                        "can be loaded")
    architectures = hf.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    for name in architectures:
        if name not in ARCHITECTURES:
            raise UserError(f"{where}: architecture {name!r} is not supported: only "
                            f"{' or '.join(ARCHITECTURES)} weights can be loaded")

    def get(key: str) -> Any:
        return hf.get(key, HF_DEFAULTS[key])

    # Options that change the computation in ways our model does not implement: refuse rather than
    # load the weights into a model that would compute something else.
    activation = get("activation_function")
    if activation not in ACTIVATIONS:
        raise UserError(f"{where}: activation_function is {activation!r}, but this model uses GELU with the "
                        f"tanh approximation ({' or '.join(ACTIVATIONS)})")
    eps = get("layer_norm_epsilon")
    if not isinstance(eps, (int, float)) or not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
        raise UserError(f"{where}: layer_norm_epsilon is {eps!r}, but this model's LayerNorms use {LAYER_NORM_EPS}")
    if get("scale_attn_weights") is not True:
        raise UserError(f"{where}: scale_attn_weights is {get('scale_attn_weights')!r}; this model always scales "
                        "attention scores by 1/sqrt(head_size)")
    if get("scale_attn_by_inverse_layer_idx"):
        raise UserError(f"{where}: scale_attn_by_inverse_layer_idx is true; this model does not scale attention "
                        "by the layer index")
    if get("add_cross_attention"):
        raise UserError(f"{where}: add_cross_attention is true; this model is decoder-only, without cross-attention")
    # reorder_and_upcast_attn only computes the same attention in fp32 inside mixed precision: the
    # function is unchanged, so such weights load as they are.
    n_embd, n_inner = get("n_embd"), get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise UserError(f"{where}: n_inner is {n_inner}, but this model's MLP is 4 x n_embd = {4 * n_embd} wide")
    ours = {"vocab_size": "vocab_size", "block_size": "n_positions", "n_layer": "n_layer", "n_head": "n_head",
            "n_embd": "n_embd"}
    values = {}
    for our_name, hf_name in ours.items():
        value = get(hf_name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{where}: {hf_name} should be an integer, got {value!r}")
        values[our_name] = value
    tied = hf.get("tie_word_embeddings", True)
    if not isinstance(tied, bool):
        raise UserError(f"{where}: tie_word_embeddings should be true or false, got {tied!r}")
    try:
        return GPTConfig(**values, dropout=0.0, bias=True, tie_embeddings=tied)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of model.safetensors (preferred) or pytorch_model.bin in `folder`."""
    safetensors_path = folder / SAFETENSORS_NAME
    bin_path = folder / PYTORCH_BIN_NAME
    if safetensors_path.is_file():
        return load_safetensors(safetensors_path), safetensors_path
    if bin_path.is_file():
        return load_pytorch_bin(bin_path), bin_path
    if any(folder.glob("*.index.json")) or any(folder.glob("model-*-of-*.safetensors")):
        raise UserError(f"{folder} holds sharded weights, which are not supported: save the model as one "
                        f"{SAFETENSORS_NAME}")
    raise UserError(f"{folder} has no {SAFETENSORS_NAME} or {PYTORCH_BIN_NAME}: the weights are missing")


def load_pytorch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"refused to load {path}: it holds objects other than tensors, and unpickling them could "
                        "run code; convert it to model.safetensors from a source you trust") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path}: the file is corrupt or not PyTorch weights ({first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return state


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file: with the `safetensors` package when installed, else with our own reader."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        return read_safetensors(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # the package raises its own SafetensorError (and others) for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path}: the file is corrupt or not safetensors ({first[:200]})") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file with torch alone."""
    path = Path(path)
    data = bytearray(path.read_bytes())  # writable, so torch.frombuffer can share it without a copy

    def corrupt(why: str) -> UserError:
        return UserError(f"cannot read {path}: the file is corrupt or not safetensors ({why})")

    if len(data) < 8:
        raise corrupt(f"only {len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise corrupt(f"header length {header_len} does not fit in a {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    base = 8 + header_len
    body_len = len(data) - base
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = ST_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"tensor {name!r} has an unsupported or malformed entry {info!r}") from None
        count = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if any(d < 0 for d in shape) or not 0 <= start <= end <= body_len or end - start != count * itemsize:
            raise corrupt(f"tensor {name!r}: shape {shape} of {info['dtype']} does not match bytes {start}..{end}")
        if count == 0:
            tensor = torch.empty(shape, dtype=dtype)
        else:
            tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=base + start).view(shape)
        if sys.byteorder == "big":  # the file is little-endian
            tensor = _byteswapped(tensor)
        tensors[name] = tensor
    return tensors


def convert_from_hf(tensors: dict[str, torch.Tensor], model: GPT, where: Path | str = "the weights"
                    ) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensors renamed and transposed into `model`'s state_dict layout, every shape checked."""
    by_name: dict[str, torch.Tensor] = {}
    lm_head = None
    for key, tensor in tensors.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name == "lm_head.weight":
            lm_head = tensor
        elif not MASK_BUFFER.match(name):
            by_name[name] = tensor

    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    wanted = {k[len("transformer."):] if k.startswith("transformer.") else k: k for k in expected}
    missing = sorted(set(wanted) - set(by_name))
    unexpected = sorted(set(by_name) - set(wanted))
    if missing:
        raise UserError(f"{where} lacks {plural(len(missing), 'GPT-2 weight')} the config calls for, e.g. "
                        f"{', '.join(missing[:3])}: the file does not match config.json")
    if unexpected:
        raise UserError(f"{where} has {plural(len(unexpected), 'weight')} a GPT-2 of this config does not, e.g. "
                        f"{', '.join(unexpected[:3])}: the file does not match config.json")

    state = {}
    for name, our_key in wanted.items():
        tensor = by_name[name]
        if name.endswith(CONV1D_SUFFIXES) and tensor.ndim == 2:
            tensor = tensor.t()
        want = tuple(expected[our_key].shape)
        if tuple(tensor.shape) != want:
            raise UserError(f"{where}: weight {name} has shape {tuple(tensor.shape)}, but config.json implies "
                            f"{want}")
        if not tensor.is_floating_point():
            raise UserError(f"{where}: weight {name} has dtype {tensor.dtype}, expected floating point")
        state[our_key] = tensor
    wte = state["transformer.wte.weight"]
    if not model.config.tie_embeddings:  # tie_word_embeddings = false: the head is a matrix of its own
        if lm_head is None or tuple(lm_head.shape) != tuple(wte.shape):
            raise UserError(f"{where}: config.json unties the LM head (tie_word_embeddings = false), but the file has "
                            f"no lm_head.weight of shape {tuple(wte.shape)}")
        state["lm_head.weight"] = lm_head
        return state
    if lm_head is not None:
        # Our LM head is the token embedding; a file with a different head would load as another model.
        if tuple(lm_head.shape) != tuple(wte.shape) or not torch.equal(lm_head.to(wte.dtype), wte):
            raise UserError(f"{where}: lm_head.weight differs from the token embedding (untied LM head), but "
                            "config.json ties them (tie_word_embeddings)")
    state["lm_head.weight"] = wte
    return state


# ---------------------------------------------------------------------------------------------------
# Writing


def save_hf_gpt2(model: torch.nn.Module, path: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder (config.json + model.safetensors); returns the folder.

    `transformers.GPT2LMHeadModel.from_pretrained(path)` loads it and computes the same logits. A model
    without biases (bias=False) is written with zero biases, which computes the same thing. The tokenizer, when
    given, goes beside the weights (gpt/tokenizer_files.py:save_hf_tokenizer): without it, a folder is read back with
    GPT-2's tokenizer, which is only right for a model trained with it.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file: give a folder to write the Hugging Face model into")
    model = _unwrapped(model)
    config: GPTConfig = model.config
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}: "
                        "they do not belong together")
    check_gpt2_shape(config)
    state = model.state_dict()
    extra = sorted(set(state) - {key for key, _ in _hf_keys(config)} - {"lm_head.weight"})
    if extra:
        raise UserError(f"the model has weights GPT-2 has not (e.g. {extra[0]}): a model carrying LoRA adapters is "
                        "written after merging them (python -m gpt.lora merge)")
    tensors: dict[str, torch.Tensor] = {}
    for our_key, shape in _hf_keys(config):
        if our_key in state:
            tensor = state[our_key].detach()
        elif our_key.endswith(".bias"):
            weight = state[our_key[: -len(".bias")] + ".weight"]
            tensor = torch.zeros(shape, dtype=weight.dtype)
        else:
            raise ValueError(f"model has no weight {our_key}")  # not a GPT of gpt/model.py: our bug
        if our_key.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        tensors[our_key] = tensor.to("cpu").contiguous()

    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        # GPT-2's <|endoftext|> id, where the vocabulary is GPT-2's; other tokenizers have none here.
        "bos_token_id": 50256 if config.vocab_size > 50256 else None,
        "eos_token_id": 50256 if config.vocab_size > 50256 else None,
        "torch_dtype": _dtype_name(tensors["transformer.wte.weight"].dtype),
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, folder / SAFETENSORS_NAME, metadata={"format": "pt"})
    if tokenizer is not None:
        save_hf_tokenizer(tokenizer, folder)
    write_bytes(folder / CONFIG_NAME, (json.dumps(hf_config, indent=2) + "\n").encode("utf-8"))
    return folder


def check_gpt2_shape(config: GPTConfig) -> None:
    """A UserError when a model of this config cannot be written as Hugging Face's GPT-2."""
    if config.attention_only:
        raise UserError("an attention-only model (no MLPs) cannot be written as GPT-2: Hugging Face's GPT-2 always "
                        "has an MLP in every block")
    reason = not_gpt2(config)
    if reason:
        raise UserError(f"this model cannot be written as GPT-2: {reason} (only models trained with arch = 'gpt2' "
                        "can)")


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The GPT inside torch.compile's and DDP's wrappers (their state_dict names carry prefixes)."""
    while hasattr(model, "_orig_mod") or (hasattr(model, "module") and isinstance(model.module, torch.nn.Module)):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


def _hf_keys(config: GPTConfig) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2's weights (our names, our shapes) in file order; a tied LM head is left out, as transformers does."""
    C = config.n_embd
    keys = [("transformer.wte.weight", (config.vocab_size, C)), ("transformer.wpe.weight", (config.block_size, C))]
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        keys += [
            (p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
            (p + "attn.c_attn.weight", (3 * C, C)), (p + "attn.c_attn.bias", (3 * C,)),
            (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
            (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
            (p + "mlp.c_fc.weight", (4 * C, C)), (p + "mlp.c_fc.bias", (4 * C,)),
            (p + "mlp.c_proj.weight", (C, 4 * C)), (p + "mlp.c_proj.bias", (C,)),
        ]
    keys += [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]
    if not config.tie_embeddings:
        keys.append(("lm_head.weight", (config.vocab_size, C)))
    return keys


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as a .safetensors file, atomically, with torch alone."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in ST_NAMES:
            raise ValueError(f"cannot write tensor {name} of dtype {tensor.dtype} as safetensors")
        tensor = tensor.detach().to("cpu").contiguous()
        if sys.byteorder == "big":
            tensor = _byteswapped(tensor)
        blob = _tensor_bytes(tensor)
        header[name] = {"dtype": ST_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header to 8 bytes with spaces

    path = Path(path)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def _tensor_bytes(tensor: torch.Tensor) -> bytes | memoryview:
    if tensor.numel() == 0:
        return b""
    # Viewed as raw bytes, every dtype (bfloat16 included, which numpy lacks) goes out unchanged.
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _byteswapped(tensor: torch.Tensor) -> torch.Tensor:
    size = tensor.element_size()
    if size == 1:
        return tensor
    raw = tensor.contiguous().view(torch.uint8).reshape(-1, size).flip(-1).contiguous()
    return raw.view(tensor.dtype).reshape(tensor.shape)


if __name__ == "__main__":  # python -m gpt.hf: the command line is gpt/hf_export.py (it loads models, which use this)
    from gpt.hf_export import main

    raise SystemExit(main())
