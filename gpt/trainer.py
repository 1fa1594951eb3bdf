"""The training loop: batches in, a model that predicts the next token out.

Its place in the flow: gpt/datasets.py gives batches of the prepared data (gpt/data.py -> gpt/batches.py);
this module feeds them through gpt/model.py, minimises the loss with the optimizer of gpt/optim.py at the
learning rate its schedule gives, evaluates, and saves checkpoints (gpt/checkpoint.py) that sampling
(gpt/decoding.py) later loads. What surrounds the loop (processes, devices, signals, random states, the out_dir)
is in gpt/runtime.py; what it shows and records (screen, log.jsonl, loss.png) in gpt/runlog.py.

One optimizer step ("iteration", `step`), in `fit`:

    for each of this process's micro-batches:   x, y = batches.next();  loss = model(x, y) / micro-steps
                                                 loss.backward()        (DDP all-reduces on the last one only)
    clip the gradient norm;  optimizer step at the scheduled learning rate;  zero the gradients

Several processes (torchrun) split the micro-batches of one step between them: `gradient_accumulation_steps`
is the GLOBAL number of micro-batches per step, so 1 process with 8 and 4 processes with 2 each see the same
windows (gpt/batches.py deals process r the r-th slice of one global draw) and take the same step.

The out_dir of a run holds ckpt.pt (latest full state: resumable), best.pt (weights at the best val loss),
config.toml (the settings actually used), log.jsonl (one JSON object per logged step or evaluation) and
loss.png. Ctrl-C or SIGTERM finishes the step, saves ckpt.pt and says how to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from gpt import checkpoint as ckpt_io
from gpt.config import from_dict, parse_args, setting
from gpt.datasets import TrainingData, open_training_data
from gpt.device import THREADS_HELP, autocast, peak_flops, pick_dtype, set_threads
from gpt.errors import UserError, exit_on_user_error, plural
from gpt import layers, scaling
from gpt.model import GPT, GPTConfig
from gpt.optim import (learning_rate_at, make_optimizer, param_groups,  # noqa: F401 (re-exported)
                       schedule_note, set_hyperparameters, set_learning_rate)
from gpt.runlog import MFU_EXPLAINED
from gpt.atomic import check_writable
from gpt.reshape import grow_vocab
from gpt.runtime import (ARCH_OPTIONS, Dist, OutDirLock, Run, dist_from_env, end_process_group,
                         model_config, new_model, restore_rng, restore_sampler, resume_note, seed_everything,
                         setup_device, starting_model, training_flops_per_token)

# The settings fixed when a run starts: a resumed run must keep them. The shape of the weights; the rounding of
# the vocabulary (also a shape); the seed (the random streams continue from the checkpoint); the starting model;
# the adapters' shape and scale.
SHAPE_SETTINGS = ("n_layer", "n_head", "n_embd", "block_size", "bias")
FIXED_AT_START = ("vocab_multiple", "seed", "init_from", "lora_rank", "lora_alpha", "lora_targets")
# What a checkpoint from before the architecture options existed was trained with.
# (dpo_nll: a DPO run from before the setting existed was plain DPO, whatever today's default.)
LEGACY_SETTINGS = {"arch": "gpt2", "optimizer": "adamw", "lr_schedule": "cosine", "dpo_nll": 0.0}


@dataclass
class TrainConfig:
    # data
    data: list[str] = setting(["stdlib"], "the text: a file, a folder, or a named corpus (stdlib, shakespeare); .jsonl files of conversations train a chat model, of preference pairs tune one with DPO (needs init_from), with --rl its prompts tune one by reinforcement learning; several: repeat --data or join with ','")
    include: str | None = setting(None, "with a folder: only files matching this glob (e.g. '*.py')")
    val_fraction: float = setting(0.1, "share of the text (or of the conversations) held out for validation")
    val_data: str | None = setting(None, "conversations or preference pairs only: a .jsonl file (or folder) to validate on instead of a val_fraction share")
    dpo_beta: float = setting(0.5, "preference pairs only: DPO's beta, how far the model may move from the reference for a given preference (smaller: further; 0.1 is usual for plain DPO, 0.5 with dpo_nll kept exact match on tasks it had not seen)")
    dpo_nll: float = setting(1.0, "preference pairs only: add this weight x the chosen answers' negative log-likelihood per token to the DPO loss, which keeps them likely and exact match with them (0 = plain DPO, whose answers can get worse)")
    rl: bool = setting(False, "reinforcement learning (needs init_from): the .jsonl prompts are answered by the model, rl_group answers each, and answers that score above their group's mean are reinforced (gpt/post/rl.py)")
    reward: str = setting("exact", "rl only: exact (1 when the answer is the line's response, the task suite's check) or your own, module:function or file.py:function, called with (prompt, answer, reference) and returning a number")
    rl_group: int = setting(8, "rl only: answers sampled per prompt; each is scored against its group's mean reward")
    rl_temperature: float = setting(1.0, "rl only: the sampling temperature of the answers (1.0: the model as it is)")
    rl_max_tokens: int = setting(32, "rl only: the longest answer sampled, in tokens (an answer not ended by then is scored as it stands)")
    rl_kl: float = setting(0.0, "rl only: weight of the penalty on KL(model || the starting model) per answer token (0 = off; the KL is reported either way)")
    rl_std: bool = setting(False, "rl only: divide each advantage by its group's reward std too (GRPO's form); off: reward - group mean (Dr. GRPO: no bias towards prompts nearly always or never solved)")
    loss_on: str = setting("assistant", "conversations only: assistant (the loss counts the answers and their end token) or all (every token)")
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
    threads: int = setting(0, THREADS_HELP)
    peak_flops: float = setting(0.0, "device peak FLOP/s, the denominator of MFU (0 = the GPU's datasheet figure, or on CPU a matmul measured once and cached)")
    plot: bool = setting(True, "write loss.png (needs matplotlib)")
    progress: bool | None = setting(None, "a progress bar (none = when standard error is a terminal; plain lines otherwise)")
    # model
    depth: int = setting(0, "one dial for size: > 0 sets n_layer, n_embd, n_head, the learning rates, batch_size and the length (max_flops) by gpt/scaling.py's measured rule; settings given explicitly win (0 = off)")
    n_layer: int = setting(4, "Transformer layers")
    n_head: int = setting(4, "attention heads per layer")
    n_embd: int = setting(128, "width of the residual stream")
    block_size: int = setting(128, "context length in tokens")
    dropout: float = setting(0.0, "dropout probability (0 for small data runs that do not overfit)")
    bias: bool = setting(False, "biases in Linear layers and LayerNorms, as GPT-2 has (off: 1.2x faster on CPU, see BENCHMARKS.md)")
    vocab_multiple: int = setting(1, "round the model's vocabulary up to a multiple of this (64 speeds up GPUs)")
    arch: str = setting("modern", "modern (the options below that measured best) or gpt2 (GPT-2 exactly: exports to Hugging Face); each option set below overrides it")
    position: str | None = setting(None, "positions: learned (GPT-2) or rope (rotary) (none = arch's)")
    norm: str | None = setting(None, "layernorm (GPT-2) or rmsnorm (none = arch's)")
    mlp: str | None = setting(None, "the MLP's nonlinearity: gelu (GPT-2), relu2 or swiglu (none = arch's)")
    qk_norm: bool | None = setting(None, "normalise each head's queries and keys (none = arch's)")
    tie_embeddings: bool | None = setting(None, "the LM head is the token embedding (GPT-2) (none = arch's)")
    zero_init: bool | None = setting(None, "output projections (and an untied head) start at zero (none = arch's)")
    logit_softcap: float | None = setting(None, "logits = cap * tanh(logits / cap); 0 = off (none = arch's)")
    # optimizer and schedule
    batch_size: int = setting(16, "sequences per micro-batch, per process")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step, over all processes")
    max_iters: int = setting(2000, "optimizer steps to train for (in total, counting resumed ones)")
    max_seconds: float = setting(0.0, "also stop after this many seconds of run time, the schedule fitted to them (0 = off)")
    max_flops: float = setting(0.0, "a compute budget: train for as many steps as this many training FLOPs pay for (or max_iters, if fewer); without depth or a shape, the depth the fitted law says is best for it (0 = off)")
    learning_rate: float = setting(2e-3, "peak learning rate (AdamW's; Muon's is muon_lr_scale times it)")
    min_lr: float = setting(2e-4, "learning rate at the end of the decay")
    warmup_iters: int = setting(100, "steps of linear warmup")
    lr_decay_iters: int = setting(0, "step where the decay reaches min_lr (0 = follow max_iters; a resumed run keeps the end it started with)")
    decay_lr: bool = setting(True, "warmup, then the lr_schedule; false = constant learning_rate")
    lr_schedule: str = setting("cosine", "cosine, or wsd: warmup-stable-decay, flat then a linear decay over the last decay_fraction")
    decay_fraction: float = setting(0.3, "wsd: the share of the run spent decaying")
    optimizer: str = setting("muon", "muon: Muon for the blocks' matrices, AdamW for the rest; or adamw for every weight (GPT-2)")
    muon_lr_scale: float = setting(10.0, "Muon's learning rate as a multiple of learning_rate (its steps need a larger one)")
    muon_momentum: float = setting(0.95, "Muon's momentum")
    weight_decay: float = setting(0.1, "decoupled weight decay, on matrices and embeddings only")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.99, "AdamW beta2")
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off)")
    # evaluation, logging, checkpoints
    eval_interval: int = setting(250, "evaluate every this many steps (and before the first step, and at the end)")
    eval_iters: int = setting(20, "batches per split in each evaluation")
    log_interval: int = setting(10, "log the training loss every this many steps")
    checkpoint_interval: int = setting(0, "save ckpt.pt every this many steps (0 = at each evaluation); always at the end")
    # adapters (gpt/post/lora.py): train a small low-rank change of the init_from model instead of all its weights
    lora_rank: int = setting(0, "LoRA: the rank of the adapters trained over the frozen init_from model (8 is typical); 0 = off, train every weight")
    lora_alpha: float = setting(16.0, "LoRA: the adapters' change is scaled by lora_alpha / lora_rank (fixed while trying ranks, the learning rate carries over)")
    lora_dropout: float = setting(0.0, "LoRA: dropout on the adapters' input")
    lora_targets: list[str] = setting(["attn", "mlp", "head", "tokens"], "LoRA: what to adapt, by name: attn, mlp, head and tokens (every Linear layer of the blocks, an untied LM head, and every token's embedding row trained in full: the default), or attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, lm_head, wte (a low-rank change of the token embedding, and of the head tied to it)")


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
    if cfg.weight_decay < 0 or cfg.grad_clip < 0 or cfg.peak_flops < 0 or cfg.max_seconds < 0 or cfg.max_flops < 0:
        raise UserError("weight_decay, grad_clip, peak_flops, max_seconds and max_flops must not be negative")
    if cfg.depth < 0:
        raise UserError(f"depth must be 0 (off) or a number of layers, got {cfg.depth}")
    for name, choices in (("lr_schedule", ("cosine", "wsd")), ("optimizer", ("adamw", "muon"))):
        if getattr(cfg, name) not in choices:
            raise UserError(f"{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    if not 0.0 <= cfg.decay_fraction <= 1.0:
        raise UserError(f"decay_fraction must be between 0 and 1, got {cfg.decay_fraction}")
    if cfg.muon_lr_scale <= 0 or not 0.0 <= cfg.muon_momentum < 1.0:
        raise UserError(f"muon_lr_scale must be positive and muon_momentum in [0, 1), got {cfg.muon_lr_scale} and "
                        f"{cfg.muon_momentum}")
    if cfg.dpo_nll < 0:
        raise UserError(f"dpo_nll must not be negative, got {cfg.dpo_nll}")
    if cfg.dpo_beta <= 0:
        raise UserError(f"dpo_beta must be positive (it scales DPO's reward; 0.1 is usual), got {cfg.dpo_beta}")
    if cfg.loss_on not in ("assistant", "all"):
        raise UserError(f"loss_on must be assistant (the answers only) or all (every token), got {cfg.loss_on!r}")
    for adaptation in layers.adaptations():  # LoRA's settings (gpt/post), checked by the layer that adds them
        adaptation.check_settings(cfg)
    model_config(cfg, vocab_size=1)  # a combination of architecture options that cannot work names its setting


def resolve_config(argv: list[str]) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The settings of this run, and the checkpoint to resume from (None for a fresh run)."""
    given: set[str] = set()
    cfg, _ = parse_args(TrainConfig, argv, prog="train.py", description=DESCRIPTION, explicit=given)
    out_dir = Path(cfg.out_dir)
    if not cfg.resume:
        cfg = scaling.apply_rule(cfg, given)  # --depth (or a budget alone) sets what was not given
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
    saved = {**LEGACY_SETTINGS, **saved}
    base = from_dict(TrainConfig, saved, where=f"in {path}")
    cfg, flags = parse_args(TrainConfig, argv, prog="train.py", base=base)
    cfg.resume = True
    if cfg.lr_decay_iters == 0 and "lr_decay_iters" not in flags:
        # A schedule that followed max_iters keeps the end it started with: a --max_iters that extends the run
        # must not move the decay (the learning rate would jump back up). --lr_decay_iters on the command line
        # (0 included: follow the new max_iters) sets another end.
        cfg.lr_decay_iters = base.max_iters
    validate(cfg)
    fixed = {name: state["model_config"][name] for name in SHAPE_SETTINGS}
    fixed.update({name: base_value for name in FIXED_AT_START if (base_value := getattr(base, name)) is not None})
    for name, saved_value in fixed.items():
        if getattr(cfg, name) != saved_value:
            raise UserError(f"cannot resume {out_dir} with {name}={getattr(cfg, name)}: the run started with "
                            f"{name}={saved_value}, which a resumed run keeps (use another --out_dir for a new run, "
                            "or --init_from to fine-tune)")
    saved_arch = dataclasses.asdict(GPTConfig(**state["model_config"]))  # old checkpoints lack the options: GPT-2's
    wanted = model_config(cfg, vocab_size=1)
    for name in ARCH_OPTIONS:
        if getattr(wanted, name) != saved_arch[name]:
            raise UserError(f"cannot resume {out_dir} with {name}={getattr(wanted, name)}: the saved model has "
                            f"{name}={saved_arch[name]} (use another --out_dir for a new model)")
    if cfg.optimizer != saved["optimizer"]:
        raise UserError(f"cannot resume {out_dir} with optimizer={cfg.optimizer}: it was trained with "
                        f"{saved['optimizer']}, whose state the checkpoint holds")
    if cfg.tokenizer != state["config"].get("tokenizer", cfg.tokenizer) and cfg.init_from == "scratch":
        raise UserError(f"cannot resume {out_dir} with tokenizer {cfg.tokenizer!r}: it was trained with "
                        f"{state['config'].get('tokenizer')!r}")
    return cfg, state


DESCRIPTION = """Train a GPT on text (see configs/ for examples).

Examples:
  python train.py                                              # the default: stdlib, char tokens, ~5 min on a CPU
  python train.py --data=my_novel.txt --out_dir=out/novel      # your text (a file, a folder, or several)
  python train.py --out_dir=out/novel --resume --max_iters=4000   # continue a run, and extend it
  python train.py configs/sft_tasks_cpu.toml                   # tune out/default to answer (after python -m gpt.tasks make)
  python train.py configs/rl_tasks_cpu.toml                    # then reinforce its right answers (RL, rl = true)
  python train.py configs/shakespeare_char_cpu.toml            # Tiny Shakespeare (a 1 MB download, once), ~2 min
  python train.py configs/finetune_shakespeare.toml            # fine-tune out/default on it"""


# ---------------------------------------------------------------------------------------------------
# The run: settings -> lock the out_dir -> model and data -> the loop.


def train(argv: list[str] | None = None) -> int:
    """train.py: returns the exit code (0; 128 + signal after Ctrl-C/SIGTERM; 1 when the last save failed)."""
    cfg, resume_state = resolve_config(list(sys.argv[1:] if argv is None else argv))
    dist = dist_from_env()
    if dist.enabled and cfg.gradient_accumulation_steps % dist.world_size:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of the "
                        f"number of processes ({dist.world_size}): each takes an equal share of the micro-batches")
    lock = OutDirLock(Path(cfg.out_dir))
    if dist.master:  # before any work: a folder that cannot be written, or a run already using it, stops us here
        check_writable(Path(cfg.out_dir), "out_dir")
        lock.acquire()
    ended_well = False
    try:
        code = _train(cfg, resume_state, dist)
        ended_well = True
        return code
    finally:
        lock.release(failed=not ended_well)
        end_process_group(dist, orderly=ended_well)


def _train(cfg: TrainConfig, resume_state: dict[str, Any] | None, dist: Dist) -> int:
    set_threads(cfg.threads)
    device = setup_device(cfg.device, dist)
    dtype = pick_dtype(cfg.dtype, device)
    if dtype == torch.float16 and cfg.optimizer == "muon":
        raise UserError("optimizer = 'muon' does not take fp16's gradient scaling: use --dtype=bfloat16 or float32, "
                        "or optimizer = 'adamw'")
    show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    log = (lambda text: print(text, flush=True)) if dist.master else (lambda text: None)
    for note in (resume_note(cfg, resume_state) if resume_state is not None else None, schedule_note(cfg)):
        if note:
            log(note)

    # The model and the data. Weights are initialised from the same seed on every process (DDP also
    # broadcasts rank 0's); rank 0 prepares the corpus, the others then find it in the cache.
    seed_everything(cfg.seed)
    model, tokenizer, cfg = starting_model(cfg, resume_state, log)
    data = open_training_data(cfg, tokenizer, progress=cfg.progress is not False) if dist.master else None
    dist.barrier()
    if data is None:
        data = open_training_data(cfg, tokenizer, progress=False)
    if resume_state is not None and data.tokenizer.to_dict() != resume_state["tokenizer"]:
        raise UserError(f"the corpus {','.join(cfg.data)} gives a different {cfg.tokenizer} tokenizer than the saved "
                        "run's (the text changed?): resume on the same data, or fine-tune with --init_from")
    data.check_fits(cfg.block_size, cfg.batch_size, dist.world_size)
    if model is None:
        model = new_model(cfg, data.tokenizer.vocab_size)
    if cfg.max_flops > 0:  # the budget, in steps of this model (a resumed run computes the same number)
        cfg = dataclasses.replace(cfg, max_iters=min(cfg.max_iters, scaling.steps_for_budget(
            cfg, training_flops_per_token(model))))
        log(f"budget {cfg.max_flops:.3g} FLOPs: {cfg.max_iters:,} steps" + (f" (depth {cfg.depth}: gpt/scaling.py's "
            f"rule set what was not given)" if cfg.depth else ""))
    else:  # the data may bring tokens the starting model never saw (a chat template's markers): rows for them
        known = (tokenizer.ready or data.tokenizer).vocab_size
        needed = data.tokenizer.vocab_size
        if needed > known:
            def grow(m: GPT) -> GPT:
                return grow_vocab(m, known, needed, cfg.vocab_multiple, log)

            adaptation = layers.adaptation_of(model)  # an adapter trains the new rows over a base that stays as it was
            model = adaptation.with_grown_vocab(model, known, grow) if adaptation is not None else grow(model)
            if adaptation is not None:
                log(adaptation.summary(model))
    model.to(device)
    data.use_starting_model(model, cfg, resumed_from=resume_state, log=log)

    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    train_batches = data.batches("train", cfg.block_size, cfg.batch_size, seed=cfg.seed, device=device,
                                 rank=dist.rank, world_size=dist.world_size)
    start = {"step": 0, "best_val_loss": math.inf, "elapsed": 0.0}
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        set_hyperparameters(optimizer, cfg)  # this run's settings, not the saved ones (flags may change them)
        start = {key: float(resume_state.get(key, start[key])) for key in start}
        restore_sampler(train_batches, resume_state, dist, log)
        if "scaler" in resume_state and scaler.is_enabled():
            scaler.load_state_dict(resume_state["scaler"])

    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    train_model = torch.compile(model) if use_compile else model
    if dist.enabled:
        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    peak, peak_source = peak_flops(device, dtype, cfg.peak_flops, say=log) if dist.master else (None, "n/a")
    run = Run(cfg, dist, device, model, data, optimizer, scaler, train_batches, start, show_bar,
              flops_per_token=training_flops_per_token(model), peak_flops=peak, compiled=use_compile)
    log(f"model: {model.num_params() / 1e6:.2f}M parameters ({plural(cfg.n_layer, 'layer')}, "
        f"{plural(cfg.n_head, 'head')}, {cfg.n_embd} wide, block {cfg.block_size}, vocab {model.config.vocab_size}); "
        f"device {device}, {str(dtype).replace('torch.', '')}, compile {'on' if use_compile else 'off'}, "
        f"{plural(dist.world_size, 'process', 'processes')}")
    log(f"data: {data.describe()}; {cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps:,} tokens per step; "
        + (f"peak {peak / 1e9:,.0f} GFLOP/s ({peak_source}) for MFU" if peak else "peak FLOP/s unknown (MFU n/a)"))
    if peak:
        log(MFU_EXPLAINED)
    if use_compile:
        log("torch.compile: the first evaluation and the first step compile the model (a minute or more), then steps "
            "run faster")
    restore_rng(resume_state, cfg, device, dist)  # last, so that nothing above moves the random streams
    return fit(run, train_model, autocast_dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# The loop.


def fit(run: Run, train_model: torch.nn.Module, autocast_dtype: torch.dtype) -> int:
    """Train from run.step to max_iters: the optimizer steps, with evaluations, logs and checkpoints between them."""
    cfg, dist, device, optimizer, scaler = run.cfg, run.dist, run.device, run.optimizer, run.scaler
    local_accum = cfg.gradient_accumulation_steps // dist.world_size
    # Evaluation runs the module inside DDP's wrapper: it has no gradients to synchronise, and every forward of the
    # wrapper is a collective (it broadcasts the module's buffers), which processes scoring different numbers of
    # batches (eval_iters not a multiple of the processes) would call unevenly, and then wait on forever.
    eval_model = train_model.module if isinstance(train_model, DistributedDataParallel) else train_model

    def evaluation() -> None:
        run.record_eval(evaluate(eval_model, run.data, run.eval_batches, cfg, device, autocast_dtype, dist))

    if run.step == 0 and not cfg.resume:
        with run.paused(evaluation=True):  # (not in the first steps' tokens per second)
            evaluation()  # the "before" number: about ln(vocab_size) from scratch; the starting model's when fine-tuning
    run.stop.install()
    train_model.train()
    try:
        elapsed, out_of_time = run.elapsed_before, False
        while run.step < cfg.max_iters and not out_of_time:
            lr = learning_rate_at(run.step, cfg, elapsed)
            set_learning_rate(optimizer, lr)
            step_loss = torch.zeros((), device=device)
            for micro in range(local_accum):
                batch = run.batches.next()
                # Gradients are all-reduced once per step, on the last micro-batch.
                last = micro == local_accum - 1
                sync = contextlib.nullcontext() if (last or not dist.enabled) else train_model.no_sync()
                with sync:
                    with autocast(device, autocast_dtype):
                        loss = run.data.loss(train_model, batch) / local_accum
                    scaler.scale(loss).backward()
                step_loss += loss.detach().float()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            run.step += 1

            # Between steps: logs, evaluations, checkpoints, and a stop request (all processes stop at one step).
            stop_now = dist.any(run.stop.signum is not None, device)
            # With max_seconds, rank 0's clock times the run for all: they agree on the learning rate and last step.
            elapsed = run.elapsed() if not (cfg.max_seconds and dist.enabled) else float(dist.all_reduce_sum(
                torch.tensor([run.elapsed() if dist.master else 0.0], device=device, dtype=torch.float64)).item())
            out_of_time = 0 < cfg.max_seconds <= elapsed
            is_last = run.step == cfg.max_iters or out_of_time
            is_log = run.step % cfg.log_interval == 0 or is_last
            is_eval = run.step % cfg.eval_interval == 0 or is_last
            is_ckpt = is_last or stop_now or (run.step % cfg.checkpoint_interval == 0 if cfg.checkpoint_interval
                                              else is_eval)
            run.record_loss(step_loss, lr, check=is_log or is_eval or is_ckpt or dist.enabled, show=is_log)
            with run.paused(evaluation=is_eval):  # evaluating and saving are not training throughput
                if is_eval:
                    evaluation()
                if is_ckpt:
                    run.save_training_state()
            if stop_now and not is_last:
                return run.stopped()
    finally:
        run.stop.restore()
        run.progress.close()
    return run.done(note=" (max_seconds reached)" if out_of_time else "")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TrainingData, eval_batches: dict[str, Any], cfg: TrainConfig,
             device: torch.device, dtype: torch.dtype, dist: Dist) -> dict[str, dict[str, float]]:
    """Each split's metrics (loss, ...) averaged over the same eval_iters batches every time.

    Every process draws the single-process stream of batches and scores its share of them (batch i on process
    i mod N), so N processes evaluate exactly the batches one process would, and the result does not depend on N.
    """
    was_training = model.training
    model.eval()
    result = {}
    for split, (batches, initial) in eval_batches.items():
        batches.load_state_dict(initial)
        totals: dict[str, torch.Tensor] = {}
        for i in range(cfg.eval_iters):
            batch = batches.next()
            if i % dist.world_size != dist.rank:
                continue
            with autocast(device, dtype):
                metrics = data.metrics(model, batch)
            for name, value in metrics.items():
                totals[name] = totals.get(name, torch.zeros((), device=device, dtype=torch.float64)) + value.double()
        # A process may have scored no batch (eval_iters < processes): the names come from all of them.
        names = sorted({n for names in dist.gather(sorted(totals)) for n in names}, key=lambda n: (n != "loss", n))
        zero = torch.zeros((), device=device, dtype=torch.float64)
        stacked = dist.all_reduce_sum(torch.stack([totals.get(n, zero) for n in names])) / cfg.eval_iters
        result[split] = dict(zip(names, stacked.tolist()))
    model.train(was_training)
    return result


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    return train(argv)


if __name__ == "__main__":
    raise SystemExit(main())
