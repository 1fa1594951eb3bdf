"""The scaling lab's default run, timed; and `--depth` alone against a small sweep of hand settings at the same
compute.

    python bench/scaling.py lab                       # python -m gpt.lab scaling with its defaults, timed (~15 min)
    python bench/scaling.py lab --report out/lab/scaling/report.json   # record a run made already (not timed)
    python bench/scaling.py depth --depths 1,2,3 --threads 1           # the rule against hand settings
    python bench/scaling.py depth --depths 2,3 --budgets 1e11,1e12      # at budgets of one's own

lab: the miniseries, its fits and its prediction (gpt/lab/scaling.py), with the wall time of the whole command;
written to bench/results/scaling_lab.json. Its losses are set by FLOPs and seeds, not by the machine's load; its
time is a quiet-machine figure.

depth: for each depth, the run `train.py --depth D` makes (the rule's shape, learning rates and batch, trained for
the budget at which the fitted law makes this size compute-optimal), and hand settings at the same budget: the
learning rates halved and doubled, the batch halved and doubled, one layer less and one more (each trained for
the same FLOPs). Every run is scored on the same val windows; the rule's loss against the best of the sweep
goes to bench/results/scaling_depth.json. FLOP-set runs: load-independent, so they may run on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

REPO = harness.REPO


def lab(args: argparse.Namespace) -> None:
    if args.report:
        report = json.loads(Path(args.report).read_text())
        wall = None
        command = f"(recorded from {args.report})"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "gpt.lab", "scaling", f"--out_dir={tmp}/scaling", *args.extra]
            started = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, check=True)
            wall = time.perf_counter() - started
            report = json.loads(Path(tmp, "scaling", "report.json").read_text())
            command = " ".join(cmd[1:])
    laws, prediction = report["laws"], report.get("prediction")
    headline = {"wall_s": wall, "loss_exponent": laws["loss"]["exponent"], "n_opt_exponent": laws["n_opt"]["exponent"],
                "n_opt_coef": laws["n_opt"]["coef"], "d_opt_exponent": laws["d_opt"]["exponent"],
                "tokens_per_param": report["tokens_per_param"], "lab_seconds": report["seconds"]}
    if prediction:
        headline.update(predicted_loss=prediction["predicted_loss"], actual_loss=prediction["actual_loss"],
                        prediction_error_pct=100 * prediction["error"], prediction_budget=prediction["budget"],
                        prediction_depth=prediction["depth"])
    path = harness.write("scaling_lab", {"command": command, "headline": headline, "report": report})
    print(f"wrote {path}")
    print(harness.table(["figure", "value"], [[k, v] for k, v in headline.items()]))


def depth(args: argparse.Namespace) -> None:
    import torch

    from gpt import scaling
    from gpt.datasets import open_training_data
    from gpt.device import set_threads
    from gpt.lab.scaling import ScalingConfig, copy_strings, run_settings, train_one

    set_threads(args.threads)
    cfg = ScalingConfig(data=args.data, data_dir=args.data_dir, eval_batches=args.eval_batches, copy_sequences=8)
    device = torch.device("cpu")
    probe = run_settings(cfg, 1, 1e9)
    data = open_training_data(probe, probe.tokenizer, progress=False)
    strings = copy_strings(cfg, data)
    results = []
    budgets = args.budgets or [None] * len(args.depths)
    if len(budgets) != len(args.depths):
        raise SystemExit("--budgets: one per depth")
    for d, budget in zip(args.depths, budgets):
        rule = run_settings(cfg, d, budget or 0.0)  # no budget: the rule's own, where the fitted law puts this size
        flops = rule.max_flops
        variants: dict[str, tuple[int, dict]] = {"rule (--depth alone)": (d, {})}
        for k in (0.5, 2.0):
            variants[f"learning rates x{k:g}"] = (d, {"learning_rate": rule.learning_rate * k})
            variants[f"batch x{k:g}"] = (d, {"batch_size": max(1, int(rule.batch_size * k))})
        for other in (d - 1, d + 1):
            if other >= 1:
                variants[f"depth {other} (its rule)"] = (other, {})
        runs = {}
        for name, (dd, overrides) in variants.items():
            r = train_one(cfg, data, dd, flops, device, strings, overrides)
            runs[name] = {k: r[k] for k in ("depth", "params", "steps", "batch_size", "learning_rate", "val_loss",
                                            "tokens_per_param", "seconds")}
            print(f"depth {d} at {flops:.3g} FLOPs: {name}: val {r['val_loss']:.4f} ({r['seconds']:.0f} s)", flush=True)
        best_name = min(runs, key=lambda n: runs[n]["val_loss"])
        rule_loss = runs["rule (--depth alone)"]["val_loss"]
        gap = 100 * (rule_loss - runs[best_name]["val_loss"]) / runs[best_name]["val_loss"]
        results.append({"depth": d, "budget": flops, "rule_loss": rule_loss, "best": best_name,
                        "best_loss": runs[best_name]["val_loss"], "gap_pct": gap, "runs": runs})
    worst = max(r["gap_pct"] for r in results)
    path = harness.write("scaling_depth", {"law": {"coef": scaling.NOPT_COEF, "exponent": scaling.NOPT_EXP},
                                           "depths": {str(r["depth"]): r for r in results}, "worst_gap_pct": worst})
    print(f"wrote {path}")
    print(harness.table(["depth", "budget", "--depth alone", "best of the sweep", "which", "gap %"],
                        [[r["depth"], f"{r['budget']:.3g}", f"{r['rule_loss']:.4f}", f"{r['best_loss']:.4f}", r["best"],
                          f"{r['gap_pct']:+.2f}"] for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lab")
    p.add_argument("--report", help="record this report.json instead of running the lab")
    p.add_argument("extra", nargs="*", help="settings passed on to python -m gpt.lab scaling")
    p = sub.add_parser("depth")
    p.add_argument("--depths", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    p.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=None,
                   help="FLOPs, one per depth (default: the budget the fitted law makes each depth optimal for)")
    p.add_argument("--data", default="shakespeare")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--eval_batches", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    args, unknown = parser.parse_known_args()
    if args.command == "lab":
        args.extra = list(args.extra) + unknown
        lab(args)
    else:
        depth(args)


if __name__ == "__main__":
    main()
