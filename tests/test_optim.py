"""gpt/optim.py: the schedules (cosine, warmup-stable-decay, over steps or seconds) and Muon with AdamW."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gpt.errors import UserError
from gpt.model import ARCHITECTURES, GPT, GPTConfig
from gpt.optim import (Muon, MuonAndAdamW, hidden_matrices, learning_rate_at, make_optimizer, orthogonalize,
                       run_progress, set_learning_rate)
from gpt.trainer import TrainConfig


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, lr_schedule="wsd",
                      decay_fraction=0.4)
    assert learning_rate_at(0, cfg) == pytest.approx(1 / 11)  # the same warmup as the cosine
    assert [learning_rate_at(s, cfg) for s in (10, 40, 70)] == pytest.approx([1.0, 1.0, 1.0])  # stable
    assert learning_rate_at(90, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the decay
    assert learning_rate_at(110, cfg) == pytest.approx(0.1) and learning_rate_at(200, cfg) == pytest.approx(0.1)
    lrs = [learning_rate_at(s, cfg) for s in range(70, 111)]
    steps = [a - b for a, b in zip(lrs, lrs[1:])]
    assert max(steps) == pytest.approx(min(steps))  # a straight line
    assert learning_rate_at(100, dataclasses.replace(cfg, decay_fraction=0.0)) == 1.0


def test_max_seconds_runs_the_schedule_over_wall_clock_time():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.0, warmup_iters=0, max_iters=10**6, lr_decay_iters=0,
                      max_seconds=100.0)
    # Few steps taken, but half the time spent: half way down the cosine.
    assert run_progress(20, cfg, elapsed=50.0) == pytest.approx(0.5)
    assert learning_rate_at(20, cfg, elapsed=50.0) == pytest.approx(0.5)
    assert learning_rate_at(20, cfg, elapsed=100.0) == pytest.approx(0.0)
    # Whichever budget is nearer its end sets the pace.
    steps_first = dataclasses.replace(cfg, max_iters=40)
    assert run_progress(30, steps_first, elapsed=10.0) == pytest.approx(0.75)
    wsd = dataclasses.replace(cfg, lr_schedule="wsd", decay_fraction=0.5)
    assert learning_rate_at(5, wsd, elapsed=40.0) == 1.0 and learning_rate_at(5, wsd, elapsed=75.0) == pytest.approx(0.5)


def tiny_model(**options) -> GPT:
    return GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, **options))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_model(**ARCHITECTURES["modern"])
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {names[id(p)] for p in hidden_matrices(model)}
    assert hidden == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                      for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr_scale=20))
    assert isinstance(optimizer, MuonAndAdamW)
    in_muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    assert in_muon == {id(p) for p in hidden_matrices(model)} and not in_muon & in_adamw
    assert in_muon | in_adamw == {id(p) for p in model.parameters()}
    set_learning_rate(optimizer, 5e-4)  # Muon's rate follows the schedule at its own scale
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.01)
    assert {g["lr"] for g in optimizer.adamw.param_groups} == {5e-4}


def test_a_muon_step_is_torch_optim_muons_step():
    # torch.optim.Muon (torch >= 2.9) is the reference; it orthogonalises in bf16, which ns_dtype selects here.
    reference = getattr(torch.optim, "Muon", None)
    if reference is None:
        pytest.skip(f"torch {torch.__version__} has no torch.optim.Muon to compare with")
    torch.manual_seed(0)
    for shape in [(24, 8), (8, 20), (12, 12)]:  # tall (its rate scaled by sqrt(24 / 8)), wide, square
        ours, theirs = torch.nn.Parameter(torch.randn(shape)), torch.nn.Parameter(torch.randn(shape))
        with torch.no_grad():
            theirs.copy_(ours)
        a = Muon([ours], lr=0.05, momentum=0.9, weight_decay=0.1, ns_dtype=torch.bfloat16)
        b = reference([theirs], lr=0.05, momentum=0.9, weight_decay=0.1)
        for _ in range(3):
            ours.grad, theirs.grad = (torch.randn(shape),) * 2
            a.step()
            b.step()
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_orthogonalize_keeps_the_directions_and_evens_out_the_singular_values():
    torch.manual_seed(0)
    g = torch.randn(64, 16) @ torch.diag(torch.logspace(0, 2, 16))  # singular values spread over 100x
    x = orthogonalize(g)  # fp32 on the CPU
    U, S, Vh = torch.linalg.svd(g, full_matrices=False)
    exact = U @ Vh
    assert (x * exact).sum() / (x.norm() * exact.norm()) > 0.95
    singular = torch.linalg.svdvals(x)
    assert S.max() / S.min() > 50 and 0.6 < singular.median() < 1.2 and singular.max() < 1.3


def test_a_step_through_make_optimizer_moves_muons_and_adamws_shares():
    torch.manual_seed(0)
    model = tiny_model(**ARCHITECTURES["modern"])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    cfg = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr_scale=50, weight_decay=0.0)
    optimizer = make_optimizer(model, cfg)
    set_learning_rate(optimizer, cfg.learning_rate)
    x = torch.randint(0, 13, (4, 8))
    model(x, x)[1].backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    after = {n: p.detach() for n, p in model.named_parameters()}
    # Muon's first step is orthogonalize(gradient) at lr * sqrt(64 / 16) for the [64, 16] MLP matrix...
    name = "transformer.h.0.mlp.c_fc.weight"
    torch.testing.assert_close(before[name] - after[name], 0.05 * 2 * orthogonalize(grads[name]), atol=1e-6, rtol=1e-4)
    # ...and AdamW's moves each weight by lr against its gradient's sign.
    head = "lm_head.weight"
    big = grads[head].abs() > 1e-6
    torch.testing.assert_close((before[head] - after[head])[big], 1e-3 * grads[head][big].sign(), atol=2e-5, rtol=0)


def test_muon_state_round_trips_and_refuses_adamw_state():
    model = tiny_model()
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon"))
    x = torch.randint(0, 13, (2, 8))
    model(x, x)[1].backward()
    optimizer.step()
    state = optimizer.state_dict()
    again = make_optimizer(model, TrainConfig(optimizer="muon"))
    again.load_state_dict(state)
    assert torch.equal(again.muon.state_dict()["state"][0]["momentum_buffer"], state["muon"]["state"][0]["momentum_buffer"])
    with pytest.raises(UserError, match="AdamW's, not Muon's"):
        again.load_state_dict(make_optimizer(model, TrainConfig(optimizer="adamw")).state_dict())


def test_muon_is_torchs_on_a_gpu_and_older_torch_gets_a_one_line_error(monkeypatch):
    from gpt.errors import UserError
    from gpt.optim import muon_class

    assert muon_class(torch.device("cpu")) is Muon
    if hasattr(torch.optim, "Muon"):
        assert muon_class(torch.device("cuda")) is torch.optim.Muon
        monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(UserError, match="torch >= 2.9") as info:
        muon_class(torch.device("cuda"))
    assert "\n" not in str(info.value) and "optimizer = 'adamw'" in str(info.value)
