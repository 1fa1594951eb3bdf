"""Preference pairs on the task suite's items: the right answer (chosen) against a plausible wrong one (rejected).

Its place in the flow: `python -m gpt.tasks pairs` writes them; preference tuning (gpt/post/dpo.py) trains on them,
and `python -m gpt.tasks eval` scores how a model ranks them.
"""

from __future__ import annotations

import random
from typing import Sequence

from gpt.errors import UserError
from gpt.post.tasks.suite import TASKS, Fields, Task

MISTAKES = ("off_by_one", "half_reversed", "wrong_case", "run_on", "task_mistake")


def _items(answer: str) -> tuple[list[str], str]:
    """An answer as its items and their separator: "3 15 42" -> (["3", "15", "42"], " "); "c-a-t" by "-";
    a word -> its letters."""
    for separator in (" ", "-", ", "):
        if separator in answer:
            return answer.split(separator), separator
    return list(answer), ""


def _half_reversed(answer: str) -> str:
    """The second half of the answer's items reversed ("abcdef" -> "abcfed"), else the first half."""
    items, separator = _items(answer)
    half = len(items) // 2
    for wrong in (items[:half] + items[half:][::-1], items[:half][::-1] + items[half:]):
        if wrong != items:
            return separator.join(wrong)
    return answer


def _run_on(task: Task, fields: Fields, rng: random.Random) -> str:
    """The right answer, and then no stop: it repeats itself, or goes on to ask and answer another request."""
    right = task.answer(fields)
    if rng.random() < 0.5:
        return " ".join([right] * rng.randint(2, 4))
    other = task.draw(rng)
    return f"{right} {task.prompt(other, rng.choice(task.trained_phrasings))} {task.answer(other)}"


def wrong_answers(task: Task, fields: Fields, rng: random.Random) -> dict[str, str]:
    """The plausible wrong answers to one request, by kind of mistake (only the kinds that fit the answer):

        off_by_one     a number one more or one less          (answers that are a number)
        half_reversed  half of the answer's items reversed    (words, lists, spellings)
        wrong_case     the answer in another case             (answers with letters)
        run_on         the right answer, then it goes on      (every task: the answer that does not stop)
        task_mistake   the task's own likely slip (Task.mistakes: the input unchanged, sorted the wrong way, ...)
    """
    right = task.answer(fields)
    wrong: dict[str, str] = {}
    if right.isdigit():
        value = int(right)
        wrong["off_by_one"] = str(value + 1 if value == 0 or rng.random() < 0.5 else value - 1)
    elif len(_items(right)[0]) >= 2:
        wrong["half_reversed"] = _half_reversed(right)
    cases = [c for c in (right.upper(), right.lower(), right.capitalize()) if c != right]
    if cases:
        wrong["wrong_case"] = rng.choice(cases)
    wrong["run_on"] = _run_on(task, fields, rng)
    wrong["task_mistake"] = task.wrong_answer(fields, rng)
    return {kind: text for kind, text in wrong.items() if text.strip() != right.strip() and text.strip()}


def make_pairs(suite: dict[str, list[dict]], seed: int = 1234, pairs_per_task: int = 500,
               tasks: Sequence[str] = ()) -> dict[str, list[dict]]:
    """Preference pairs on the suite's own items: train pairs from its train split (the first pairs_per_task of
    each task), val pairs from its val split, test pairs from its test split (with their group). So no pair
    holds a test input in training. Each pair's mistake is one of the kinds that fit, in turn at random."""
    rng = random.Random(seed + 1)
    wanted = set(tasks) or {line["task"] for line in suite["train"]}
    unknown = sorted(wanted - set(TASKS))
    if unknown:
        raise UserError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    pairs: dict[str, list[dict]] = {}
    for split, lines in suite.items():
        taken: dict[str, int] = {}
        pairs[split] = []
        for line in lines:
            name = line["task"]
            if name not in wanted or (split == "train" and taken.get(name, 0) >= pairs_per_task):
                continue
            taken[name] = taken.get(name, 0) + 1
            task = TASKS[name]
            wrong = wrong_answers(task, line["fields"], rng)
            kind = rng.choice(sorted(wrong))
            pair = {"prompt": line["prompt"], "chosen": line["response"], "rejected": wrong[kind], "task": name,
                    "mistake": kind}
            pairs[split].append({**pair, "group": line["group"]} if "group" in line else pair)
    return pairs


