"""A task set of your own for reinforcement learning, with your own reward: how many vowels are in a word?

Two things live here, the two a user brings to `train.py --rl`:

    python examples/rl_vowels.py --out data/vowels          writes train.jsonl and val.jsonl (prompt/response)
    python train.py configs/rl_tasks_cpu.toml --data=data/vowels/train.jsonl --val_data=data/vowels/val.jsonl \\
        --reward=examples/rl_vowels.py:score --out_dir=out/rl_vowels

`score` is the reward: train.py calls it with (prompt, answer, reference) for every sampled answer. It gives
partial credit: 1 for the right count, 0.5 for a count one off, 0 otherwise (or for an answer that is not a
number). The instruction-tuned model never saw this task; it has learned to count one letter (count_letter),
which is the skill this task leans on.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from gpt.atomic import write_text

VOWELS = "aeiou"
PHRASINGS = ("How many vowels are in {word}?", "Count the vowels in {word}.")


def score(prompt: str, answer: str, reference: str) -> float:
    """The reward of one answer: 1.0 right, 0.5 one off, else 0.0."""
    try:
        given = int(answer.strip())
    except ValueError:
        return 0.0
    miss = abs(given - int(reference))
    return 1.0 if miss == 0 else 0.5 if miss == 1 else 0.0


def item(rng: random.Random) -> dict:
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
    count = sum(c in VOWELS for c in word)
    return {"prompt": rng.choice(PHRASINGS).format(word=word), "response": str(count), "task": "count_vowels"}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the count-the-vowels task set (prompt/response JSONL).")
    parser.add_argument("--out", default="data/vowels", help="folder for train.jsonl and val.jsonl")
    parser.add_argument("--train", type=int, default=2000, help="training prompts")
    parser.add_argument("--val", type=int, default=100, help="held-out prompts")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", args.train), ("val", args.val)):
        lines = [json.dumps(item(rng)) for _ in range(count)]
        write_text(out / f"{name}.jsonl", "\n".join(lines) + "\n")  # whole or not at all
        print(f"{out / name}.jsonl: {count} prompts")


if __name__ == "__main__":
    main()
