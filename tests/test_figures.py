"""Every measured figure the documentation marks matches the results file of the command that measured it
(bench/figures.py; the scheme is described at the top of BENCHMARKS.md)."""

import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_figures", REPO / "bench" / "figures.py")
figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figures)


def test_every_marked_figure_matches_its_results_file():
    problems = figures.check()
    assert problems == [], ("figures that differ from bench/results/ (after re-measuring, `python bench/figures.py "
                            "--write` rewrites them; then reread the prose around them):\n" + "\n".join(problems))


def test_every_results_file_says_what_ran_it():
    files = sorted((REPO / "bench" / "results").glob("*.json"))
    assert files
    for path in files:
        machine = json.loads(path.read_text())["machine"]
        assert {"command", "date", "cpu", "torch"} <= set(machine), path.name


def marked(text: str) -> bool:
    return "<!-- fig " in text or "<!-- figures " in text


def test_the_headline_figures_are_marked():
    readme = (REPO / "README.md").read_text()
    results = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert results.count("<!-- fig ") >= 2 and "<!-- figures default.sample -->" in results
    assistant = (REPO / "docs" / "assistant.md").read_text()
    assert "<!-- figures assistant.steps -->" in results  # the ladder, step by step
    for block in ("assistant.steps", "assistant.sft_table", "default.stone", "assistant.sft_answers",
                  "assistant.dpo_table", "assistant.dpo_answers"):
        assert f"<!-- figures {block} -->" in assistant


# Headline rows of BENCHMARKS.md measured before results files were kept in the repository: each is marked when
# it is measured again. A new row must come with its results file.
UNMARKED_HEADLINE_ROWS = {
    "side-by-side-in-wall-time-on-a-quiet-machine", "against-nanogpts-cpu-recipe-in-cpu-seconds", "time-to-quality",
    "training-on-the-gpu-h100", "training-throughput-and-mfu-cpu",
    "batch-1-decode-against-transformers-gpt-2-124m-shape-random-weights",
    "quality-cost-of-the-lossy-options-bits-per-byte-gptevaluate", "kv-cache-vs-recomputing-the-window-cpu",
    "the-server-batching-concurrent-clients-and-a-load-test", "adapters-lora", "the-lab-induction-heads",
    "tokenizer-training-and-encoding", "corpus-preparation-streaming-bounded-memory",
}


def test_every_headline_row_is_marked_or_known_to_predate_the_results_files():
    text = (REPO / "BENCHMARKS.md").read_text()
    table = text.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| [")]
    assert len(rows) >= 10
    unmarked = {re.search(r"\]\(#([\w-]+)\)", row)[1] for row in rows if not marked(row)}
    assert unmarked <= UNMARKED_HEADLINE_ROWS, f"headline rows without a marked figure: {unmarked - UNMARKED_HEADLINE_ROWS}"
    assert sum(marked(row) for row in rows) >= 4


def test_a_stale_figure_is_found_and_rewritten(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "x.json").write_text(json.dumps({"machine": {}, "a": {"b": 0.6143}, "rows": [{"s": "hi"}]}))
    page = tmp_path / "page.md"
    page.write_text("exact match **<!-- fig x:a.b .1% -->61.4%<!-- /fig -->**, "
                    "<!-- fig x:rows.0.s -->ho<!-- /fig --> and <!-- fig x:a.b .2f -->**0.50**<!-- /fig -->\n")
    monkeypatch.setattr(figures, "RESULTS", results)
    problems = figures.check(pages=[page])
    assert len(problems) == 2 and "'ho'" in problems[0] and "'0.50'" in problems[1]
    assert figures.check(write=True, pages=[page]) == []
    assert page.read_text() == ("exact match **<!-- fig x:a.b .1% -->61.4%<!-- /fig -->**, "
                                "<!-- fig x:rows.0.s -->hi<!-- /fig --> and <!-- fig x:a.b .2f -->**0.61**<!-- /fig -->\n")
    assert figures.check(pages=[page]) == []


def test_a_marker_naming_what_does_not_exist_is_reported(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "x.json").write_text(json.dumps({"machine": {}, "a": 1}))
    page = tmp_path / "page.md"
    page.write_text("<!-- fig x:b -->1<!-- /fig --> <!-- fig y:a -->1<!-- /fig -->\n"
                    "<!-- figures no.such -->\nold\n<!-- /figures -->\n")
    monkeypatch.setattr(figures, "RESULTS", results)
    problems = figures.check(write=True, pages=[page])
    assert len(problems) == 3
    assert "no 'b'" in problems[1] and "y.json does not exist" in problems[2] and "no.such" in problems[0]


def _scores(new_inputs: dict[str, float], phrasings: float, held_out: float) -> dict:
    """A scorer's report (python -m gpt.tasks eval --json), cut to what the ladder's tables read."""
    tasks = {t: {"exact_match": em} for t, em in new_inputs.items()}
    return {"ended": 1.0, "groups": {
        "new_inputs": {"exact_match": sum(new_inputs.values()) / len(new_inputs), "tasks": tasks},
        "new_phrasings": {"exact_match": phrasings, "tasks": {}},
        "held_out_tasks": {"exact_match": held_out, "tasks": {}}}}


def _ladder_results(with_rl: bool) -> dict:
    models = {
        "base": {"command": "python train.py", "run": {"steps": 2000, "train_seconds": 240.4, "tokens": 4096000},
                 "test": _scores({"add": 0.0, "copy": 0.0}, 0.0, 0.0)},
        "sft": {"command": "python train.py configs/sft_tasks_cpu.toml",
                "run": {"steps": 500, "train_seconds": 120.0, "tokens": 2048000},
                "test": _scores({"add": 0.2, "copy": 0.9}, 0.1, 0.05)},
        "dpo": {"command": "python train.py configs/dpo_tasks_cpu.toml",
                "run": {"steps": 375, "train_seconds": 60.5, "tokens": 768000},
                "test": _scores({"add": 0.1, "copy": 1.0}, 0.1, 0.0)},
        "rl": {"command": "python train.py configs/rl_tasks_cpu.toml",
               "run": {"steps": 100, "train_seconds": 300.0, "tokens": 1000},
               "test": _scores({"add": 0.6, "copy": 1.0}, 0.2, 0.0)}}
    if not with_rl:
        del models["rl"]
    prompts = ["What is 2 + 2?", "Copy this text: a|b"]
    answers = {"prompts": prompts, "held_out_prompts": [], "sft": ["5", "a|b"], "dpo": ["4", "a|b"]}
    if with_rl:
        answers["rl"] = ["4", "a|b"]
    steps = [{"step": "pretraining", "model": "base", "note": None},
             {"step": "instruction tuning", "model": "sft", "note": None},
             {"step": "preference tuning", "model": "dpo", "note": None},
             {"step": "reinforcement learning", "model": "rl", "note": None if with_rl else "not run: no config"}]
    return {"machine": {"command": "python bench/ladder.py --report r.md", "date": "2026-12-05 17:00 UTC",
                        "load_average": [1.0, 1.0, 1.0]},
            "suite": "data/tasks", "threads": 1, "models": models, "answers": answers, "steps": steps,
            "load_average": {"min": 0.5, "max": 2.25}}


def _row(table: str, step: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {step} |"))
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]  # an escaped \| is in a cell


def test_the_ladder_report_tabulates_each_step_with_its_figures_and_what_it_changed():
    report = figures.ladder_report(_ladder_results(with_rl=True))
    assert report.startswith("# The assistant ladder") and "load average 0.5 to 2.2" in report
    sft = _row(report, "instruction tuning")
    assert sft[2:8] == ["500", "120", "2,048,000", "55.0%", "10.0%", "5.0%"]
    # What it changed: each group against the step before, and the tasks of new inputs that moved most.
    assert sft[8] == ("new inputs +55.0 pts, new phrasings +10.0 pts, held-out tasks +5.0 pts; "
                      "most up: copy +90.0 pts")
    dpo = _row(report, "preference tuning")
    assert dpo[5:8] == ["55.0%", "10.0%", "0.0%"]
    assert dpo[8].endswith("most up: copy +10.0 pts; most down: add -10.0 pts")
    assert _row(report, "reinforcement learning")[5] == "80.0%"
    # The tuning steps' time and tokens together, the base left out: 120 + 60.5 + 300 s.
    assert _row(report, "the tuning steps together")[3:5] == ["480", "2,817,000"]
    # The answers, one column per tuned step; a | in an answer does not end its cell.
    assert "| What is 2 + 2? | `5` | `4` | `4` |" in report and "`a\\|b`" in report


def test_a_step_that_did_not_run_is_a_row_with_its_note():
    table = figures.steps_table(_ladder_results(with_rl=False))
    rl = _row(table, "reinforcement learning")
    assert rl[-1] == "not run: no config" and set(rl[1:-1]) == {""}
    assert _row(table, "the tuning steps together")[3] == "180"
    assert "| instruction tuning | preference tuning |" in figures.steps_answers(_ladder_results(with_rl=False))
