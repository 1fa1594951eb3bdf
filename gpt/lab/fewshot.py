"""`python -m gpt.lab fewshot`: in-context learning on real tasks, as exact match against the number of examples
shown in the prompt (0, 1, 2, 4, 8, ... as many as fit in block_size, task by task).

The task set is JSONL, one example per line, in any of three shapes:

    {"prompt": "...", "response": "...", "task": "..."}                 ("task" is optional everywhere)
    {"instruction": "...", "input": "...", "output": "..."}             prompt = instruction, newline, input
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
                                                                        the last assistant turn is the response,
                                                                        the user turn before it the prompt

Each example is asked with k solved examples of the same task before it, all written with one plain-text
template (default "Input: {prompt}\\nOutput: {response}\\n"): the shots in full, then the question up to
{response}. The model continues greedily until the template's end (the text after {response}) appears;
the answer counts when it equals the response, both stripped of surrounding whitespace. The shots of an
example are the first k of a seeded shuffle of the task's other examples, so each k adds to the k before.
Each task is scored up to the most shots at which all of its prompts fit in block_size; the overall exact match
at k is over the tasks scored at k (the report says how many).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt.config import parse_args, setting
from gpt.errors import UserError, exit_on_user_error, plural
from gpt.decoding import TextStream, generate_tokens
from gpt.generate import unescape
from gpt.lab import plots
from gpt.lab.output import table, write_json
from gpt.inference import ModelSettings
from gpt.lab.probes import load, out_path


@dataclass
class FewshotConfig(ModelSettings):
    data: str = setting("", "the task set: a JSONL file of prompt/response (or instruction/input/output, or messages) lines")
    template: str = setting("Input: {prompt}\nOutput: {response}\n", "how one example is written; the text after {response} ends an answer (\\n for newline)")
    max_shots: int = setting(64, "the most examples to put in a prompt (fewer when block_size or the task set is shorter)")
    max_examples: int = setting(50, "examples scored per task (a seeded sample; 0 = all)")
    max_new_tokens: int = setting(0, "longest answer generated (0 = the longest response's tokens + 4)")
    seed: int = setting(0, "seeds the choice of examples and of their shots")
    out_dir: str = setting("out/lab/fewshot", "where fewshot.json and fewshot.png go (replaced if there)")


@dataclass
class Example:
    prompt: str
    response: str
    task: str


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} must be a string")
    return value


def parse_example(record: Any, where: str) -> Example:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with prompt/response, instruction/output or messages")
    task = _text(record.get("task", "all"), "task", where)
    if "prompt" in record and "response" in record:
        return Example(_text(record["prompt"], "prompt", where), _text(record["response"], "response", where), task)
    if "instruction" in record and "output" in record:
        prompt = _text(record["instruction"], "instruction", where)
        extra = _text(record.get("input", ""), "input", where)
        return Example(prompt + ("\n" + extra if extra else ""), _text(record["output"], "output", where), task)
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise UserError(f"{where}: messages must be a list of {{\"role\", \"content\"}} objects")
        roles = [m.get("role") for m in messages]
        if "assistant" not in roles:
            raise UserError(f"{where}: the messages have no assistant turn to score")
        answer = len(roles) - 1 - roles[::-1].index("assistant")
        users = [i for i in range(answer) if roles[i] == "user"]
        if not users:
            raise UserError(f"{where}: no user turn before the last assistant turn")
        return Example(_text(messages[users[-1]].get("content"), "content", where),
                       _text(messages[answer].get("content"), "content", where), task)
    raise UserError(f"{where}: expected prompt/response, instruction/output or messages (keys found: "
                    f"{', '.join(sorted(record)) or 'none'})")


def read_examples(path: str) -> list[Example]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"task file {file} not found")
    examples = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{file}:{number}: not valid JSON ({e.msg})") from None
        examples.append(parse_example(record, f"{file}:{number}"))
    if not examples:
        raise UserError(f"{file} holds no examples")
    return examples


def split_template(template: str) -> tuple[str, str, str]:
    """The template's text before {prompt}, between {prompt} and {response}, and after {response} (the end)."""
    if template.count("{prompt}") != 1 or template.count("{response}") != 1 or \
            template.index("{prompt}") > template.index("{response}"):
        raise UserError("the template needs one {prompt} followed by one {response}, e.g. 'Input: {prompt}\\nOutput: {response}\\n'")
    before, rest = template.split("{prompt}")
    middle, end = rest.split("{response}")
    if not end:
        raise UserError("the template needs text after {response} (e.g. a newline): it marks where an answer ends")
    return before, middle, end


def shot_counts(max_shots: int) -> list[int]:
    counts, k = [0], 1
    while k <= max_shots:
        counts.append(k)
        k *= 2
    return counts


def build_prompt(shots: list[Example], question: Example, parts: tuple[str, str, str]) -> str:
    before, middle, end = parts
    solved = "".join(f"{before}{s.prompt}{middle}{s.response}{end}" for s in shots)
    return f"{solved}{before}{question.prompt}{middle}"


def greedy_answer(model, tokenizer, prompt_ids: list[int], max_new_tokens: int, stop: str, device) -> str:
    stream = TextStream(tokenizer, [stop])
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    for next_id in generate_tokens(model, ids, max_new_tokens, temperature=0.0, vocab_size=tokenizer.vocab_size):
        token = int(next_id[0])
        if token == tokenizer.eot_id:
            break
        stream.push(token)
        if stream.done:
            break
    stream.finish()
    return stream.text


def run_fewshot(cfg: FewshotConfig, say=print) -> dict[str, Any]:
    parts, examples = read_task_set(cfg)
    loaded, device = load(cfg)
    model, tokenizer = loaded.model, loaded.tokenizer
    block_size = model.config.block_size
    questions = choose_questions(examples, cfg.max_examples, random.Random(cfg.seed))

    stop = parts[2]
    answer_budget = cfg.max_new_tokens or max(len(tokenizer.encode(ex.response + stop)) for ex in examples) + 4
    counts_by_task, stopped = shots_that_fit(questions, parts, tokenizer, cfg.max_shots, answer_budget, block_size)
    counts = sorted(set().union(*counts_by_task.values()))

    early = f"; {plural(len(stopped), 'task')} stop{'s' if len(stopped) == 1 else ''} early (see 'stopped' in the report)"
    say(f"fewshot: {plural(sum(len(v) for v in questions.scored.values()), 'example')} in "
        f"{plural(len(questions.tasks), 'task')}, shots {counts}" + (early if stopped else ""))
    scores = Scores(results={task: [] for task in questions.tasks})
    for k in counts:
        score_shots(k, questions, counts_by_task, parts, model, tokenizer, answer_budget, device, scores)
        say(f"  {k:>3} shots: exact match {scores.overall[-1]:.3f} ({scores.tasks_scored[-1]} of "
            f"{len(questions.tasks)} tasks)")

    report = {"ckpt": str(loaded.path), "data": cfg.data, "template": cfg.template, "shots": counts,
              "stopped": stopped, "tasks_scored": scores.tasks_scored,
              "exact_match": {"overall": scores.overall, "tasks": scores.results},
              "examples": {task: len(v) for task, v in questions.scored.items()}, "samples": scores.samples}
    write_report(report, counts, scores, cfg.out_dir, say)
    return report


def read_task_set(cfg: FewshotConfig) -> tuple[tuple[str, str, str], list[Example]]:
    """The template's parts and the examples, checked before the model is loaded."""
    if not cfg.data:
        raise UserError("give the task set: --data tasks.jsonl (lines of prompt/response)")
    if cfg.max_shots < 0 or cfg.max_examples < 0 or cfg.max_new_tokens < 0:
        raise UserError("max_shots, max_examples and max_new_tokens must be 0 or more")
    parts = split_template(unescape(cfg.template))
    stop = parts[2]
    examples = read_examples(cfg.data)
    for i, ex in enumerate(examples):
        if stop in ex.response:
            raise UserError(f"example {i + 1}'s response contains the template's end {stop!r}, so its answer could never "
                            "match: choose a --template whose end cannot appear in a response")
    return parts, examples


@dataclass
class Questions:
    """The task set as it is asked: each task's examples, which of them are scored, and the shots of each."""

    tasks: dict[str, list[Example]]
    scored: dict[str, list[int]]  # task -> indexes (into its examples) that are asked
    shot_order: dict[tuple[str, int], list[int]]  # (task, asked index) -> the other examples, shuffled

    def prompt(self, task: str, i: int, k: int, parts: tuple[str, str, str]) -> str:
        """Example i of `task` asked after its first k shots."""
        items = self.tasks[task]
        return build_prompt([items[j] for j in self.shot_order[(task, i)][:k]], items[i], parts)


def choose_questions(examples: list[Example], max_examples: int, rng: random.Random) -> Questions:
    tasks: dict[str, list[Example]] = {}
    for ex in examples:
        tasks.setdefault(ex.task, []).append(ex)
    scored: dict[str, list[int]] = {}
    shot_order: dict[tuple[str, int], list[int]] = {}
    # One rng, drawn task by task in the order tasks first appear: the same seed asks the same questions.
    for task, items in tasks.items():
        indexes = list(range(len(items)))
        if max_examples and len(indexes) > max_examples:
            indexes = sorted(rng.sample(indexes, max_examples))
        scored[task] = indexes
        for i in indexes:
            others = [j for j in range(len(items)) if j != i]
            rng.shuffle(others)
            shot_order[(task, i)] = others
    return Questions(tasks, scored, shot_order)


def shots_that_fit(questions: Questions, parts: tuple[str, str, str], tokenizer, max_shots: int, answer_budget: int,
                   block_size: int) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Each task's shot counts, and why each task that stops early stops."""
    # Each task goes up to the most shots that fit: short tasks need not stop where the longest one does.
    counts_by_task: dict[str, list[int]] = {}
    stopped: dict[str, str] = {}
    for task, items in questions.tasks.items():
        counts_by_task[task] = []
        for k in shot_counts(max_shots):
            if k > len(items) - 1:
                stopped[task] = f"{k} shots: the task has only {len(items)} examples (k shots need k + 1)"
                break
            longest = max(len(tokenizer.encode(questions.prompt(task, i, k, parts))) for i in questions.scored[task])
            if longest + answer_budget > block_size:
                stopped[task] = (f"{k} shots: the longest prompt ({longest} tokens) and its answer ({answer_budget}) "
                                 f"do not fit in block_size {block_size}")
                break
            counts_by_task[task].append(k)
    if not any(counts_by_task.values()):
        raise UserError(f"not even a question without examples fits in block_size {block_size} with room for a "
                        f"{answer_budget}-token answer: shorten the prompts or lower --max_new_tokens")
    return counts_by_task, stopped


@dataclass
class Scores:
    """The curves, one point per shot count: exact match per task (nan where a task is not scored) and overall."""

    results: dict[str, list[float]]
    overall: list[float] = field(default_factory=list)
    tasks_scored: list[int] = field(default_factory=list)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # a few answers per shot count, to read


def score_shots(k: int, questions: Questions, counts_by_task: dict[str, list[int]], parts: tuple[str, str, str],
                model, tokenizer, answer_budget: int, device, scores: Scores) -> None:
    """Ask every scored question with k shots and add the point at k to `scores`."""
    stop = parts[2]
    right_total, asked_total, included = 0, 0, 0
    for task, items in questions.tasks.items():
        if k not in counts_by_task[task]:
            scores.results[task].append(float("nan"))
            continue
        right = 0
        for i in questions.scored[task]:
            prompt = questions.prompt(task, i, k, parts)
            answer = greedy_answer(model, tokenizer, tokenizer.encode(prompt), answer_budget, stop, device)
            correct = answer.strip() == items[i].response.strip()
            right += correct
            if len(scores.samples.setdefault(str(k), [])) < 3:
                scores.samples[str(k)].append({"task": task, "prompt": items[i].prompt, "expected": items[i].response,
                                               "answer": answer, "correct": correct})
        scores.results[task].append(right / len(questions.scored[task]))
        right_total += right
        asked_total += len(questions.scored[task])
        included += 1
    scores.overall.append(right_total / asked_total)
    scores.tasks_scored.append(included)


def write_report(report: dict[str, Any], counts: list[int], scores: Scores, out_dir: str, say) -> None:
    out = out_path(out_dir)
    write_json(out / "fewshot.json", report)
    results, overall = scores.results, scores.overall
    curves = {"overall": overall, **(results if len(results) > 1 else {})}
    drawn = plots.draw_fewshot(out / "fewshot.png", counts, curves)
    shown_tasks = list(results)[:6] if len(results) > 1 else []
    say(table([[k, scores.tasks_scored[n], overall[n]] + [results[t][n] for t in shown_tasks] for n, k in enumerate(counts)],
              ["shots", "tasks", "overall"] + shown_tasks))
    say(f"wrote {out / 'fewshot.json'}" + (f" and {out / 'fewshot.png'}" if drawn else ""))


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(FewshotConfig, argv, prog="python -m gpt.lab fewshot", description=(
        "Exact match on a task set against the number of solved examples put in the prompt.\n"
        "Example:\n  python -m gpt.lab fewshot --ckpt out/default --data tasks.jsonl"))
    run_fewshot(cfg)
    return 0
