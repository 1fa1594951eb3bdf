"""Benchmark: where a batched decode step's time goes, at GPT-2 124M's shape on the CPU.

    .venv/bin/python bench/profile_decode.py --threads 1                    # batch 1 and 8, float32 and int8
    .venv/bin/python bench/profile_decode.py --threads 1 --batches 8 --weights int8 --top_p 1.0 --steps 8

A step is what the server's engine does for every token (gpt/serve/engine.py): the Decoder's forward pass over
each row's newest token (gpt/decoding.py), sampling every row (temperature 0.8 as bench/serve.py asks, and with
a nucleus, top_p 0.95, at the largest batch; one seeded stream per row, as eight clients' requests have), and
turning each row's token into text (`TextStream`). The rows start
from prompts of different lengths, as requests that arrived at different times do.

The step's wall time is split into shares (ratios hold on a loaded machine; absolute times do not):
  body matmuls    the 12 blocks' Linear layers (attention q/k/v and projection, MLP), float or int8
  head            the LM head: one 50,257-wide matmul, the largest single weight
  attention       scaled_dot_product_attention over the cached keys and values
  cache           storing the new keys/values in the cache and building each row's mask
  other ops       layer norms, GELU, residual adds, embeddings, ...
  sampling        temperature, top-p, the random draws and the pick (gpt/sampling.py)
  text            detokenising and stop-string checks, per row
  python          what no operation accounts for: the interpreter and the dispatcher between operations
Writes bench/results/profile_decode.json.
"""

from __future__ import annotations

import argparse
import time

import harness
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from gpt.decoding import Decoder, TextStream
from gpt.inference import prepare_for_inference
from gpt.model import GPT, GPTConfig
from gpt.sampling import sample, sample_generators
from gpt.tokenizer_files import load_gpt2

SHAPE = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
SHARES = ("body matmuls", "head", "attention", "cache", "other ops", "sampling", "text", "python")
MATMULS = ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear", "quantized::linear_dynamic",
           "aten::_weight_int8pack_mm", "aten::bmm")
CACHE = ("aten::scatter_", "aten::arange", "aten::le", "aten::expand", "aten::unsqueeze", "aten::slice",
         "aten::add_", "aten::select", "aten::index_put_", "aten::copy_")


def category(event) -> str | None:
    """The share an operation belongs to, from its name, the shapes of its inputs and the scope it ran in."""
    scopes = []
    parent = event.cpu_parent
    while parent is not None:
        scopes.append(parent.name)
        parent = parent.cpu_parent
    if "sampling" in scopes:
        return "sampling"
    if "text" in scopes:
        return "text"
    if any(name.startswith(("aten::scaled_dot_product", "aten::_scaled_dot_product"))
           for name in scopes + [event.name]):
        return "attention"
    if event.name in MATMULS or any(s in MATMULS for s in scopes):
        wide = any(SHAPE.vocab_size in shape for shape in event.input_shapes if isinstance(shape, list))
        return "head" if wide or "head" in scopes else "body matmuls"
    if "cache" in scopes or event.name in CACHE:
        return "cache"
    return "other ops"


def build(weights: str) -> GPT:
    torch.manual_seed(0)
    model = prepare_for_inference(GPT(SHAPE).eval(), weights)
    label_head(model)
    return model


def label_head(model) -> None:
    """Run the LM head inside a profiler scope named "head" (an int8 head's shapes do not show its width)."""
    scope = {}
    model.lm_head.register_forward_pre_hook(lambda module, args: scope.update(head=record_function("head").__enter__()))
    model.lm_head.register_forward_hook(lambda module, args, out: scope.pop("head").__exit__(None, None, None))


def run_steps(model, batch: int, steps: int, top_p: float, profiler=None) -> float:
    """`steps` engine-like steps over `batch` rows; returns seconds per step (after one warm-up step)."""
    tokenizer = load_gpt2()  # GPT-2's, found offline (GPT2_TOKENIZER_DIR)
    decoder = Decoder(model, None, vocab_size=SHAPE.vocab_size, max_rows=batch)
    for b in range(batch):
        decoder.add(list(range(1, 4 + 5 * b)))  # prompts of 3..38 tokens: rows of different lengths
    generators = sample_generators(1234, batch)
    texts = [TextStream(tokenizer, ["\n\n"]) for _ in range(batch)]

    def step() -> None:
        logits = decoder.next_logits()
        with record_function("sampling"):
            tokens = sample(logits, 0.8, 0, top_p, generators)
        decoder.append(tokens)
        with record_function("text"):
            for text, token in zip(texts, tokens.tolist()):
                text.push(token)

    step()  # the prefill of every row
    if profiler is not None:
        profiler.start()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    if profiler is not None:
        profiler.stop()
    return seconds


def breakdown(model, batch: int, steps: int, top_p: float) -> dict:
    """Shares of a step's wall time, from one profiled run (the profiler's own cost is left out of the total
    by timing an unprofiled run of the same steps too)."""
    plain = run_steps(model, batch, steps, top_p)
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    profiled = run_steps(model, batch, steps, top_p, prof)
    seconds = {name: 0.0 for name in SHARES}
    for event in prof.events():
        share = category(event)
        if share is not None:
            seconds[share] += event.self_cpu_time_total / 1e6 / steps
    accounted = sum(seconds.values())
    # The ops' self times are measured under the profiler, whose overhead inflates the gaps between them, not
    # the ops: what the plain run's step has beyond the ops is the Python between them.
    seconds["python"] = max(0.0, plain - accounted)
    total = sum(seconds.values())
    return {"step_ms": plain * 1e3, "profiled_step_ms": profiled * 1e3, "tokens_per_s": batch / plain,
            "shares": {name: seconds[name] / total for name in SHARES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8", help="rows per step, comma-separated")
    parser.add_argument("--weights", default="float32,int8", help="weight formats, comma-separated")
    parser.add_argument("--steps", type=int, default=16, help="profiled steps per case")
    parser.add_argument("--top_p", default="1.0,0.95", help="comma-separated: 1.0 (off) as bench/serve.py asks, "
                                                          "0.95 adds a nucleus (at the largest batch only)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--name", default="profile_decode", help="results file: bench/results/NAME.json")
    parser.add_argument("--label", default="", help="what code was profiled (kept in the results file)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results, rows = {}, []
    batches = [int(b) for b in args.batches.split(",")]
    top_ps = [float(p) for p in args.top_p.split(",")]
    for weights in args.weights.split(","):
        model = build(weights)
        for top_p in top_ps:
            for batch in batches if top_p == top_ps[0] else batches[-1:]:
                r = breakdown(model, batch, args.steps, top_p)
                results[f"{weights} batch {batch}" + (f" top_p {top_p}" if top_p < 1 else "")] = r
                rows.append([weights, batch, top_p, r["step_ms"], r["tokens_per_s"]]
                            + [f"{r['shares'][name]:.0%}" for name in SHARES])
    path = harness.write(args.name, {"label": args.label, "shape": "gpt2 124M (12 layers, 768 wide, vocab 50257)",
                                            "steps": args.steps, "results": results})
    print(f"wrote {path}")
    print(f"an engine step (forward, sampling at temperature 0.8, text), {torch.get_num_threads()} thread(s); "
          "shares of the step's wall time")
    print(harness.table(["weights", "batch", "top_p", "step ms", "tok/s", *SHARES], rows))


if __name__ == "__main__":
    main()
