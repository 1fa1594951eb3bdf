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
    for block in ("assistant.sft_table", "default.stone", "assistant.sft_answers", "assistant.dpo_table",
                  "assistant.dpo_answers"):
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
