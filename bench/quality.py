"""Quality per second on the CPU: our Tiny Shakespeare recipe against nanoGPT's in the same wall-clock time,
and an ablation of each architecture and optimizer option of that recipe.

    python bench/quality.py nanogpt --nanogpt /tmp/nanogpt-run --repeats 2 --threads 1
    python bench/quality.py ablate --steps 150 --workers 4 --threads 1      # each option off, same steps
    python bench/quality.py ablate --budget 75 --variants base,position=learned,optimizer=adamw   # same seconds
    python bench/quality.py newton_schulz --threads 1     # Muon's orthogonalisation: fp32 (ours) vs bf16 (torch's)
    python bench/quality.py norms --threads 1             # RMSNorm against LayerNorm, forward + backward
    python bench/quality.py score --ours out/shakespeare_char_cpu --nanogpt /tmp/nanogpt-run --nanogpt_out DIR

nanogpt: alternately (nanoGPT, ours, nanoGPT, ours, ...) runs nanoGPT's README CPU recipe with its own
train.py, in a copy of its repository whose data/shakespeare_char is prepared (its prepare.py, fed Tiny
Shakespeare as input.txt), and `train.py configs/shakespeare_char_cpu.toml --max_seconds=S`, with S chosen so
that our whole process (start-up, preparing the corpus from scratch, the final evaluation) ends within the
wall time of the nanoGPT run just before it. nanoGPT's own time does not include its separate prepare step.

ablate: the recipe with one setting changed per variant, every variant given the same max_seconds, in
rounds (A, B, C, ..., A, B, C, ...); or, with --steps, the same number of steps: seeded runs whose losses do
not depend on the machine's load, so that they can run side by side on a busy machine (--workers), their
tok/s then only a rough guide.

Both score each run's best checkpoint the same way, with gpt.evaluate (every character scored once, in windows
of the model's own block_size advancing by half of it), on the last 10% of Tiny Shakespeare (nanoGPT's
validation text, which neither trains on: ours holds out 18 more characters), cut in two halves:
  val:  the first half, the number every choice of the recipe was made on (ablations, settings);
  test: the second half, reported only, never used to choose anything, as a stand-in for text we do not have.
The text is ASCII, so nats per character / ln 2 is bits per byte. Each run's own logged val loss (a sample of
random windows of the whole 10%) is reported too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import harness
import torch

REPO = harness.REPO
CORPUS = REPO / "data" / "shakespeare" / "input.txt"
SHARED_CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
CONFIG = "configs/shakespeare_char_cpu.toml"
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
# Each option of the recipe switched to its other value (or values).
ABLATIONS = ["position=learned", "norm=rmsnorm", "mlp=gelu", "mlp=swiglu", "qk_norm=false", "tie_embeddings=true",
             "zero_init=false", "logit_softcap=15", "optimizer=adamw", "lr_schedule=wsd", "arch=gpt2+optimizer=adamw"]


def corpus_text() -> str:
    for path in (CORPUS, SHARED_CORPUS):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise SystemExit(f"Tiny Shakespeare not found at {CORPUS} or {SHARED_CORPUS}")


def held_out_texts() -> dict[str, str]:
    """nanoGPT's val split, in two halves: "val" to choose by, "test" to report only."""
    text = corpus_text()
    held = text[int(len(text) * 0.9):]
    cut = held.index("\n\n", len(held) // 2) + 2  # at a speaker's turn
    return {"val": held[:cut], "test": held[cut:]}


def score(model, encode, texts: dict[str, str]) -> dict:
    from gpt.evaluate import evaluate

    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {}
    for name, text in texts.items():
        r = evaluate(model, encode(text), batch_size=32, num_bytes=len(text.encode()))
        result[name] = r["loss"]
        result[f"{name}_bpb"] = r["loss"] / math.log(2)  # ASCII: one byte per character
    return result


def score_ours(out_dir: Path, texts: dict[str, str]) -> dict:
    from gpt.checkpoint import load_model

    loaded = load_model(out_dir)
    return score(loaded.model, loaded.tokenizer.encode, texts)


class NanoGPTModel(torch.nn.Module):
    """nanoGPT's model behind the interface gpt.evaluate expects: .config and forward(x, all_logits=True)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = SimpleNamespace(block_size=model.config.block_size, vocab_size=model.config.vocab_size)

    def forward(self, idx, all_logits=True):
        logits, _ = self.model(idx, torch.zeros_like(idx))  # with targets, nanoGPT returns every position's logits
        return logits, None


def score_nanogpt(nanogpt: Path, out_dir: Path, texts: dict[str, str]) -> dict:
    import pickle

    if str(nanogpt) not in sys.path:
        sys.path.insert(0, str(nanogpt))
    import model as nanogpt_model  # nanoGPT's model.py, from its repository, imported only here

    checkpoint = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=False)
    model = nanogpt_model.GPT(nanogpt_model.GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
    with open(nanogpt / "data" / "shakespeare_char" / "meta.pkl", "rb") as f:
        stoi = pickle.load(f)["stoi"]
    return score(NanoGPTModel(model), lambda text: [stoi[c] for c in text], texts)


def environment(threads: int) -> dict:
    """The same for both programs: unbuffered output, and OMP_NUM_THREADS when --threads is given."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_nanogpt(nanogpt: Path, out_dir: Path, threads: int = 0) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={out_dir}"], cwd=nanogpt,
                          capture_output=True, text=True, env=environment(threads))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    vals = [float(line.split("val loss ")[1]) for line in proc.stdout.splitlines() if "val loss" in line]
    times = [float(line.split("time ")[1].split("ms")[0]) for line in proc.stdout.splitlines()
             if line.startswith("iter ") and "time " in line]
    # tok/s over the steps that are not evaluations (those take far longer than a step)
    step_ms = statistics.median(times) if times else float("nan")
    return {"wall_s": wall, "logged_val": vals[-1], "best_logged_val": min(vals), "tok_per_s": 768 / (step_ms / 1000)}


def run_ours(out_dir: Path, extra: list[str], threads: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        shutil.copy(CORPUS if CORPUS.is_file() else SHARED_CORPUS, _mkdir(Path(data_dir, "shakespeare")) / "input.txt")
        cmd = [sys.executable, str(REPO / "train.py"), CONFIG, f"--out_dir={out_dir}", f"--data_dir={data_dir}",
               "--progress=false", "--plot=false", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=environment(threads))
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(extra)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    rates = [r["tok_per_s"] for r in train[1:]] or [train[-1]["tok_per_s"]]
    return {"wall_s": wall, "steps": train[-1]["step"], "logged_val": evals[-1]["val_loss"],
            "best_logged_val": min(r["val_loss"] for r in evals), "tok_per_s": statistics.median(rates),
            "loop_s": train[-1]["elapsed"]}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def flags(variant: str) -> list[str]:
    return [] if variant == "base" else [f"--{part}" for part in variant.split("+")]


def vs_nanogpt(args) -> None:
    nanogpt = Path(args.nanogpt).resolve()
    if not (nanogpt / "data" / "shakespeare_char" / "train.bin").is_file():
        raise SystemExit(f"{nanogpt}: prepare nanoGPT's data first (python data/shakespeare_char/prepare.py)")
    texts = held_out_texts()
    overhead = args.overhead  # our seconds outside max_seconds: start-up, preparing, the final evaluation
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            load_before = os.getloadavg()
            nano = run_nanogpt(nanogpt, Path(tmp, f"nano{i}"), args.threads)
            nano["held_out"] = score_nanogpt(nanogpt, Path(tmp, f"nano{i}"), texts)
            budget = nano["wall_s"] - overhead
            # The time governs: no step limit, and the schedule follows the seconds.
            ours = run_ours(Path(tmp, f"ours{i}"), [f"--max_seconds={budget:.1f}", "--max_iters=1000000",
                                                    "--lr_decay_iters=0", *args.extra], args.threads)
            ours["max_seconds"] = budget
            ours["held_out"] = score_ours(Path(tmp, f"ours{i}"), texts)
            overhead = max(overhead, ours["wall_s"] - budget + 1.0)
            rounds.append({"nanogpt": nano, "ours": ours, "load_before": load_before, "load": os.getloadavg()})
            print(f"round {i + 1}: nanoGPT {nano['wall_s']:.1f} s, val {nano['held_out']['val']:.4f} test "
                  f"{nano['held_out']['test']:.4f}; ours {ours['wall_s']:.1f} s ({ours['steps']} steps), val "
                  f"{ours['held_out']['val']:.4f} test {ours['held_out']['test']:.4f}; load "
                  f"{load_before[0]:.1f} -> {rounds[-1]['load'][0]:.1f}", flush=True)
    path = harness.write("quality_vs_nanogpt", {"nanogpt_args": NANOGPT_ARGS, "config": CONFIG, "extra": args.extra,
                                                 "threads": args.threads, "rounds": rounds})
    rows = []
    for name in ("nanogpt", "ours"):
        runs = [r[name] for r in rounds]
        med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        held = {k: statistics.median(r["held_out"][k] for r in runs) for k in ("val", "val_bpb", "test", "test_bpb")}
        rows.append([name, f"{med('wall_s'):.1f}", f"{med('tok_per_s'):,.0f}", f"{held['val']:.4f}",
                     f"{held['val_bpb']:.3f}", f"{held['test']:.4f}", f"{held['test_bpb']:.3f}",
                     f"{med('logged_val'):.4f}", " ".join(f"{r['held_out']['val']:.3f}" for r in runs)])
    print(harness.table(["run", "wall s", "tok/s", "val loss", "val bits/byte", "test loss", "test bits/byte",
                         "logged val", "val, each run"], rows))
    print(f"wrote {path}")


def ablate(args) -> None:
    from concurrent.futures import ThreadPoolExecutor

    texts = held_out_texts()
    variants = args.variants.split(",") if args.variants else ["base", *ABLATIONS]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    # With --steps, every variant takes the same steps (the schedule fitted to them): seeded runs whose loss does
    # not depend on the machine's load, so they may run side by side (--workers); tok/s then is only indicative.
    budget = ([f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}"] if args.steps else
              [f"--max_seconds={args.budget}", "--max_iters=1000000", "--lr_decay_iters=0"])

    def one(job: tuple[int, str]) -> tuple[str, dict]:
        i, v = job
        out = Path(tmp, f"{v}-{i}".replace("=", "_").replace("+", "_"))
        load_before = os.getloadavg()
        run = run_ours(out, [*budget, *flags(v), *args.extra], args.threads)
        run["held_out"] = score_ours(out, texts)
        run["load_before"], run["load"] = load_before, os.getloadavg()
        shutil.rmtree(out)
        print(f"round {i + 1} {v}: val {run['held_out']['val']:.4f}, test {run['held_out']['test']:.4f}, "
              f"{run['steps']} steps, {run['tok_per_s']:,.0f} tok/s, load {load_before[0]:.1f} -> "
              f"{run['load'][0]:.1f}", flush=True)
        return v, run

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(i, v) for i in range(args.repeats) for v in variants]
        with ThreadPoolExecutor(max(1, args.workers)) as pool:
            for v, run in pool.map(one, jobs):
                results[v].append(run)
    path = harness.write("quality_ablation", {"config": CONFIG, "budget": budget, "extra": args.extra,
                                               "threads": args.threads, "workers": args.workers, "results": results})
    base = statistics.median(r["held_out"]["val"] for r in results[variants[0]])
    base_rate = statistics.median(r["tok_per_s"] for r in results[variants[0]])
    rows = []
    for v, runs in results.items():
        held = statistics.median(r["held_out"]["val"] for r in runs)
        rate = statistics.median(r["tok_per_s"] for r in runs)
        rows.append([v, f"{held:.4f}", f"{held - base:+.4f}", f"{held / math.log(2):.3f}", f"{rate:,.0f}",
                     f"{rate / base_rate:.2f}", f"{statistics.median(r['steps'] for r in runs):.0f}",
                     " ".join(f"{r['held_out']['val']:.3f}" for r in runs)])
    print(harness.table(["variant", "val loss", "vs first", "val bits/byte", "tok/s", "ratio", "steps",
                         "val, each run"], rows))
    print("(test, the other half, is in the JSON only: it is not for choosing)")
    print(f"wrote {path}")


def newton_schulz(args) -> None:
    """Muon's orthogonalisation on the recipe's matrix shapes: gpt/optim.py:orthogonalize in fp32 against the
    bf16 iteration of torch.optim.Muon (torch >= 2.9), alternating, 5 iterations each as both use."""
    from gpt.optim import orthogonalize

    try:
        from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns  # private: a bench, not the code
    except ImportError:
        raise SystemExit(f"torch {torch.__version__} has no torch.optim.Muon to compare with") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    C = 128
    rows, record = [], {}
    for shape in [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]:  # c_attn, attn c_proj, mlp c_fc, mlp c_proj
        g = torch.randn(*shape)
        ours = lambda: orthogonalize(g, 5)  # noqa: E731
        theirs = lambda: torch_ns(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)  # noqa: E731
        times = {"fp32": [], "bf16": []}
        for _ in range(args.repeats):
            for name, fn in (("fp32", ours), ("bf16", theirs)):
                fn()
                start = time.perf_counter()
                for _ in range(20):
                    fn()
                times[name].append((time.perf_counter() - start) / 20 * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        record[str(shape)] = times
        rows.append([str(shape), f"{med['fp32']:.2f}", f"{med['bf16']:.2f}", f"{med['bf16'] / med['fp32']:.1f}x"])
    path = harness.write("quality_newton_schulz", {"threads": args.threads, "ms": record, "load": os.getloadavg()})
    print(harness.table(["weight shape", "fp32 ms (ours)", "bf16 ms (torch)", "bf16 / fp32"], rows))
    print(f"wrote {path}")


def norms(args) -> None:
    """torch's RMSNorm against its LayerNorm (no bias) on the recipe's activations [40, 64, 128], forward and
    backward, alternating."""
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(40, 64, 128, requires_grad=True)
    modules = {"layernorm": torch.nn.LayerNorm(128, bias=False), "rmsnorm": torch.nn.RMSNorm(128, eps=1e-5)}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(args.repeats):
        for name, module in modules.items():
            module(x).sum().backward()
            start = time.perf_counter()
            for _ in range(50):
                module(x).sum().backward()
            times[name].append((time.perf_counter() - start) / 50 * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    path = harness.write("quality_norms", {"threads": args.threads, "ms": times, "load": os.getloadavg()})
    print(harness.table(["norm", "ms median (min-max)", "vs layernorm"],
                        [[k, f"{med[k]:.3f} ({min(v):.3f}-{max(v):.3f})", f"{med[k] / med['layernorm']:.2f}x"]
                         for k, v in times.items()]))
    print(f"wrote {path}")


def score_runs(args) -> None:
    """Score finished runs (ours and/or nanoGPT's) on the val and test halves, as the other modes do."""
    texts, rows = held_out_texts(), []
    if args.ours:
        rows.append(["ours " + args.ours, score_ours(Path(args.ours), texts)])
    if args.nanogpt_out:
        rows.append(["nanoGPT " + args.nanogpt_out, score_nanogpt(Path(args.nanogpt).resolve(), Path(args.nanogpt_out),
                                                                 texts)])
    path = harness.write("quality_score", {"runs": {name: r for name, r in rows}})
    print(harness.table(["run", "val loss", "val bits/byte", "test loss", "test bits/byte"],
                        [[name, f"{r['val']:.4f}", f"{r['val_bpb']:.3f}", f"{r['test']:.4f}", f"{r['test_bpb']:.3f}"]
                         for name, r in rows]))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("nanogpt", help="ours against nanoGPT's CPU recipe in the same wall-clock time")
    p.add_argument("--nanogpt", required=True, help="a copy of karpathy/nanoGPT with data/shakespeare_char prepared")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--overhead", type=float, default=8.0, help="first guess of our seconds outside max_seconds")
    p.set_defaults(run=vs_nanogpt)
    p = sub.add_parser("ablate", help="each option switched, at the same max_seconds")
    p.add_argument("--budget", type=float, default=75.0, help="max_seconds of every run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="give every variant these steps instead of --budget seconds")
    p.add_argument("--workers", type=int, default=1, help="with --steps: variants trained side by side")
    p.add_argument("--variants", default="", help="comma-separated; 'a=1+b=2' changes two settings; 'base' = none")
    p.set_defaults(run=ablate)
    p = sub.add_parser("score", help="score finished runs on the val and test halves")
    p.add_argument("--ours", default="", help="an out_dir of train.py")
    p.add_argument("--nanogpt", default="/tmp/nanogpt-run", help="nanoGPT's repository (for its model.py, meta.pkl)")
    p.add_argument("--nanogpt_out", default="", help="an out_dir of nanoGPT's train.py")
    p.set_defaults(run=score_runs)
    p = sub.add_parser("norms", help="RMSNorm against LayerNorm on the CPU")
    p.add_argument("--repeats", type=int, default=7)
    p.set_defaults(run=norms)
    p = sub.add_parser("newton_schulz", help="Muon's orthogonalisation in fp32 (ours) against bf16 (torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(run=newton_schulz)
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every run (0 = torch's default)")
    args, extra = parser.parse_known_args()
    args.extra = extra
    args.run(args)


if __name__ == "__main__":
    main()
