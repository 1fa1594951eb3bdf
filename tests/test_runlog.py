"""gpt/runlog.py: the estimate of the time left (Eta) and the progress lines that show it.

A fake clock stands in for time.perf_counter, so the timings are exact and the tests instant. How a real run
shows these lines is in tests/test_trainer.py and tests/test_train_cli.py.
"""

from __future__ import annotations

import pytest

from gpt import runlog
from gpt.runlog import Eta, Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(runlog.time, "perf_counter", fake)
    return fake


def test_no_estimate_until_the_speed_has_settled_then_the_steps_left_at_the_settled_speed():
    eta = Eta(0, 1000, eval_interval=10**6, eval_guess_steps=0.0)
    clock = 0.0
    for step in range(1, 1001):
        # The first steps are slow (compiling, warming caches), then each takes 0.1 s.
        clock += 30.0 if step == 1 else 2.0 if step <= 3 else 0.1
        eta.stepped(step, clock)
        left = eta.left(step)
        if step < Eta.WARMUP_STEPS + Eta.SETTLE_STEPS:
            assert left is None, step  # a guess from the first steps would be off by hours
        else:
            assert left == pytest.approx((1000 - step) * 0.1 + 0.0), step


def test_evaluations_are_timed_apart_and_counted_until_the_end():
    eta = Eta(0, 100, eval_interval=25, eval_guess_steps=2.0)
    assert [eta.evaluations_left(s) for s in (0, 1, 25, 26, 99, 100)] == [4, 4, 4, 3, 1, 1]
    assert Eta(0, 90, eval_interval=25, eval_guess_steps=0).evaluations_left(80) == 1  # the last step is evaluated
    for step in range(1, 21):
        eta.stepped(step, step * 0.5)
    # No evaluation measured yet: guessed as 2 steps' time each (4 evaluations to come).
    assert eta.left(20) == pytest.approx(80 * 0.5 + 4 * 1.0)
    eta.evaluated(3.0)
    assert eta.left(20) == pytest.approx(80 * 0.5 + 4 * 3.0)
    assert eta.left(30) == pytest.approx(70 * 0.5 + 3 * 3.0)


def test_a_compiled_models_first_evaluation_is_not_taken_as_an_evaluations_time():
    eta = Eta(0, 100, eval_interval=50, eval_guess_steps=1.0, first_eval_compiles=True)
    eta.evaluated(90.0)  # step 0's evaluation: compiling, mostly
    for step in range(1, 21):
        eta.stepped(step, step * 0.5)
    assert eta.left(20) == pytest.approx(80 * 0.5 + 2 * 0.5)  # the guess, not 2 x 90 s
    eta.evaluated(4.0)
    assert eta.left(20) == pytest.approx(80 * 0.5 + 2 * 4.0)


def test_max_seconds_caps_the_estimate_and_a_resumed_run_measures_from_its_own_start():
    eta = Eta(500, 1000, eval_interval=10**6, eval_guess_steps=0.0)
    for step in range(501, 520):
        eta.stepped(step, (step - 500) * 1.0)
    assert eta.left(519) == pytest.approx(481.0)
    assert eta.left(519, budget_left=60.0) == pytest.approx(60.0)  # the run stops when max_seconds is spent
    assert eta.left(519, budget_left=-3.0) == pytest.approx(0.0)


def test_plain_progress_lines_show_the_time_left_once_settled_and_leave_evaluations_out_of_the_speed(clock, capsys):
    progress = Progress(True, False, 0, 100, Eta(0, 100, eval_interval=50, eval_guess_steps=0.0))
    shown = {}
    for step in range(1, 101):
        clock.now += 60.0 if step == 1 else 1.0  # a slow first step
        progress.update(step, {"loss": "1.0"} if step % 10 == 0 else None)
        if step == 50:  # an evaluation of 5 s
            clock.now += 5.0
            progress.paused(5.0, evaluation=True)
        if step % 10 == 0:
            shown[step] = capsys.readouterr().out.strip()
    assert shown[10] == f"step 10/100: loss 1.0 (elapsed {format_duration(69)})"  # not settled: no guess
    # Settled at step 20 (measured from step 5): 80 steps of 1 s and 2 evaluations (5 s each once measured).
    assert shown[20].endswith(f"(elapsed {format_duration(79)}, left ~{format_duration(80)})")
    assert shown[60].endswith(f"left ~{format_duration(40 + 5)})")
    assert shown[100].endswith("left ~0:05)")  # the last evaluation is still to come


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3600 + 62)] == ["0:00", "0:59", "1:01", "1:01:02"]
