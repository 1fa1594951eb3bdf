"""A suite of small tasks with exactly checkable answers, and a scorer: what instruction tuning is measured with.

Its place in the flow: after training, beside gpt/evaluate.py. Loss says how well a model predicts text;
these say whether it does what it is asked, and stops:

    python -m gpt.tasks make --out data/tasks          train.jsonl, val.jsonl, test.jsonl (offline, seeded)
    python -m gpt.tasks eval --ckpt out/sft_tasks --data data/tasks/test.jsonl [--json]
    python -m gpt.tasks pairs --out data/task_pairs    preference pairs on the same items (gpt/post/dpo.py trains on them)

The tasks are procedural (reverse a word, add two numbers, look up a key, ...): each draws random inputs,
knows its one correct answer, can build plausible wrong ones (for preference pairs), and is phrased several
ways. The last phrasing of each task never appears in training. The test split holds three groups:

    new_inputs        the trained tasks and phrasings, on inputs never seen in training
    new_phrasings     the trained tasks asked with the phrasing never seen in training
    held_out_tasks    tasks left out of training entirely (by default lowercase and max_number)

Five more tasks (UNSEEN_TASKS) are not in the suite unless named (--tasks): a check that a recipe tuned on the
suite works on tasks it was not tuned on.

Lines are {"prompt", "response", "task"} (+ "group" in test.jsonl): the forms train.py reads (gpt/post/chat.py).

The package, one job per module: suite.py (this file: the tasks and the suite they make), pairs.py (preference
pairs on the suite's items), scoring.py (answering prompts and exact match), cli.py (python -m gpt.tasks).

The scorer answers every prompt greedily with the checkpoint's chat template (gpt/post/chat.py), stops at the end
of the turn or at max_new_tokens, and reports exact match (the answer equals the expected one, ignoring
whitespace around it) per task, per group and overall, and the share of answers that ended with <|end|>
rather than running to the limit. It takes any JSONL of prompt/response, instruction or messages lines (the
last assistant message is the expected answer). A model without a template (a base model) is asked in plain
text, the prompt and a newline, and its answer is the first line it writes.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gpt.errors import UserError

# ---------------------------------------------------------------------------------------------------
# The tasks


Fields = dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One kind of request: random inputs, the phrasings that ask for it, the answer, and wrong answers."""

    name: str
    phrasings: tuple[str, ...]  # str.format templates over the fields; the last one is never trained on
    draw: Callable[[random.Random], Fields]  # random inputs
    solve: Callable[[Fields], str]  # the one correct answer
    mistakes: tuple[Callable[[Fields, random.Random], str], ...]  # plausible wrong answers (may hit the right one)

    @property
    def trained_phrasings(self) -> tuple[str, ...]:
        return self.phrasings[:-1]

    @property
    def held_out_phrasing(self) -> str:
        return self.phrasings[-1]

    def prompt(self, fields: Fields, phrasing: str) -> str:
        return phrasing.format(**{k: _show(v) for k, v in fields.items()})

    def answer(self, fields: Fields) -> str:
        return self.solve(fields)

    def wrong_answer(self, fields: Fields, rng: random.Random) -> str:
        """A plausible answer that is not the correct one (e.g. for a DPO pair's rejected response)."""
        right = self.solve(fields)
        for _ in range(50):
            wrong = rng.choice(self.mistakes)(fields, rng)
            if wrong != right and wrong.strip():
                return wrong
        return right + right[-1]  # every mistake happened to be right: one character too many

    def example(self, rng: random.Random, phrasing: str | None = None) -> dict[str, str]:
        fields = self.draw(rng)
        phrasing = phrasing or rng.choice(self.trained_phrasings)
        return {"prompt": self.prompt(fields, phrasing), "response": self.answer(fields), "task": self.name}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _word(rng: random.Random, low: int = 3, high: int = 6, letters: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(low, high)))


def _numbers(rng: random.Random, count_low: int = 3, count_high: int = 4, top: int = 99) -> list[int]:
    return [rng.randint(0, top) for _ in range(rng.randint(count_low, count_high))]


# Mistakes that fit many tasks.
def _swap_two(text: str, rng: random.Random) -> str:
    if len(text) < 2:
        return text + text
    i = rng.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _drop_one(text: str, rng: random.Random) -> str:
    i = rng.randrange(len(text))
    return text[:i] + text[i + 1:] if len(text) > 1 else text + text


def _off_by(value: int, rng: random.Random) -> str:
    return str(max(0, value + rng.choice([-10, -2, -1, 1, 2, 10])))


def _count(fields: Fields) -> int:
    return fields["word"].count(fields["letter"])


def _draw_count(rng: random.Random) -> Fields:
    word = _word(rng, 5, 8, "abcdefg")
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefg")
    return {"word": word, "letter": letter}


def _draw_lookup(rng: random.Random) -> Fields:
    keys = rng.sample(string.ascii_lowercase, rng.randint(3, 5))
    pairs = {k: rng.randint(0, 99) for k in keys}
    return {"pairs": pairs, "key": rng.choice(keys)}


def _draw_sequence(rng: random.Random) -> Fields:
    start, step, shown = rng.randint(0, 99), rng.randint(1, 12), rng.randint(3, 5)
    return {"seq": ", ".join(str(start + step * i) for i in range(shown)), "start": start, "step": step,
            "shown": shown}


def _draw_two(top: int) -> Callable[[random.Random], Fields]:
    def draw(rng: random.Random) -> Fields:
        a, b = rng.randint(0, top), rng.randint(0, top)
        while a == b:
            b = rng.randint(0, top)
        return {"a": a, "b": b}
    return draw


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("reverse",
         ("Reverse the word {word}.", "Write {word} backwards.", "What is {word} reversed?", "reverse: {word}",
          "Give me {word} reversed, please."),
         lambda rng: {"word": _word(rng)}, lambda f: f["word"][::-1],
         (lambda f, rng: f["word"], lambda f, rng: _swap_two(f["word"][::-1], rng),
          lambda f, rng: _drop_one(f["word"][::-1], rng))),
    Task("uppercase",
         ("Uppercase {word}.", "Write {word} in capital letters.", "Convert {word} to uppercase.", "upper: {word}",
          "Please make {word} uppercase."),
         lambda rng: {"word": _word(rng)}, lambda f: f["word"].upper(),
         (lambda f, rng: f["word"], lambda f, rng: f["word"].capitalize(),
          lambda f, rng: _drop_one(f["word"].upper(), rng))),
    Task("sort_letters",
         ("Sort the letters of {word}.", "Put the letters of {word} in alphabetical order.",
          "Arrange {word} alphabetically.", "sort letters: {word}", "What are the letters of {word} when sorted?"),
         lambda rng: {"word": _word(rng, 3, 5)}, lambda f: "".join(sorted(f["word"])),
         (lambda f, rng: f["word"], lambda f, rng: "".join(sorted(f["word"], reverse=True)),
          lambda f, rng: _swap_two("".join(sorted(f["word"])), rng))),
    Task("sort_numbers",
         ("Sort these numbers: {numbers}.", "Put {numbers} in increasing order.",
          "Order from smallest to largest: {numbers}", "sort: {numbers}", "Please sort the numbers {numbers}."),
         lambda rng: {"numbers": _numbers(rng)}, lambda f: _show(sorted(f["numbers"])),
         (lambda f, rng: _show(f["numbers"]), lambda f, rng: _show(sorted(f["numbers"], reverse=True)),
          lambda f, rng: _show(sorted(f["numbers"])[1:]))),
    Task("count_letter",
         ("How many times does {letter} appear in {word}?", "Count the letter {letter} in {word}.",
          "count {letter} in {word}", "Number of {letter} in {word}?", "In {word}, how many {letter} are there?"),
         _draw_count, lambda f: str(_count(f)),
         (lambda f, rng: _off_by(_count(f), rng), lambda f, rng: str(len(f["word"])))),
    Task("add",
         ("What is {a} + {b}?", "Add {a} and {b}.", "{a} plus {b} =", "Compute the sum of {a} and {b}.",
          "Please add {a} to {b}."),
         lambda rng: {"a": rng.randint(0, 99), "b": rng.randint(0, 99)}, lambda f: str(f["a"] + f["b"]),
         (lambda f, rng: _off_by(f["a"] + f["b"], rng), lambda f, rng: f"{f['a']}{f['b']}",
          lambda f, rng: str(abs(f["a"] - f["b"])))),
    Task("copy",
         ("Repeat after me: {text}", "Copy this text: {text}", "Say exactly: {text}", "echo: {text}",
          "Copy the following exactly: {text}"),
         lambda rng: {"text": " ".join(_word(rng, 2, 5) for _ in range(rng.randint(2, 4)))}, lambda f: f["text"],
         (lambda f, rng: _drop_one(f["text"], rng), lambda f, rng: " ".join(f["text"].split()[:-1]) or f["text"] * 2,
          lambda f, rng: _swap_two(f["text"], rng))),
    Task("lookup",
         ("{pairs}. What is {key}?", "Given {pairs}, find the value of {key}.", "{pairs}. Look up {key}.",
          "lookup {key} in {pairs}", "Here is a list: {pairs}. What value does {key} have?"),
         _draw_lookup, lambda f: str(f["pairs"][f["key"]]),
         (lambda f, rng: str(rng.choice([v for k, v in f["pairs"].items() if k != f["key"]])),
          lambda f, rng: _off_by(f["pairs"][f["key"]], rng))),
    Task("next_number",
         ("What comes next: {seq}, ...?", "Continue the sequence {seq}.", "Next number after {seq}?", "next: {seq}",
          "Give the number that follows {seq} in the sequence."),
         _draw_sequence, lambda f: str(f["start"] + f["shown"] * f["step"]),
         (lambda f, rng: str(f["start"] + (f["shown"] - 1) * f["step"]),
          lambda f, rng: str(f["start"] + f["shown"] * f["step"] + 1),
          lambda f, rng: str(f["start"] + (f["shown"] + 1) * f["step"]))),
    Task("compare",
         ("Which is larger, {a} or {b}?", "What is the bigger number: {a} or {b}?", "max({a}, {b})",
          "Pick the larger of {a} and {b}.", "Of {a} and {b}, which one is larger?"),
         _draw_two(999), lambda f: str(max(f["a"], f["b"])),
         (lambda f, rng: str(min(f["a"], f["b"])), lambda f, rng: _off_by(max(f["a"], f["b"]), rng))),
    Task("spell",
         ("Spell {word}.", "Spell out {word} letter by letter.", "spell: {word}", "How do you spell {word}?",
          "Please spell the word {word}."),
         lambda rng: {"word": _word(rng)}, lambda f: "-".join(f["word"]),
         (lambda f, rng: f["word"], lambda f, rng: " ".join(f["word"]), lambda f, rng: "-".join(_swap_two(f["word"], rng)))),
    Task("length",
         ("How many letters are in {word}?", "What is the length of {word}?", "length: {word}",
          "Count the letters of {word}.", "Tell me how many letters {word} has."),
         lambda rng: {"word": _word(rng, 2, 9)}, lambda f: str(len(f["word"])),
         (lambda f, rng: _off_by(len(f["word"]), rng), lambda f, rng: f["word"][0])),
    # Held out of training by default: can a model do what it was never shown?
    Task("lowercase",
         ("Lowercase {word}.", "Write {word} in small letters.", "Convert {word} to lowercase.", "lower: {word}",
          "Please make {word} lowercase."),
         lambda rng: {"word": _word(rng).upper()}, lambda f: f["word"].lower(),
         (lambda f, rng: f["word"], lambda f, rng: f["word"].capitalize())),
    Task("max_number",
         ("What is the largest of {numbers}?", "Find the maximum of {numbers}.", "max: {numbers}",
          "Which number is the biggest: {numbers}?", "Please give the largest number among {numbers}."),
         lambda rng: {"numbers": _numbers(rng)}, lambda f: str(max(f["numbers"])),
         (lambda f, rng: str(min(f["numbers"])), lambda f, rng: str(f["numbers"][0]))),
    # Not in the suite by default: five tasks the project's recipes were not tuned on, to check that a recipe
    # is not fitted to the suite (bench/dpo.py unseen: instruction tuning, then DPO, on these alone).
    Task("first_letter",
         ("What is the first letter of {word}?", "Give the first letter of {word}.", "first letter: {word}",
          "Which letter does {word} start with?", "Tell me the letter that {word} begins with."),
         lambda rng: {"word": _word(rng)}, lambda f: f["word"][0],
         (lambda f, rng: f["word"][-1], lambda f, rng: f["word"][1], lambda f, rng: f["word"][:2])),
    Task("last_letter",
         ("What is the last letter of {word}?", "Give the last letter of {word}.", "last letter: {word}",
          "Which letter does {word} end with?", "Tell me the letter that {word} finishes with."),
         lambda rng: {"word": _word(rng)}, lambda f: f["word"][-1],
         (lambda f, rng: f["word"][0], lambda f, rng: f["word"][-2], lambda f, rng: f["word"][-2:])),
    Task("subtract",
         ("What is {a} - {b}?", "Subtract {b} from {a}.", "{a} minus {b} =", "Compute {a} minus {b}.",
          "Please take {b} away from {a}."),
         lambda rng: dict(zip("ba", sorted(rng.sample(range(100), 2)))), lambda f: str(f["a"] - f["b"]),
         (lambda f, rng: _off_by(f["a"] - f["b"], rng), lambda f, rng: str(f["a"] + f["b"]),
          lambda f, rng: str(f["a"]))),
    Task("min_number",
         ("What is the smallest of {numbers}?", "Find the minimum of {numbers}.", "min: {numbers}",
          "Which number is the smallest: {numbers}?", "Please give the smallest number among {numbers}."),
         lambda rng: {"numbers": _numbers(rng)}, lambda f: str(min(f["numbers"])),
         (lambda f, rng: str(max(f["numbers"])), lambda f, rng: str(f["numbers"][0]))),
    Task("twice",
         ("Say {word} twice.", "Repeat {word} two times.", "twice: {word}", "Write {word} two times.",
          "Please write the word {word} twice."),
         lambda rng: {"word": _word(rng)}, lambda f: f"{f['word']} {f['word']}",
         (lambda f, rng: f["word"], lambda f, rng: f["word"] * 2, lambda f, rng: " ".join([f["word"]] * 3))),
]}
UNSEEN_TASKS = ("first_letter", "last_letter", "subtract", "min_number", "twice")
SUITE_TASKS = tuple(name for name in TASKS if name not in UNSEEN_TASKS)  # what `make` writes by default
HELD_OUT_TASKS = ("lowercase", "max_number")
GROUPS = ("new_inputs", "new_phrasings", "held_out_tasks")


# ---------------------------------------------------------------------------------------------------
# Making the suite


def make_suite(seed: int = 1234, train_per_task: int = 2000, val_per_task: int = 50, test_per_task: int = 100,
               tasks: Sequence[str] = (), held_out: Sequence[str] = HELD_OUT_TASKS,
               with_fields: bool = False) -> dict[str, list[dict]]:
    """The train, val and test items. No input of val or test is a train input (per task); train and val use
    the trained phrasings only; test holds the three GROUPS (see the module docstring). with_fields: each item
    also holds its inputs ("fields"), from which make_pairs builds wrong answers."""
    names = list(tasks) or list(SUITE_TASKS)
    unknown = [n for n in [*names, *held_out] if n not in TASKS]
    if unknown:
        raise UserError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    trained = [n for n in names if n not in held_out]
    left_out = [n for n in names if n in held_out]
    if not trained:
        raise UserError("every task is held out: train on at least one (--held_out lists the ones left out)")
    rng = random.Random(seed)
    seen: dict[str, set[str]] = {n: set() for n in names}

    def fresh(task: Task) -> Fields:
        """Inputs not drawn before for this task (so val and test inputs are new); some tasks have few."""
        for _ in range(1000):
            fields = task.draw(rng)
            key = json.dumps(fields, sort_keys=True)
            if key not in seen[task.name]:
                seen[task.name].add(key)
                return fields
        raise UserError(f"task {task.name} has run out of new inputs: ask for fewer items per task")

    def item(task: Task, phrasing: str, group: str | None = None) -> dict:
        fields = fresh(task)
        line = {"prompt": task.prompt(fields, phrasing), "response": task.answer(fields), "task": task.name}
        if with_fields:
            line["fields"] = fields
        return line if group is None else {**line, "group": group}

    suite: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for name in trained:
        task = TASKS[name]
        suite["train"] += [item(task, rng.choice(task.trained_phrasings)) for _ in range(train_per_task)]
    for name in trained:
        task = TASKS[name]
        suite["val"] += [item(task, rng.choice(task.trained_phrasings)) for _ in range(val_per_task)]
        suite["test"] += [item(task, rng.choice(task.trained_phrasings), "new_inputs") for _ in range(test_per_task)]
        suite["test"] += [item(task, task.held_out_phrasing, "new_phrasings") for _ in range(test_per_task)]
    for name in left_out:
        task = TASKS[name]
        suite["test"] += [item(task, rng.choice(task.phrasings), "held_out_tasks") for _ in range(test_per_task)]
    rng.shuffle(suite["train"])
    return suite


