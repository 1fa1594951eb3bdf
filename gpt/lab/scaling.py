"""`python -m gpt.lab scaling`: the scaling laws, measured on this machine, and the law put to a test.

Kaplan et al. (2020) and Hoffmann et al. (2022, "Chinchilla") found that a language model's loss falls as a power
law in its training compute C, when C is spent well: on the right size N for it, trained on D ~ C / (6 N) tokens.
The experiment that finds the right size is the IsoFLOP curve: at a fixed C, train several sizes, each for as
many steps as C pays for, and the loss against log(size) is a valley whose bottom is the compute-optimal size.

The miniseries: every depth in `depths` (each shaped by gpt/scaling.py's rule, the same one `--depth` uses) at
every budget in `budgets`, each run's steps set by its budget and its FLOPs per token (gpt/runtime.py's count).
Then:
  IsoFLOP fits   per budget, a parabola in log(size) around the best run: the optimal size N_opt and its loss;
  laws           power laws through the optima: L_opt(C), N_opt(C), D_opt(C) and the tokens per parameter,
                 beside the published exponents;
  prediction     the laws, fitted on these budgets, predict the val loss of a run at a larger budget (the depth
                 nearest its N_opt), written down before that run trains; then it trains, and the report shows
                 prediction against outcome;
  ability        in-context copying: random strings of letters (never in the corpus) shown twice; the share of
                 the second copy's characters each model predicts exactly, against its size.

Results go to out_dir: report.json, isoflop.png, laws.png, ability.png.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from gpt import scaling
from gpt.config import parse_args, setting
from gpt.datasets import TextData, open_training_data
from gpt.device import THREADS_HELP, pick_device, set_threads
from gpt.errors import UserError, exit_on_user_error
from gpt.lab import plots
from gpt.lab.output import prepare_out_dir, table, write_json
from gpt.lab.training import train
from gpt.runtime import new_model, training_flops_per_token
from gpt.trainer import TrainConfig, validate

# Published laws, for the report's comparison. Kaplan et al. (2020): L(C_min) ~ C^-0.050, N_opt ~ C^0.73,
# D_opt ~ C^0.27 (non-embedding N, as here). Hoffmann et al. (2022): N_opt ~ C^0.50, D_opt ~ C^0.50 (their
# approaches 1-2 give 0.50 and 0.49), about 20 tokens per parameter.
PUBLISHED = {
    "kaplan_2020": {"loss_exponent": -0.050, "n_opt_exponent": 0.73, "d_opt_exponent": 0.27},
    "chinchilla_2022": {"n_opt_exponent": 0.50, "d_opt_exponent": 0.50, "tokens_per_param": 20.0},
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class ScalingConfig:
    data: str = setting("shakespeare", "the text: a file, a folder, or a named corpus (shakespeare, stdlib)")
    tokenizer: str = setting("char", "char, bpe:<vocab_size> or gpt2 (as train.py)")
    data_dir: str = setting("data", "where prepared token bins are cached")
    out_dir: str = setting("out/lab/scaling", "where report.json and the PNGs go")
    overwrite: bool = setting(False, "replace the results of an earlier run in out_dir")
    depths: list[int] = setting([1, 2, 3, 4, 5], "the sizes, as depths of gpt/scaling.py's rule (at least 3)")
    budgets: list[float] = setting([1e11, 3e11, 1e12], "the compute budgets in training FLOPs (at least 2), before --budget scales them")
    budget: float = setting(1.0, "multiply every budget by this (e.g. 100 on a GPU; add larger --depths with it)")
    predict: float = setting(3.0, "the held-out run's budget as a multiple of the largest budget (0 = no prediction)")
    block_size: int = setting(64, "context length of every model")
    eval_batches: int = setting(40, "val batches of 32 windows each that every model is scored on (the same windows)")
    copy_sequences: int = setting(200, "random letter strings for the copying measurement")
    copy_length: int = setting(20, "letters per string (shown twice: 2 x copy_length <= block_size)")
    seed: int = setting(1337, "seeds the models, their batches, the val windows and the strings")
    device: str = setting("cpu", "auto, cpu, cuda, cuda:N or mps")
    threads: int = setting(0, THREADS_HELP)


def check_settings(cfg: ScalingConfig) -> None:
    if len(set(cfg.depths)) < 3 or min(cfg.depths) < 1:
        raise UserError(f"depths: give at least 3 different depths of 1 or more, got {cfg.depths}")
    if len(set(cfg.budgets)) < 2 or min(cfg.budgets) <= 0 or cfg.budget <= 0:
        raise UserError(f"budgets: give at least 2 different positive FLOP budgets (and a positive --budget), got "
                        f"{cfg.budgets} x {cfg.budget}")
    if cfg.predict < 0:
        raise UserError(f"predict must be 0 (none) or a multiple of the largest budget, got {cfg.predict}")
    if cfg.eval_batches < 1 or cfg.copy_sequences < 1 or cfg.copy_length < 2:
        raise UserError("eval_batches and copy_sequences must be at least 1, copy_length at least 2")
    if 2 * cfg.copy_length > cfg.block_size:
        raise UserError(f"two copies of {cfg.copy_length} letters do not fit in block_size {cfg.block_size}: lower "
                        f"--copy_length to {cfg.block_size // 2}")


def run_settings(cfg: ScalingConfig, depth: int, flops: float, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """One run's settings: the depth rule of gpt/scaling.py (what `train.py --depth` uses) at this budget, with
    `overrides` given explicitly over it (bench/scaling.py's hand settings)."""
    overrides = overrides or {}
    given = {"data", "tokenizer", "data_dir", "block_size", "depth", "max_flops", "seed", "device", *overrides}
    base = TrainConfig(data=[cfg.data], tokenizer=cfg.tokenizer, data_dir=cfg.data_dir, block_size=cfg.block_size,
                       depth=depth, max_flops=flops, seed=cfg.seed, device=cfg.device, **overrides)
    settings = scaling.apply_rule(base, given)
    validate(settings)
    return settings


# ---------------------------------------------------------------------------------------------------
# One run: train a size at a budget, score it.


def non_embedding_params(model: torch.nn.Module) -> int:
    """Kaplan's N: the blocks' weights (no token embedding, no LM head)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".h." in f".{name}")


@torch.no_grad()
def val_loss(model: torch.nn.Module, data: TextData, cfg: ScalingConfig, device: torch.device) -> float:
    batches = data.batches("val", cfg.block_size, 32, seed=cfg.seed + 1_000_003, device=device)
    total = 0.0
    for _ in range(cfg.eval_batches):
        x, y = batches.next()
        _, loss = model(x, y)
        total += float(loss)
    return total / cfg.eval_batches


def copy_strings(cfg: ScalingConfig, data: TextData) -> torch.Tensor | None:
    """[copy_sequences, 2 x copy_length] token ids: a random string of letters, twice; None without letters."""
    letters = [c for c in LETTERS if len(data.tokenizer.encode(c)) == 1]
    if len(letters) < 2:
        return None
    ids = torch.tensor([data.tokenizer.encode(c)[0] for c in letters])
    g = torch.Generator().manual_seed(cfg.seed + 7)
    strings = ids[torch.randint(len(letters), (cfg.copy_sequences, cfg.copy_length), generator=g)]
    return torch.cat([strings, strings], dim=1)


@torch.no_grad()
def copy_accuracy(model: torch.nn.Module, strings: torch.Tensor, device: torch.device) -> float:
    """The share of the second copy's letters (after its first, which nothing announces) predicted exactly."""
    half = strings.shape[1] // 2
    logits, _ = model(strings[:, :-1].to(device), all_logits=True)
    predicted = logits.argmax(-1).cpu()
    targets = strings[:, 1:]
    second = slice(half, None)  # targets at positions half+1 .. : the copy's letters after its first
    return float((predicted[:, second] == targets[:, second]).float().mean())


def train_one(cfg: ScalingConfig, data: TextData, depth: int, flops: float, device: torch.device,
              strings: torch.Tensor | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    settings = run_settings(cfg, depth, flops, overrides)
    torch.manual_seed(settings.seed)
    model = new_model(settings, data.tokenizer.vocab_size).to(device)
    flops_per_token = training_flops_per_token(model)
    steps = scaling.steps_for_budget(settings, flops_per_token)
    settings = dataclasses.replace(settings, max_iters=steps, eval_interval=steps,
                                   warmup_iters=max(1, round(scaling.WARMUP_FRACTION * steps)))
    batches = data.batches("train", settings.block_size, settings.batch_size, seed=settings.seed, device=device)
    result: dict[str, Any] = {}

    def measure(step: int) -> None:
        if step == steps:
            result["val_loss"] = val_loss(model, data, cfg, device)
            result["copy_accuracy"] = copy_accuracy(model, strings, device) if strings is not None else None

    started = time.perf_counter()
    train(model, settings, lambda step: batches.next(), measure, grad_clip=settings.grad_clip)
    tokens = steps * settings.batch_size * settings.block_size
    n = non_embedding_params(model)
    return {"depth": depth, "n_layer": settings.n_layer, "n_embd": settings.n_embd, "n_head": settings.n_head,
            "batch_size": settings.batch_size, "learning_rate": settings.learning_rate, "budget": flops,
            "params": n, "flops_per_token": flops_per_token, "steps": steps, "tokens": tokens,
            "flops": tokens * flops_per_token, "tokens_per_param": tokens / n,
            "seconds": round(time.perf_counter() - started, 1), **result}


# ---------------------------------------------------------------------------------------------------
# The fits


def fit_laws(runs: list[dict[str, Any]], budgets: list[float]) -> dict[str, Any]:
    """Per budget the IsoFLOP minimum; through the minima, L_opt(C), N_opt(C), D_opt(C) and tokens per parameter."""
    optima = []
    for budget in budgets:
        at = [r for r in runs if r["budget"] == budget]
        best = scaling.isoflop_minimum([r["params"] for r in at], [r["val_loss"] for r in at])
        # The tokens the optimum trains on: the budget over the FLOPs per token of a model that size,
        # interpolated in log between the sizes run.
        sizes = sorted(at, key=lambda r: r["params"])
        xs = [math.log(r["params"]) for r in sizes]
        ys = [math.log(r["flops_per_token"]) for r in sizes]
        log_fpt = _interp(math.log(best["params"]), xs, ys)
        tokens = budget / math.exp(log_fpt)
        optima.append({"budget": budget, **best, "tokens": tokens, "tokens_per_param": tokens / best["params"]})
    cs = [o["budget"] for o in optima]
    laws = {"loss": scaling.power_law(cs, [o["loss"] for o in optima]),
            "n_opt": scaling.power_law(cs, [o["params"] for o in optima]),
            "d_opt": scaling.power_law(cs, [o["tokens"] for o in optima])}
    curvatures = [o["curvature"] for o in optima if o["curvature"] is not None]
    return {"optima": optima, "laws": laws,
            "tokens_per_param": math.exp(sum(math.log(o["tokens_per_param"]) for o in optima) / len(optima)),
            "curvature": sum(curvatures) / len(curvatures) if curvatures else 0.0}


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Linear interpolation (and extrapolation from the end segments) of y at x."""
    if len(xs) == 1:
        return ys[0]
    i = max(1, min(len(xs) - 1, next((k for k, v in enumerate(xs) if v >= x), len(xs) - 1)))
    t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + t * (ys[i] - ys[i - 1])


def predict(fits: dict[str, Any], flops: float, depths: list[int]) -> dict[str, Any]:
    """The loss the laws predict for the best depth at `flops`: L_opt(C) from its power law, plus the IsoFLOP
    valley's mean curvature times how far (in log size) the depth chosen lies from N_opt(C)."""
    n_opt = fits["laws"]["n_opt"]["coef"] * flops ** fits["laws"]["n_opt"]["exponent"]
    candidates = sorted(set(depths) | set(range(1, max(depths) + 3)))
    depth = min(candidates, key=lambda d: abs(math.log(scaling.depth_params(d)) - math.log(n_opt)))
    law = fits["laws"]["loss"]
    at_optimum = law["coef"] * flops ** law["exponent"]
    off = math.log(scaling.depth_params(depth)) - math.log(n_opt)
    return {"budget": flops, "n_opt": n_opt, "depth": depth, "loss_at_optimum": at_optimum,
            "predicted_loss": at_optimum + fits["curvature"] * off ** 2}


# ---------------------------------------------------------------------------------------------------
# The experiment


def run(cfg: ScalingConfig, say=print) -> dict[str, Any]:
    check_settings(cfg)
    set_threads(cfg.threads)
    out = prepare_out_dir(cfg.out_dir, "report.json", cfg.overwrite)
    device = pick_device(cfg.device)
    probe = run_settings(cfg, min(cfg.depths), cfg.budgets[0] * cfg.budget)
    data = open_training_data(probe, probe.tokenizer, progress=False)
    if not isinstance(data, TextData):
        raise UserError("the scaling lab trains on plain text: give a text file, a folder or a named corpus")
    data.check_fits(cfg.block_size, 32, 1)
    strings = copy_strings(cfg, data)
    budgets = sorted(b * cfg.budget for b in set(cfg.budgets))
    depths = sorted(set(cfg.depths))
    started = time.perf_counter()
    say(f"scaling: depths {depths} at budgets {', '.join(f'{b:.2g}' for b in budgets)} FLOPs on {data.describe()}, "
        f"{device.type}")
    runs = []
    for budget in budgets:
        for depth in depths:
            r = train_one(cfg, data, depth, budget, device, strings)
            runs.append(r)
            say(f"  C {budget:.2g}: depth {depth} ({r['params']:,} params) {r['steps']:,} steps, "
                f"{r['tokens_per_param']:.1f} tokens/param: val {r['val_loss']:.4f} ({r['seconds']:.0f} s)")
    fits = fit_laws(runs, budgets)
    report: dict[str, Any] = {"settings": dataclasses.asdict(cfg), "vocab_size": data.tokenizer.vocab_size,
                              "runs": runs, **fits, "published": PUBLISHED}
    if cfg.predict > 0:
        prediction = predict(fits, budgets[-1] * cfg.predict, depths)
        say(f"  prediction, before it runs: C {prediction['budget']:.2g}, depth {prediction['depth']}: val "
            f"{prediction['predicted_loss']:.4f}")
        outcome = train_one(cfg, data, prediction["depth"], prediction["budget"], device, strings)
        prediction["run"] = outcome
        prediction["actual_loss"] = outcome["val_loss"]
        prediction["error"] = (prediction["predicted_loss"] - outcome["val_loss"]) / outcome["val_loss"]
        report["prediction"] = prediction
    report["ability"] = ability(runs + ([report["prediction"]["run"]] if "prediction" in report else []))
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "report.json", report)
    drawn = plots.draw_isoflop(out / "isoflop.png", report)
    if drawn:
        plots.draw_laws(out / "laws.png", report)
        plots.draw_ability(out / "ability.png", report)
    say(summary(report))
    say(f"wrote {out / 'report.json'}" + (", isoflop.png, laws.png, ability.png" if drawn else ""))
    return report


def ability(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Copying accuracy against size: per budget, and for each size its best over the budgets."""
    if any(r["copy_accuracy"] is None for r in runs):
        return {}
    by_size: dict[int, float] = {}
    for r in runs:
        by_size[r["params"]] = max(by_size.get(r["params"], 0.0), r["copy_accuracy"])
    return {"chance": 1 / len(LETTERS), "best_by_size": [{"params": n, "copy_accuracy": a}
                                                          for n, a in sorted(by_size.items())]}


def summary(report: dict[str, Any]) -> str:
    rows = [[f"{o['budget']:.2g}", f"{o['params']:,.0f}", f"{o['tokens']:,.0f}", f"{o['tokens_per_param']:.1f}",
             f"{o['loss']:.4f}", "yes" if o["bracketed"] else "no (edge)"] for o in report["optima"]]
    lines = [table(rows, ["budget (FLOPs)", "N_opt", "D_opt (tokens)", "tokens/param", "val loss", "bracketed"])]
    laws = report["laws"]
    lines.append(f"L_opt(C) = {laws['loss']['coef']:.3g} C^{laws['loss']['exponent']:.3f}   (Kaplan: C^-0.050)")
    lines.append(f"N_opt(C) = {laws['n_opt']['coef']:.3g} C^{laws['n_opt']['exponent']:.3f}   "
                 "(Chinchilla: C^0.50; Kaplan: C^0.73)")
    lines.append(f"D_opt(C) ~ C^{laws['d_opt']['exponent']:.3f}; tokens per parameter at the optimum "
                 f"{report['tokens_per_param']:.1f} (Chinchilla: ~20)")
    if "prediction" in report:
        p = report["prediction"]
        lines.append(f"prediction at C {p['budget']:.2g} (depth {p['depth']}): {p['predicted_loss']:.4f}, actual "
                     f"{p['actual_loss']:.4f}, error {100 * p['error']:+.2f}%")
    if report["ability"]:
        shown = ", ".join(f"{a['params']:,}: {a['copy_accuracy']:.2f}" for a in report["ability"]["best_by_size"])
        lines.append(f"copying an unseen string (share exact; chance {report['ability']['chance']:.2f}): {shown}")
    lines.append(f"time {report['seconds']:.0f} s")
    return "\n".join(lines)


DESCRIPTION = """Train a miniseries (every depth at every compute budget), fit IsoFLOP curves and the scaling laws,
predict a larger run's loss from them and run it, and measure in-context copying against size. Example:
  python -m gpt.lab scaling --data shakespeare --out_dir out/lab/scaling       # minutes on a CPU (BENCHMARKS.md)
  python -m gpt.lab scaling --budget 1000 --depths 6,8,10,12,14 --device cuda   # a GPU's miniseries"""


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(ScalingConfig, argv, prog="python -m gpt.lab scaling", description=DESCRIPTION)
    run(cfg)
    return 0
