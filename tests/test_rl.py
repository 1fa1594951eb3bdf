"""Reinforcement learning (gpt/post/rl.py): the advantages and the loss against hand computations, the reward's
one-line errors, answers sampled with rows leaving the batch as they end, and short runs through train.py that
raise the reward, resume exactly, train an adapter, and take a reward function of the user's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt_io
from gpt.errors import UserError
from gpt.post.chat import read_conversations
from gpt.post.rl import Reward, group_advantages, policy_gradient_loss, sample_answers, sequences, token_logprobs
from gpt.post.tasks import cli
from gpt.post.tasks.scoring import answer_all
from gpt.trainer import main as train

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------
# The advantages and the loss


def test_advantages_are_the_reward_minus_the_group_mean_optionally_over_its_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
    assert group_advantages(rewards).tolist() == [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.5, -0.5, -0.5, 1.5]]
    # Divided by the group's (unbiased) std: [1, 0, 0, 1] has std sqrt(1/3); a group all alike stays 0.
    scaled = group_advantages(rewards, divide_by_std=True)
    root3 = math.sqrt(3)
    assert scaled[0].tolist() == pytest.approx([0.5 * root3, -0.5 * root3, -0.5 * root3, 0.5 * root3], rel=1e-5)
    assert scaled[1].tolist() == [0, 0, 0, 0]


def test_the_loss_is_the_token_normalised_policy_gradient_plus_the_k3_kl():
    # Two answers: the first 2 tokens (log p -1 and -2, advantage +1), the second 1 token (log p -3, advantage -1);
    # the last column of the second row is not an answer token and counts nothing whatever its value.
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, -50.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    advantages = torch.tensor([1.0, -1.0])
    out = policy_gradient_loss(logprobs, mask, advantages)
    # -(1 * (-1) + 1 * (-2) + (-1) * (-3)) / 3 tokens = 0
    assert out["loss"].item() == pytest.approx(0.0) and "kl" not in out
    out["loss"].backward()
    # d loss / d log p = -A / N_tokens on answer tokens, 0 elsewhere: up for the good answer, down for the bad one.
    assert torch.allclose(logprobs.grad, torch.tensor([[-1 / 3, -1 / 3], [1 / 3, 0.0]]))
    # The KL: k3 = e^q - q - 1 with q = log p_ref - log p, per answer token: q = log 2, 0, -log 2.
    reference = torch.tensor([[-1.0 + math.log(2), -2.0], [-3.0 - math.log(2), 7.0]])
    out = policy_gradient_loss(logprobs.detach(), mask, advantages, reference, kl_weight=0.5)
    k3 = [(2 - math.log(2) - 1), 0.0, (0.5 + math.log(2) - 1)]
    assert out["kl"].item() == pytest.approx(sum(k3) / 3, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.0 + 0.5 * sum(k3) / 3, rel=1e-5)


def test_token_logprobs_and_sequences_score_the_answer_tokens_only():
    # Prompt [5, 6] with answers [7, 8] and [9]: x = prompt + answer minus the last, y the answer under its place.
    x, y = sequences([[5, 6]], [[7, 8], [9]], group=2, pad_id=0, device=torch.device("cpu"))
    assert x.tolist() == [[5, 6, 7], [5, 6, 0]] and y.tolist() == [[-1, 7, 8], [-1, 9, -1]]
    logits = torch.zeros(2, 3, 10)  # uniform over 10: log p = -log 10 where scored, 0 elsewhere
    assert torch.allclose(token_logprobs(logits, y), (y >= 0) * -math.log(10))


# ---------------------------------------------------------------------------------------------------
# Rewards


def _module(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(body, encoding="utf-8")
    return path


def test_a_reward_function_of_the_user_is_called_with_prompt_answer_and_reference(tmp_path, monkeypatch):
    _module(tmp_path, "my_reward", "def score(prompt, answer, reference):\n    return len(prompt) + (answer == reference)\n")
    monkeypatch.chdir(tmp_path)  # a module beside where the command runs
    assert Reward("my_reward:score")("abc", "x", "x") == 4.0
    assert Reward(f"{tmp_path / 'my_reward.py'}:score")("ab", "x", "y") == 2.0  # or named by its file
    assert Reward("exact")("q", " 42 ", "42") == 1.0 and Reward("exact")("q", "41", "42") == 0.0


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz:score", "cannot import the reward module 'no_such_module_xyz' (ModuleNotFoundError"),
    ("broken_reward:score", "cannot import the reward module 'broken_reward' (ZeroDivisionError"),
    ("good_reward:nothing", "the reward module 'good_reward' has no function 'nothing'"),
    ("good_reward", "reward must be exact (the task suite's exact match"),
    ("missing.py:score", "the file missing.py does not exist"),
])
def test_a_reward_that_cannot_be_imported_is_a_one_line_error(tmp_path, monkeypatch, spec, message):
    _module(tmp_path, "broken_reward", "1 / 0\n")
    _module(tmp_path, "good_reward", "def score(p, a, r):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        Reward(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("body,message", [
    ("return 'right'", "returned 'right' (str) for the prompt 'p': it must return a finite number"),
    ("return None", "returned None (NoneType)"),
    ("return float('nan')", "returned nan (float)"),
    ("return int(a)", "raised ValueError: invalid literal for int() with base 10: 'x' (for the prompt 'p' and the "
                      "answer 'x')"),
])
def test_a_reward_that_returns_no_number_is_a_one_line_error(tmp_path, body, message):
    path = _module(tmp_path, "odd_reward", f"def score(p, a, r):\n    {body}\n")
    with pytest.raises(UserError) as e:
        Reward(f"{path}:score")("p", "x", "y")
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------
# Through train.py, on a tiny instruction-tuned model


def _args(root: Path, out: str, *extra: str) -> list[str]:
    return [f"--data_dir={root / 'data'}", f"--out_dir={root / out}", "--n_layer=2", "--n_head=2", "--n_embd=48",
            "--block_size=64", "--batch_size=8", "--eval_iters=2", "--log_interval=50", "--plot=false",
            "--progress=false", "--peak_flops=1e11", "--threads=1", "--arch=gpt2", "--optimizer=adamw", *extra]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """A tiny suite, and a tiny model instruction-tuned on it for a few steps: it answers, often wrongly."""
    root = tmp_path_factory.mktemp("rl")
    common = ["--train_per_task=200", "--val_per_task=16", "--test_per_task=8", "--tasks=length,compare,copy",
              "--held_out=copy"]
    assert cli.main(["make", f"--out={root / 'suite'}", *common]) == 0
    assert train([f"--data={root / 'suite' / 'train.jsonl'}", f"--val_data={root / 'suite' / 'val.jsonl'}",
                  *_args(root, "sft", "--batch_size=16", "--max_iters=40", "--eval_interval=40",
                         "--learning_rate=5e-3")]) == 0
    return root


def _records(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _rl(root: Path, out: str, *extra: str) -> list[str]:
    return ["--rl", f"--data={root / 'suite' / 'train.jsonl'}", f"--val_data={root / 'suite' / 'val.jsonl'}",
            f"--init_from={root / 'sft'}", "--rl_group=4", "--rl_max_tokens=8", *_args(root, out, *extra)]


def test_sampled_greedy_answers_are_the_scorers(tuned):
    # The batched sampler, whose rows leave the batch as their answers end, answers greedily exactly as the task
    # scorer does (one decoding loop, gpt/decoding.py, under both).
    loaded = ckpt_io.load_model(tuned / "sft")
    items = read_conversations([tuned / "suite" / "val.jsonl"])[:12]
    prompts = [loaded.chat_template.prompt(item.prompt) for item in items]
    sampled = sample_answers(loaded.model, loaded.chat_template, prompts, group=2, temperature=0.0, max_tokens=8,
                             vocab_size=loaded.tokenizer.vocab_size)
    scored = answer_all(loaded.model, loaded.tokenizer, loaded.chat_template, items, max_new_tokens=8, batch_size=4)
    assert sampled.texts[::2] == sampled.texts[1::2] == [text for text, _ in scored]
    assert sampled.ended[::2] == [ended for _, ended in scored]


def _numbers(folder: Path) -> Path:
    return _module(folder, "numbers", "def score(prompt, answer, reference):\n"
                                      "    return 1.0 if answer.strip().isdigit() else 0.0\n")


def test_a_short_rl_run_raises_the_reward_of_a_users_function(tuned, capsys, tmp_path):
    # A toy task on the tiny model, whose answers are still mostly noise: a reward of the user's own, given as a
    # file, that pays 1 for an answer that is a number ('7', '23'), 0 for anything else ('3g)H', '').
    reward = _numbers(tmp_path)
    capsys.readouterr()
    assert train(_rl(tuned, "rl", f"--reward={reward}:score", "--max_iters=20", "--eval_interval=20",
                     "--eval_iters=4", "--learning_rate=3e-3", "--warmup_iters=0", "--decay_lr=false")) == 0
    out = capsys.readouterr().out
    assert "reinforcement learning: 4 answers per prompt at temperature 1" in out and f"reward {reward}:score" in out
    assert "KL reference: a frozen copy of the starting model" in out
    start, end = _records(tuned / "rl", "eval")
    assert start["val_kl"] == 0 and end["val_kl"] > 0
    assert end["val_reward"] > start["val_reward"] + 0.2, (start, end)
    assert {"val_pass1", "val_passk", "val_answer_len", "val_greedy_reward", "train_reward"} <= set(end)
    assert end["val_loss"] == -end["val_greedy_reward"]
    # The tuned model keeps the chat template: the scorer and sampling use it.
    assert ckpt_io.load_model(tuned / "rl").chat_template is not None


def test_an_rl_run_resumes_exactly(tuned):
    every = ["--log_interval=1", "--eval_interval=2", "--eval_iters=1", "--rl_kl=0.1", "--learning_rate=3e-3"]
    assert train(_rl(tuned, "whole", "--max_iters=4", *every)) == 0
    assert train(_rl(tuned, "half", "--max_iters=2", *every)) == 0
    assert train([f"--out_dir={tuned / 'half'}", "--resume", "--max_iters=4"]) == 0
    for kind in ("train", "eval"):
        whole, half = _records(tuned / "whole", kind), _records(tuned / "half", kind)
        for record in whole + half:
            record.pop("elapsed", None), record.pop("tok_per_s", None), record.pop("mfu", None)
        assert half == whole, kind
    assert len(_records(tuned / "whole", "train")) == 4


def test_a_lora_rl_run_measures_its_kl_against_the_adapter_switched_off(tuned, capsys, tmp_path):
    capsys.readouterr()
    assert train(_rl(tuned, "lora", f"--reward={_numbers(tmp_path)}:score", "--lora_rank=4", "--learning_rate=1e-2", "--max_iters=3", "--eval_interval=3",
                     "--eval_iters=1", "--rl_kl=0.05")) == 0
    assert "KL reference: the same model with its LoRA adapter switched off" in capsys.readouterr().out
    start, end = _records(tuned / "lora", "eval")
    assert start["val_kl"] == 0 and end["val_kl"] > 0
    assert "adapter" in ckpt_io.load_checkpoint(tuned / "lora" / "ckpt.pt")


def test_rl_refuses_a_reward_it_cannot_use_in_one_line(tuned, capsys, tmp_path):
    capsys.readouterr()
    for spec, message in (("no_such_module_xyz:f", "cannot import the reward module"),
                          (f"{_module(tmp_path, 'text', 'def score(p, a, r):  return a')}:score",
                           "it must return a finite number")):
        code = train(_rl(tuned, "refused", f"--reward={spec}", "--max_iters=1"))
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tuned / "refused" / "ckpt.pt").exists()
    code = train(["--rl", f"--data={tuned / 'suite' / 'train.jsonl'}", *_args(tuned, "refused", "--max_iters=1")])
    err = capsys.readouterr().err
    assert code == 2 and "give --init_from" in err and err.count("\n") == 1


def test_the_example_task_set_and_its_reward_run_end_to_end(tuned, capsys):
    # examples/rl_vowels.py: a task set of the user's own (prompt/response JSONL) and its reward with partial credit.
    import subprocess
    import sys

    folder = tuned / "vowels"
    subprocess.run([sys.executable, str(REPO / "examples" / "rl_vowels.py"), f"--out={folder}", "--train=64",
                    "--val=16"], check=True, capture_output=True, cwd=REPO)
    first = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    assert first["task"] == "count_vowels" and "vowels" in first["prompt"] and first["response"].isdigit()
    spec = f"{REPO / 'examples' / 'rl_vowels.py'}:score"
    reward = Reward(spec)
    assert [reward("", answer, "2") for answer in ("2", " 3", "1", "4", "two")] == [1.0, 0.5, 0.5, 0.0, 0.0]
    capsys.readouterr()
    assert train(["--rl", f"--data={folder / 'train.jsonl'}", f"--val_data={folder / 'val.jsonl'}",
                  f"--init_from={tuned / 'sft'}", f"--reward={spec}", "--rl_group=4", "--rl_max_tokens=4",
                  *_args(tuned, "vowels_run", "--max_iters=2", "--eval_interval=2", "--eval_iters=1")]) == 0
    assert "64 train / 16 val prompts (1 task)" in capsys.readouterr().out
    assert {"val_reward", "val_pass1"} <= set(_records(tuned / "vowels_run", "eval")[-1])
