"""Reinforcement learning from answers a program can check: sample answers, score them, reinforce the good ones.

Its place in the flow: after instruction tuning (gpt/post/chat_data.py) and beside preference tuning
(gpt/post/dpo.py), as a kind of training data (gpt/datasets.py) that the same loop (gpt/trainer.py) trains on.
`train.py --rl --init_from=<a tuned model> --data=prompts.jsonl` reads prompt/response lines (the forms of
gpt/post/chat.py) as prompts to answer, each with its reference answer, and each step does, per prompt:

    prompt ──Decoder (gpt/decoding.py, KV cache, every row of the batch at once)──▶ G sampled answers
        ──reward(prompt, answer, reference)──▶ r_1..r_G   (the suite's exact match: 1 or 0; or the user's function)
        ──advantage A_i = r_i - mean(r)──▶ the policy-gradient loss on the answers' tokens (+ a KL penalty)

The loss. With answers sampled from the model being trained (on-policy: one optimizer step per sampled batch),
the gradient of the expected reward is E[A * grad log pi(answer)] (REINFORCE). The group's mean reward is the
baseline: an answer better than its siblings is pushed up, a worse one down, and a group whose answers all
score alike teaches nothing (all its advantages are 0) -- "group-relative" (GRPO, Shao et al. 2024; nanochat's
GSM8K RL). The loss is normalised per token (the sum over every answer token of the batch, divided by their
count), so a long answer does not weigh more per token than a short one:

    loss = -sum_{i,t} A_i log pi(a_{i,t} | ...) / N_tokens  +  rl_kl * sum_{i,t} k3_{i,t} / N_tokens

No ratio and no clipping (PPO's): the samples come from the very weights being stepped, so the ratio is 1.
Advantages are NOT divided by the group's standard deviation by default (rl_std = false): with 0/1 rewards
that division gives a prompt the model solves 1 time in 8 (or 7 in 8) far more weight than one it solves 4 in 8,
a bias towards the too-easy and too-hard prompts (Liu et al. 2025, "Understanding R1-Zero-Like Training",
"Dr. GRPO"); rl_std = true turns it on (GRPO's original form).

The KL penalty holds the model near the one it started from (rl_kl > 0): k3_t = exp(q) - q - 1 with
q = log pi_ref(a_t) - log pi(a_t), an unbiased, never negative per-token estimate of KL(pi || pi_ref)
(Schulman, "Approximating KL divergence", 2020). The starting model is a frozen copy in memory, or for a LoRA
run the same model with its adapter switched off (gpt/post/adapters.py), as DPO's reference.

Rewards (`reward`): "exact" is the task suite's check (gpt/post/tasks/scoring.py): 1 when the answer equals the
reference (the line's response), ignoring surrounding whitespace, else 0 -- the suite's tasks each have one
right answer, so none defines partial credit; a reward of your own can (a number per answer, any scale):

    --reward=my_rewards:score        (a module on the Python path, the current folder included)
    --reward=path/to/rewards.py:score
    def score(prompt: str, answer: str, reference: str) -> float

Exact resume: the random numbers that sample a batch's answers come from a generator seeded by (seed, the
batch's index in its stream, the process): part of the batch stream's state, which ckpt.pt saves, and
independent of evaluations (which draw from their own streams) -- a resumed run samples exactly the answers
the uninterrupted one would.

What an evaluation reports (each split's prompts; the same prompts and random draws every time):

    loss        -greedy_reward: the lower, the better (best.pt keeps the best)
    reward      the mean reward of the sampled answers (rl_group per prompt, at rl_temperature)
    greedy_reward   the mean reward of the greedy answer (temperature 0)
    pass1       greedy exact match: the share of prompts whose greedy answer is the reference
    passk       the share of prompts where at least one of the rl_group sampled answers is the reference. RL
                sharpens what the model can already sample: pass@k before bounds what pass@1 can reach after
    answer_len  the sampled answers' mean length in tokens (their end marker not counted)
    kl          KL(model || the starting model) per answer token, k3 estimated on the sampled answers
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from gpt.datasets import TrainingData, held_out, jsonl_files, next_indices
from gpt.decoding import Decoder
from gpt.errors import UserError, plural
from gpt.post.adapter_files import fingerprint
from gpt.post.adapters import adapters_disabled
from gpt.post.chat import ChatTemplate, Conversation, read_conversations
from gpt.post.dpo import frozen_copy, starting_reference
from gpt.post.tasks.scoring import exact_match
from gpt.sampling import sample
from gpt.tokenizer import Tokenizer
from gpt.tokenizer_files import TokenizerChoice

REFERENCE_KEY = "rl_reference"  # a full fine-tune's checkpoints: {"init_from", "fingerprint"} of its start
REWARD_HELP = "exact (the task suite's exact match with the line's response), or module:function / file.py:function"

# ---------------------------------------------------------------------------------------------------
# Rewards


RewardFunction = Callable[[str, str, str], float]


def exact_reward(prompt: str, answer: str, reference: str) -> float:
    """The task suite's check: 1.0 when the answer is the reference (whitespace around either ignored), else 0.0."""
    return 1.0 if exact_match(answer, reference) else 0.0


class Reward:
    """A reward function named by a setting, called safely: a one-line UserError for what the user must fix."""

    def __init__(self, spec: str):
        self.spec = spec
        self.function: RewardFunction = exact_reward if spec == "exact" else load_reward(spec)

    def __call__(self, prompt: str, answer: str, reference: str) -> float:
        try:
            value = self.function(prompt, answer, reference)
        except UserError:
            raise
        except Exception as e:  # the user's code: its failure, in one line, with the input that caused it
            raise UserError(f"the reward function {self.spec} raised {type(e).__name__}: {e} (for the prompt "
                            f"{prompt!r} and the answer {answer!r})") from None
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise UserError(f"the reward function {self.spec} returned {value!r} ({type(value).__name__}) for the "
                            f"prompt {prompt!r}: it must return a finite number (e.g. 1.0 for right, 0.0 for wrong)")
        return float(value)


def load_reward(spec: str) -> RewardFunction:
    """The function a `module:function` (or `file.py:function`) spec names, or a one-line UserError."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise UserError(f"reward must be {REWARD_HELP}; got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UserError(f"reward {spec}: the file {path} does not exist")
            found = importlib.util.spec_from_file_location(f"reward_{path.stem}", path)
            assert found is not None and found.loader is not None
            module = importlib.util.module_from_spec(found)
            found.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:  # a module beside where the command runs
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as e:  # ImportError, or the module failing while it is imported
        raise UserError(f"cannot import the reward module {module_name!r} ({type(e).__name__}: {e}): put it on the "
                        "Python path (the current folder counts) or name its file, --reward=path/to/file.py:function") \
            from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"the reward module {module_name!r} has no function {function_name!r}"
                        + ("" if function is None else f" (it is a {type(function).__name__})"))
    return function


# ---------------------------------------------------------------------------------------------------
# The loss


def group_advantages(rewards: torch.Tensor, divide_by_std: bool = False) -> torch.Tensor:
    """rewards [B, G] (G answers to each of B prompts) -> advantages [B, G]: each reward minus its group's mean,
    divided by the group's standard deviation (unbiased, + 1e-6) when `divide_by_std`."""
    advantages = rewards - rewards.mean(dim=1, keepdim=True)
    if divide_by_std:
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + 1e-6)
    return advantages


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p of each target token: logits [N, T, V], targets [N, T] (-1: not an answer token) -> [N, T] (0 there);
    in float32 whatever the logits' dtype."""
    N, T, V = logits.shape
    return -F.cross_entropy(logits.float().reshape(N * T, V), targets.reshape(N * T), ignore_index=-1,
                            reduction="none").view(N, T)


def policy_gradient_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                         reference_logprobs: torch.Tensor | None = None, kl_weight: float = 0.0
                         ) -> dict[str, torch.Tensor]:
    """The token-normalised policy-gradient loss (see the module docstring) and its parts.

    logprobs [N, T]: the model's log p of each answer token; mask [N, T]: True on answer tokens; advantages [N]:
    one per answer; reference_logprobs [N, T]: the starting model's (no gradient), for the KL estimate.
    Returns "loss", "pg" (the policy-gradient term) and, with a reference, "kl" (k3 per token).
    """
    mask = mask.float()
    tokens = mask.sum().clamp(min=1)
    pg = -(advantages[:, None] * logprobs * mask).sum() / tokens
    out = {"loss": pg, "pg": pg.detach()}
    if reference_logprobs is not None:
        q = reference_logprobs - logprobs
        kl = ((torch.exp(q) - q - 1) * mask).sum() / tokens
        out["kl"] = kl.detach()
        if kl_weight > 0:
            out["loss"] = pg + kl_weight * kl
    return out


# ---------------------------------------------------------------------------------------------------
# Sampling answers


@dataclass
class Answers:
    """Answers to a batch of prompts, G per prompt (answer j of prompt b is row b * G + j)."""

    tokens: list[list[int]]  # each answer's generated ids, its end marker included when it ended
    texts: list[str]
    ended: list[bool]


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile's and DDP's wrappers: sampling calls it directly (a DDP forward is a
    collective that every process would have to make the same number of times)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


def sample_answers(model: torch.nn.Module, template: ChatTemplate, prompts: list[list[int]], *, group: int,
                   temperature: float, max_tokens: int, generator: torch.Generator | None = None,
                   vocab_size: int | None = None, dtype: torch.dtype = torch.float32) -> Answers:
    """`group` answers to each prompt, all decoded side by side by one Decoder (KV cache): an answer stops at its
    first chat marker (its row leaves the batch) or after max_tokens. temperature 0 is greedy."""
    model = unwrapped(model)
    was_training = model.training
    model.eval()  # no dropout: the answers are the model's own
    rows = len(prompts) * group
    decoder = Decoder(model, dtype=dtype, vocab_size=vocab_size, max_rows=rows)
    for ids in prompts:
        for _ in range(group):
            decoder.add(ids)
    owner = list(range(rows))  # decoder row -> answer index (a row leaving moves the last one into its place)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    ended = [False] * rows
    try:
        for _ in range(max_tokens):
            picked = sample(decoder.next_logits(), temperature, generator=generator).tolist()
            decoder.append(picked)
            finished = []
            for row, token in enumerate(picked):
                tokens[owner[row]].append(token)
                if token in template.stop_ids:
                    ended[owner[row]] = token == template.end_id
                    finished.append(row)
            for row in reversed(finished):
                decoder.remove(row)
                owner[row] = owner[-1]
                owner.pop()
            if not owner:
                break
    finally:
        model.train(was_training)
    texts = [template.answer_text(t)[0] for t in tokens]
    return Answers(tokens, texts, ended)


def sequences(prompts: list[list[int]], answers: list[list[int]], group: int, pad_id: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [N, T] for scoring the answers: each row is a prompt then one of its answers; y is x shifted by one,
    -1 except where it is an answer token (the prompt and the padding are not scored)."""
    rows = [(prompts[i // group], answer) for i, answer in enumerate(answers)]
    T = max(len(p) + len(a) for p, a in rows) - 1
    x = np.full((len(rows), T), pad_id, dtype=np.int64)
    y = np.full((len(rows), T), -1, dtype=np.int64)
    for r, (prompt, answer) in enumerate(rows):
        ids = prompt + answer
        x[r, : len(ids) - 1] = ids[:-1]
        y[r, len(prompt) - 1: len(ids) - 1] = answer
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


# ---------------------------------------------------------------------------------------------------
# Prompts and their batches


@dataclass
class PromptBatch:
    """What the loop hands to RLData.loss/metrics: which prompts, and the seed of this batch's samples."""

    split: str  # "train" or "val": whose prompts the indices pick
    indices: list[int]
    seed: int


class PromptBatches:
    """A resumable stream of batches of prompts: a seeded shuffle per epoch, N processes taking slices of one
    global batch (as gpt/batches.py does with text). Each batch carries the seed of its answers' random draws,
    derived from (seed, batches drawn, rank): the state (epoch, position, drawn) fixes them too."""

    def __init__(self, split: str, usable: np.ndarray, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.split, self.usable, self.batch_size = split, usable, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.position, self.drawn = 0, 0, 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            self._order, self._order_epoch = rng.permutation(self.usable), epoch
        assert self._order is not None
        return self._order

    def next(self) -> PromptBatch:
        mine = next_indices(self)
        words = np.random.SeedSequence([self.seed, self.drawn, self.rank]).generate_state(2, dtype=np.uint32)
        self.drawn += 1
        seed = (int(words[0]) << 31) ^ int(words[1])  # 63 bits: what torch.Generator takes
        return PromptBatch(self.split, mine, seed)

    __next__ = next

    def __iter__(self) -> "PromptBatches":
        return self

    def state_dict(self) -> dict:
        return {"version": 1, "kind": "prompts", "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "drawn": self.drawn, "batch_size": self.batch_size, "prompts": int(len(self.usable)),
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "prompts":
            raise UserError("the saved batch stream is not one of RL prompts: resume on the same data with rl = true, "
                            "or start a new run")
        if state.get("prompts") != len(self.usable):
            raise UserError("cannot resume the prompt batches with another number of prompts: resume with the same "
                            "data, block_size and rl_max_tokens, or start a new run")
        self.epoch, self.position, self.drawn = int(state["epoch"]), int(state["position"]), int(state["drawn"])


# ---------------------------------------------------------------------------------------------------
# The kind of training data


@dataclass
class RLSettings:
    group: int = 8
    temperature: float = 1.0
    max_tokens: int = 32
    kl: float = 0.0
    std: bool = False


class RLData(TrainingData):
    """Prompts with reference answers, trained on by sampling answers and reinforcing those that score well."""

    kind = "rl"

    def __init__(self, train: list[Conversation], val: list[Conversation], tokenizer: Tokenizer, reward: Reward,
                 settings: RLSettings, *, source: str = ""):
        self.tokenizer = tokenizer
        self.template = ChatTemplate(tokenizer)
        self.reward, self.settings, self.source = reward, settings, source
        self.items = {"train": train, "val": val}
        self.prompt_ids: dict[str, list[list[int]]] = {}
        for split, items in self.items.items():
            ids = []
            for item in items:
                try:
                    ids.append(self.template.prompt(item.prompt))
                except UserError as e:
                    raise UserError(f"{item.where}: {e}") from None
            self.prompt_ids[split] = ids
        self.usable: dict[str, np.ndarray] = {}
        self.reference_logprobs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.reference_note = ""
        self.reference_record: dict[str, Any] | None = None
        self.fit_note = ""
        self._since_logged: list[tuple[float, int]] = []  # (mean reward, answers) of each training batch

    # ---- what the loop asks

    def describe(self) -> str:
        s = self.settings
        tasks = {item.task for item in self.items["train"] if item.task}
        return (f"{len(self.items['train']):,} train / {len(self.items['val']):,} val prompts"
                + (f" ({plural(len(tasks), 'task')})" if tasks else "")
                + f"; reinforcement learning: {s.group} answers per prompt at temperature {s.temperature:g}, at most "
                f"{plural(s.max_tokens, 'token')}, reward {self.reward.spec}, advantage = "
                + ("(reward - group mean) / group std" if s.std else "reward - group mean") + (f", KL weight {s.kl:g}" if s.kl else "") + self.fit_note)

    def check_fits(self, block_size: int, batch_size: int, world_size: int) -> None:
        """Prompts whose answer could run past the context (block_size - rl_max_tokens tokens) are left out."""
        room = block_size - self.settings.max_tokens
        notes = []
        for split, prompts in self.prompt_ids.items():
            lengths = np.asarray([len(p) for p in prompts], dtype=np.int64)
            if lengths.size == 0:
                raise UserError(f"the {split} split holds no prompts: give more data, or a --val_data file")
            self.usable[split] = np.flatnonzero(lengths <= room)
            left = len(prompts) - len(self.usable[split])
            if left == len(prompts):
                raise UserError(f"every {split} prompt (the shortest: {int(lengths.min())} tokens) leaves no room in "
                                f"block_size {block_size} for an answer of rl_max_tokens {self.settings.max_tokens}: "
                                "raise block_size or lower rl_max_tokens")
            if left:
                notes.append(f"{plural(left, split + ' prompt')} longer than block_size - rl_max_tokens = {room} "
                             "tokens left out")
        self.fit_note = "".join("; " + n for n in notes)

    def batches(self, split: str, block_size: int, batch_size: int, *, seed: int, device: torch.device | str = "cpu",
                rank: int = 0, world_size: int = 1) -> PromptBatches:
        if split not in self.usable:
            self.check_fits(block_size, batch_size, world_size)
        return PromptBatches(split, self.usable[split], batch_size, seed=seed, rank=rank, world_size=world_size)

    def checkpoint_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {"chat_template": self.template.to_dict()}
        if self.reference_record is not None:
            extras[REFERENCE_KEY] = self.reference_record
        return extras

    # ---- the starting model (the KL's reference)

    def use_starting_model(self, model: torch.nn.Module, cfg: Any, *, resumed_from: dict[str, Any] | None,
                           log: Any) -> None:
        """The model the run started from, for the KL penalty and the KL an evaluation reports: a LoRA run's model
        with its adapter off; else a frozen copy (a resumed run loads init_from again and checks its fingerprint,
        as DPO does)."""
        if getattr(model, "lora", None) is not None:
            def adapter_off(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                with adapters_disabled(model):
                    return token_logprobs(model(x, all_logits=True)[0], y)

            self.reference_logprobs = _frozen_call(model, adapter_off)
            self.reference_note = "KL reference: the same model with its LoRA adapter switched off"
            log(self.reference_note)
            return
        recorded = None if resumed_from is None else resumed_from.get(REFERENCE_KEY)
        reference = frozen_copy(model) if resumed_from is None else starting_reference(cfg, self.tokenizer, model,
                                                                                        recorded)
        self.reference_record = recorded or {"init_from": str(cfg.init_from), "fingerprint": fingerprint(reference)}
        self.reference_logprobs = _frozen_call(reference, lambda x, y: token_logprobs(
            reference(x, all_logits=True)[0], y))
        size = sum(p.numel() for p in reference.parameters()) / 1e6
        self.reference_note = (f"KL reference: a frozen copy of the starting model ({cfg.init_from}; {size:.2f}M "
                               "parameters more in memory)")
        log(self.reference_note)

    # ---- sampling and scoring

    def _rewards(self, batch: PromptBatch, answers: Answers, group: int) -> torch.Tensor:
        """[prompts, group]: the reward of each answer."""
        items = self.items[batch.split]
        return torch.tensor([self.reward(items[batch.indices[n // group]].prompt[-1].content, text,
                                         items[batch.indices[n // group]].answer)
                             for n, text in enumerate(answers.texts)], dtype=torch.float32).view(-1, group)

    def _matches(self, batch: PromptBatch, answers: Answers, group: int) -> torch.Tensor:
        """[prompts, group]: 1 where the answer is exactly the reference."""
        items = self.items[batch.split]
        return torch.tensor([exact_match(text, items[batch.indices[n // group]].answer)
                             for n, text in enumerate(answers.texts)], dtype=torch.float32).view(-1, group)

    def _sample(self, model: torch.nn.Module, batch: PromptBatch, device: torch.device, *, temperature: float,
                group: int) -> Answers:
        prompts = [self.prompt_ids[batch.split][i] for i in batch.indices]
        generator = torch.Generator(device=device).manual_seed(batch.seed)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
        return sample_answers(model, self.template, prompts, group=group, temperature=temperature,
                              max_tokens=self.settings.max_tokens, generator=generator,
                              vocab_size=self.tokenizer.vocab_size, dtype=dtype)

    def _scores(self, model: torch.nn.Module, batch: PromptBatch, *, measure_kl: bool
                ) -> tuple[dict[str, torch.Tensor], Answers]:
        """Sample the batch's answers, score them, and compute the loss (and the KL, when it is weighted or
        `measure_kl`); returns the scores and the answers."""
        device = next(model.parameters()).device
        s = self.settings
        answers = self._sample(model, batch, device, temperature=s.temperature, group=s.group)
        rewards = self._rewards(batch, answers, s.group)
        advantages = group_advantages(rewards, s.std).view(-1).to(device)
        prompts = [self.prompt_ids[batch.split][i] for i in batch.indices]
        x, y = sequences(prompts, answers.tokens, s.group, self.template.end_id, device)
        logprobs = token_logprobs(model(x, all_logits=True)[0], y)
        with_kl = self.reference_logprobs is not None and (s.kl > 0 or measure_kl)
        scores = policy_gradient_loss(logprobs, y >= 0, advantages, self.reference_logprobs(x, y) if with_kl else None,
                                      s.kl)
        scores["reward"] = rewards.mean().to(device)
        return scores, answers

    def loss(self, model: torch.nn.Module, batch: PromptBatch) -> torch.Tensor:
        scores, answers = self._scores(model, batch, measure_kl=False)
        self._since_logged.append((float(scores["reward"]), len(answers.tokens)))
        return scores["loss"]

    def training_metrics(self) -> dict[str, float]:
        """The mean reward of the answers sampled for training since the last log line (this process's)."""
        batches, self._since_logged = self._since_logged, []
        if not batches:
            return {}
        return {"reward": sum(r * n for r, n in batches) / sum(n for _, n in batches)}

    def metrics(self, model: torch.nn.Module, batch: PromptBatch) -> dict[str, torch.Tensor]:
        """What an evaluation reports (see the module docstring), for one batch of prompts."""
        scores, answers = self._scores(model, batch, measure_kl=True)
        device = scores["reward"].device
        greedy = self._sample(model, batch, device, temperature=0.0, group=1)
        greedy_reward = self._rewards(batch, greedy, 1).mean().to(device)
        lengths = [len(t) - e for t, e in zip(answers.tokens, answers.ended)]  # the end marker not counted
        out = {"loss": -greedy_reward, "reward": scores["reward"], "greedy_reward": greedy_reward,
               "pass1": self._matches(batch, greedy, 1).mean().to(device),
               "passk": self._matches(batch, answers, self.settings.group).amax(dim=1).mean().to(device),
               "answer_len": torch.tensor(sum(lengths) / len(lengths), device=device)}
        if "kl" in scores:
            out["kl"] = scores["kl"]
        return out


def _frozen_call(model: torch.nn.Module, function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`function` run without gradients, with `model` in eval mode (no dropout), its mode restored after."""
    @torch.no_grad()
    def call(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            return function(x, y)
        finally:
            model.train(was_training)

    return call


# ---------------------------------------------------------------------------------------------------
# Opening prompts for a run


def settings_of(cfg: Any) -> RLSettings:
    """The run's RL settings, checked: a one-line UserError for a value that cannot work."""
    s = RLSettings(group=cfg.rl_group, temperature=cfg.rl_temperature, max_tokens=cfg.rl_max_tokens, kl=cfg.rl_kl,
                   std=cfg.rl_std)
    if s.group < 2:
        raise UserError(f"rl_group must be at least 2, got {s.group}: an answer's advantage is its reward against "
                        "the other answers to its prompt")
    if s.temperature <= 0:
        raise UserError(f"rl_temperature must be positive (1.0 samples the model as it is), got {s.temperature}: "
                        "greedy answers to one prompt are all the same, and teach nothing")
    if s.max_tokens < 1:
        raise UserError(f"rl_max_tokens must be at least 1, got {s.max_tokens}")
    if s.kl < 0:
        raise UserError(f"rl_kl must not be negative, got {s.kl}")
    return s


def open_prompts(files: list[Path], cfg: Any, tokenizer: TokenizerChoice) -> RLData:
    """RLData for prompt/response files (cfg: init_from, val_data, val_fraction, data_dir, reward, rl_*)."""
    settings = settings_of(cfg)
    if cfg.init_from == "scratch" or tokenizer.ready is None:
        raise UserError("reinforcement learning improves a model that already answers: give --init_from (an "
                        "instruction-tuned out_dir or checkpoint, e.g. out/sft_tasks)")
    reward = Reward(cfg.reward)  # an unusable reward stops the run here, before any work
    train = read_conversations(files)
    val_data = getattr(cfg, "val_data", None)
    if val_data:
        val_files = jsonl_files(val_data, None, cfg.data_dir)
        if val_files is None:
            raise UserError(f"val_data {val_data} is not prompts in .jsonl files: give a .jsonl file or a folder of them")
        val = read_conversations(val_files)
    else:
        where = train[0].where.rsplit(":", 1)[0] if train else "the data"
        held = held_out(len(train), cfg.val_fraction, what="prompt", where=where, content=lambda i: repr(
            [[m.role, m.content] for m in train[i].messages]))
        train, val = [c for i, c in enumerate(train) if i not in held], [c for i, c in enumerate(train) if i in held]
    return RLData(train, val, ChatTemplate.add_tokens(tokenizer.ready), reward, settings,
                  source=",".join(str(f) for f in files))


class Prompts:
    """The kind of training data this module adds to train.py (registered in gpt/layers.py by gpt/post). It is
    chosen by the setting rl = true, not by the lines: the same prompt/response files train a model by instruction
    tuning, or by reinforcement learning with the response as the reference."""

    name = "prompts"
    line_help = ""  # known by no line of its own: it reads the lines of conversations (gpt/post/chat.py)

    def recognises(self, line: dict[str, Any]) -> bool:
        return False

    def chosen_by(self, cfg: Any) -> bool:
        return bool(getattr(cfg, "rl", False))

    def open(self, files: list[Path], cfg: Any, tokenizer: TokenizerChoice) -> RLData:
        return open_prompts(files, cfg, tokenizer)


PROMPTS = Prompts()
