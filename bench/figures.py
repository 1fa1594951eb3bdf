"""The documentation's measured figures, checked against (and rewritten from) the JSON results that measured them.

    python bench/figures.py            list every figure of the documentation that differs from its results file
                                       (exit status 1 if any); tests/test_figures.py runs the same check
    python bench/figures.py --write    rewrite those figures from the results files

A figure in README.md, docs/*.md or BENCHMARKS.md is marked where it stands, in one of two ways (the markers are
HTML comments: a rendered page shows only the figure):

- one value in the text: `<!-- fig FILE:PATH FORMAT -->61.4%<!-- /fig -->`. FILE is bench/results/FILE.json,
  PATH a dotted path into it (keys, or list indices), FORMAT a Python format spec (`.1%`, `.3f`, `,.0f`; none for
  text). The value between the markers may be in bold (`**61.4%**`).
- a block (a table, a code block of sample output), rendered whole from its results file by a function of this
  file: `<!-- figures NAME -->` ... `<!-- /figures -->`, NAME a key of BLOCKS.

A results file is written by the command that measures it, through bench/harness.py's write(): one JSON object
whose "machine" says what ran it (the command, the date, the commit, the CPU, the load), beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

INLINE = re.compile(r"(?<!`)<!-- fig (?P<file>[\w.-]+):(?P<path>[\w.-]+)(?: (?P<format>\S+))? -->(?P<value>.*?)<!-- /fig -->")
BLOCK = re.compile(r"(?P<open><!-- figures (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(?P<close><!-- /figures -->)", re.S)


def documentation() -> list[Path]:
    """Every page whose figures are checked: the front page, the chapters and BENCHMARKS.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "BENCHMARKS.md"]


def load(name: str, cache: dict[str, Any]) -> Any:
    if name not in cache:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            raise KeyError(f"bench/results/{name}.json does not exist")
        cache[name] = json.loads(path.read_text(encoding="utf-8"))
    return cache[name]


def lookup(data: Any, path: str) -> Any:
    for key in path.split("."):
        try:
            data = data[int(key)] if isinstance(data, list) else data[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KeyError(f"no {key!r} in {path}") from None
    return data


def render_inline(file: str, path: str, spec: str | None, cache: dict[str, Any]) -> str:
    return format(lookup(load(file, cache), path), spec or "")


# ---------------------------------------------------------------------------------------------------
# Blocks: each renders a whole table or code block from its results file.


def _pct(x: float) -> str:
    return f"{x:.1%}"


GROUP_LABELS = {"new_inputs": "new inputs", "new_phrasings": "new phrasings", "held_out_tasks": "held-out tasks"}


def _groups(report: dict) -> list[str]:
    g = report["groups"]
    return [_pct(g[name]["exact_match"]) if name in g else "" for name in GROUP_LABELS]  # (--limit: some)


def sft_table(r: dict) -> str:
    m = r["models"]
    rows = [("`out/default`, untuned", "base"), ("tuned: the recipe (loss on the answers)", "sft"),
            ("tuned, loss on every token (`--loss_on=all`)", "sft_all"),
            ("tuned from scratch instead of `out/default` (`--init_from=scratch`)", "sft_scratch"),
            ("the recipe for 2,500 steps (`--max_iters=2500 --lr_decay_iters=2500`)", "sft_long")]
    lines = ["| model | new inputs | new phrasings | held-out tasks | answers ended with `<|end|>` |",
             "| --- | --- | --- | --- | --- |"]
    for label, key in rows:
        if key in m:
            test = m[key]["test"]
            newline = " (a newline)" if test.get("prompting", "").startswith("plain text") else ""
            lines.append(f"| {label} | " + " | ".join(_groups(test)) + f" | {_pct(test['ended'])}{newline} |")
    return "\n".join(lines) + "\n"


def dpo_table(r: dict) -> str:
    m = r["models"]
    rows = [("`out/sft_tasks`, before (its own reference: 50% by definition)", "sft"), ("plain DPO (`--dpo_nll=0 --learning_rate=1e-4 --min_lr=1e-5`)",
                                                 "dpo_plain"), ("the recipe (the default `--dpo_nll=1`, lr 3e-4)", "dpo")]
    lines = ["| model | preference accuracy (held-out) | model prefers chosen | chosen log p | new inputs | new "
             "phrasings | held-out tasks |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, key in rows:
        pairs, test = m[key]["pairs"], m[key]["test"]
        lines.append(f"| {label} | {_pct(pairs['accuracy'])} | {_pct(pairs['prefers_chosen'])} | "
                     f"{pairs['chosen_logp']:.2f} | " + " | ".join(_groups(test)) + " |")
    return "\n".join(lines) + "\n"


def dpo_keeps(r: dict) -> str:
    """Whether preference tuning kept exact match: the instruction-tuned model, DPO with the defaults and plain DPO,
    on the whole test split (the change in points against the model before), and held-out preference accuracy,
    overall and on the tasks the model before could do (bench/ladder.py on the suite, bench/dpo.py unseen)."""
    m = r["models"]
    before = m["sft"]["test"]
    rows = [("before: instruction-tuned", "sft"), ("DPO, the defaults (`dpo_nll` 1)", "dpo"),
            ("plain DPO (`--dpo_nll=0`" + (", lr 1e-4)" if "learning_rate=1e-4" in m["dpo_plain"]["command"] else ")"),
             "dpo_plain")]
    lines = ["| model | exact match, all | change | new inputs | new phrasings | held-out tasks | preference accuracy "
             "(held-out) | on the tasks it can do |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, key in rows:
        test, pairs, told = m[key]["test"], m[key].get("pairs"), m[key].get("told_apart")
        groups = [_pct(test["groups"][g]["exact_match"]) if g in test["groups"] else "" for g in GROUP_LABELS]
        change = "" if key == "sft" else _points(test["exact_match"] - before["exact_match"])
        accuracy = _pct(pairs["accuracy"]) if pairs and "accuracy" in pairs else ""
        can = f"{_pct(told['accuracy'])} ({len(told['tasks'])} tasks)" if told and told["n"] else ""
        lines.append(f"| {label} | {_pct(test['exact_match'])} | {change} | " + " | ".join(groups)
                     + f" | {accuracy} | {can} |")
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    """A code block of what a command printed (spaces at the ends of lines dropped, as editors drop them)."""
    return "```\n" + "\n".join(line.rstrip() for line in text.rstrip("\n").splitlines()) + "\n```\n"


def base_sample(r: dict) -> str:
    return _code(r["samples"]["base_stone"])


def sft_answers(r: dict) -> str:
    answers = r["answers"]
    width = max(len(p) for p in answers["prompts"]) + 2
    held_out = set(answers.get("held_out_prompts", []))
    lines = [f"{p:<{width}}-> {_short(a, 40)}" + ("   (a task it was never trained on)" if p in held_out else "")
             for p, a in zip(answers["prompts"], answers["sft"])]
    return _code("\n".join(lines))


def dpo_answers(r: dict) -> str:
    answers = r["answers"]
    columns = [("prompt", answers["prompts"]), ("before (out/sft_tasks)", answers["sft"]),
               ("plain DPO", answers["dpo_plain"]), ("the recipe", answers["dpo"])]
    cells = [list(columns[0][1])] + [[_short(c) for c in column] for _, column in columns[1:]]
    widths = [max(len(h), *(len(c) for c in col)) + 2 for (h, _), col in zip(columns, cells)]
    lines = ["".join(h.ljust(w) for (h, _), w in zip(columns, widths)).rstrip()]
    for i in range(len(answers["prompts"])):
        lines.append("".join(col[i].ljust(w) for col, w in zip(cells, widths)).rstrip())
    return _code("\n".join(lines))


def _short(answer: str, limit: int = 24) -> str:
    """An answer on one line of a table: newlines shown as \\n, long ones cut with '...'."""
    if not answer:
        return "(nothing)"  # the model ended its turn at once
    answer = answer.replace("\n", "\\n")
    return answer if len(answer) <= limit else answer[: limit - 3] + "..."


def ladder_table(r: dict) -> str:
    """BENCHMARKS.md: every model of the ladder, its run and its scores in one table."""
    lines = ["| model | command (as documented) | steps | train s | val loss | new inputs | "
             "new phrasings | held-out tasks | ended | pairs: accuracy | pairs: prefers chosen |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, m in r["models"].items():
        run, test, pairs = m.get("run", {}), m["test"], m.get("pairs")
        command = f"`{m['command']}`" + (" ([the default run](#the-default-run))" if key == "base" else "")
        lines.append(f"| {key} | {command} | {run.get('steps', '')} | "
                     + (f"{run['train_seconds']:,.0f}" if "train_seconds" in run else "") + " | "
                     + (f"{run['val_loss']:.3f}" if "val_loss" in run else "") + " | "
                     + " | ".join(_groups(test)) + f" | {_pct(test['ended'])} | "
                     + (f"{_pct(pairs['accuracy'])} | {_pct(pairs['prefers_chosen'])}" if pairs else " | ") + " |")
    return "\n".join(lines) + "\n"


def _points(delta: float) -> str:
    return f"{100 * delta:+.1f} pts"


def _changed(before: dict | None, after: dict) -> str:
    """What a step changed on the test split: each group's exact match, and the tasks of new inputs that moved
    most either way."""
    if before is None:
        return "the starting point: continues text, answers nothing"
    groups = before["groups"]
    text = ", ".join(f"{GROUP_LABELS.get(name, name)} {_points(after['groups'][name]['exact_match'] - g['exact_match'])}"
                     for name, g in groups.items() if name in after["groups"])
    b, a = groups["new_inputs"]["tasks"], after["groups"]["new_inputs"]["tasks"]
    delta = {t: a[t]["exact_match"] - b[t]["exact_match"] for t in a if t in b}
    if delta and max(delta.values()) > 0:
        up = max(delta, key=delta.get)
        text += f"; most up: {up} {_points(delta[up])}"
    if delta and min(delta.values()) < 0:
        down = min(delta, key=delta.get)
        text += f"; most down: {down} {_points(delta[down])}"
    return text


def steps_table(r: dict) -> str:
    """The ladder step by step (README.md, docs/assistant.md, the report of bench/ladder.py --report): each step's
    model, its run's time and tokens, exact match per group of the test split, and what it changed."""
    lines = ["| step | command | steps | training s | tokens | new inputs | new phrasings | held-out tasks | "
             "what it changed |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    before, tuning_seconds, tuning_tokens = None, 0.0, 0
    for step in r["steps"]:
        m = r["models"].get(step["model"])
        if m is None:
            lines.append(f"| {step['step']} | | | | | | | | {step.get('note') or 'not run'} |")
            continue
        run = m.get("run", {})
        if step["model"] != "base":
            tuning_seconds += run.get("train_seconds", 0)
            tuning_tokens += run.get("tokens") or 0
        lines.append(f"| {step['step']} | `{m['command']}` | {run.get('steps', '')} | "
                     + (f"{run['train_seconds']:,.0f}" if "train_seconds" in run else "") + " | "
                     + (f"{run['tokens']:,}" if run.get("tokens") else "") + " | "
                     + " | ".join(_groups(m["test"])) + f" | {_changed(before, m['test'])} |")
        before = m["test"]
    lines.append(f"| the tuning steps together | | | {tuning_seconds:,.0f} | {tuning_tokens:,} | | | | |")
    return "\n".join(lines) + "\n"


def steps_answers(r: dict) -> str:
    """The documentation's prompts answered (greedily) by each tuned step's model: a Markdown table."""
    answers = r["answers"]
    names = [s["model"] for s in r["steps"] if s["model"] in answers]
    held_out = set(answers.get("held_out_prompts", []))
    lines = ["| prompt | " + " | ".join(s["step"] for s in r["steps"] if s["model"] in answers) + " |",
             "| --- |" + " --- |" * len(names)]
    for i, prompt in enumerate(answers["prompts"]):
        cells = [f"`{_short(answers[n][i], 30)}`".replace("|", "\\|") for n in names]  # a | would end the cell
        lines.append(f"| {prompt}{' (a held-out task)' if prompt in held_out else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ladder_report(r: dict) -> str:
    """The Markdown report of `python bench/ladder.py --report FILE`: the steps, their answers, every run."""
    machine = r.get("machine", {})
    threads = f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}" if r.get("threads") else "torch's threads"
    load = r.get("load_average") or {}
    load = (f"load average {load['min']:.1f} to {load['max']:.1f} while it ran" if load.get("min") is not None else
            f"nothing trained or scored: load average {machine.get('load_average', ['?'])[0]} when it was written")
    parts = [
        "# The assistant ladder, step by step\n",
        f"Written by `{machine.get('command', 'python bench/ladder.py')}` on {machine.get('date', '?')} "
        f"(commit {machine.get('commit', '?')}, {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{threads}; {load}). Exact match is on "
        f"`{r['suite']}/test.jsonl`: new inputs (the trained tasks and phrasings), new phrasings (each task's "
        "last phrasing, never trained on) and held-out tasks (never trained on). Exact match at a fixed number of "
        "steps does not depend on the machine's load; the times do.\n",
        "## Each step\n", steps_table(r),
        "Tokens are as each run logs them (batch_size x block_size per step; a DPO step's batch is that many "
        "pairs).\n",
        "## Answers\n", "Greedy answers (`python sample.py --ckpt MODEL --chat --temperature 0 --prompt ...`):\n",
        steps_answers(r),
        "## Every run\n", "The steps' variations too (`python bench/ladder.py` trains them all):\n", ladder_table(r),
    ]
    return "\n".join(parts)


def default_sample(r: dict) -> str:
    return _code(r["samples"]["def"])


def _session(r: dict, names: list[str]) -> str:
    """Commands and what they printed, as in a terminal."""
    return _code("\n\n".join(f"$ {r['sample_commands'][n]}\n{r['samples'][n].rstrip()}" for n in names))


def show_probs(r: dict) -> str:
    return _session(r, ["show_probs"])


def show_probs_both(r: dict) -> str:
    return _session(r, ["show_probs", "show_probs_t2"])


def greedy_sample(r: dict) -> str:
    return _code(r["samples"]["greedy"])


# NAME: (results file, renderer)
def threads_table(r: dict) -> str:
    """BENCHMARKS.md's table of bench/threads.py: each workload and way, idle and beside a competing job."""
    rows = ["| work | way | idle wall / CPU s | busy wall / CPU s | speed-up over torch defaults, idle / busy | "
            "voluntary context switches (idle) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, cases in r["summary"].items():
        for case, cell in cases.items():
            idle, busy = cell["idle"], cell["busy"]
            rows.append(f"| {name} | {case} | {idle['wall_s']:.1f} / {idle['cpu_s']:.1f} | {busy['wall_s']:.1f} / "
                        f"{busy['cpu_s']:.1f} | {idle['speedup_over_torch_defaults']:.2f}x / "
                        f"{busy['speedup_over_torch_defaults']:.2f}x | {idle['voluntary_switches']:,.0f} |")
    return "\n".join(rows) + "\n"


PROFILE_SHARES = ("body matmuls", "head", "attention", "cache", "other ops", "sampling", "text", "python")


def profile_table(r: dict) -> str:
    """A bench/profile_decode.py run: each case's step time and the shares of it."""
    rows = ["| case | step ms | tok/s | " + " | ".join(PROFILE_SHARES) + " |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in PROFILE_SHARES) + " |"]
    for case, c in r["results"].items():
        rows.append(f"| {case} | {c['step_ms']:.1f} | {c['tokens_per_s']:.1f} | "
                    + " | ".join(f"{c['shares'][name]:.0%}" for name in PROFILE_SHARES) + " |")
    return "\n".join(rows) + "\n"


def roofline_table(r: dict) -> str:
    """bench/roofline.py: per weight format and batch, the bound, the measured rate and the share reached."""
    rows = ["| weights | batch | MB read per token | GFLOP per token | bound tok/s (by) | measured tok/s median "
            "(min-max) | share of the bound |", "| --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for case, c in r["results"].items():
        weights, batch = case.rsplit("_batch", 1)
        t = c["tok_per_s"]
        rows.append(f"| {weights} | {batch} | {c['bytes_per_token'] / 1e6:.1f} | {c['flops_per_token'] / 1e9:.2f} | "
                    f"{c['bound_tok_per_s']:.1f} ({c['bound_by']}) | {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | "
                    f"{c['share_of_bound']:.0%} |")
    return "\n".join(rows) + "\n"


def scaling_optima(r: dict) -> str:
    """The scaling lab's IsoFLOP minima (bench/scaling.py lab), one row per budget, and the laws beside the
    published ones."""
    report = r["report"]
    rows = ["| budget C (FLOPs) | best depth run | N_opt (parabola) | D_opt (tokens) | tokens per parameter | val loss at N_opt |",
            "| --- | --- | --- | --- | --- | --- |"]
    for o in report["optima"]:
        at = [x for x in report["runs"] if x["budget"] == o["budget"]]
        best = min(at, key=lambda x: x["val_loss"])
        edge = "" if o["bracketed"] else " (at the edge)"
        rows.append(f"| {o['budget']:.2g} | {best['depth']} ({best['val_loss']:.4f}) | {o['params']:,.0f}{edge} | "
                    f"{o['tokens']:,.0f} | {o['tokens_per_param']:.1f} | {o['loss']:.4f} |")
    laws = report["laws"]
    rows += ["", "| law | measured here | Kaplan et al. 2020 | Chinchilla 2022 |", "| --- | --- | --- | --- |",
             f"| L_opt ~ C^a | a = {laws['loss']['exponent']:.3f} | -0.050 | - |",
             f"| N_opt ~ C^b | b = {laws['n_opt']['exponent']:.2f} | 0.73 | 0.50 |",
             f"| D_opt ~ C^c | c = {laws['d_opt']['exponent']:.2f} | 0.27 | 0.50 |",
             f"| tokens per parameter at the optimum | {report['tokens_per_param']:.1f} | - | ~20 |"]
    return "\n".join(rows) + "\n"


def scaling_depth(r: dict) -> str:
    """bench/scaling.py depth: --depth alone against the best of a small sweep of hand settings, same FLOPs."""
    rows = ["| depth | budget (FLOPs) | `--depth` alone | best hand setting | its val loss | gap |",
            "| --- | --- | --- | --- | --- | --- |"]
    for d in r["depths"].values():
        rows.append(f"| {d['depth']} | {d['budget']:.2g} | {d['rule_loss']:.4f} | {d['best']} | {d['best_loss']:.4f} | "
                    f"{d['gap_pct']:+.2f}% |")
    return "\n".join(rows) + "\n"


def lora_table(r: dict) -> str:
    """BENCHMARKS.md's table of bench/lora.py sweep: full fine-tuning and each LoRA run, exact match per test group."""
    rows = ["| run | trained | steps | val loss | new inputs | new phrasings | held-out tasks | all |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, run in r["results"].items():
        groups = run["groups"]
        rows.append(f"| {name} | {run['trained_pct']:.2f}% | {run['steps']} | {run['val_loss']:.3f} | "
                    f"{_pct(groups['new_inputs'])} | {_pct(groups['new_phrasings'])} | "
                    f"{_pct(groups['held_out_tasks'])} | {_pct(run['exact_match'])} |")
    return "\n".join(rows) + "\n"


def lora_parts_table(r: dict) -> str:
    """BENCHMARKS.md's table of bench/lora.py parts: full fine-tuning's model with parts of its change taken back."""
    rows = ["| full fine-tuning's model, with | new inputs | new phrasings | held-out tasks | all |",
            "| --- | --- | --- | --- | --- |"]
    for name, run in r["results"].items():
        groups = run["groups"]
        rows.append(f"| {name} | {_pct(groups['new_inputs'])} | {_pct(groups['new_phrasings'])} | "
                    f"{_pct(groups['held_out_tasks'])} | {_pct(run['exact_match'])} |")
    return "\n".join(rows) + "\n"


BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "scaling_lab.optima": ("scaling_lab", scaling_optima),
    "scaling_depth.table": ("scaling_depth", scaling_depth),
    "lora.table": ("lora", lora_table),
    "lora_parts.table": ("lora_parts", lora_parts_table),
    "threads.table": ("threads", threads_table),
    "profile_decode_before.table": ("profile_decode_before", profile_table),
    "profile_decode.table": ("profile_decode", profile_table),
    "roofline.table": ("roofline", roofline_table),
    "assistant.sft_table": ("assistant", sft_table),
    "default.stone": ("default", base_sample),
    "assistant.sft_answers": ("assistant", sft_answers),
    "assistant.dpo_table": ("assistant", dpo_table),
    "assistant.dpo_answers": ("assistant", dpo_answers),
    "assistant.ladder_table": ("assistant", ladder_table),
    "assistant.steps": ("assistant", steps_table),
    "assistant.dpo_keeps": ("assistant", dpo_keeps),
    "dpo_unseen.dpo_keeps": ("dpo_unseen", dpo_keeps),
    "default.sample": ("default", default_sample),
    "default.show_probs": ("default", show_probs),
    "default.show_probs_both": ("default", show_probs_both),
    "default.greedy": ("default", greedy_sample),
}


# ---------------------------------------------------------------------------------------------------
# Checking and rewriting


def _value(text: str) -> str:
    """The figure between an inline marker pair, without the bold around it."""
    return text[2:-2] if text.startswith("**") and text.endswith("**") and len(text) > 4 else text


def render_page(text: str, cache: dict[str, Any], used: set[str] | None = None) -> tuple[str, list[tuple[bool, str]]]:
    """The page with every marked figure rendered from its results, and (stale, what) for each figure that
    differed (stale) or could not be rendered (a results file, a path or a block that does not exist)."""
    problems: list[tuple[bool, str]] = []

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def block(m: re.Match) -> str:
        name = m["name"]
        if used is not None:
            used.add(name)
        if name not in BLOCKS:
            problems.append((False, f"line {line_of(m.start())}: no block named {name!r} in bench/figures.py"))
            return m[0]
        file, renderer = BLOCKS[name]
        try:
            body = renderer(load(file, cache))
        except KeyError as e:
            problems.append((False, f"line {line_of(m.start())}: block {name}: {e.args[0]}"))
            return m[0]
        if body != m["body"]:
            problems.append((True, f"line {line_of(m.start())}: block {name} differs from bench/results/{file}.json"))
        return m["open"] + body + m["close"]

    def inline(m: re.Match) -> str:
        try:
            value = render_inline(m["file"], m["path"], m["format"], cache)
        except (KeyError, ValueError, TypeError) as e:
            problems.append((False, f"line {line_of(m.start())}: {m['file']}:{m['path']}: {e.args[0]}"))
            return m[0]
        shown = _value(m["value"])
        if shown != value:
            problems.append((True, f"line {line_of(m.start())}: {shown!r} where bench/results/{m['file']}.json "
                                   f"{m['path']} gives {value!r}"))
        bold = "**" if m["value"] != shown else ""
        return m[0][: m.start("value") - m.start()] + bold + value + bold + "<!-- /fig -->"

    text = BLOCK.sub(block, text)
    text = INLINE.sub(inline, text)
    return text, problems


def check(write: bool = False, pages: list[Path] | None = None) -> list[str]:
    """Every figure of the documentation that differs from its results file, as 'PAGE: line N: ...'; with write,
    the pages are rewritten from the results first (and only missing results are reported)."""
    cache: dict[str, Any] = {}
    used: set[str] = set()
    problems = []
    for page in pages or documentation():
        text = page.read_text(encoding="utf-8")
        new, found = render_page(text, cache, used)
        rel = page.relative_to(REPO).as_posix() if page.is_relative_to(REPO) else str(page)
        if write and new != text:
            page.write_text(new, encoding="utf-8")
        problems += [f"{rel}: {what}" for stale, what in found if not (write and stale)]
    if pages is None:
        problems += [f"bench/figures.py: block {name} is shown on no page" for name in sorted(set(BLOCKS) - used)]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the figures from bench/results/")
    args = parser.parse_args()
    problems = check(write=args.write)
    for p in problems:
        print(p)
    if args.write:
        print("rewrote the documentation's figures from bench/results/" + (" (see above)" if problems else ""))
    elif not problems:
        print("every marked figure matches bench/results/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
