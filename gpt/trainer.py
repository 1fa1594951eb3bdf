"""The training loop: token batches in, a model that predicts the next token out.

Its place in the flow: gpt/data.py prepares the corpus into token bins and draws batches from them;
this module feeds them through gpt/model.py, minimises the loss with AdamW, evaluates, logs, and saves
checkpoints with gpt/checkpoint.py, which gpt/generate.py (sampling) later loads.

One optimizer step ("iteration", `step`):

    for each of this process's micro-batches:   x, y = batches.next();  loss = model(x, y) / micro-steps
                                                 loss.backward()        (DDP all-reduces on the last one only)
    clip the gradient norm;  AdamW step at the scheduled learning rate;  zero the gradients

Several processes (torchrun) split the micro-batches of one step between them: `gradient_accumulation_steps`
is the GLOBAL number of micro-batches per step, so 1 process with 8 and 4 processes with 2 each see the same
windows (gpt/data.py deals process r the r-th slice of one global draw) and take the same step.

The out_dir of a run holds ckpt.pt (latest full state: resumable), best.pt (weights at the best val loss),
config.toml (the settings actually used), log.jsonl (one JSON object per logged step or evaluation) and
loss.png. Ctrl-C or SIGTERM finishes the step, saves ckpt.pt and says how to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt import checkpoint as ckpt_io
from gpt.atomic import atomic_write, write_text
from gpt.config import from_dict, parse_args, setting, to_toml
from gpt.device import autocast, peak_flops, pick_device, pick_dtype, synchronize
from gpt.errors import UserError, exit_on_user_error
from gpt.model import GPT, GPTConfig
from gpt.optim import learning_rate_at, make_optimizer, param_groups  # noqa: F401 (re-exported)
from gpt.tokenizer import Tokenizer, tokenizer_from_dict

# The settings that fix the shape of the weights: a resumed run must keep them.
SHAPE_SETTINGS = ("n_layer", "n_head", "n_embd", "block_size", "bias")


@dataclass
class TrainConfig:
    # data
    data: str = setting("stdlib", "the text: a file, a folder, several paths joined by ',' , or a named corpus (stdlib, shakespeare)")
    include: str | None = setting(None, "with a folder: only files matching this glob (e.g. '*.py')")
    val_fraction: float = setting(0.1, "share of the text held out for validation")
    data_dir: str = setting("data", "where prepared token bins are cached")
    on_invalid_utf8: str = setting("error", "a file that is not UTF-8: error (with file and byte offset) or replace (bad bytes become U+FFFD)")
    tokenizer: str = setting("char", "char, bpe:<vocab_size>, gpt2, or a .tiktoken file (ignored with init_from/resume: theirs is used)")
    # run
    out_dir: str = setting("out/default", "folder for checkpoints, config.toml, log.jsonl and loss.png")
    resume: bool = setting(False, "continue the run saved in out_dir (its settings apply; flags given override them)")
    init_from: str = setting("scratch", "scratch, or a checkpoint / out_dir / local Hugging Face GPT-2 folder to fine-tune")
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "auto (bf16 on CUDA, else fp16 with a scaler; fp32 on CPU), float32, bfloat16, float16")
    compile: bool | None = setting(None, "torch.compile the model (none = on for CUDA; off on CPU, where it needs a C++ compiler and measured only ~3% faster)")
    seed: int = setting(1337, "seed for weights, dropout and batches")
    threads: int = setting(0, "CPU threads for torch (0 = torch's default)")
    peak_flops: float = setting(0.0, "device peak FLOP/s for MFU (0 = GPU datasheet, or a matmul measured on CPU)")
    plot: bool = setting(True, "write loss.png (needs matplotlib)")
    progress: bool | None = setting(None, "show a progress bar (none = when standard error is a terminal)")
    # model
    n_layer: int = setting(4, "Transformer layers")
    n_head: int = setting(4, "attention heads per layer")
    n_embd: int = setting(128, "width of the residual stream")
    block_size: int = setting(128, "context length in tokens")
    dropout: float = setting(0.0, "dropout probability (0 for small data runs that do not overfit)")
    bias: bool = setting(False, "biases in Linear layers and LayerNorms, as GPT-2 has (off: 1.2x faster on CPU, see BENCHMARKS.md)")
    vocab_multiple: int = setting(1, "round the model's vocabulary up to a multiple of this (64 speeds up GPUs)")
    # optimizer and schedule
    batch_size: int = setting(16, "sequences per micro-batch, per process")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step, over all processes")
    max_iters: int = setting(2000, "optimizer steps to train for (in total, counting resumed ones)")
    learning_rate: float = setting(2e-3, "peak learning rate")
    min_lr: float = setting(2e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = setting(100, "steps of linear warmup")
    lr_decay_iters: int = setting(2000, "step where the cosine decay reaches min_lr (0 = max_iters)")
    decay_lr: bool = setting(True, "warmup + cosine decay; false = constant learning_rate")
    weight_decay: float = setting(0.1, "AdamW weight decay, on matrices and embeddings only")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.99, "AdamW beta2")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off)")
    # evaluation, logging, checkpoints
    eval_interval: int = setting(250, "evaluate every this many steps (and at the end)")
    eval_iters: int = setting(20, "batches per split in each evaluation")
    log_interval: int = setting(10, "log the training loss every this many steps")
    checkpoint_interval: int = setting(0, "save ckpt.pt every this many steps (0 = at each evaluation); always at the end")


# ---------------------------------------------------------------------------------------------------
# Pieces small enough to test alone.


def validate(cfg: TrainConfig) -> None:
    """Settings that cannot work, caught before any data is prepared."""
    positive = ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "gradient_accumulation_steps",
                "eval_interval", "eval_iters", "log_interval", "vocab_multiple")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("max_iters", "warmup_iters", "lr_decay_iters", "checkpoint_interval", "threads"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must not be negative, got {getattr(cfg, name)}")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if cfg.learning_rate <= 0 or cfg.min_lr < 0:
        raise UserError("learning_rate must be positive and min_lr not negative")
    if not (0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0):
        raise UserError(f"beta1 and beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0 or cfg.peak_flops < 0:
        raise UserError("weight_decay, grad_clip and peak_flops must not be negative")


# ---------------------------------------------------------------------------------------------------
# Several processes (torchrun sets RANK, WORLD_SIZE and LOCAL_RANK).


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t


def dist_from_env() -> Dist:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def setup_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    device = pick_device(cfg.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    if dist.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                             **({"device_id": device} if device.type == "cuda" else {}))
    return device


# ---------------------------------------------------------------------------------------------------
# Settings of a resumed run, and checks that a resume or fresh start is what the user meant.


def resolve_config(argv: list[str]) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The settings of this run, and the checkpoint to resume from (None for a fresh run)."""
    cfg, _ = parse_args(TrainConfig, argv, prog="train.py", description="Train a GPT on text (see configs/ for examples).")
    out_dir = Path(cfg.out_dir)
    if not cfg.resume:
        validate(cfg)
        for name in ("ckpt.pt", "best.pt"):
            if (out_dir / name).exists():
                raise UserError(f"{out_dir} already holds a run ({name}): add --resume to continue it, "
                                "or choose another --out_dir")
        return cfg, None
    path = out_dir / "ckpt.pt"
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist (start without --resume, or point --out_dir "
                        "at a run)")
    state = ckpt_io.load_checkpoint(path)
    if "optimizer" not in state or "config" not in state:
        raise UserError(f"{path} holds weights only, not a training state: use --init_from={path} to fine-tune")
    # The saved run's settings, then the TOML file's (if one was given), then the flags.
    saved = {k: v for k, v in state["config"].items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    base = from_dict(TrainConfig, saved, where=f"in {path}")
    cfg, _ = parse_args(TrainConfig, argv, prog="train.py", base=base)
    cfg.resume = True
    validate(cfg)
    saved_shape = state["model_config"]
    for name in SHAPE_SETTINGS:
        if getattr(cfg, name) != saved_shape[name]:
            raise UserError(f"cannot resume {out_dir} with {name}={getattr(cfg, name)}: the saved model has "
                            f"{name}={saved_shape[name]} (use another --out_dir for a new model, or --init_from "
                            f"to fine-tune)")
    if cfg.tokenizer != state["config"].get("tokenizer", cfg.tokenizer) and cfg.init_from == "scratch":
        raise UserError(f"cannot resume {out_dir} with tokenizer {cfg.tokenizer!r}: it was trained with "
                        f"{state['config'].get('tokenizer')!r}")
    return cfg, state


# ---------------------------------------------------------------------------------------------------
# Model, tokenizer and data.


def _rebuild(model: GPT, **changes: Any) -> GPT:
    """The same weights in a model whose config differs in dropout and/or a shorter block_size."""
    config = dataclasses.replace(model.config, **changes)
    weights = ckpt_io.clean_state_dict(model)
    if config.block_size < model.config.block_size:
        # A shorter context only needs the first positions' embeddings.
        weights["transformer.wpe.weight"] = weights["transformer.wpe.weight"][: config.block_size].clone()
    new = GPT(config)
    new.load_state_dict(weights)
    return new


def build_model(cfg: TrainConfig, resume_state: dict[str, Any] | None,
                log) -> tuple[GPT, Tokenizer | str, TrainConfig]:
    """The model to train, the tokenizer (object, or spec to build from the corpus), and cfg completed."""
    if resume_state is not None:
        model = ckpt_io.model_from_checkpoint(resume_state)
        tokenizer = tokenizer_from_dict(resume_state["tokenizer"])
        if cfg.init_from == "scratch":
            # Prepared again exactly as the saved run was (same cache); the tokenizer is checked afterwards.
            tokenizer = cfg.tokenizer
        return _rebuild(model, dropout=cfg.dropout), tokenizer, cfg
    if cfg.init_from != "scratch":
        if not Path(cfg.init_from).exists():
            raise UserError(f"init_from {cfg.init_from} not found: give a checkpoint (.pt), an out_dir, or a local "
                            "Hugging Face GPT-2 folder")
        loaded = ckpt_io.load_model(cfg.init_from)
        model, shape = loaded.model, loaded.model.config
        block_size = cfg.block_size
        if block_size > shape.block_size:
            log(f"block_size {block_size} is longer than the model's {shape.block_size}: using {shape.block_size}")
            block_size = shape.block_size
        model = _rebuild(model, dropout=cfg.dropout, block_size=block_size)
        # The run's record shows the shape actually trained, whatever the settings said.
        cfg = dataclasses.replace(cfg, n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                                  bias=shape.bias, block_size=block_size, tokenizer=loaded.tokenizer.name)
        log(f"fine-tuning {loaded.path} ({model.num_params() / 1e6:.2f}M parameters)")
        return model, loaded.tokenizer, cfg
    return None, cfg.tokenizer, cfg  # type: ignore[return-value]  # built once the tokenizer is known


def new_model(cfg: TrainConfig, vocab_size: int) -> GPT:
    padded = -(-vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
    return GPT(GPTConfig(vocab_size=padded, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                         n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))


def split_sizes(prepared: Any, split: str) -> tuple[int, int]:
    """(tokens, UTF-8 bytes of the text) of a split, for bits per byte."""
    info = prepared.meta["splits"][split]
    return int(info["tokens"]), int(info["bytes"])


def check_data_fits(cfg: TrainConfig, prepared: Any, dist: Dist) -> None:
    for split in ("train", "val"):
        tokens, _ = split_sizes(prepared, split)
        if tokens < cfg.block_size + 1:
            raise UserError(f"the {split} split has {tokens} tokens, fewer than block_size + 1 = {cfg.block_size + 1}: "
                            "lower --block_size or give more text")
    tokens, _ = split_sizes(prepared, "train")
    windows = tokens - cfg.block_size
    if cfg.batch_size * dist.world_size > windows:
        raise UserError(f"batch_size {cfg.batch_size} x {dist.world_size} process(es) is more than the {windows} "
                        f"distinct windows of {cfg.block_size + 1} tokens in the train split: lower --batch_size "
                        "or --block_size, or give more text")


# ---------------------------------------------------------------------------------------------------
# RNG states (saved with each checkpoint, so a resumed run draws the same dropout masks).


def rng_state(device: torch.device) -> dict[str, Any]:
    legacy = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [legacy[0], legacy[1].tolist(), int(legacy[2]), int(legacy[3]), float(legacy[4])]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------------
# Output: log.jsonl, the progress display, the loss curve.


class RunLog:
    """log.jsonl and the loss curve; only rank 0 writes."""

    def __init__(self, out_dir: Path, enabled: bool, plot: bool):
        self.path = out_dir / "log.jsonl"
        self.out_dir = out_dir
        self.enabled = enabled
        self.plot = plot
        self.records: list[dict[str, Any]] = []

    def keep_until(self, step: int) -> None:
        """On resume: drop entries written after the checkpoint (a run killed after saving it)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(record)
        self.records = kept
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def draw(self) -> None:
        if not (self.enabled and self.plot):
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        steps = [(r["step"], r["loss"]) for r in self.records if r.get("kind") == "train"]
        evals = [(r["step"], r["train_loss"], r["val_loss"]) for r in self.records if r.get("kind") == "eval"]
        fig, ax = plt.subplots(figsize=(7, 4))
        if steps:
            ax.plot(*zip(*steps), lw=0.8, alpha=0.6, label="train (batch)")
        if evals:
            s, tr, va = zip(*evals)
            ax.plot(s, tr, "o-", ms=3, label="train (eval)")
            ax.plot(s, va, "o-", ms=3, label="val (eval)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_write(self.out_dir / "loss.png") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)


class Progress:
    """A tqdm bar (when wanted) or plain lines; `say` prints a line either way."""

    def __init__(self, enabled: bool, show_bar: bool, start: int, total: int):
        self.enabled = enabled
        self.bar = None
        if enabled and show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def update(self, step: int, fields: dict[str, str] | None) -> None:
        if self.bar is not None:
            self.bar.n = step
            if fields:
                self.bar.set_postfix(fields, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------------
# Signals: stop at the end of the current step.


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------------------------------
# The run.


def train(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, resume_state = resolve_config(argv)
    dist = dist_from_env()
    if dist.enabled and cfg.gradient_accumulation_steps % dist.world_size:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of the "
                        f"number of processes ({dist.world_size}): each takes an equal share of the micro-batches")
    try:
        return _train(cfg, resume_state, dist)
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, resume_state: dict[str, Any] | None, dist: Dist) -> int:
    from gpt import data as data_mod

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = setup_device(cfg, dist)
    dtype = pick_dtype(cfg.dtype, device)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    show = dist.master
    show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()

    def log(text: str) -> None:
        if show:
            print(text, flush=True)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True

    # Weights are initialised from the same seed on every process (DDP also broadcasts rank 0's).
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, tokenizer, cfg = build_model(cfg, resume_state, log)

    # Rank 0 prepares the corpus; the others then find it cached.
    prepared = None
    if dist.master:
        prepared = data_mod.prepare(cfg.data, tokenizer, include=cfg.include, val_fraction=cfg.val_fraction,
                                    data_dir=cfg.data_dir, on_invalid_utf8=cfg.on_invalid_utf8, progress=show_bar)
    dist.barrier()
    if not dist.master:
        prepared = data_mod.prepare(cfg.data, tokenizer, include=cfg.include, val_fraction=cfg.val_fraction,
                                    data_dir=cfg.data_dir, on_invalid_utf8=cfg.on_invalid_utf8, progress=False)
    tokenizer = prepared.tokenizer
    if resume_state is not None and tokenizer.to_dict() != resume_state["tokenizer"]:
        raise UserError(f"the corpus {cfg.data} gives a different {cfg.tokenizer} tokenizer than the saved run's "
                        "(the text changed?): resume on the same data, or fine-tune with --init_from")
    check_data_fits(cfg, prepared, dist)
    if model is None:
        model = new_model(cfg, tokenizer.vocab_size)
    elif tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}")
    model.to(device)

    local_accum = cfg.gradient_accumulation_steps // dist.world_size
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    train_batches = data_mod.Batches(prepared.train_bin, cfg.block_size, cfg.batch_size, seed=cfg.seed,
                                     device=device, rank=dist.rank, world_size=dist.world_size)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))

    step, best_val_loss, elapsed_before = 0, float("inf"), 0.0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        step = int(resume_state["step"])
        best_val_loss = float(resume_state.get("best_val_loss", float("inf")))
        elapsed_before = float(resume_state.get("elapsed", 0.0))
        sampler = resume_state.get("sampler") or {}
        states = sampler.get("train") or []
        if sampler.get("world_size") == dist.world_size and len(states) == dist.world_size:
            train_batches.load_state_dict(states[dist.rank])
        elif states:
            # Every rank runs the same generator (each takes its slice of one global draw), so rank 0's state
            # continues the stream for any number of processes; only the slicing changes.
            log(f"resuming a run saved with {sampler.get('world_size')} process(es) on {dist.world_size}: "
                "the batch stream continues, dealt out differently")
            train_batches.load_state_dict(states[0])
        if "scaler" in resume_state and scaler.is_enabled():
            scaler.load_state_dict(resume_state["scaler"])

    raw_model = model
    if use_compile:
        model = torch.compile(model)
    train_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    out_dir = Path(cfg.out_dir)
    run_log = RunLog(out_dir, dist.master, cfg.plot)
    if dist.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.toml", to_toml(cfg))
        if resume_state is not None:
            run_log.keep_until(step)
    val_tokens, val_bytes = split_sizes(prepared, "val")
    peak, peak_source = (None, "n/a")
    if dist.master:
        peak, peak_source = peak_flops(device, dtype, cfg.peak_flops)
    flops_per_token = raw_model.flops_per_token()
    log(f"model: {raw_model.num_params() / 1e6:.2f}M parameters ({cfg.n_layer} layers, {cfg.n_head} heads, "
        f"{cfg.n_embd} wide, block {cfg.block_size}, vocab {raw_model.config.vocab_size}); device {device}, "
        f"{str(dtype).replace('torch.', '')}, compile {'on' if use_compile else 'off'}, {dist.world_size} process(es)")
    log(f"data: {split_sizes(prepared, 'train')[0]:,} train / {val_tokens:,} val tokens; {tokens_per_step:,} tokens "
        f"per step; peak {peak / 1e9:,.0f} GFLOP/s ({peak_source})" if peak else
        f"data: {split_sizes(prepared, 'train')[0]:,} train / {val_tokens:,} val tokens; {tokens_per_step:,} tokens "
        f"per step; peak FLOP/s unknown (MFU n/a)")

    # Evaluation draws from its own fixed-seed streams, rewound each time: every evaluation sees the same
    # windows (comparable numbers), and the training stream is untouched (exact resume).
    eval_batches = {}
    for offset, split in ((1, "train"), (2, "val")):
        path = prepared.train_bin if split == "train" else prepared.val_bin
        batches = data_mod.Batches(path, cfg.block_size, cfg.batch_size, seed=cfg.seed + 1_000_003 * offset,
                                   device=device, rank=dist.rank, world_size=dist.world_size)
        eval_batches[split] = (batches, batches.state_dict())

    def evaluate() -> dict[str, float]:
        """Mean loss over eval_iters batches per split."""
        raw_model.eval()
        result = {}
        for split, (batches, initial) in eval_batches.items():
            batches.load_state_dict(initial)
            total = torch.zeros((), device=device, dtype=torch.float64)
            with torch.no_grad():
                for _ in range(cfg.eval_iters):
                    x, y = batches.next()
                    with autocast(device, dtype):
                        _, loss = model(x, y)
                    total += loss.double()
            total = dist.all_reduce_sum(total) / (cfg.eval_iters * dist.world_size)
            result[split] = float(total)
        raw_model.train()
        return result

    def save(path: Path, full: bool) -> None:
        state: dict[str, Any] = {
            "model_config": dataclasses.asdict(raw_model.config),
            "model": ckpt_io.clean_state_dict(raw_model),
            "tokenizer": tokenizer.to_dict(),
            "step": step,
            "config": dataclasses.asdict(cfg),
            "best_val_loss": best_val_loss,
            "elapsed": elapsed_before + (time.perf_counter() - t_start),
        }
        if full:
            samplers = _gather(train_batches.state_dict(), dist)
            rngs = _gather(rng_state(device), dist)
            state.update(optimizer=optimizer.state_dict(), sampler={"world_size": dist.world_size, "train": samplers},
                         rng={"ranks": rngs})
            if scaler.is_enabled():
                state["scaler"] = scaler.state_dict()
        if dist.master:
            ckpt_io.save_checkpoint(state, path)

    stop = StopRequest()
    progress = Progress(show, show_bar, step, cfg.max_iters)
    pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked on the host
    last_good_ckpt: int | None = step if resume_state is not None else None
    t_start = time.perf_counter()
    t_window, tokens_window = time.perf_counter(), 0

    def check_losses() -> float | None:
        """The last step's loss (mean over processes); stops the run on a NaN or inf."""
        if not pending:
            return None
        values = torch.stack([loss for _, loss in pending]).double()
        values = dist.all_reduce_sum(values) / dist.world_size
        values = values.tolist()
        for (at, _), value in zip(pending, values):
            if not math.isfinite(value):
                kept = (f"{out_dir / 'ckpt.pt'} (step {last_good_ckpt}) is kept" if last_good_ckpt is not None
                        else "no checkpoint was written")
                raise UserError(f"the loss became {value} at step {at}: training diverged (try a lower learning_rate "
                                f"or grad_clip); {kept}")
        pending.clear()
        return values[-1]

    # The RNG streams (dropout) are set last, so that nothing above (e.g. the peak FLOP/s measurement) moves them.
    saved_rngs = (resume_state or {}).get("rng", {}).get("ranks") or []
    if len(saved_rngs) == dist.world_size:
        set_rng_state(saved_rngs[dist.rank], device)
    else:
        # Each process drops out different units; rank 0's stream is the single-process one.
        torch.manual_seed(cfg.seed + dist.rank)
        random.seed(cfg.seed + dist.rank)
    stop.install()
    train_model.train()
    try:
        while step < cfg.max_iters:
            lr = learning_rate_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=device)
            for micro in range(local_accum):
                x, y = train_batches.next()
                last = micro == local_accum - 1
                # Gradients are all-reduced once per step, on the last micro-batch.
                sync = contextlib.nullcontext() if (last or not dist.enabled) else train_model.no_sync()
                with sync:
                    with autocast(device, dtype):
                        _, loss = train_model(x, y)
                        loss = loss / local_accum
                    scaler.scale(loss).backward()
                step_loss += loss.detach().float()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_window += tokens_per_step
            pending.append((step, step_loss))

            # All processes must agree to stop at the same step, or the others would wait forever.
            stop_now = stop.signum is not None
            if dist.enabled:
                flag = dist.all_reduce_sum(torch.tensor([1.0 if stop_now else 0.0], device=device))
                stop_now = bool(flag.item() > 0)

            is_last = step == cfg.max_iters
            is_eval = step % cfg.eval_interval == 0 or is_last
            is_ckpt = is_last or stop_now or (step % cfg.checkpoint_interval == 0 if cfg.checkpoint_interval else is_eval)
            if step % cfg.log_interval == 0 or is_eval or is_ckpt or dist.enabled:
                loss_value = check_losses()
            if step % cfg.log_interval == 0 or is_last:
                synchronize(device)
                now = time.perf_counter()
                tok_per_s = tokens_window / max(now - t_window, 1e-9)
                mfu = flops_per_token * tok_per_s / (peak * dist.world_size) if peak else None
                run_log.write({"kind": "train", "step": step, "loss": loss_value, "lr": lr,
                               "tokens": step * tokens_per_step, "tok_per_s": round(tok_per_s, 1),
                               "mfu": None if mfu is None else round(mfu, 4),
                               "elapsed": round(elapsed_before + now - t_start, 3)})
                fields = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_per_s:,.0f}",
                          "mfu": "n/a" if mfu is None else f"{100 * mfu:.1f}%"}
                if progress.bar is not None:
                    progress.update(step, fields)
                else:
                    progress.say(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
                t_window, tokens_window = time.perf_counter(), 0
            elif progress.bar is not None:
                progress.update(step, None)

            paused = time.perf_counter()  # evaluation and saving are not training throughput
            if is_eval:
                losses = evaluate()
                bpb = losses["val"] * val_tokens / (val_bytes * math.log(2))
                run_log.write({"kind": "eval", "step": step, "train_loss": round(losses["train"], 6),
                               "val_loss": round(losses["val"], 6), "val_bpb": round(bpb, 6),
                               "elapsed": round(elapsed_before + time.perf_counter() - t_start, 3)})
                progress.say(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                             f"val {bpb:.4f} bits/byte")
                if losses["val"] < best_val_loss:
                    best_val_loss = losses["val"]
                    save(out_dir / "best.pt", full=False)
                run_log.draw()
            if is_ckpt:
                save(out_dir / "ckpt.pt", full=True)
                last_good_ckpt = step
            if is_eval or is_ckpt:
                t_window += time.perf_counter() - paused
            if stop_now and not is_last:
                progress.close()
                name = signal.Signals(stop.signum).name if stop.signum else "a stop request"
                log(f"{name}: stopped after step {step}; saved {out_dir / 'ckpt.pt'}. Resume with:\n"
                    f"  python train.py --out_dir={cfg.out_dir} --resume")
                return 128 + (stop.signum or signal.SIGTERM)
    finally:
        stop.restore()
        progress.close()
    log(f"done: {step} steps; best val loss {best_val_loss:.4f}; checkpoints in {out_dir}")
    return 0


def _gather(obj: Any, dist: Dist) -> list[Any]:
    """Every process's `obj`, in rank order (only rank 0 needs them, to save)."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    return train(argv)


if __name__ == "__main__":
    raise SystemExit(main())
