"""Scoring a model on the task suite: answer every prompt greedily, compare with the one right answer.

Its place in the flow: after training, beside gpt/evaluate.py (loss says how well a model predicts text; exact
match says whether it does what it is asked, and stops). `python -m gpt.tasks eval` (cli.py) prints the report.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm import tqdm

from gpt.errors import UserError
from gpt.decoding import generate_tokens
from gpt.post.tasks.suite import GROUPS
from gpt.tokenizer import Tokenizer

def exact_match(answer: str, expected: str) -> bool:
    return answer.strip() == expected.strip()


def score(items: Sequence[Any], answers: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """Exact match and the share of answers that ended properly, overall, per task and per group.

    items: Conversations (gpt/post/chat.py) with .answer, .task and .extra.get("group"); answers: (text, ended).
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


def answer_all(model: torch.nn.Module, tokenizer: Tokenizer, template: Any, items: Sequence[Any], *,
               max_new_tokens: int, batch_size: int, dtype: Any = None,
               progress: bool = False) -> list[tuple[str, bool]]:
    """Greedy answers (text, ended) to every item's prompt, with the model's chat template (None: plain text).

    Prompts of the same length in tokens are answered together in one batch (no padding needed); each answer
    stops at its own end, and a batch when all have ended or max_new_tokens are written.
    """
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


