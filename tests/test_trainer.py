"""Tests of gpt/trainer.py run in this process: schedule, parameter groups, settings, failures mid-run.

Runs go through `main(argv)` with a tiny model on a tiny corpus in tmp_path (a second or two each).
The command line as a user types it (subprocesses, exact resume, DDP, signals) is tests/test_train_cli.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt_io
from gpt.config import load_toml
from gpt.model import GPT, GPTConfig
from gpt.runtime import training_flops_per_token
from gpt.trainer import TrainConfig, learning_rate_at, main, make_optimizer, param_groups

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, words: int = 6000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocab = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()
    path.write_text(" ".join(rng.choice(vocab) for _ in range(words)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny(tmp_path):
    """Arguments for a tiny, fast run; returns a function adding the out_dir and extra settings."""
    corpus = write_corpus(tmp_path / "corpus.txt")

    def args(out: str = "out", *extra: str) -> list[str]:
        return [f"--data={corpus}", f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / out}",
                "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
                "--eval_iters=2", "--eval_interval=4", "--log_interval=1", "--max_iters=4", "--warmup_iters=2",
                "--lr_decay_iters=8", "--plot=false", "--progress=false", "--peak_flops=1e11", *extra]

    return args


def records(out_dir: Path, kind: str) -> list[dict]:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# ---------------------------------------------------------------------------------------------------
# Pieces


def test_learning_rate_schedule_warms_up_then_follows_a_cosine_to_min_lr():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    assert learning_rate_at(0, cfg) == pytest.approx(1 / 11)
    assert learning_rate_at(9, cfg) == pytest.approx(10 / 11)
    assert learning_rate_at(10, cfg) == pytest.approx(1.0)
    assert learning_rate_at(60, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert learning_rate_at(110, cfg) == pytest.approx(0.1)
    assert learning_rate_at(500, cfg) == pytest.approx(0.1)
    lrs = [learning_rate_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    assert learning_rate_at(50, dataclasses.replace(cfg, decay_lr=False)) == 1.0
    # lr_decay_iters = 0 means "decay until max_iters"
    assert learning_rate_at(100, TrainConfig(learning_rate=1.0, min_lr=0.0, warmup_iters=0, lr_decay_iters=0,
                                             max_iters=100)) == pytest.approx(0.0)


def test_training_flops_count_six_per_weight_and_the_attention():
    model = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False))
    # The untied token embedding is a lookup (left out); its head is a matmul (counted).
    assert model.num_params() == sum(p.numel() for p in model.parameters()) - 16 * 32 - 37 * 32
    assert training_flops_per_token(model) == 6 * model.num_params() + 12 * 2 * 32 * 16
    assert training_flops_per_token(model, seq_len=4) == 6 * model.num_params() + 12 * 2 * 32 * 4
    model.transformer.wte.weight.requires_grad_(False)  # frozen, but a lookup: nothing to subtract
    assert training_flops_per_token(model) == 6 * model.num_params() + 12 * 2 * 32 * 16


def test_the_default_schedule_follows_max_iters_and_the_default_run_is_unchanged():
    # lr_decay_iters = 0 (the default) ends the decay at max_iters, whatever max_iters is...
    short = TrainConfig(max_iters=300)
    assert learning_rate_at(299, short) < 0.15 * short.learning_rate  # not 98% of the peak, as with a fixed 2000
    assert learning_rate_at(300, short) == pytest.approx(short.min_lr)
    # ...and `python train.py`'s 2000 steps keep the schedule of its published result (lr_decay_iters = 2000).
    published = TrainConfig(lr_decay_iters=2000)
    assert [learning_rate_at(s, TrainConfig()) for s in range(0, 2001, 50)] == \
        [learning_rate_at(s, published) for s in range(0, 2001, 50)]


def test_weight_decay_applies_to_matrices_and_embeddings_only():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed
    assert "transformer.h.0.attn.c_attn.weight" in decayed and "transformer.h.1.mlp.c_proj.weight" in decayed
    assert all(p.dim() == 1 for p in no_decay["params"])  # biases and LayerNorm gains
    assert {names[id(p)] for p in no_decay["params"]} >= {"transformer.ln_f.weight", "transformer.h.0.attn.c_attn.bias"}
    # Every parameter exactly once (the tied LM head is the token embedding).
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert optimizer.defaults["fused"]  # torch >= 2.4 has the fused AdamW kernel on the CPU too


def test_default_config_file_matches_the_built_in_defaults():
    # `python train.py` without a file runs configs/default.toml's settings.
    from gpt.config import from_dict

    in_file = load_toml(REPO / "configs" / "default.toml")
    assert set(in_file) == {k for k, v in dataclasses.asdict(TrainConfig()).items() if v is not None}
    assert from_dict(TrainConfig, in_file) == TrainConfig()


@pytest.mark.parametrize("name", ["default", "shakespeare_char", "shakespeare_char_cpu", "gpt2_124m",
                                  "finetune_shakespeare", "lora_shakespeare", "lora_tasks", "sft_tasks_cpu",
                                  "dpo_tasks_cpu"])
def test_every_config_file_is_valid(name):
    from gpt.config import from_dict
    from gpt.trainer import validate

    validate(from_dict(TrainConfig, load_toml(REPO / "configs" / f"{name}.toml")))


# ---------------------------------------------------------------------------------------------------
# Runs


def test_a_run_writes_its_out_dir(tiny, tmp_path):
    assert main(tiny()) == 0
    out = tmp_path / "out"
    assert {"ckpt.pt", "best.pt", "config.toml", "log.jsonl"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob(".*tmp*"))
    train = records(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(set(r) >= {"step", "loss", "lr", "tokens", "tok_per_s", "mfu", "elapsed"} for r in train)
    assert train[-1]["tokens"] == 4 * 4 * 16
    before, evaluation = records(out, "eval")
    # The "before" number: at initialisation the model guesses about uniformly, a loss of ln(vocab_size).
    vocab_size = ckpt_io.load_checkpoint(out / "ckpt.pt")["model_config"]["vocab_size"]
    assert before["step"] == 0 and before["val_loss"] == pytest.approx(math.log(vocab_size), abs=0.1)
    assert evaluation["step"] == 4 and evaluation["val_loss"] < before["val_loss"]
    # Bits per byte: nats per token x tokens / bytes / ln 2; one char token is one byte of this ASCII text.
    assert evaluation["val_bpb"] == pytest.approx(evaluation["val_loss"] / math.log(2), rel=1e-4)
    state = ckpt_io.load_checkpoint(out / "ckpt.pt")
    assert state["step"] == 4 and state["config"]["n_embd"] == 16 and "optimizer" in state
    assert ckpt_io.load_model(out).model.config.n_layer == 1
    assert load_toml(out / "config.toml")["max_iters"] == 4


def test_evaluations_use_the_same_windows_each_time(tiny, tmp_path):
    # Learning rate 0 (after warmup 0): the weights never change, so every evaluation must give the same numbers.
    assert main(tiny("out", "--learning_rate=1e-9", "--min_lr=0", "--weight_decay=0", "--eval_interval=2")) == 0
    evals = records(tmp_path / "out", "eval")
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert evals[0]["val_loss"] == pytest.approx(evals[1]["val_loss"], abs=1e-6)
    assert evals[0]["train_loss"] == pytest.approx(evals[1]["train_loss"], abs=1e-6)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    original = GPT.forward
    calls = {"train": 0}

    def forward(self, idx, targets=None, **kw):
        logits, loss = original(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls["train"] += 1
            if calls["train"] > 2:  # steps 1 and 2 are fine, step 3 diverges
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    assert main(tiny("out", "--checkpoint_interval=2", "--max_iters=6")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan" in err[0] and "step 3" in err[0] and "kept" in err[0]
    state = ckpt_io.load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def _disk_full_on(monkeypatch, failing: set[int]) -> dict[str, int]:
    """torch.save writes half a file, then fails as a full disk does, on the given calls (1, 2, ...)."""
    real_save = torch.save
    saves = {"n": 0}

    def save(obj, f, *a, **kw):
        saves["n"] += 1
        if saves["n"] in failing:
            f.write(b"PK\x03\x04 half a zip")
            raise RuntimeError("[enforce fail] file write failed") from OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    return saves


def test_a_full_disk_during_a_periodic_save_is_one_line_and_training_goes_on(tiny, tmp_path, monkeypatch, capsys):
    # eval_interval 100: only ckpt.pt saves (no best.pt) until the end; checkpoints at steps 2, 4, 6.
    _disk_full_on(monkeypatch, {2})  # the save at step 4
    assert main(tiny("out", "--eval_interval=100", "--checkpoint_interval=2", "--max_iters=6")) == 0
    out = capsys.readouterr().out
    (warning,) = [line for line in out.splitlines() if line.startswith("warning:")]
    assert "ckpt.pt" in warning and "no space left" in warning and "MB" in warning and "step 2" in warning
    state = ckpt_io.load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert state["step"] == 6  # the next save succeeded
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_last_save_exits_non_zero_naming_the_latest_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    _disk_full_on(monkeypatch, {2, 3, 4})  # every save after the first (ckpt.pt at step 2)
    assert main(tiny("out", "--eval_interval=100", "--checkpoint_interval=2", "--max_iters=4")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "step 2" in err[0] and "could not be saved" in err[0]
    assert ckpt_io.load_checkpoint(tmp_path / "out" / "ckpt.pt")["step"] == 2
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")] == []


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ckpt_io.SaveError, match=r"needs about 0\.0 MB.*has 0\.0 MB free|needs about") as e:
        ckpt_io.save_checkpoint({"model": {"w": torch.zeros(10_000)}, "model_config": {}}, tmp_path / "c.pt")
    assert "c.pt" in str(e.value) and list(tmp_path.iterdir()) == []


def test_fine_tuning_takes_shape_and_tokenizer_from_init_from_and_crops_the_context(tiny, tmp_path):
    assert main(tiny("base")) == 0
    # New text made of the same characters (a char tokenizer cannot encode unseen ones).
    write_corpus(tmp_path / "other.txt", words=3000, seed=1)
    args = tiny("tuned", "--n_layer=3", "--n_embd=64", "--block_size=8", "--max_iters=2",
                f"--init_from={tmp_path / 'base'}", "--learning_rate=1e-4")
    args = [a if not a.startswith("--data=") else f"--data={tmp_path / 'other.txt'}" for a in args]
    assert main(args) == 0
    tuned = ckpt_io.load_checkpoint(tmp_path / "tuned" / "ckpt.pt")
    base = ckpt_io.load_checkpoint(tmp_path / "base" / "best.pt")
    assert tuned["model_config"]["n_layer"] == 1 and tuned["model_config"]["n_embd"] == 16
    assert tuned["model_config"]["block_size"] == 8
    assert tuned["tokenizer"] == base["tokenizer"]
    assert load_toml(tmp_path / "tuned" / "config.toml")["n_embd"] == 16


# ---------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line on standard error, nothing overwritten.


def _fails(args, capsys, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("extra, needles", [
    (["--n_layers=2"], ["n_layers", "n_layer"]),
    (["--max_iters=ten"], ["max_iters", "integer"]),
    (["--batch_size=100000"], ["batch_size", "windows"]),
    (["--block_size=5000"], ["block_size"]),
    (["--n_embd=30", "--n_head=4"], ["divisible"]),
    (["--init_from=/no/such/model"], ["/no/such/model", "not found"]),
    (["--resume"], ["nothing to resume"]),
])
def test_bad_settings_fail_with_one_line(tiny, tmp_path, capsys, extra, needles):
    _fails(tiny("out", *extra), capsys, *needles)
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_existing_runs_are_never_overwritten(tiny, tmp_path, capsys):
    assert main(tiny()) == 0
    capsys.readouterr()
    ckpt = tmp_path / "out" / "ckpt.pt"
    before = ckpt.read_bytes(), (tmp_path / "out" / "log.jsonl").read_text()
    _fails(tiny(), capsys, "--resume", "out_dir")
    _fails(tiny("out", "--resume", "--n_embd=32"), capsys, "n_embd")
    _fails(tiny("out", "--resume", "--tokenizer=bpe:300"), capsys, "tokenizer")
    assert (ckpt.read_bytes(), (tmp_path / "out" / "log.jsonl").read_text()) == before


# ---------------------------------------------------------------------------------------------------
# What a run shows, and settings a resumed run must apply (or refuse)


def test_mfu_is_never_shown_above_100_percent(tiny, tmp_path, capsys):
    assert main(tiny("out", "--peak_flops=1")) == 0  # a peak of 1 FLOP/s: any real speed is "above 100%"
    out = capsys.readouterr().out
    assert out.count("MFU came out above 100%") == 1 and "mfu n/a" in out
    assert "MFU (model FLOPs utilisation) = " in out  # said once, where MFU first appears
    assert all(r["mfu"] is None for r in records(tmp_path / "out", "train"))


def test_resume_applies_the_optimizer_settings_it_records(tiny, tmp_path):
    assert main(tiny("out", "--weight_decay=0.1")) == 0
    seen = {}
    original = torch.optim.AdamW.step

    def step(self, *a, **kw):
        seen["groups"] = [(g["weight_decay"], g["betas"]) for g in self.param_groups]
        return original(self, *a, **kw)

    torch.optim.AdamW.step = step
    try:
        assert main(tiny("out", "--resume", "--max_iters=5", "--weight_decay=0", "--beta1=0", "--beta2=0.5")) == 0
    finally:
        torch.optim.AdamW.step = original
    assert seen["groups"] == [(0.0, (0.0, 0.5)), (0.0, (0.0, 0.5))]
    saved = ckpt_io.load_checkpoint(tmp_path / "out" / "ckpt.pt")["config"]
    assert (saved["weight_decay"], saved["beta1"], saved["beta2"]) == (0.0, 0.0, 0.5)


@pytest.mark.parametrize("flag", ["--vocab_multiple=64", "--seed=7", "--init_from=elsewhere"])
def test_resume_refuses_settings_fixed_at_the_start(tiny, tmp_path, capsys, flag):
    assert main(tiny()) == 0
    capsys.readouterr()
    before = (tmp_path / "out" / "ckpt.pt").read_bytes()
    _fails(tiny("out", "--resume", flag), capsys, flag.split("=")[0][2:], "keeps")
    assert (tmp_path / "out" / "ckpt.pt").read_bytes() == before


def test_a_first_run_says_what_it_prepares_and_measures_before_the_wait(tiny, tmp_path, capsys, monkeypatch):
    import gpt.device

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no peak FLOP/s cached yet
    monkeypatch.setattr(gpt.device, "measure_matmul_flops", lambda *args, **kwargs: 1e12)  # (instead of 2 s)
    args = [a for a in tiny("first", "--progress=none") if not a.startswith("--peak_flops")]
    assert main(args) == 0
    captured = capsys.readouterr()
    preparing = [line for line in captured.err.splitlines() if line.startswith("preparing")]
    size = (tmp_path / "corpus.txt").stat().st_size
    assert preparing == [f"preparing corpus (char tokens; 1 document, {size:,} bytes): once, then cached in "
                         f"{tmp_path / 'data' / 'corpus'}..."]
    out = captured.out.splitlines()
    measuring = [i for i, line in enumerate(out) if line.startswith("measuring this machine's peak FLOP/s for MFU")]
    assert len(measuring) == 1 and measuring[0] < [i for i, line in enumerate(out) if line.startswith("model:")][0]
    # The second run finds both in their caches: nothing to wait for, nothing said.
    assert main([f"--out_dir={tmp_path / 'second'}" if a.startswith("--out_dir") else a for a in args]) == 0
    captured = capsys.readouterr()
    assert "preparing" not in captured.err and "measuring" not in captured.out


def test_fine_tuning_logs_the_starting_models_val_loss(tiny, tmp_path, capsys):
    assert main(tiny("base")) == 0
    capsys.readouterr()
    assert main(tiny("tuned", "--max_iters=2", f"--init_from={tmp_path / 'base'}")) == 0
    out = capsys.readouterr().out
    base_val = records(tmp_path / "base", "eval")[-1]["val_loss"]
    (line,) = [line for line in out.splitlines() if line.startswith("step 0")]
    assert "the starting model, before fine-tuning" in line and f"val loss {base_val:.4f}" in line


# ---------------------------------------------------------------------------------------------------
# Faults of the machine: an out_dir in use, folders that cannot be written


def test_an_out_dir_in_use_is_refused_naming_the_process(tiny, tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.write('process 4242: python train.py (test)'); f.flush(); "
         "print('locked', flush=True); time.sleep(60)", str(out / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _fails(tiny(), capsys, "in use", "process 4242")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its process: the same command now runs.
    assert main(tiny()) == 0


def test_a_refused_run_leaves_no_out_dir_behind(tiny, tmp_path, capsys):
    _fails(tiny("fresh", "--batch_size=100000"), capsys, "batch_size")
    assert not (tmp_path / "fresh").exists()


def test_an_unwritable_out_dir_is_refused_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    import gpt.data

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(gpt.data, "prepare", lambda *a, **kw: pytest.fail("prepared before checking out_dir"))
    _fails(tiny("file/out"), capsys, "out_dir", "is a file")
    if os.geteuid() != 0:  # root writes anywhere: the permission check cannot be seen as root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _fails(tiny("locked/out"), capsys, "out_dir", "not writable")


def test_a_data_cache_deleted_before_a_resume_is_prepared_again(tiny, tmp_path):
    import shutil

    assert main(tiny()) == 0
    shutil.rmtree(tmp_path / "data")
    assert main(tiny("out", "--resume", "--max_iters=6")) == 0
    assert ckpt_io.load_checkpoint(tmp_path / "out" / "ckpt.pt")["step"] == 6


def test_without_matplotlib_the_skipped_plot_is_said_once(tiny, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(tiny("out", "--plot=true", "--eval_interval=2")) == 0
    out = capsys.readouterr().out
    assert out.count("loss.png skipped: matplotlib is not installed") == 1 and 'pip install -e ".[plot]"' in out
    assert not (tmp_path / "out" / "loss.png").exists()


def test_a_stop_whose_save_fails_says_so_and_names_the_latest_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    import signal

    from gpt import runtime

    assert main(tiny("out", "--max_iters=2", "--eval_interval=100")) == 0  # ckpt.pt at step 2
    capsys.readouterr()
    monkeypatch.setattr(runtime.StopRequest, "install", lambda self: setattr(self, "signum", signal.SIGINT))
    _disk_full_on(monkeypatch, {1, 2, 3})
    assert main(tiny("out", "--resume", "--max_iters=6")) == 128 + signal.SIGINT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SIGINT" in err[0] and "could not be saved" in err[0] and "step 2" in err[0]
    assert ckpt_io.load_checkpoint(tmp_path / "out" / "ckpt.pt")["step"] == 2


# ---------------------------------------------------------------------------------------------------
# Architecture options, Muon, max_seconds


def test_arch_presets_and_options_resolve_and_bad_combinations_name_the_setting():
    from gpt.errors import UserError
    from gpt.trainer import model_config

    assert model_config(TrainConfig(arch="gpt2"), 10) == GPTConfig(
        vocab_size=10, block_size=128, n_layer=4, n_head=4, n_embd=128, bias=False)
    modern = model_config(TrainConfig(arch="modern", qk_norm=False, mlp="swiglu"), 10)
    assert modern.position == "rope" and modern.qk_norm is False and modern.mlp == "swiglu"
    assert model_config(TrainConfig(arch="gpt2", tie_embeddings=False, zero_init=True), 10).zero_init
    for cfg, words in [
        (TrainConfig(arch="gpt2", position="rope"), ["arch = 'gpt2'", "position = 'rope'"]),
        (TrainConfig(arch="gpt2", logit_softcap=30.0), ["arch = 'gpt2'", "logit_softcap"]),
        (TrainConfig(arch="modern", n_embd=96, n_head=32), ["position = 'rope'", "even"]),
        (TrainConfig(arch="llama"), ["arch must be one of gpt2, modern"]),
        (TrainConfig(arch="modern", mlp="geglu"), ["mlp must be one of"]),
    ]:
        with pytest.raises(UserError) as info:
            model_config(cfg, 10)
        assert all(w in str(info.value) for w in words), str(info.value)


def test_checkpoints_remember_the_architecture_and_old_ones_load_as_gpt2(tiny, tmp_path):
    assert main(tiny("modern", "--arch=modern", "--mlp=swiglu", "--optimizer=muon", "--lr_schedule=wsd",
                     "--max_iters=2")) == 0
    loaded = ckpt_io.load_model(tmp_path / "modern").model
    assert (loaded.config.position, loaded.config.mlp, loaded.config.tie_embeddings) == ("rope", "swiglu", False)
    # Resuming keeps it, and refuses another architecture or optimizer.
    assert main(tiny("modern", "--resume", "--max_iters=3")) == 0
    assert ckpt_io.load_checkpoint(tmp_path / "modern" / "ckpt.pt")["step"] == 3
    for flag in ("--mlp=relu2", "--arch=gpt2", "--optimizer=adamw"):
        assert main(tiny("modern", "--resume", "--max_iters=4", flag)) == 2

    # A checkpoint from before the options existed: no option fields, no arch, optimizer or schedule settings.
    assert main(tiny("old", "--arch=gpt2", "--optimizer=adamw", "--max_iters=2")) == 0
    path = tmp_path / "old" / "ckpt.pt"
    state = ckpt_io.load_checkpoint(path)
    for name in ("position", "norm", "mlp", "qk_norm", "tie_embeddings", "zero_init", "logit_softcap"):
        del state["model_config"][name]
        state["config"].pop(name)
    for name in ("arch", "optimizer", "lr_schedule", "decay_fraction", "muon_lr_scale", "muon_momentum", "max_seconds"):
        del state["config"][name]
    ckpt_io.save_checkpoint({k: v for k, v in state.items() if k != "format_version"}, path)
    old = ckpt_io.load_model(path).model
    assert old.config == GPTConfig(**{**state["model_config"]}) and old.config.position == "learned"
    assert main(tiny("old", "--resume", "--max_iters=3")) == 0  # with the built-in defaults, whatever they are


def test_max_seconds_ends_the_run_and_its_schedule(tiny, tmp_path, capsys):
    assert main(tiny("out", "--max_iters=1000", "--max_seconds=1e-6")) == 0
    assert "max_seconds reached" in capsys.readouterr().out
    (last,) = records(tmp_path / "out", "train")
    assert last["step"] == 1
    assert [r["step"] for r in records(tmp_path / "out", "eval")] == [0, 1]  # the end of a run is evaluated
    assert ckpt_io.load_checkpoint(tmp_path / "out" / "ckpt.pt")["step"] == 1


def test_the_schedule_follows_max_iters_says_when_it_cannot_finish_and_survives_a_resume(tiny, tmp_path, capsys):
    def lrs(run: str) -> dict[int, float]:
        return {r["step"]: r["lr"] for r in records(tmp_path / run, "train")}

    def without_decay_setting(args: list[str]) -> list[str]:
        return [a for a in args if not a.startswith("--lr_decay_iters")]

    # --max_iters alone: the decay ends with the run (the last step's rate is near min_lr), and nothing is said.
    assert main(without_decay_setting(tiny("follow", "--max_iters=8"))) == 0
    out = capsys.readouterr().out
    follows = TrainConfig(learning_rate=2e-3, min_lr=2e-4, warmup_iters=2, max_iters=8)
    assert lrs("follow")[8] == pytest.approx(learning_rate_at(7, follows)) and lrs("follow")[8] < 2e-3 * 0.2
    assert "note: lr_decay_iters" not in out and load_toml(tmp_path / "follow" / "config.toml")["lr_decay_iters"] == 0

    # An explicit lr_decay_iters past max_iters is honoured, and said in one line, with where the rate ends.
    assert main(tiny("past", "--max_iters=4", "--lr_decay_iters=8")) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: lr_decay_iters")]
    share = lrs("past")[4] / 2e-3
    assert notes == [f"note: lr_decay_iters=8 is past max_iters=4: the run ends with the learning rate still at "
                     f"{share:.0%} of its peak, not min_lr; --lr_decay_iters=0 makes the schedule follow max_iters"]

    # A resumed run keeps the schedule it started with: extending a run that followed max_iters=4 to 8 steps
    # leaves the decay ending at step 4 (no jump back up), and the first line says where it resumes.
    assert main(without_decay_setting(tiny("extended", "--max_iters=4"))) == 0
    capsys.readouterr()
    assert main(["--out_dir=" + str(tmp_path / "extended"), "--resume", "--max_iters=8"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"resuming {tmp_path / 'extended'} from step 4 of 8; the learning-rate schedule ends at "
                            "step 4") and "--lr_decay_iters=8" in first
    assert [lrs("extended")[s] for s in (5, 6, 7, 8)] == pytest.approx([2e-4] * 4)
    assert ckpt_io.load_checkpoint(tmp_path / "extended" / "ckpt.pt")["config"]["lr_decay_iters"] == 4
    # --lr_decay_iters=0 given with --resume asks for the new max_iters instead.
    assert main(without_decay_setting(tiny("stretched", "--max_iters=4"))) == 0
    assert main(["--out_dir=" + str(tmp_path / "stretched"), "--resume", "--max_iters=8", "--lr_decay_iters=0"]) == 0
    assert lrs("stretched")[8] == pytest.approx(learning_rate_at(7, follows))


def test_threads_is_applied_before_training(tiny):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(tiny("out", "--threads=1", "--max_iters=1")) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_muon_and_the_modern_architecture_resume_exactly(tiny, tmp_path):
    args = ("--arch=modern", "--optimizer=muon", "--lr_schedule=wsd", "--threads=1", "--eval_interval=100")
    assert main(tiny("straight", *args, "--max_iters=6")) == 0
    assert main(tiny("split", *args, "--max_iters=3")) == 0
    assert main(tiny("split", "--resume", "--max_iters=6")) == 0
    straight = [r["loss"] for r in records(tmp_path / "straight", "train")]
    split = [r["loss"] for r in records(tmp_path / "split", "train")]
    assert split == straight
