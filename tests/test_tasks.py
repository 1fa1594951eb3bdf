"""gpt/post/tasks/: the task generators, the suite's splits (new inputs, unseen phrasings, held-out tasks), the
scorer's arithmetic (a perfect answer scores 1, a wrong one 0) and the `make` command line. Scoring a real
model end to end is in tests/test_sft.py."""

from __future__ import annotations

import json
import random
import re


from gpt.post.chat import Conversation, Message, read_conversations
from gpt.post.tasks.cli import main
from gpt.post.tasks.scoring import exact_match, score
from gpt.post.tasks.suite import GROUPS, HELD_OUT_TASKS, SUITE_TASKS, TASKS, UNSEEN_TASKS, make_suite

# An independent statement of each task's answer, from the fields read back out of its prompt.
def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


CHECKS = {
    "reverse": lambda f: f["word"][::-1],
    "uppercase": lambda f: f["word"].upper(),
    "lowercase": lambda f: f["word"].lower(),
    "sort_letters": lambda f: "".join(sorted(f["word"])),
    "spell": lambda f: "-".join(f["word"]),
    "length": lambda f: str(len(f["word"])),
    "copy": lambda f: f["text"],
    "count_letter": lambda f: str(f["word"].count(f["letter"])),
    "add": lambda f: str(int(f["a"]) + int(f["b"])),
    "compare": lambda f: str(max(int(f["a"]), int(f["b"]))),
    "max_number": lambda f: str(max(_numbers(f["numbers"]))),
    "sort_numbers": lambda f: " ".join(map(str, sorted(_numbers(f["numbers"])))),
    "next_number": lambda f: (lambda ns: str(2 * ns[-1] - ns[-2]))(_numbers(f["seq"])),
    "lookup": lambda f: dict(pair.split("=") for pair in f["pairs"].split(", "))[f["key"]],
    "first_letter": lambda f: f["word"][0],
    "last_letter": lambda f: f["word"][-1],
    "subtract": lambda f: str(int(f["a"]) - int(f["b"])),
    "min_number": lambda f: str(min(_numbers(f["numbers"]))),
    "twice": lambda f: f"{f['word']} {f['word']}",
}


def fields_of(phrasing: str, prompt: str) -> dict[str, str] | None:
    """The fields of a prompt written with `phrasing`, as text (None if the prompt is not of that phrasing)."""
    pattern, seen = "", set()
    for literal, name, _, _ in __import__("string").Formatter().parse(phrasing):
        pattern += re.escape(literal)
        if name:
            pattern += f"(?P={name})" if name in seen else f"(?P<{name}>.+?)"
            seen.add(name)
    match = re.fullmatch(pattern, prompt)
    return None if match is None else match.groupdict()


def test_every_task_answers_correctly_and_builds_wrong_answers():
    rng = random.Random(0)
    assert len(TASKS) >= 10 and set(HELD_OUT_TASKS) <= set(TASKS)
    for task in TASKS.values():
        assert len(task.phrasings) >= 4 and len(set(task.phrasings)) == len(task.phrasings)
        for _ in range(50):
            fields = task.draw(rng)
            answer = task.answer(fields)
            assert answer and answer == answer.strip()
            for phrasing in task.phrasings:
                prompt = task.prompt(fields, phrasing)
                assert CHECKS[task.name](fields_of(phrasing, prompt)) == answer, (task.name, prompt, answer)
            wrong = task.wrong_answer(fields, rng)
            assert wrong != answer and not exact_match(wrong, answer)
    lookup = TASKS["lookup"]
    fields = {"pairs": {"a": 5, "b": 17}, "key": "b"}
    assert lookup.answer(fields) == "17" and lookup.prompt(fields, lookup.phrasings[0]) == "a=5, b=17. What is b?"
    assert TASKS["spell"].answer({"word": "cat"}) == "c-a-t" and TASKS["count_letter"].answer(
        {"word": "banana", "letter": "a"}) == "3"


def test_the_suite_tests_new_inputs_unseen_phrasings_and_held_out_tasks():
    suite = make_suite(seed=3, train_per_task=60, val_per_task=5, test_per_task=10)
    assert suite == make_suite(seed=3, train_per_task=60, val_per_task=5, test_per_task=10)  # seeded
    assert suite != make_suite(seed=4, train_per_task=60, val_per_task=5, test_per_task=10)
    trained = [n for n in SUITE_TASKS if n not in HELD_OUT_TASKS]
    train, val, test = suite["train"], suite["val"], suite["test"]
    assert {line["task"] for line in train} == {line["task"] for line in val} == set(trained)
    assert len(train) == 60 * len(trained) and len(val) == 5 * len(trained)
    seen = {line["prompt"] for line in train}
    assert not seen & {line["prompt"] for line in val + test}
    groups = {g: [line for line in test if line["group"] == g] for g in GROUPS}
    assert {line["task"] for line in groups["held_out_tasks"]} == set(HELD_OUT_TASKS)
    for line in train + val + groups["new_inputs"]:
        task = TASKS[line["task"]]
        assert any(_matches(p, line["prompt"]) for p in task.trained_phrasings)
        assert not _matches(task.held_out_phrasing, line["prompt"])
    for line in groups["new_phrasings"]:
        assert _matches(TASKS[line["task"]].held_out_phrasing, line["prompt"])
    # A char tokenizer fitted to the training set can write every test prompt and answer.
    train_chars = set("".join(line["prompt"] + line["response"] for line in train))
    assert set("".join(line["prompt"] + line["response"] for line in test)) <= train_chars
    # The unseen tasks are made only when named: the default suite is the one the recipes were tuned on.
    assert not {line["task"] for line in train + test} & set(UNSEEN_TASKS)
    unseen = make_suite(seed=1, train_per_task=5, val_per_task=2, test_per_task=2, tasks=UNSEEN_TASKS, held_out=())
    assert {line["task"] for line in unseen["train"]} == set(UNSEEN_TASKS)
    assert {line["group"] for line in unseen["test"]} == {"new_inputs", "new_phrasings"}
    only = make_suite(seed=1, train_per_task=5, val_per_task=2, test_per_task=2, tasks=["copy", "add"], held_out=["add"])
    assert {line["task"] for line in only["train"]} == {"copy"}
    assert {(line["task"], line["group"]) for line in only["test"]} == {
        ("copy", "new_inputs"), ("copy", "new_phrasings"), ("add", "held_out_tasks")}


def _matches(phrasing: str, prompt: str) -> bool:
    return fields_of(phrasing, prompt) is not None


def item(answer: str, task: str, group: str | None = None) -> Conversation:
    extra = {} if group is None else {"group": group}
    return Conversation([Message("user", "q"), Message("assistant", answer)], task, "x:1", extra)


def test_the_scorer_gives_one_for_a_right_answer_and_zero_for_a_wrong_one():
    items = [item("42", "add", "new_inputs"), item("olleh", "reverse", "new_inputs"),
             item("7", "add", "new_phrasings"), item("abc", "lowercase", "held_out_tasks")]
    perfect = score(items, [(" 42\n", True), ("olleh", True), ("7", True), ("abc", True)])
    assert perfect["exact_match"] == 1.0 and perfect["ended"] == 1.0 and perfect["n"] == 4
    wrong = score(items, [("43", True), ("hello", False), ("", False), ("ab", False)])
    assert wrong["exact_match"] == 0.0 and wrong["ended"] == 0.25
    mixed = score(items, [("42", True), ("oops", False), ("7", False), ("abc", True)])
    assert mixed["exact_match"] == 0.75 and mixed["tasks"]["add"]["exact_match"] == 1.0
    assert list(mixed["groups"]) == ["new_inputs", "new_phrasings", "held_out_tasks"]
    new_inputs = mixed["groups"]["new_inputs"]
    assert new_inputs["exact_match"] == 0.5 and new_inputs["task_mean"] == 0.5 and new_inputs["ended"] == 0.5
    assert "groups" not in score([item("1", None)], [("1", True)])
    assert score([item("1", None)], [("1", True)])["tasks"] == {"(no task)": {"n": 1, "exact_match": 1.0, "ended": 1.0}}


def test_make_writes_the_three_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["make", f"--out={out}", "--train_per_task=20", "--val_per_task=2", "--test_per_task=3"]) == 0
    lines = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
             for s in ("train", "val", "test")}
    assert set(lines["train"][0]) == {"prompt", "response", "task"}
    assert set(lines["test"][0]) == {"prompt", "response", "task", "group"}
    assert len(read_conversations([out / "test.jsonl"])) == len(lines["test"])  # the trainer's own reader
    before = (out / "train.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["make", f"--out={out}", "--seed=9", "--train_per_task=5"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and err.count("\n") == 1
    assert (out / "train.jsonl").read_bytes() == before
    assert main(["make", f"--out={out}", "--tasks=nope"]) == 2 and "unknown task" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2 and "unknown subcommand" in capsys.readouterr().err
    assert main(["eval", f"--data={tmp_path / 'missing.jsonl'}"]) == 2 and "not found" in capsys.readouterr().err
    taken = tmp_path / "answers.jsonl"
    taken.write_text("kept\n")
    assert main(["eval", f"--data={out / 'test.jsonl'}", f"--answers={taken}"]) == 2
    assert "already exists" in capsys.readouterr().err and taken.read_text() == "kept\n"
