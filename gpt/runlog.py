"""What a training run shows and records: the lines on screen, log.jsonl, and loss.png.

Its place in the flow: beside the training loop (gpt/trainer.py), which hands it each logged step and
each evaluation. Only rank 0 of a distributed run writes anything.

On a terminal the progress is a tqdm bar with the latest figures, the elapsed time and an estimate of the
time left; anywhere else (a log file, a pipe, CI) it is one plain line per logged step, never `\\r` bars.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from gpt.atomic import atomic_write, write_text

MFU_EXPLAINED = ("MFU (model FLOPs utilisation) = the FLOP/s the model's arithmetic needs at this speed, as a share "
                 "of the device's peak FLOP/s")


class RunLog:
    """log.jsonl and the loss curve."""

    def __init__(self, out_dir: Path, enabled: bool, plot: bool):
        self.path = out_dir / "log.jsonl"
        self.out_dir = out_dir
        self.enabled = enabled
        self.plot = plot
        self.records: list[dict[str, Any]] = []
        self.plot_skipped_said = False

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

    def draw(self) -> str | None:
        """Write loss.png; returns a one-time note when it cannot (matplotlib missing), else None."""
        if not (self.enabled and self.plot):
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if self.plot_skipped_said:
                return None
            self.plot_skipped_said = True
            return ("loss.png skipped: matplotlib is not installed (pip install -e \".[plot]\", or --plot=false "
                    "to stop this note)")
        steps = [(r["step"], r["loss"]) for r in self.records if r.get("kind") == "train"]
        evals = [(r["step"], r["train_loss"], r["val_loss"]) for r in self.records
                 if r.get("kind") == "eval" and "train_loss" in r]
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
        return None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Eta:
    """The time a run has left, shown only once its speed has settled.

    The first WARMUP_STEPS steps after the start (or a resume) are not measured: they pay for compiling,
    allocating and warming caches, and extrapolated they once predicted 1.5 hours for a 5-minute run. After
    SETTLE_STEPS more, the time left is the steps left at the measured time per step, plus the evaluations left
    at the latest one's time (evaluations are timed apart from steps: they come in bursts), capped by what
    max_seconds leaves. A compiled model's first evaluation compiles too: it is not taken as an evaluation's time,
    which until the next one is guessed from the step time (a forward pass is about a third of a training step).
    """

    WARMUP_STEPS = 5
    SETTLE_STEPS = 10

    def __init__(self, start: int, total: int, eval_interval: int, *, eval_guess_steps: float,
                 first_eval_compiles: bool = False):
        self.start, self.total, self.eval_interval = start, total, max(1, eval_interval)
        self.eval_guess_steps = eval_guess_steps  # an evaluation's time in steps' times, until one is measured
        self.first_eval_compiles = first_eval_compiles
        self.anchor: tuple[int, float] | None = None  # (step, step clock) where measuring began
        self.step_seconds: float | None = None
        self.eval_seconds: float | None = None
        self.evaluations = 0

    def stepped(self, step: int, clock: float) -> None:
        """Step `step` ended at `clock` seconds of stepping (evaluations left out)."""
        if self.anchor is None:
            if step >= self.start + self.WARMUP_STEPS:
                self.anchor = (step, clock)
            return
        measured = step - self.anchor[0]
        if measured >= self.SETTLE_STEPS:
            self.step_seconds = (clock - self.anchor[1]) / measured

    def evaluated(self, seconds: float) -> None:
        self.evaluations += 1
        if not (self.first_eval_compiles and self.evaluations == 1):
            self.eval_seconds = seconds

    def evaluations_left(self, step: int) -> int:
        """The evaluations still to come after step `step`'s, that one included: every eval_interval and the last."""
        if step > self.total:
            return 0
        last = 1 if self.total % self.eval_interval else 0
        return self.total // self.eval_interval - max(step - 1, 0) // self.eval_interval + last

    def left(self, step: int, budget_left: float | None = None) -> float | None:
        """Seconds left after step `step` (None until the speed has settled); `budget_left`: what max_seconds leaves."""
        if self.step_seconds is None:
            return None
        per_eval = self.eval_seconds if self.eval_seconds is not None else self.eval_guess_steps * self.step_seconds
        left = (self.total - step) * self.step_seconds + self.evaluations_left(step) * per_eval
        if budget_left is not None:  # the run stops when the budget is spent, then evaluates once more
            left = min(left, max(0.0, budget_left) + per_eval)
        return left


class Progress:
    """A tqdm bar on a terminal, plain lines elsewhere; `say` prints a line either way.

    Elapsed time counts this process's training (evaluations and saves included); the time left is `Eta`'s,
    shown once the speed has settled.
    """

    def __init__(self, enabled: bool, show_bar: bool, start: int, total: int, eta: Eta | None = None):
        self.enabled = enabled
        self.start_step, self.total = start, total
        self.eta = eta
        self.started = time.perf_counter()
        self.evaluating = 0.0  # seconds spent in evaluations: not step time
        self.fields: dict[str, str] = {}
        self.bar = None
        if enabled and show_bar:
            from tqdm import tqdm

            # tqdm's own estimate extrapolates from the bar's creation, warm-up and evaluations included: ours instead.
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def paused(self, seconds: float, evaluation: bool) -> None:
        """Time out of stepping: an evaluation (with its save, if any) is timed for the estimate."""
        if evaluation:
            self.evaluating += seconds
            if self.eta is not None:
                self.eta.evaluated(seconds)

    def left(self, step: int, budget_left: float | None = None) -> float | None:
        return None if self.eta is None else self.eta.left(step, budget_left)

    def timing(self, step: int, budget_left: float | None = None) -> str:
        left = self.left(step, budget_left)
        elapsed = time.perf_counter() - self.started
        return f"elapsed {format_duration(elapsed)}" + ("" if left is None else f", left ~{format_duration(left)}")

    def update(self, step: int, fields: dict[str, str] | None, budget_left: float | None = None) -> None:
        """A logged step (fields given) or a step in between (None: only a bar moves)."""
        if self.eta is not None:
            self.eta.stepped(step, time.perf_counter() - self.started - self.evaluating)
        if self.bar is not None:
            self.bar.n = step
            if fields:
                self.fields = dict(fields)
            left = self.left(step, budget_left)
            shown = self.fields if left is None else {**self.fields, "left": f"~{format_duration(left)}"}
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            self.bar.refresh()
        elif fields:
            self.say(f"step {step}/{self.total}: " + ", ".join(f"{k} {v}" for k, v in fields.items())
                     + f" ({self.timing(step, budget_left)})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_bar(total: float, desc: str, unit: str = "B", enabled: bool = True, interval: float = 10.0):
    """Progress of a long task (preparing, evaluating, training a BPE): a tqdm bar when standard error is a terminal,
    else a plain line every `interval` seconds and one at the end, so logs never fill with `\r` bars."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1000, file=sys.stderr,
                    mininterval=0.5, leave=False)
    return PlainProgress(total, desc, unit, enabled, interval)


class PlainProgress:
    """The part of tqdm's interface the progress_bar users need, as plain lines on standard error."""

    def __init__(self, total: float, desc: str, unit: str, enabled: bool, interval: float):
        self.total, self.desc, self.unit, self.enabled, self.interval = total, desc, unit, enabled, interval
        self.n = 0.0
        self.started = self.last = time.perf_counter()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {_human(self.n)}{self.unit} of {_human(self.total)}{self.unit}{share}, "
              f"{format_duration(now - self.started)} elapsed", file=sys.stderr, flush=True)

    def close(self) -> None:
        now = time.perf_counter()
        if self.enabled and now - self.started >= self.interval:  # a quick task needs no closing line
            self._line(now)
        self.enabled = False

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"
