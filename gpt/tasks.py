"""A suite of small tasks with exactly checkable answers, and a scorer: what instruction tuning is measured with.

Its place in the flow: after training, beside gpt/evaluate.py. Loss says how well a model predicts text;
these say whether it does what it is asked, and stops:

    python -m gpt.tasks make --out data/tasks          train.jsonl, val.jsonl, test.jsonl (offline, seeded)
    python -m gpt.tasks eval --ckpt out/sft_tasks --data data/tasks/test.jsonl [--json]
    python -m gpt.tasks pairs --out data/task_pairs    preference pairs on the same items (gpt/dpo.py trains on them)

The tasks are procedural (reverse a word, add two numbers, look up a key, ...): each draws random inputs,
knows its one correct answer, can build plausible wrong ones (for preference pairs), and is phrased several
ways. The last phrasing of each task never appears in training. The test split holds three groups:

    new_inputs        the trained tasks and phrasings, on inputs never seen in training
    new_phrasings     the trained tasks asked with the phrasing never seen in training
    held_out_tasks    tasks left out of training entirely (by default lowercase and max_number)

Lines are {"prompt", "response", "task"} (+ "group" in test.jsonl): the forms train.py reads (gpt/chat.py).

The scorer answers every prompt greedily with the checkpoint's chat template (gpt/chat.py), stops at the end
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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from gpt.atomic import write_text
from gpt.config import parse_args, setting
from gpt.errors import UserError, exit_on_user_error

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
]}
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
    names = list(tasks) or list(TASKS)
    unknown = [n for n in [*names, *held_out] if n not in TASKS]
    if unknown:
        raise UserError(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
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


# ---------------------------------------------------------------------------------------------------
# Preference pairs: the right answer against a plausible wrong one


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
        raise UserError(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
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


# ---------------------------------------------------------------------------------------------------
# Scoring


def exact_match(answer: str, expected: str) -> bool:
    return answer.strip() == expected.strip()


def score(items: Sequence[Any], answers: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """Exact match and the share of answers that ended properly, overall, per task and per group.

    items: Conversations (gpt/chat.py) with .answer, .task and .extra.get("group"); answers: (text, ended).
    """
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")

    def summary(rows: list[tuple[bool, bool]]) -> dict[str, Any]:
        return {"n": len(rows), "exact_match": sum(r[0] for r in rows) / len(rows),
                "ended": sum(r[1] for r in rows) / len(rows)}

    rows = [(exact_match(text, item.answer), ended) for item, (text, ended) in zip(items, answers)]
    by_task: dict[str, list] = {}
    by_group: dict[str, dict[str, list]] = {}
    for item, row in zip(items, rows):
        task = item.task or "(no task)"
        by_task.setdefault(task, []).append(row)
        group = item.extra.get("group")
        if group is not None:
            by_group.setdefault(str(group), {}).setdefault(task, []).append(row)
    report: dict[str, Any] = {**summary(rows), "tasks": {t: summary(r) for t, r in sorted(by_task.items())}}
    if by_group:
        report["groups"] = {}
        for group in sorted(by_group, key=lambda g: (GROUPS.index(g) if g in GROUPS else len(GROUPS), g)):
            tasks = {t: summary(r) for t, r in sorted(by_group[group].items())}
            pooled = summary([r for rs in by_group[group].values() for r in rs])
            pooled["task_mean"] = sum(s["exact_match"] for s in tasks.values()) / len(tasks)
            report["groups"][group] = {**pooled, "tasks": tasks}
    return report


UNASKABLE = ("", False)  # the answer to a prompt the model's tokenizer cannot encode


def answer_all(loaded: Any, items: Sequence[Any], *, max_new_tokens: int, batch_size: int,
               dtype: Any = None, progress: bool = False) -> list[tuple[str, bool]]:
    """Greedy answers (text, ended) to every item's prompt, with the model's chat template (else plain text).

    Prompts of the same length in tokens are answered together in one batch (no padding needed); each answer
    stops at its own end, and a batch when all have ended or max_new_tokens are written.
    """
    import torch
    from tqdm import tqdm

    from gpt.generate import generate_tokens

    model, tokenizer, template = loaded.model, loaded.tokenizer, loaded.chat_template
    device = next(model.parameters()).device
    dtype = dtype or torch.float32
    prompts: list[list[int] | None] = []
    for item in items:
        try:
            if template is not None:
                prompts.append(template.prompt(item.prompt))
            else:
                prompts.append(tokenizer.encode("\n".join(m.content for m in item.prompt) + "\n"))
        except UserError:
            prompts.append(None)  # a character the model's vocabulary lacks: it cannot be asked, scored wrong
    answers: list[tuple[str, bool]] = [UNASKABLE] * len(items)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        if ids is not None:
            by_length.setdefault(len(ids), []).append(i)
    batches = [group[k:k + batch_size] for _, group in sorted(by_length.items())
               for k in range(0, len(group), batch_size)]
    bar = tqdm(total=sum(len(b) for b in batches), desc="answering", unit="item", disable=not progress, leave=False)
    for batch in batches:
        ids = torch.tensor([prompts[i] for i in batch], dtype=torch.long, device=device)
        generated: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        for step_ids in generate_tokens(model, ids, max_new_tokens, temperature=0.0, dtype=dtype,
                                        vocab_size=tokenizer.vocab_size):
            for b, token in enumerate(step_ids.tolist()):
                if done[b]:
                    continue
                generated[b].append(token)
                if template is not None:
                    done[b] = token in template.stop_ids
                else:
                    done[b] = token == tokenizer.eot_id or "\n" in tokenizer.decode(generated[b])
            if all(done):
                break
        for b, i in enumerate(batch):
            if template is not None:
                answers[i] = template.answer_text(generated[b])
            else:
                text = tokenizer.decode(generated[b])
                answers[i] = (text.split("\n", 1)[0], "\n" in text)
        bar.update(len(batch))
    bar.close()
    return answers


# ---------------------------------------------------------------------------------------------------
# Command line


@dataclass
class MakeConfig:
    out: str = setting("data/tasks", "folder to write train.jsonl, val.jsonl and test.jsonl into")
    seed: int = setting(1234, "random seed: the same seed and settings write the same files")
    train_per_task: int = setting(2000, "training items per trained task")
    val_per_task: int = setting(50, "validation items per trained task (trained phrasings, new inputs)")
    test_per_task: int = setting(100, "test items per task in each test group")
    tasks: list[str] = setting([], f"only these tasks (default: all of {', '.join(TASKS)}); repeat or join with ','")
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
class ScoreConfig:
    ckpt: str = setting("out/sft_tasks", "the model: an out_dir (best.pt, else ckpt.pt), a .pt checkpoint, or a local Hugging Face GPT-2 folder")
    adapter: str | None = setting(None, "a LoRA adapter (the out_dir or .pt of a run with lora_rank > 0) to apply to the --ckpt model, its base")
    base: str | None = setting(None, "with a LoRA run's checkpoint as --ckpt: where its base model is, if it moved since training")
    data: str = setting("data/tasks/test.jsonl", "a JSONL of prompt/response, instruction or messages lines (the last assistant message is the expected answer)")
    max_new_tokens: int = setting(64, "longest answer, in tokens; an answer that reaches it has not ended")
    batch_size: int = setting(64, "prompts answered together")
    limit: int = setting(0, "score only the first N lines (0 = all)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "auto (bf16 on CUDA, fp32 elsewhere), float32, bfloat16 or float16")
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
    from gpt.chat import read_conversations
    from gpt.checkpoint import load_model
    from gpt.device import pick_device, pick_dtype

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
    from gpt.chat import file_form

    if file_form(path) == "pairs":
        return score_pairs_main(cfg, path)
    items = read_conversations([path])
    if cfg.limit:
        items = items[: cfg.limit]
    device = pick_device(cfg.device)
    loaded = load_model(cfg.ckpt, device, adapter=cfg.adapter, base=cfg.base)
    answers = answer_all(loaded, items, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                         dtype=pick_dtype(cfg.dtype, device), progress=cfg.progress and sys.stderr.isatty())
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
    """eval on a file of preference pairs: how the model ranks the two answers of each (gpt/dpo.py score_pairs)."""
    from gpt.checkpoint import load_model
    from gpt.device import pick_device
    from gpt.dpo import read_pairs, score_pairs
    from gpt.runtime import add_token_rows

    pairs = read_pairs(path)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    device = pick_device(cfg.device)
    loaded = load_model(cfg.ckpt, device)
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
        from gpt.chat import ChatTemplate

        if ChatTemplate.add_tokens(ref.tokenizer).to_dict() != loaded.tokenizer.to_dict():
            raise UserError(f"the reference {ref.path} has another tokenizer than {loaded.path}: give the model it "
                            "was tuned from (--ref), or --ref=none")
        reference = add_token_rows(ref.model, ref.tokenizer.vocab_size, loaded.tokenizer.vocab_size).to(device)
        reference.eval()
    model = loaded.model.eval()
    report = score_pairs(model, loaded.chat_template, pairs, batch_size=cfg.batch_size, reference=reference,
                         beta=float(config.get("dpo_beta", 0.1)))
    report = {"ckpt": str(loaded.path), "data": str(path), "reference": None if reference is None else str(ref.path),
              **report}
    print(json.dumps(report) if cfg.json else format_pairs_report(report))
    return 0


def _tuned_on_pairs(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's run trained on preference pairs (its data files, where they still are, say so)."""
    from gpt.chat_data import jsonl_files, jsonl_kind

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
