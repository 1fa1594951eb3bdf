"""gpt/scaling.py: the depth rule's derived settings (explicit settings win), the budget's steps, and the fits on
points with known answers; then --depth and --max_flops through train.py as a user runs it."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from gpt import scaling
from gpt.errors import UserError
from gpt.model import GPT
from gpt.runtime import model_config, training_flops_per_token
from gpt.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def rule(given: set[str] | None = None, **settings) -> TrainConfig:
    return scaling.apply_rule(TrainConfig(**settings), set(given or ()) | set(settings))


def test_depth_sets_the_shape_the_learning_rates_the_batch_and_the_budget():
    cfg = rule(depth=3)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (3, 3 * scaling.ASPECT, 3 * scaling.ASPECT // scaling.HEAD_DIM)
    width = cfg.n_embd
    assert cfg.learning_rate == pytest.approx(scaling.BASE_LR * math.sqrt(scaling.BASE_WIDTH / width))
    assert cfg.min_lr == pytest.approx(cfg.learning_rate / 10)
    # Muon's own rate (its scale times learning_rate) is the same at every width.
    for depth in (2, 5, 12):
        other = rule(depth=depth)
        assert other.learning_rate * other.muon_lr_scale == pytest.approx(scaling.BASE_LR * scaling.BASE_MUON_SCALE)
    assert cfg.batch_size == 16 and rule(depth=8).batch_size == 32
    # Trained as long as the law says this size is the optimum for, and the warmup a twentieth of that.
    assert cfg.max_flops == pytest.approx(scaling.optimal_flops(scaling.depth_params(3)), rel=1e-2)
    assert cfg.max_iters == scaling.estimated_steps(cfg)
    assert cfg.warmup_iters == max(1, round(scaling.WARMUP_FRACTION * cfg.max_iters))


def test_every_setting_given_explicitly_wins_over_the_rule():
    cfg = rule(depth=3, n_embd=64, learning_rate=1e-3, batch_size=8, max_iters=50, warmup_iters=7)
    assert cfg.n_layer == 3 and cfg.n_embd == 64 and cfg.n_head == 64 // scaling.HEAD_DIM  # heads follow the width
    assert cfg.learning_rate == 1e-3 and cfg.min_lr == pytest.approx(1e-4) and cfg.batch_size == 8
    assert cfg.max_iters == 50 and cfg.warmup_iters == 7 and cfg.max_flops == 0  # a length given: no budget
    assert rule(depth=3, n_head=1).n_head == 1
    assert rule(depth=3, max_iters=400).warmup_iters == 20  # the warmup follows a length given
    assert rule() == TrainConfig()  # no depth, no budget: nothing changes


def test_a_budget_alone_picks_the_depth_the_law_finds_best_for_it():
    for depth in (2, 4, 7):
        flops = scaling.optimal_flops(scaling.depth_params(depth))
        assert scaling.best_depth(flops) == depth
        assert rule(max_flops=flops).depth == depth
    assert rule(max_flops=1e12, given={"n_layer"}).depth == 0  # a shape of one's own: only the length follows


def test_the_rules_size_is_the_models_blocks_and_the_budget_buys_its_steps():
    cfg = rule(depth=3, block_size=32, max_flops=1e10)
    model = GPT(model_config(cfg, vocab_size=50))
    blocks = sum(p.numel() for name, p in model.named_parameters() if ".h." in f".{name}")
    assert scaling.depth_params(3) <= blocks <= 1.01 * scaling.depth_params(3)  # the norms' gains aside
    per_token = training_flops_per_token(model)
    steps = scaling.steps_for_budget(cfg, per_token)
    tokens_per_step = cfg.batch_size * cfg.block_size
    assert steps * tokens_per_step * per_token <= 1e10 < (steps + 1) * tokens_per_step * per_token
    assert steps <= cfg.max_iters  # the estimate before the vocabulary is known bounds the exact count


def test_bad_depth_or_budget_is_a_clear_error():
    with pytest.raises(UserError, match="depth"):
        rule(depth=-1)
    with pytest.raises(UserError, match="max_flops"):
        rule(max_flops=-5.0)


def test_a_power_law_fit_recovers_a_known_exponent_through_noise():
    rng = random.Random(0)
    xs = [10 ** (11 + i / 4) for i in range(9)]
    ys = [3e-3 * x ** 0.5 * math.exp(rng.gauss(0, 0.02)) for x in xs]
    fit = scaling.power_law(xs, ys)
    assert fit["exponent"] == pytest.approx(0.5, abs=0.02) and fit["r2"] > 0.99
    losses = [40.0 * x ** -0.08 for x in xs]
    assert scaling.power_law(xs, losses)["exponent"] == pytest.approx(-0.08, abs=1e-9)


def test_the_isoflop_minimum_is_the_parabolas_vertex_and_an_edge_is_flagged():
    sizes = [2e4, 5e4, 1e5, 2e5, 4e5, 8e5]
    optimum = 1.4e5
    losses = [1.6 + 0.05 * (math.log(n) - math.log(optimum)) ** 2 for n in sizes]
    found = scaling.isoflop_minimum(sizes, losses)
    assert found["bracketed"] and found["params"] == pytest.approx(optimum, rel=1e-6)
    assert found["loss"] == pytest.approx(1.6) and found["curvature"] == pytest.approx(0.05)
    falling = [2.0 - 0.1 * i for i in range(len(sizes))]
    edge = scaling.isoflop_minimum(sizes, falling)
    assert not edge["bracketed"] and edge["params"] == pytest.approx(sizes[-1])


# ---------------------------------------------------------------------------------------------------
# Through train.py


def run_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(rng.choice(words) for _ in range(4000)) + "\n", encoding="utf-8")
    cmd = [sys.executable, str(REPO / "train.py"), f"--data={corpus}", f"--data_dir={tmp_path / 'data'}",
           "--block_size=16", "--eval_iters=2", "--threads=1", "--plot=false", "--peak_flops=1e11", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_python_env()})


def _python_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "VIRTUAL_ENV", "HOME"))}


def test_depth_through_train_py_with_an_explicit_setting_winning(tmp_path):
    out = tmp_path / "run"
    result = run_train(tmp_path, f"--out_dir={out}", "--depth=2", "--max_flops=2e9", "--n_embd=48",
                       "--eval_interval=1000")
    assert result.returncode == 0, result.stderr
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["depth"] == 2 and saved["n_layer"] == 2 and saved["n_embd"] == 48 and saved["n_head"] == 3
    assert saved["learning_rate"] == pytest.approx(scaling.BASE_LR * math.sqrt(scaling.BASE_WIDTH / 48))
    # The budget's steps, counted with the built model's FLOPs per token.
    model = GPT(model_config(TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}),
                             vocab_size=torch.load(out / "ckpt.pt", weights_only=False)["model_config"]["vocab_size"]))
    steps = int(2e9 // (training_flops_per_token(model) * saved["batch_size"] * 16))
    assert saved["max_iters"] == steps and f"done: {steps} steps" in result.stdout


def test_a_bad_depth_on_the_command_line_is_one_line(tmp_path):
    result = run_train(tmp_path, f"--out_dir={tmp_path / 'bad'}", "--depth=-2")
    assert result.returncode != 0 and "Traceback" not in result.stderr and "depth" in result.stderr
