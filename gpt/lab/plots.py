"""The lab's pictures: every PNG it writes, drawn with matplotlib (the `plot` extra).

Without matplotlib the lab still writes its JSON and prints its tables; the first picture it cannot draw
prints one line saying so and how to get them. Every PNG is written atomically.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

from gpt.atomic import atomic_write

_warned = False


def pyplot():
    """matplotlib.pyplot with a file-only backend, or None (after saying once how to install it)."""
    global _warned
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            print("PNGs skipped: matplotlib is not installed (pip install -e \".[plot]\"); the JSON has every number",
                  file=sys.stderr)
            _warned = True
        return None
    return plt


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _label(token: str, width: int = 8) -> str:
    """A token as an axis label: whitespace made visible, long tokens cut."""
    shown = token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣")
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


# ---------------------------------------------------------------------------------------------------
# The induction experiment


def draw_losses(path: Path, runs: dict[str, dict[str, Any]]) -> bool:
    """Loss on the first occurrence and on the repeat over training, one colour per model."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, run), colour in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        steps = [h["step"] for h in run["history"]]
        ax.plot(steps, [h["repeat_loss"] for h in run["history"]], "-", color=colour, label=f"{name}: repeat")
        ax.plot(steps, [h["first_loss"] for h in run["history"]], ":", color=colour, label=f"{name}: first occurrence")
        if run.get("change_step") is not None:
            ax.axvline(run["change_step"], color=colour, lw=0.8, alpha=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss on the repeated segment falls when induction heads form")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_head_scores(path: Path, runs: dict[str, dict[str, Any]]) -> bool:
    """Each head's induction and previous-token score over training: one row per model, one column per score."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for row, (name, run) in enumerate(runs.items()):
        steps = [h["step"] for h in run["history"]]
        for col, key in enumerate(("induction", "previous_token")):
            ax = axes[row][col]
            first = run["history"][0][key]
            for layer in range(len(first)):
                for head in range(len(first[layer])):
                    ax.plot(steps, [h[key][layer][head] for h in run["history"]], lw=1.2,
                            linestyle="-" if layer == len(first) - 1 else "--", label=head_name(layer, head))
            ax.set_ylim(0, 1)
            ax.set_title(f"{name}: {key.replace('_', '-')} score")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_attention_snapshots(path: Path, snapshots: list[tuple[str, Any]], tokens: Sequence[str] | None = None,
                             marks: dict[str, Any] | None = None) -> bool:
    """Every head's attention on one sequence at several moments: one row per (moment, layer), one column per head.

    snapshots: (title, weights [n_layer, nh, T, T]) pairs.
    """
    plt = pyplot()
    if plt is None:
        return False
    n_layer, n_head = snapshots[0][1].shape[:2]
    rows = len(snapshots) * n_layer
    fig, axes = plt.subplots(rows, n_head, figsize=(2.6 * n_head, 2.6 * rows), squeeze=False)
    for s, (title, weights) in enumerate(snapshots):
        for layer in range(n_layer):
            for head in range(n_head):
                ax = axes[s * n_layer + layer][head]
                ax.imshow(weights[layer, head], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{title}: {head_name(layer, head)}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                if marks:
                    for (x0, x1) in marks.get("segments", []):
                        ax.axvspan(x0 - 0.5, x1 - 0.5, color="white", alpha=0.08)
    fig.suptitle("attention (row: query position, column: key position)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_ablation(path: Path, name: str, ablation: dict[str, Any]) -> bool:
    """The repeat's loss with all heads on, with each head off, and with the induction heads off together."""
    plt = pyplot()
    if plt is None:
        return False
    labels = ["none"] + list(ablation["each_head"]) + ["induction heads"]
    values = [ablation["baseline"]] + list(ablation["each_head"].values()) + [ablation["induction_heads_off"]]
    colours = ["tab:gray"] + ["tab:red" if label in ablation["induction_heads"] else "tab:blue"
                              for label in ablation["each_head"]] + ["tab:red"]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), values, color=colours)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("loss on the repeat (nats)")
    ax.set_xlabel("switched off")
    ax.set_title(f"{name}: ablation (red: heads with induction score > {ablation['threshold']})")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------------
# Any checkpoint


def draw_attention_grid(path: Path, weights, tokens: Sequence[str], title: str) -> bool:
    """Heat maps of every head's attention on a prompt: rows are layers, columns heads, tokens on the axes."""
    plt = pyplot()
    if plt is None:
        return False
    n_layer, n_head, T, _ = weights.shape
    size = 2.2 if T <= 24 else 2.0
    fig, axes = plt.subplots(n_layer, n_head, figsize=(size * n_head + 1, size * n_layer + 1), squeeze=False)
    labels = [_label(t) for t in tokens]
    show_labels = T <= 40
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(weights[layer, head], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(head_name(layer, head), fontsize=8)
            if show_labels and head == 0:
                ax.set_yticks(range(T), labels, fontsize=5)
            else:
                ax.set_yticks([])
            if show_labels and layer == n_layer - 1:
                ax.set_xticks(range(T), labels, fontsize=5, rotation=90)
            else:
                ax.set_xticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_loss_by_position(path: Path, losses: Sequence[float], early: range, late: range, title: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    positions = range(1, len(losses) + 1)  # tokens of context the prediction had
    ax.plot(positions, losses, "-", lw=1.2)
    for window, colour, label in ((early, "tab:green", "early"), (late, "tab:red", "late")):
        ax.axvspan(window.start + 0.5, window.stop + 0.5, color=colour, alpha=0.15, label=f"{label} window")
    ax.set_xscale("log")
    ax.set_xlabel("tokens of context")
    ax.set_ylabel("mean loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_lens(path: Path, top_tokens: list[list[str]], top_probs: list[list[float]], tokens: Sequence[str],
              layer_names: Sequence[str]) -> bool:
    """The logit lens: for each layer (rows) and position (columns), the top next token and its probability."""
    plt = pyplot()
    if plt is None:
        return False
    rows, cols = len(top_tokens), len(top_tokens[0])
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * cols + 2), 0.5 * rows + 1.8))
    ax.imshow(top_probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            ax.text(c, r, _label(top_tokens[r][c], 6), ha="center", va="center", fontsize=7,
                    color="white" if top_probs[r][c] > 0.6 else "black")
    ax.set_yticks(range(rows), layer_names, fontsize=8)
    ax.set_xticks(range(cols), [_label(t) for t in tokens], fontsize=7, rotation=90)
    ax.set_xlabel("input token (the prediction is for the token after it)")
    ax.set_title("logit lens: top next token after each layer (colour: its probability)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_fewshot(path: Path, shots: Sequence[int], curves: dict[str, Sequence[float]]) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [math.log2(k + 1) for k in shots]
    for name, values in curves.items():
        values = [float("nan") if v is None else v for v in values]  # a task not scored at that many shots
        ax.plot(x, values, "o-" if name == "overall" else ".--", lw=2.0 if name == "overall" else 1.0, label=name)
    ax.set_xticks(x, [str(k) for k in shots])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("examples in the prompt")
    ax.set_ylabel("exact match")
    ax.set_title("few-shot: in-context learning on tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------------
# The scaling miniseries


def draw_isoflop(path: Path, report: dict[str, Any]) -> bool:
    """Val loss against size, one curve per budget, each optimum marked; the predicted run beside its outcome."""
    plt = pyplot()
    if plt is None:
        return False
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(report["optima"])))
    for optimum, colour in zip(report["optima"], colours):
        runs = sorted((r for r in report["runs"] if r["budget"] == optimum["budget"]), key=lambda r: r["params"])
        ax.plot([r["params"] for r in runs], [r["val_loss"] for r in runs], "o-", color=colour, lw=1.2,
                label=f"C = {optimum['budget']:.2g} FLOPs")
        if optimum["curvature"] is not None:
            ax.plot([optimum["params"]], [optimum["loss"]], "*", color=colour, ms=14, mec="black")
    prediction = report.get("prediction")
    if prediction:
        n = prediction["run"]["params"]
        ax.plot([n], [prediction["predicted_loss"]], "D", mfc="none", mec="tab:red", ms=10,
                label=f"predicted for C = {prediction['budget']:.2g}")
        ax.plot([n], [prediction["actual_loss"]], "x", color="tab:red", ms=10, mew=2, label="its outcome")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("IsoFLOP curves: at each compute budget, a best size (stars: parabola minima)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_laws(path: Path, report: dict[str, Any]) -> bool:
    """The fitted laws: the optimum's loss, and the optimal size, against compute (log-log)."""
    plt = pyplot()
    if plt is None:
        return False
    import numpy as np

    optima, laws = report["optima"], report["laws"]
    cs = [o["budget"] for o in optima]
    prediction = report.get("prediction")
    top = max(cs + ([prediction["budget"]] if prediction else []))
    grid = np.geomspace(min(cs), top, 50)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(cs, [o["loss"] for o in optima], "o", color="tab:blue", label="IsoFLOP minima")
    law = laws["loss"]
    left.plot(grid, law["coef"] * grid ** law["exponent"], "-", color="tab:blue", lw=1,
              label=f"L = {law['coef']:.3g} C^{law['exponent']:.3f}")
    if prediction:
        left.plot([prediction["budget"]], [prediction["predicted_loss"]], "D", mfc="none", mec="tab:red", ms=9,
                  label="predicted (this depth)")
        left.plot([prediction["budget"]], [prediction["actual_loss"]], "x", color="tab:red", ms=9, mew=2,
                  label=f"measured ({100 * prediction['error']:+.1f}%)")
    left.set_ylabel("val loss at the optimum")
    right.plot(cs, [o["params"] for o in optima], "o", color="tab:green", label="N_opt (IsoFLOP minima)")
    fit = laws["n_opt"]
    right.plot(grid, fit["coef"] * grid ** fit["exponent"], "-", color="tab:green", lw=1,
               label=f"N_opt = {fit['coef']:.3g} C^{fit['exponent']:.2f}")
    # Chinchilla's slope (C^0.5) through the middle optimum, for comparison.
    mid = optima[len(optima) // 2]
    right.plot(grid, mid["params"] * (grid / mid["budget"]) ** 0.5, ":", color="gray", label="Chinchilla's slope C^0.5")
    right.set_ylabel("compute-optimal N")
    for ax, title in ((left, "Loss falls as a power of compute"), (right, "The optimal size grows with compute")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    from matplotlib.ticker import FormatStrFormatter

    for formatter in (left.yaxis.set_major_formatter, left.yaxis.set_minor_formatter):
        formatter(FormatStrFormatter("%.2f"))  # a narrow log range: plain numbers, not powers of ten
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_ability(path: Path, report: dict[str, Any]) -> bool:
    """In-context copying of an unseen string against size, one curve per budget."""
    plt = pyplot()
    if plt is None or not report.get("ability"):
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = sorted({r["budget"] for r in report["runs"]})
    for budget in budgets:
        runs = sorted((r for r in report["runs"] if r["budget"] == budget), key=lambda r: r["params"])
        ax.plot([r["params"] for r in runs], [r["copy_accuracy"] for r in runs], "o-", lw=1.2,
                label=f"C = {budget:.2g}")
    prediction = report.get("prediction")
    if prediction:
        ax.plot([prediction["run"]["params"]], [prediction["run"]["copy_accuracy"]], "x", color="tab:red", ms=9,
                mew=2, label=f"C = {prediction['budget']:.2g} (predicted run)")
    ax.axhline(report["ability"]["chance"], color="gray", ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("letters of the repeat predicted exactly")
    ax.set_title("Does an ability appear with scale? Copying an unseen string", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True
