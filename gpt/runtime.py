"""The machinery around the training loop: processes, devices, the out_dir, signals, random states, the model
a run starts from, and the training state saved in checkpoints.

Its place in the flow: gpt/trainer.py runs the loop (batch -> forward -> loss -> backward -> step) and calls
here for everything that is not the loop itself, so that the loop reads on one page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt import checkpoint as ckpt_io
from gpt import layers
from gpt.device import pick_device
from gpt.errors import UserError, plural
from gpt.hf import not_gpt2
from gpt.model import ARCHITECTURES, GPT, GPTConfig
from gpt.reshape import rebuild
from gpt.tokenizer import Tokenizer, tokenizer_from_dict
from gpt.tokenizer_files import TokenizerChoice

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None  # type: ignore[assignment]

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

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (only rank 0 needs them, to save)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when `flag` is true on any (e.g. a stop request seen by one of them)."""
        if not self.enabled:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def dist_from_env() -> Dist:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def setup_device(device_name: str, dist: Dist) -> torch.device:
    """The device of this process; joins the process group when there are several processes."""
    device = pick_device(device_name)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    if dist.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                             **({"device_id": device} if device.type == "cuda" else {}))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    return device


def end_process_group(dist: Dist, orderly: bool) -> None:
    """Leave the process group. After a normal end every process first waits for the others (rank 0 may still
    be writing its last checkpoint): tearing down the group under a process that still uses it aborts it."""
    if not (dist.enabled and torch.distributed.is_initialized()):
        return
    if orderly:
        torch.distributed.barrier()
    # The DDP wrapper holds the group too, often in reference cycles that only the collector frees: left for the
    # interpreter's exit, the group's threads can be torn down after the C++ runtime and abort the process
    # ("terminate called without an active exception", seen once in CI on a run that had ended well).
    gc.collect()
    torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------
# The out_dir: one live run at a time.


class OutDirLock:
    """An out_dir belongs to one live run: an OS lock on out_dir/.lock, which the kernel releases when the process
    ends, however it ends (so a killed run never blocks the next one). The file records who holds it."""

    NAME = ".lock"

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.created_dir = False
        self.file = None

    def acquire(self) -> None:
        self.created_dir = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / self.NAME
        file = open(path, "a+", encoding="utf-8")
        if fcntl is None:
            self.file = file
            return
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise UserError(f"{self.out_dir} is in use by a running training ({holder}): wait for it to end, or "
                            "choose another --out_dir") from None
        file.seek(0)
        file.truncate()
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
        file.write(f"process {os.getpid()}: {command}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
        self.file = file

    def release(self, failed: bool) -> None:
        if self.file is None:
            return
        self.file.close()  # closing releases the lock
        self.file = None
        # A run refused before it wrote anything leaves no folder behind.
        if failed and self.created_dir and [p.name for p in self.out_dir.iterdir()] == [self.NAME]:
            shutil.rmtree(self.out_dir, ignore_errors=True)


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

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request"


# ---------------------------------------------------------------------------------------------------
# Random states (saved with each checkpoint, so a resumed run draws the same dropout masks).


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


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------------
# The model a run starts from.


def starting_model(cfg: Any, resume_state: dict[str, Any] | None, log) -> tuple[GPT | None, TokenizerChoice, Any]:
    """The model to train (None: a new one, built once the corpus gives the vocabulary), the tokenizer (ready, or a
    spec to fit to the corpus), and cfg completed with what the starting model fixes.

    A run that trains an adaptation over a frozen model (LoRA, lora_rank > 0: gpt/layers.py) starts it over the
    init_from model, and a resumed one rebuilds it from the checkpoint (its base found again and checked)."""
    if resume_state is not None:
        # A run from scratch is prepared again exactly as the saved run was (same cache, the tokenizer fitted
        # again); the tokenizer is checked afterwards.
        tokenizer = TokenizerChoice.of(cfg.tokenizer if cfg.init_from == "scratch"
                                       else tokenizer_from_dict(resume_state["tokenizer"]))
        adaptation = layers.adaptation_for_checkpoint(resume_state)
        if adaptation is not None:
            return adaptation.resume(resume_state, Path(cfg.out_dir) / "ckpt.pt", cfg), tokenizer, cfg
        model = ckpt_io.model_from_checkpoint(resume_state)
        return rebuild(model, dropout=cfg.dropout), tokenizer, cfg
    if cfg.init_from != "scratch":
        return _fine_tuning_start(cfg, log)
    return None, TokenizerChoice.of(cfg.tokenizer), cfg


def _fine_tuning_start(cfg: Any, log) -> tuple[GPT, TokenizerChoice, Any]:
    if not Path(cfg.init_from).exists():
        raise UserError(f"init_from {cfg.init_from} not found: give a checkpoint (.pt), an out_dir, or a local "
                        "Hugging Face GPT-2 folder")
    loaded = ckpt_io.load_model(cfg.init_from)
    shape = loaded.model.config
    block_size = cfg.block_size
    if block_size > shape.block_size:
        log(f"block_size {block_size} is longer than the model's {shape.block_size}: using {shape.block_size}")
        block_size = shape.block_size
    active = [a for a in layers.adaptations() if a.active(cfg)]
    bases = [a.describe_base(loaded, cfg) for a in active]  # before anything below changes the loaded weights
    # A run from an adapter's checkpoint continues from its base with the adapter merged in.
    model = rebuild(layers.plain(loaded.model), dropout=cfg.dropout, block_size=block_size)
    # The run's record shows the shape actually trained, whatever the settings said.
    cfg = dataclasses.replace(cfg, n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                              bias=shape.bias, block_size=block_size, tokenizer=loaded.tokenizer.name,
                              arch="gpt2" if not_gpt2(shape) is None else "modern",
                              **{name: getattr(shape, name) for name in ARCH_OPTIONS})
    log(f"fine-tuning {loaded.path} ({model.num_params() / 1e6:.2f}M parameters)")
    for adaptation, base in zip(active, bases):
        model = adaptation.start(model, base, cfg)
        log(adaptation.summary(model))
    return model, TokenizerChoice.of(loaded.tokenizer), cfg


def training_flops_per_token(model: GPT, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), for MFU: 6 per weight, 2 forward and 4 backward for each
    multiply-add (the gradients of its input and of itself), but 4 for a frozen weight (the base of a LoRA run),
    which needs no gradient of its own; plus attention's scores and weighted sum, which grow with the sequence
    length. Embedding lookups are not matmuls: the weights model.num_params() leaves out are left out here too."""
    cfg = model.config
    lookups = {"transformer.wpe.weight"} | ({"transformer.wte.weight"} if not cfg.tie_embeddings else set())
    frozen = sum(p.numel() for name, p in model.named_parameters() if not p.requires_grad and name not in lookups)
    return 6 * model.num_params() - 2 * frozen + 12 * cfg.n_layer * cfg.n_embd * (seq_len or cfg.block_size)


# The architecture options of gpt/model.py: each from the arch preset unless set on its own.
ARCH_OPTIONS = tuple(ARCHITECTURES["gpt2"])


def model_config(cfg: Any, vocab_size: int) -> GPTConfig:
    """The model the settings describe: the arch preset's options, those set explicitly on top; a UserError
    naming the setting for a combination that cannot work."""
    if cfg.arch not in ARCHITECTURES:
        raise UserError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {cfg.arch!r}")
    options = dict(ARCHITECTURES[cfg.arch])
    options.update({name: getattr(cfg, name) for name in ARCH_OPTIONS if getattr(cfg, name) is not None})
    try:
        config = GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                           n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, **options)
    except ValueError as e:
        raise UserError(str(e)) from None
    reason = not_gpt2(config) if cfg.arch == "gpt2" else None
    if reason:
        raise UserError(f"arch = 'gpt2' keeps GPT-2's exact architecture, but {reason}: drop that setting, or use "
                        "arch = 'modern'")
    return config


def new_model(cfg: Any, vocab_size: int) -> GPT:
    padded = -(-vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
    return GPT(model_config(cfg, padded))


# ---------------------------------------------------------------------------------------------------
# The training state in a checkpoint.


def training_state(model: GPT, tokenizer: Tokenizer, cfg: Any, *, step: int, best_val_loss: float,
                   elapsed: float, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every checkpoint of a run holds: enough to sample from it, evaluate it, or fine-tune it, and what the
    kind of data adds (conversations: the chat template that sampling and serving use)."""
    extra = dict(extras or {})
    # A run that trains an adaptation (LoRA) saves it (and where its base is) rather than every weight: kilobytes,
    # not megabytes.
    adaptation = layers.adaptation_of(model)
    weights = {adaptation.key: adaptation.checkpoint_entry(model)} if adaptation is not None else \
        {"model": ckpt_io.clean_state_dict(model)}
    return {**extra,
        "model_config": dataclasses.asdict(model.config),
        **weights,
        "tokenizer": tokenizer.to_dict(),
        "step": step,
        "config": dataclasses.asdict(cfg),
        "best_val_loss": best_val_loss,
        "elapsed": elapsed,
    }


def resumable_state(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batches: Any,
                    device: torch.device, dist: Dist) -> dict[str, Any]:
    """What ckpt.pt adds so that --resume continues exactly: optimizer, batch sampler and random states of every
    process. Every process must call this (it gathers); only rank 0 uses the result."""
    state: dict[str, Any] = {
        "optimizer": optimizer.state_dict(),
        "sampler": {"world_size": dist.world_size, "train": dist.gather(batches.state_dict())},
        "rng": {"ranks": dist.gather(rng_state(device))},
    }
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return state


def restore_sampler(batches: Any, resume_state: dict[str, Any], dist: Dist, log) -> None:
    sampler = resume_state.get("sampler") or {}
    states = sampler.get("train") or []
    if sampler.get("world_size") == dist.world_size and len(states) == dist.world_size:
        batches.load_state_dict(states[dist.rank])
    elif states:
        # Every rank runs the same generator (each takes its slice of one global draw), so rank 0's state
        # continues the stream for any number of processes; only the slicing changes.
        saved_with = plural(int(sampler.get("world_size") or 1), "process", "processes")
        log(f"resuming a run saved with {saved_with} on {dist.world_size}: the batch stream continues, dealt out "
            "differently")
        batches.load_state_dict(states[0])


def resume_note(cfg: Any, resume_state: dict[str, Any]) -> str:
    """The line a resumed run starts with: where it continues, and where its schedule ends if that is earlier."""
    step = int(resume_state.get("step", 0))
    line = f"resuming {cfg.out_dir} from step {step:,} of {cfg.max_iters:,}"
    end = cfg.lr_decay_iters or cfg.max_iters
    if cfg.decay_lr and end < cfg.max_iters:
        line += (f"; the learning-rate schedule ends at step {end:,} (as the run started), so "
                 f"{'the steps after it train' if step < end else 'every step trains'} at min_lr "
                 f"(--lr_decay_iters={cfg.max_iters} decays over the whole run instead)")
    return line


def restore_rng(resume_state: dict[str, Any] | None, cfg: Any, device: torch.device, dist: Dist) -> None:
    """The random streams (dropout) of a resumed run, or fresh ones: set last, so nothing before moves them."""
    saved = (resume_state or {}).get("rng", {}).get("ranks") or []
    if len(saved) == dist.world_size:
        set_rng_state(saved[dist.rank], device)
    else:
        # Each process drops out different units; rank 0's stream is the single-process one.
        seed_everything(cfg.seed + dist.rank)


# ---------------------------------------------------------------------------------------------------
# The bookkeeping between steps: losses, evaluations, checkpoints, and how the run ends.


class Run:
    """The state of a run that the loop (gpt/trainer.py:fit) carries from step to step, and what it does between
    steps: check and log the loss, record evaluations (best.pt), save the training state, say how the run ended.

    A checkpoint that cannot be written (a full disk) does not end the run: the failure is said in one line, the
    next save tries again, and the run exits non-zero only if its last save failed, naming the latest good one.
    """

    def __init__(self, cfg: Any, dist: Dist, device: torch.device, model: GPT, data: Any,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batches: Any, start: dict[str, float],
                 show_bar: bool, *, flops_per_token: float, peak_flops: float | None, compiled: bool = False):
        from gpt.runlog import Eta, Progress, RunLog

        self.cfg, self.dist, self.device, self.model, self.data = cfg, dist, device, model, data
        self.optimizer, self.scaler, self.batches = optimizer, scaler, batches
        self.step = int(start["step"])
        self.best_val_loss = float(start["best_val_loss"])
        self.elapsed_before = float(start["elapsed"])
        self.tokens_per_step = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.out_dir = Path(cfg.out_dir)
        self.stop = StopRequest()
        self.log = RunLog(self.out_dir, dist.master, cfg.plot)
        if dist.master:
            from gpt.atomic import write_text
            from gpt.config import to_toml

            write_text(self.out_dir / "config.toml", to_toml(cfg))
            if cfg.resume:
                self.log.keep_until(self.step)
        # An evaluation runs 2 x eval_iters forward passes of one micro-batch; a step runs this process's micro-batches
        # forward and backward, about 3 forward passes each: the guess of an evaluation's time until one is measured.
        micro_steps = max(1, cfg.gradient_accumulation_steps // dist.world_size)
        eta = Eta(self.step, cfg.max_iters, cfg.eval_interval, eval_guess_steps=2 * cfg.eval_iters / (3 * micro_steps),
                  first_eval_compiles=compiled)
        self.progress = Progress(dist.master, show_bar, self.step, cfg.max_iters, eta)
        self.last_good_ckpt: int | None = self.step if cfg.resume else None
        self.failed_save: str | None = None  # why the latest save failed, until one succeeds
        self.mfu_capped_said = False
        # Evaluation draws from its own fixed-seed streams, rewound each time: every evaluation sees the same
        # windows (comparable numbers), and the training stream is untouched (exact resume). Every process draws
        # the single-process stream (gpt/trainer.py:evaluate deals the batches out).
        self.eval_batches = {}
        for offset, split in ((1, "train"), (2, "val")):
            batches = data.batches(split, cfg.block_size, cfg.batch_size, seed=cfg.seed + 1_000_003 * offset,
                                   device=device)
            self.eval_batches[split] = (batches, batches.state_dict())
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet checked on the host
        self.started = time.perf_counter()
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ---- losses

    def record_loss(self, loss: torch.Tensor, lr: float, *, check: bool, show: bool) -> None:
        """Note the step's loss; `check` brings the pending losses to the host (a NaN stops the run), `show` logs."""
        self.pending.append((self.step, loss))
        self.window_tokens += self.tokens_per_step
        value = self._check_losses() if (check or show) else None
        if not show:
            self.progress.update(self.step, None, self._budget_left())
            return
        from gpt.device import synchronize

        synchronize(self.device)
        now = time.perf_counter()
        tok_per_s = self.window_tokens / max(now - self.window_start, 1e-9)
        mfu = self.flops_per_token * tok_per_s / (self.peak * self.dist.world_size) if self.peak else None
        measured = {name: round(v, 6) for name, v in self.data.training_metrics().items()}  # RL: the reward
        self.log.write({"kind": "train", "step": self.step, "loss": value, "lr": lr, **measured,
                        "tokens": self.step * self.tokens_per_step, "tok_per_s": round(tok_per_s, 1),
                        "mfu": None if mfu is None or mfu > 1 else round(mfu, 6), "elapsed": round(self.elapsed(), 3)})
        if mfu is not None and mfu > 1 and not self.mfu_capped_said:
            self.mfu_capped_said = True
            self.progress.say(f"note: MFU came out above 100% ({100 * mfu:.0f}%), which cannot be: the peak FLOP/s was "
                              "measured on a busy machine. MFU is shown as n/a; pin the peak with --peak_flops, or "
                              "measure it again on a quiet machine: python -m gpt.device --calibrate")
        fields = {"loss": f"{value:.4f}", **{name: f"{v:.4f}" for name, v in measured.items()}, "lr": f"{lr:.2e}",
                  "tok/s": f"{tok_per_s:,.0f}",
                  "mfu": "n/a" if mfu is None or mfu > 1 else f"{100 * mfu:.1f}%"}
        self.progress.update(self.step, fields, self._budget_left())
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def _budget_left(self) -> float | None:
        """The seconds max_seconds leaves this run (None without one)."""
        return self.cfg.max_seconds - self.elapsed() if self.cfg.max_seconds else None

    def _check_losses(self) -> float | None:
        """The last step's loss (mean over processes); stops the run on a NaN or inf."""
        if not self.pending:
            return None
        values = torch.stack([loss for _, loss in self.pending]).double()
        values = (self.dist.all_reduce_sum(values) / self.dist.world_size).tolist()
        for (at, _), value in zip(self.pending, values):
            if not math.isfinite(value):
                kept = (f"{self.out_dir / 'ckpt.pt'} (step {self.last_good_ckpt}) is kept"
                        if self.last_good_ckpt is not None else "no checkpoint was written")
                raise UserError(f"the loss became {value} at step {at}: training diverged (try a lower learning_rate "
                                f"or grad_clip); {kept}")
        self.pending.clear()
        return values[-1]

    @contextlib.contextmanager
    def paused(self, evaluation: bool = False):
        """Time spent inside (evaluating, saving) does not count against training throughput; an evaluation's is
        timed apart for the estimate of the time left."""
        paused = time.perf_counter()
        yield
        seconds = time.perf_counter() - paused
        self.window_start += seconds
        self.progress.paused(seconds, evaluation)

    # ---- evaluations and checkpoints

    def record_eval(self, metrics: dict[str, dict[str, float]]) -> None:
        record: dict[str, Any] = {"kind": "eval", "step": self.step}
        for split, values in metrics.items():
            record.update({f"{split}_{name}": round(value, 6) for name, value in values.items()})
        val_loss = metrics["val"]["loss"]
        bpb = self.data.bits_per_byte("val", val_loss)
        if bpb is not None:
            record["val_bpb"] = round(bpb, 6)
        record["elapsed"] = round(self.elapsed(), 3)
        self.log.write(record)
        before = " (before training)" if self.step == 0 else ""
        if self.step == 0 and self.cfg.init_from != "scratch":
            before = " (the starting model, before fine-tuning)"
        shown = ", ".join(f"{split} {name} {value:.4f}" for split, values in metrics.items()
                          for name, value in values.items())
        self.progress.say(f"step {self.step}{before}: {shown}" + ("" if bpb is None else f", val {bpb:.4f} bits/byte"))
        if self.step > 0 and val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self._save(self.out_dir / "best.pt", full=False)
        note = self.log.draw()
        if note:
            self.progress.say(note)

    def save_training_state(self) -> None:
        if self._save(self.out_dir / "ckpt.pt", full=True):
            self.last_good_ckpt = self.step

    def _save(self, path: Path, full: bool) -> bool:
        """Write a checkpoint (rank 0); every process takes part, since the training state is gathered."""
        state = training_state(self.model, self.data.tokenizer, self.cfg, step=self.step,
                               best_val_loss=self.best_val_loss, elapsed=self.elapsed(),
                               extras=self.data.checkpoint_extras())
        if full:
            state.update(resumable_state(self.optimizer, self.scaler, self.batches, self.device, self.dist))
        if not self.dist.master:
            return True
        try:
            ckpt_io.save_checkpoint(state, path)
        except ckpt_io.SaveError as e:
            self.failed_save = str(e)
            self.progress.say(f"warning: {e}; training goes on and the next checkpoint tries again "
                              f"({self._latest_good()})")
            return False
        if full:
            self.failed_save = None
        return True

    def _latest_good(self) -> str:
        if self.last_good_ckpt is None:
            return "no checkpoint of this run was saved yet"
        return f"the latest good checkpoint is {self.out_dir / 'ckpt.pt'} at step {self.last_good_ckpt}"

    # ---- the end

    def stopped(self) -> int:
        """After Ctrl-C or SIGTERM: say what was kept and how to resume; the exit code is 128 + the signal."""
        self.progress.close()
        if self.dist.master:
            if self.failed_save:
                print(f"error: {self.stop.name}: stopped after step {self.step}, but its checkpoint could not be "
                      f"saved ({self.failed_save}); {self._latest_good()}", file=sys.stderr, flush=True)
            else:
                print(f"{self.stop.name}: stopped after step {self.step}; saved {self.out_dir / 'ckpt.pt'}. "
                      f"Resume with:\n  python train.py --out_dir={self.cfg.out_dir} --resume", flush=True)
        return 128 + (self.stop.signum or signal.SIGTERM)

    def done(self, note: str = "") -> int:
        self.progress.close()
        if not self.dist.master:
            return 0
        if self.failed_save:
            print(f"error: training ended at step {self.step}, but its last checkpoint could not be saved "
                  f"({self.failed_save}); {self._latest_good()}", file=sys.stderr, flush=True)
            return 1
        print(f"done: {plural(self.step, 'step')}{note}; best val loss {self.best_val_loss:.4f}; checkpoints in "
              f"{self.out_dir}", flush=True)
        return 0
