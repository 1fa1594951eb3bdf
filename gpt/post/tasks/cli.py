"""`python -m gpt.tasks make | pairs | eval`: write the task suite, write preference pairs on it, score a model.

Its place in the flow: the command line of the task suite (gpt/post/tasks/suite.py, pairs.py, scoring.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gpt.atomic import write_text
from gpt.checkpoint import load_model
from gpt.inference import CKPT_HELP, ModelSettings, open_model
from gpt.layers import plain
from gpt.config import parse_args, setting
from gpt.datasets import jsonl_files, jsonl_kind
from gpt.errors import UserError, exit_on_user_error
from gpt.post.chat import ChatTemplate, read_conversations
from gpt.post.dpo import read_pairs, score_pairs
from gpt.post.tasks.pairs import make_pairs
from gpt.post.tasks.scoring import UNASKABLE, answer_all, exact_match, score
from gpt.post.tasks.suite import HELD_OUT_TASKS, SUITE_TASKS, UNSEEN_TASKS, make_suite
from gpt.reshape import grow_vocab

@dataclass
class MakeConfig:
    out: str = setting("data/tasks", "folder to write train.jsonl, val.jsonl and test.jsonl into")
    seed: int = setting(1234, "random seed: the same seed and settings write the same files")
    train_per_task: int = setting(2000, "training items per trained task")
    val_per_task: int = setting(50, "validation items per trained task (trained phrasings, new inputs)")
    test_per_task: int = setting(100, "test items per task in each test group")
    tasks: list[str] = setting([], f"only these tasks (default: all of {', '.join(SUITE_TASKS)}; not by default: {', '.join(UNSEEN_TASKS)}); repeat or join with ','")
    held_out: list[str] = setting(list(HELD_OUT_TASKS), "tasks left out of training, tested as held_out_tasks; repeat or join with ','")
    force: bool = setting(False, "overwrite the files if the folder already holds a suite")


@dataclass
class PairsConfig:
    out: str = setting("data/task_pairs", "folder to write the pairs' train.jsonl, val.jsonl and test.jsonl into")
    pairs_per_task: int = setting(500, "training pairs per task (from the suite's train items)")
    pair_tasks: list[str] = setting([], "make pairs for these tasks only (default: every task of the suite); repeat or join with ','")
    seed: int = setting(1234, "the suite's seed (the same as `make`'s: the pairs are on the suite's own items)")
    train_per_task: int = setting(2000, "the suite's setting, as given to `make`")
    val_per_task: int = setting(50, "the suite's setting, as given to `make`")
    test_per_task: int = setting(100, "the suite's setting, as given to `make`")
    tasks: list[str] = setting([], "the suite's setting, as given to `make`")
    held_out: list[str] = setting(list(HELD_OUT_TASKS), "the suite's setting, as given to `make`")
    force: bool = setting(False, "overwrite the files if the folder already holds pairs")


@dataclass
class ScoreConfig(ModelSettings):
    ckpt: str = setting("out/sft_tasks", "the model: " + CKPT_HELP)
    data: str = setting("data/tasks/test.jsonl", "a JSONL of prompt/response, instruction or messages lines (the last assistant message is the expected answer)")
    max_new_tokens: int = setting(64, "longest answer, in tokens; an answer that reaches it has not ended")
    batch_size: int = setting(64, "prompts answered together")
    limit: int = setting(0, "score only the first N lines (0 = all)")
    json: bool = setting(False, "print one JSON object instead of a table")
    answers: str | None = setting(None, "also write every prompt, expected answer and answer to this JSONL file")
    ref: str | None = setting(None, "preference pairs only: the reference model for DPO's accuracy and margin (default: the init_from the checkpoint was tuned from, when it is there; 'none' for no reference)")
    progress: bool = setting(True, "show a progress bar (on stderr)")


def _split_list(values: list[str]) -> list[str]:
    return [part for value in values for part in value.split(",") if part]


def _write_splits(out: Path, lines: dict[str, list[dict]], force: bool) -> dict[str, Path]:
    files = {split: out / f"{split}.jsonl" for split in lines}
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists: add --force to write it again, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for split, path in files.items():
            write_text(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines[split]))
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror}; choose a writable --out") from None
    return files


def pairs_main(argv: list[str]) -> int:
    cfg, _ = parse_args(PairsConfig, argv, prog="python -m gpt.tasks pairs",
                        description="Write preference pairs on the task suite's items (for preference tuning, DPO): "
                                    "chosen = the right answer, rejected = a plausible wrong one.")
    for name in ("pairs_per_task", "train_per_task", "val_per_task", "test_per_task"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    suite = make_suite(cfg.seed, cfg.train_per_task, cfg.val_per_task, cfg.test_per_task, _split_list(cfg.tasks),
                       _split_list(cfg.held_out), with_fields=True)
    pairs = make_pairs(suite, cfg.seed, cfg.pairs_per_task, _split_list(cfg.pair_tasks))
    files = _write_splits(Path(cfg.out), pairs, cfg.force)
    for split, path in files.items():
        kinds: dict[str, int] = {}
        for line in pairs[split]:
            kinds[line["mistake"]] = kinds.get(line["mistake"], 0) + 1
        print(f"{path}: {len(pairs[split]):,} pairs, {len({line['task'] for line in pairs[split]})} tasks; rejected: "
              + ", ".join(f"{kind} {n:,}" for kind, n in sorted(kinds.items())))
    return 0


def make_main(argv: list[str]) -> int:
    cfg, _ = parse_args(MakeConfig, argv, prog="python -m gpt.tasks make",
                        description="Write the task suite: train.jsonl, val.jsonl, test.jsonl.")
    for name in ("train_per_task", "val_per_task", "test_per_task"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    suite = make_suite(cfg.seed, cfg.train_per_task, cfg.val_per_task, cfg.test_per_task,
                       _split_list(cfg.tasks), _split_list(cfg.held_out))
    files = _write_splits(Path(cfg.out), suite, cfg.force)
    for split, path in files.items():
        tasks = sorted({line["task"] for line in suite[split]})
        print(f"{path}: {len(suite[split]):,} items, {len(tasks)} tasks")
    held = sorted({line["task"] for line in suite["test"] if line["group"] == "held_out_tasks"})
    print(f"held out of training: {', '.join(held) or 'none'}; each trained task's last phrasing is tested only")
    return 0


def score_main(argv: list[str]) -> int:
    cfg, _ = parse_args(ScoreConfig, argv, prog="python -m gpt.tasks eval",
                        description="Score a checkpoint on prompt/response JSONL: exact match per task and overall.")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.limit < 0:
        raise UserError("max_new_tokens and batch_size must be at least 1, and limit not negative")
    path = Path(cfg.data)
    if not path.is_file():
        raise UserError(f"{path} not found: give a .jsonl file of prompt/response lines (python -m gpt.tasks make "
                        "writes one)")
    if cfg.answers and Path(cfg.answers).exists():
        raise UserError(f"{cfg.answers} already exists: choose another --answers file or remove it")
    if jsonl_kind([path]) == "pairs":
        return score_pairs_main(cfg, path)
    items = read_conversations([path])
    if cfg.limit:
        items = items[: cfg.limit]
    opened = open_model(cfg)
    loaded = opened.loaded
    answers = answer_all(opened.model, loaded.tokenizer, loaded.chat_template, items, max_new_tokens=cfg.max_new_tokens,
                         batch_size=cfg.batch_size, dtype=opened.dtype, progress=cfg.progress and sys.stderr.isatty())
    report = score(items, answers)
    report = {"ckpt": str(loaded.path), "data": str(path),
              "prompting": "chat template" if loaded.chat_template is not None else "plain text (no chat template)",
              "unaskable": sum(answer is UNASKABLE for answer in answers), **report}
    if cfg.answers:
        lines = [{"prompt": item.prompt[-1].content, "expected": item.answer, "answer": text, "ended": ended,
                  "correct": exact_match(text, item.answer), "task": item.task, **item.extra}
                 for item, (text, ended) in zip(items, answers)]
        write_text(cfg.answers, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    print(json.dumps(report) if cfg.json else format_report(report, cfg.max_new_tokens))
    return 0


def score_pairs_main(cfg: ScoreConfig, path: Path) -> int:
    """eval on a file of preference pairs: how the model ranks the two answers of each (gpt/post/dpo.py score_pairs)."""
    pairs = read_pairs(path)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    opened = open_model(cfg)
    loaded, device = opened.loaded, opened.device
    if loaded.chat_template is None:
        raise UserError(f"{loaded.path} has no chat template: preference pairs are scored as the answers of a chat "
                        "model (instruction-tune it first)")
    config = (loaded.checkpoint or {}).get("config", {})
    ref_path = cfg.ref
    if ref_path is None and _tuned_on_pairs(config) and Path(config["init_from"]).exists():
        ref_path = config["init_from"]  # the reference the run trained against
    reference = None
    if ref_path is not None and ref_path != "none":
        ref = load_model(ref_path, device)
        ref.model = plain(ref.model)
        if ChatTemplate.add_tokens(ref.tokenizer).to_dict() != loaded.tokenizer.to_dict():
            raise UserError(f"the reference {ref.path} has another tokenizer than {loaded.path}: give the model it "
                            "was tuned from (--ref), or --ref=none")
        reference = grow_vocab(ref.model, ref.tokenizer.vocab_size, loaded.tokenizer.vocab_size).to(device)
        reference.eval()
    report = score_pairs(opened.model, loaded.chat_template, pairs, batch_size=cfg.batch_size, reference=reference,
                         beta=float(config.get("dpo_beta", 0.1)))
    report = {"ckpt": str(loaded.path), "data": str(path), "reference": None if reference is None else str(ref.path),
              **report}
    print(json.dumps(report) if cfg.json else format_pairs_report(report))
    return 0


def _tuned_on_pairs(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's run trained on preference pairs (its data files, where they still are, say so)."""
    if config.get("init_from", "scratch") == "scratch":
        return False
    try:
        files = jsonl_files(config.get("data", []), config.get("include"), config.get("data_dir", "data"))
        return files is not None and jsonl_kind(files) == "pairs"
    except (UserError, OSError):
        return False


def format_pairs_report(report: dict[str, Any]) -> str:
    with_ref = report["reference"] is not None
    lines = [f"{report['ckpt']} on {report['data']}: {report['n']:,} preference pairs"
             + (f" ({report['too_long']} longer than the model's context, left out)" if report["too_long"] else "")
             + (f" ({report['unencodable']} with characters its tokenizer lacks, left out)"
                if report["unencodable"] else "")
             + (f"; reference {report['reference']}, beta {report['beta']:g}" if with_ref else "; no reference"), "",
             "prefers: the share of pairs where the model gives the chosen answer the higher probability"
             + ("; accuracy: where its reward (log-ratio to the reference) is the higher" if with_ref else ""), ""]
    names = ["prefers_chosen", "chosen_logp", "rejected_logp"] + (["accuracy", "margin"] if with_ref else [])
    heads = ["prefers", "chosen lp", "rejected lp"] + (["accuracy", "margin"] if with_ref else [])
    width = max([len(t) for t in [*report["tasks"], *report.get("mistakes", {})]] + [14])
    lines.append(f"{'':<8} {'':<{width}} {'n':>6} " + " ".join(f"{h:>11}" for h in heads))

    def row(kind: str, name: str, s: dict) -> str:
        cells = [f"{s[n]:>11.1%}" if n in ("prefers_chosen", "accuracy") else f"{s[n]:>11.3f}" for n in names]
        return f"{kind:<8} {name:<{width}} {s['n']:>6} " + " ".join(cells)

    for task, s in report["tasks"].items():
        lines.append(row("task", task, s))
    for mistake, s in report.get("mistakes", {}).items():
        lines.append(row("mistake", mistake, s))
    lines.append(row("overall", "", report))
    return "\n".join(lines)


def format_report(report: dict[str, Any], max_new_tokens: int) -> str:
    lines = [f"{report['ckpt']} on {report['data']}: {report['n']:,} prompts, greedy, at most {max_new_tokens} new "
             f"tokens, {report['prompting']}", ""]
    width = max([len(t) for t in report["tasks"]] + [14])
    lines.append(f"{'group':<15} {'task':<{width}} {'n':>6} {'exact':>7} {'ended':>7}")

    def row(group: str, task: str, s: dict) -> str:
        return f"{group:<15} {task:<{width}} {s['n']:>6} {s['exact_match']:>7.1%} {s['ended']:>7.1%}"

    if "groups" in report:
        for group, g in report["groups"].items():
            for task, s in g["tasks"].items():
                lines.append(row(group, task, s))
            lines.append(row(group, "(all)", g) + f"   mean of tasks {g['task_mean']:.1%}")
    else:
        for task, s in report["tasks"].items():
            lines.append(row("", task, s))
    lines.append(row("overall", "", report))
    if report.get("unaskable"):
        lines.append(f"({report['unaskable']:,} prompts hold characters the model's tokenizer lacks: scored wrong)")
    return "\n".join(lines)


SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "make": (make_main, "write the task suite (train/val/test JSONL)"),
    "eval": (score_main, "score a checkpoint on a prompt/response JSONL (or on preference pairs: which answer it prefers)"),
    "pairs": (pairs_main, "write preference pairs on the suite's items (right answer vs a plausible wrong one)"),
}


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "; ".join(f"python -m gpt.tasks {name} ...: {what}" for name, (_, what) in SUBCOMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {usage}\n(add --help after a subcommand for its settings)")
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        raise UserError(f"unknown subcommand {argv[0]!r}: {usage}")
    return SUBCOMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
