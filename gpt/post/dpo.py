"""Preference tuning with DPO: of two answers to the same prompt, make the model prefer the better one.

Its place in the flow: after instruction tuning (gpt/post/chat.py, gpt/post/chat_data.py), as a kind of training data
(gpt/datasets.py) that the same loop (gpt/trainer.py) trains on:

    pairs.jsonl ──read_pairs──▶ [Pair(prompt, chosen, rejected)] ──the chat template──▶ two token sequences
        per pair ──PairBatches──▶ x, y: [2B, T] (rows 0..B-1 chosen, B..2B-1 rejected; y = -1 off the answers)
        ──PreferenceData.loss──▶ the DPO loss, from the policy (the model being trained) and the reference

A line of pairs is one of (an optional "task" names the task; other keys are kept and ignored):

    {"prompt": "...", "chosen": "...", "rejected": "..."}
    {"messages": [... ending with a user turn], "chosen": ..., "rejected": ...}    chosen/rejected: a string or
                                                                                  an assistant message

Why DPO (Rafailov et al. 2023, "Direct Preference Optimization"). RLHF fits a reward model r(x, y) to human
preferences and then trains the policy to maximise it with a penalty for drifting from where it started (the
reference model). That objective's best policy has a closed form, pi(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta),
so the reward can be read off the policy itself: r(x, y) = beta log(pi(y|x) / pi_ref(y|x)) (+ a term that
depends on x only, which cancels between two answers to one prompt). Fitting that implicit reward to the
preferences with the usual pairwise (Bradley-Terry) loss gives one loss on pairs, with no reward model and no
sampling:

    reward(y)  = beta * (log pi(y|x) - log pi_ref(y|x))            log p of a sequence: the sum over its tokens
    loss       = -log sigmoid(reward(chosen) - reward(rejected))   averaged over the pairs

A known failure: DPO only needs the difference of the two log-probs to grow, and can get it with both
falling; the probability the chosen answers lose goes to other tokens, and greedy answers get worse.
dpo_nll adds the chosen answers' negative log-likelihood per token, weighted (as in Pang et al. 2024,
"Iterative Reasoning Preference Optimization"), which holds them up: loss = DPO + dpo_nll * NLL(chosen).
Its default is 1, the recipe that kept exact match on the suite and on tasks the project never trained on
(BENCHMARKS.md); --dpo_nll=0 is plain DPO.

beta (dpo_beta) sets how far the policy may move from the reference: a small beta lets it move a lot for a
given margin, a large one holds it close. Only the answer's tokens (and its <|end|>) count in log p: the
prompt is the same in both sequences. The reference is the starting model, frozen: a copy of it in memory, or,
for a LoRA run (gpt/post/lora.py), the same model with its adapter switched off (no second copy).

What an evaluation reports, on held-out pairs (each a mean over pairs):

    loss            the DPO loss (log 2 = 0.693 at the start, where policy = reference)
    accuracy        the share of pairs whose chosen answer has the larger reward (a tie counts half: 0.5 at
                    the start)
    margin          reward(chosen) - reward(rejected)
    chosen_logp     log pi(chosen | prompt) and log pi(rejected | prompt): DPO only needs their difference to
    rejected_logp   grow, and can get it with both falling, a known failure (the model then likes neither)
    prefers_chosen  the share of pairs where the policy itself gives the chosen answer the higher probability,
                    without the reference: the model's own preference, meaningful before training as well
    chosen_nll      the chosen answers' negative log-likelihood per token (what instruction tuning minimises)
    dpo_loss        DPO's loss alone, when dpo_nll adds the NLL to "loss"
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from gpt import checkpoint as ckpt_io
from gpt.datasets import (TrainingData, check_lengths, held_out, jsonl_files, jsonl_kind, next_indices,
                          read_jsonl)
from gpt.errors import UserError, plural
from gpt.post.adapter_files import fingerprint
from gpt.post.adapters import adapters_disabled
from gpt.post.chat import ChatTemplate, Message, check_messages, message_from_json
from gpt.reshape import grow_vocab
from gpt.runtime import starting_model
from gpt.tokenizer import Tokenizer
from gpt.tokenizer_files import TokenizerChoice

# The entry of a full fine-tune's checkpoints that records its reference: {"init_from", "fingerprint"}.
REFERENCE_KEY = "dpo_reference"
PAIR_HELP = ('{"prompt", "chosen", "rejected"} or {"messages": [... ending with a user turn], "chosen", '
             '"rejected"}')


# ---------------------------------------------------------------------------------------------------
# The loss


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p of each row's scored tokens: logits [N, T, V], targets [N, T] (-1: not scored) -> [N].

    The sum over the answer's tokens of log p(token | everything before it), in float32 whatever the logits'
    dtype (a sum of many small numbers in bf16 loses the differences DPO depends on).
    """
    N, T, V = logits.shape
    nll = F.cross_entropy(logits.float().reshape(N * T, V), targets.reshape(N * T), ignore_index=-1,
                          reduction="none")  # [N*T], 0 where not scored
    return -nll.view(N, T).sum(dim=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float, *, chosen_tokens: torch.Tensor | None = None,
             nll_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """The DPO loss and what an evaluation reports (see the module docstring); every input is [B] log-probs.

    With nll_weight > 0 the loss also counts the chosen answers' negative log-likelihood per token (chosen_tokens
    [B]: how many tokens each has), weighted: "loss" = DPO + nll_weight * NLL, and "dpo_loss" is DPO's alone.
    """
    chosen_reward = beta * (policy_chosen - reference_chosen)  # [B]
    rejected_reward = beta * (policy_rejected - reference_rejected)  # [B]
    margin = chosen_reward - rejected_reward  # [B]
    wins = (margin > 0).float() + 0.5 * (margin == 0).float()
    prefers = (policy_chosen > policy_rejected).float() + 0.5 * (policy_chosen == policy_rejected).float()
    dpo = -F.logsigmoid(margin).mean()
    scores = {"loss": dpo, "accuracy": wins.mean(), "margin": margin.mean().detach(),
              "chosen_logp": policy_chosen.mean().detach(), "rejected_logp": policy_rejected.mean().detach(),
              "prefers_chosen": prefers.mean()}
    if chosen_tokens is not None:
        nll = (-policy_chosen / chosen_tokens.clamp(min=1)).mean()  # per token of the chosen answers
        scores["chosen_nll"] = nll.detach()
        if nll_weight > 0:
            scores["dpo_loss"] = dpo.detach()
            scores["loss"] = dpo + nll_weight * nll
    return scores


# ---------------------------------------------------------------------------------------------------
# Reading pairs


@dataclass
class Pair:
    prompt: list[Message]  # the shared history, ending with a user turn
    chosen: str
    rejected: str
    task: str | None = None
    where: str = ""  # "file:line", for errors
    extra: dict[str, Any] = field(default_factory=dict)  # the line's other keys (e.g. the kind of "mistake")


def is_pair_line(obj: Any) -> bool:
    """Whether a parsed JSONL line is a preference pair (it has "chosen" or "rejected")."""
    return isinstance(obj, Mapping) and ("chosen" in obj or "rejected" in obj)


def _answer(obj: Mapping, key: str, where: str) -> str:
    value = obj[key]
    if isinstance(value, Mapping):  # an assistant message, as some datasets write the answers
        message = message_from_json(value, f"{where}: {key!r}")
        if message.role != "assistant":
            raise UserError(f"{where}: {key!r} must be the assistant's answer, got a {message.role} message")
        value = message.content
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string (or an assistant message), got {type(value).__name__}")
    if not value.strip():
        raise UserError(f"{where}: {key!r} is empty: a pair needs two answers with some text")
    return value


def pair_from_json(obj: Any, where: str) -> Pair:
    """The Pair of one parsed line (checked: one-line errors that name the file and line)."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{where}: a line must be a JSON object, {PAIR_HELP}")
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if "prompt" not in obj and "messages" not in obj:
        missing.insert(0, "prompt")
    if missing:
        raise UserError(f"{where}: a preference pair lacks {', '.join(repr(k) for k in missing)}: use {PAIR_HELP}")
    if "prompt" in obj and "messages" in obj:
        raise UserError(f"{where}: a pair has either 'prompt' or 'messages', not both")
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str):
            raise UserError(f"{where}: 'prompt' must be a string, got {type(obj['prompt']).__name__}")
        prompt = [Message("user", obj["prompt"])]
    else:
        raw = obj["messages"]
        if not isinstance(raw, list):
            raise UserError(f"{where}: 'messages' must be a list of {{\"role\", \"content\"}} objects")
        prompt = [message_from_json(m, f"{where}: message {i + 1}") for i, m in enumerate(raw)]
    check_messages(prompt, where, answered=False)
    if prompt[-1].role != "user":
        raise UserError(f"{where}: the shared messages must end with a user turn (the chosen and rejected answers "
                        "are the assistant's reply to it)")
    chosen, rejected = _answer(obj, "chosen", where), _answer(obj, "rejected", where)
    if chosen.strip() == rejected.strip():
        raise UserError(f"{where}: 'chosen' and 'rejected' are the same answer: a pair needs two different ones")
    task = obj.get("task")
    if task is not None and not isinstance(task, str):
        raise UserError(f"{where}: 'task' must be a string, got {type(task).__name__}")
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "messages", "chosen", "rejected", "task")}
    return Pair(prompt, chosen, rejected, task, where, extra)


def read_pairs(path: Path | str) -> list[Pair]:
    """Every pair of a JSONL file; any bad line is a UserError naming the file and line."""
    path = Path(path)
    pairs = []
    for line_no, obj in read_jsonl(path):
        where = f"{path}:{line_no}"
        if not is_pair_line(obj):
            raise UserError(f"{where}: not a preference pair (no 'chosen'/'rejected') in a file of pairs: use one "
                            f"form per file, {PAIR_HELP}")
        pairs.append(pair_from_json(obj, where))
    if not pairs:
        raise UserError(f"{path} holds no lines: give one preference pair per line, {PAIR_HELP}")
    return pairs


# ---------------------------------------------------------------------------------------------------
# Rendering and batches


class RenderedPairs:
    """One split's pairs as token sequences: chosen[i] and rejected[i] are (ids, learned) arrays."""

    def __init__(self, template: ChatTemplate, pairs: list[Pair]):
        self.chosen: list[tuple[np.ndarray, np.ndarray]] = []
        self.rejected: list[tuple[np.ndarray, np.ndarray]] = []
        for pair in pairs:
            for answer, out in ((pair.chosen, self.chosen), (pair.rejected, self.rejected)):
                try:
                    ids, learned = template.render([*pair.prompt, Message("assistant", answer)])
                except UserError as e:
                    raise UserError(f"{pair.where}: {e}") from None
                out.append((np.asarray(ids, dtype=np.int64), np.asarray(learned, dtype=bool)))
        # The longer of the two sequences of each pair: what must fit in a window.
        self.lengths = np.asarray([max(len(c[0]), len(r[0])) for c, r in zip(self.chosen, self.rejected)],
                                  dtype=np.int64)
        self.tasks = [p.task for p in pairs]

    def __len__(self) -> int:
        return len(self.chosen)


class PairBatches:
    """A resumable stream of batches of pairs: (x, y), each [2B, T], T the longest sequence of the batch - 1.

    Rows 0..B-1 are the chosen answers, rows B..2B-1 the rejected ones in the same order; y is x shifted by one,
    -1 wherever the loss does not count (the prompt, padding). One sequence per row, padded: packing several
    would let one pair's tokens see another's. Pairs come in a seeded order, reshuffled each epoch (and grouped
    by length, see `order`); the state is (epoch, position), and N processes take slices of one global batch,
    as with text.
    """

    def __init__(self, split: RenderedPairs, block_size: int, batch_size: int, *, seed: int,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, pad_id: int = 0):
        self.split, self.block_size, self.batch_size = split, int(block_size), int(batch_size)
        self.seed, self.rank, self.world_size, self.pad_id = int(seed), int(rank), int(world_size), int(pad_id)
        self.device = torch.device(device)
        self.pairs = len(split)
        self.usable = np.flatnonzero(split.lengths <= self.block_size + 1)
        if self.usable.size == 0:
            raise UserError(f"every pair is longer than block_size + 1 = {self.block_size + 1} tokens: raise "
                            "block_size")
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def order(self, epoch: int) -> np.ndarray:
        """The pairs of one epoch, in the order they are drawn: shuffled, then grouped by length. A batch is padded
        to its longest sequence, so batches of pairs of about the same length waste less: each run of 32 global
        batches is sorted by length and cut into batches, and the batches are shuffled."""
        if self._order_epoch != epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            order = rng.permutation(self.usable)
            group = self.batch_size * self.world_size
            batches = []
            for start in range(0, len(order), 32 * group):
                run = order[start: start + 32 * group]
                run = run[np.argsort(self.split.lengths[run], kind="stable")]
                batches += [run[i: i + group] for i in range(0, len(run), group)]
            self._order = np.concatenate([batches[i] for i in rng.permutation(len(batches))])
            self._order_epoch = epoch
        assert self._order is not None
        return self._order

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensors(next_indices(self))

    __next__ = next

    def __iter__(self) -> "PairBatches":
        return self

    def tensors(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of the pairs `indices`: (x, y), chosen rows first."""
        rows = [self.split.chosen[i] for i in indices] + [self.split.rejected[i] for i in indices]
        T = max(len(ids) for ids, _ in rows) - 1
        x = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        y = np.full((len(rows), T), -1, dtype=np.int64)
        for r, (ids, learned) in enumerate(rows):
            n = len(ids) - 1
            x[r, :n] = ids[:-1]
            y[r, :n] = np.where(learned[1:], ids[1:], -1)
        tensors = (torch.from_numpy(x), torch.from_numpy(y))
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in tensors)  # type: ignore[return-value]
        return tuple(t.to(self.device) for t in tensors)  # type: ignore[return-value]

    def state_dict(self) -> dict:
        return {"version": 1, "kind": "pairs", "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "block_size": self.block_size, "batch_size": self.batch_size, "pairs": self.pairs,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "pairs":
            raise UserError("the saved batch stream is not one of preference pairs: resume on the same data, or start "
                            "a new run")
        mismatched = [k for k in ("block_size", "pairs") if state.get(k) != getattr(self, k)]
        if mismatched:
            raise UserError(f"cannot resume the pair batches with a different {', '.join(mismatched)}: resume with "
                            "the same data and block_size, or start a new run")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ---------------------------------------------------------------------------------------------------
# The kind of training data


class PreferenceData(TrainingData):
    """Preference pairs, trained on with the DPO loss against a frozen reference model.

    The reference is given once the run's model exists (`use_reference`, called by the trainer): until then the
    loss cannot be computed.
    """

    kind = "pairs"

    def __init__(self, train: list[Pair], val: list[Pair], tokenizer: Tokenizer, beta: float, *, source: str = "",
                 nll_weight: float = 0.0):
        if beta <= 0:
            raise UserError(f"dpo_beta must be positive (it scales the reward: 0.1 is usual), got {beta}")
        if nll_weight < 0:
            raise UserError(f"dpo_nll must not be negative, got {nll_weight}")
        self.nll_weight = float(nll_weight)
        self.tokenizer = tokenizer
        self.template = ChatTemplate(tokenizer)
        self.beta = float(beta)
        self.source = source
        self.splits = {"train": RenderedPairs(self.template, train), "val": RenderedPairs(self.template, val)}
        self.reference_logprobs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.reference_model: torch.nn.Module | None = None  # a separate frozen model, where there is one
        self.reference_note = ""
        self.reference_record: dict[str, Any] | None = None  # a full fine-tune's: see use_starting_model
        self.fit_note = ""

    def checkpoint_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {"chat_template": self.template.to_dict()}
        if self.reference_record is not None:
            extras[REFERENCE_KEY] = self.reference_record
        return extras

    def describe(self) -> str:
        train, val = self.splits["train"], self.splits["val"]
        tasks = {t for t in train.tasks if t}
        return (f"{len(train):,} train / {len(val):,} val preference pairs"
                + (f" ({len(tasks)} task{'s' if len(tasks) > 1 else ''})" if tasks else "")
                + f"; DPO loss, beta {self.beta:g}"
                + (f", plus {self.nll_weight:g} x the chosen answers' NLL" if self.nll_weight else "") + self.fit_note)

    def check_fits(self, block_size: int, batch_size: int, world_size: int) -> None:
        notes, window = check_lengths(self.splits, block_size, "pair"), block_size + 1
        longest = max(int(r.lengths[r.lengths <= window].max()) for r in self.splits.values())
        notes.insert(0, f"batches of {plural(batch_size, 'pair')} = {plural(2 * batch_size, 'sequence')} of at most {longest} tokens")
        self.fit_note = "; " + "; ".join(notes)

    def batches(self, split: str, block_size: int, batch_size: int, *, seed: int, device: torch.device | str = "cpu",
                rank: int = 0, world_size: int = 1) -> PairBatches:
        return PairBatches(self.splits[split], block_size, batch_size, seed=seed, device=device, rank=rank,
                           world_size=world_size, pad_id=self.template.end_id)

    # ---- the reference model

    def use_starting_model(self, model: torch.nn.Module, cfg: Any, *, resumed_from: dict[str, Any] | None,
                           log: Any) -> None:
        """The reference is the model the run started from: a frozen copy of `model` (before its first step), or,
        when resuming, cfg.init_from loaded again the way the run first loaded it. A LoRA run's model carries its
        frozen starting weights inside it: the reference is the same model with the adapter switched off.

        A full fine-tune's checkpoints record the reference's fingerprint (gpt/post/adapter_files.py's, the one an
        adapter records of its base), so that a resumed run refuses an init_from that changed since (trained
        further): read again, it would silently be another reference."""
        if getattr(model, "lora", None) is not None:  # an adapter attached by gpt/post/lora.py
            self.use_reference_function(adapter_off_logprobs(model), "reference model: the same model with its LoRA "
                                        "adapter switched off (no second copy in memory)")
            log(self.reference_note)
            return
        recorded = None if resumed_from is None else resumed_from.get(REFERENCE_KEY)
        if resumed_from is None:
            reference = frozen_copy(model)
            where = "a frozen copy of the starting model"
        else:
            reference = starting_reference(cfg, self.tokenizer, model, recorded)
            where = "the starting model, loaded again for the resumed run, frozen"
        # A checkpoint from before the record existed: the reference read now is the one checked from here on.
        self.reference_record = recorded or {"init_from": str(cfg.init_from), "fingerprint": fingerprint(reference)}
        size = sum(p.numel() for p in reference.parameters()) / 1e6
        self.use_reference(reference, f"reference model: {where} ({cfg.init_from}; {size:.2f}M more parameters in "
                                      "memory, beside the model being tuned)")
        log(self.reference_note)

    def use_reference(self, reference: torch.nn.Module, note: str) -> None:
        """A frozen model whose log-probs are the reference's: evaluated, never trained (no gradients)."""
        reference.eval()
        for p in reference.parameters():
            p.requires_grad_(False)

        @torch.no_grad()
        def logprobs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, _ = reference(x, all_logits=True)
            return sequence_logprobs(logits, y)

        self.reference_logprobs = logprobs
        self.reference_model = reference
        self.reference_note = note

    def use_reference_function(self, logprobs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                               note: str) -> None:
        """The reference as a function (x, y) -> [N] log-probs (e.g. the trained model with its adapter off)."""
        self.reference_logprobs = logprobs
        self.reference_model = None
        self.reference_note = note

    def _scores(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.reference_logprobs is None:
            raise RuntimeError("PreferenceData needs its reference model (use_reference) before computing a loss")
        x, y = batch
        B = x.shape[0] // 2
        logits, _ = model(x, all_logits=True)  # [2B, T, V]
        policy = sequence_logprobs(logits, y)  # [2B]
        reference = self.reference_logprobs(x, y)  # [2B], no gradient
        return dpo_loss(policy[:B], policy[B:], reference[:B], reference[B:], self.beta,
                        chosen_tokens=(y[:B] >= 0).sum(dim=1), nll_weight=self.nll_weight)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self._scores(model, batch)["loss"]

    def metrics(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return self._scores(model, batch)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model that never trains: the reference of a full fine-tune."""
    reference = copy.deepcopy(model)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def adapter_off_logprobs(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The reference of a LoRA run: the log-probs of the model with its adapter off, which is exactly the model
    the run started from (its base weights never train). In eval mode (no dropout), without gradients."""
    @torch.no_grad()
    def logprobs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with adapters_disabled(model):
                logits, _ = model(x, all_logits=True)
        finally:
            model.train(was_training)
        return sequence_logprobs(logits, y)

    return logprobs


def starting_reference(cfg: Any, tokenizer: Tokenizer, model: torch.nn.Module,
                       recorded: dict[str, Any] | None = None) -> torch.nn.Module:
    """cfg.init_from as the run first prepared it (same shape, rows for the template's tokens), frozen, on the
    model's device; a one-line error when it no longer matches the run's tokenizer, shape, or the fingerprint the
    run recorded of it (`recorded`: REFERENCE_KEY of its checkpoint)."""
    import dataclasses

    start, choice, _ = starting_model(dataclasses.replace(cfg, resume=False), None, lambda text: None)
    start_tokenizer = choice.ready
    assert start is not None and start_tokenizer is not None
    if ChatTemplate.add_tokens(start_tokenizer).to_dict() != tokenizer.to_dict():
        raise UserError(f"the reference model {cfg.init_from} does not match this run's tokenizer (it changed since the "
                        "run started?): resume with the init_from the run started from, or start a new run")
    start = grow_vocab(start, start_tokenizer.vocab_size, tokenizer.vocab_size, cfg.vocab_multiple)
    if start.config != model.config:
        raise UserError(f"the reference model {cfg.init_from} has another shape than this run's model ({start.config} "
                        f"against {model.config}): resume with the init_from the run started from")
    if recorded is not None and fingerprint(start) != recorded["fingerprint"]:
        source = cfg.init_from if ckpt_io.is_hf_folder(cfg.init_from) else ckpt_io.resolve_checkpoint_path(cfg.init_from)
        raise UserError(f"cannot resume {cfg.out_dir}: its starting model {source} changed since the run started from "
                        "it (other weights: trained further, or replaced), and the reference (DPO's, or RL's KL) must "
                        "stay that model: put it back, or start a new run (another --out_dir)")
    return frozen_copy(start.to(next(model.parameters()).device))


# ---------------------------------------------------------------------------------------------------
# Opening pairs for a run


def open_pairs(files: list[Path], cfg: Any, tokenizer: TokenizerChoice) -> PreferenceData:
    """PreferenceData for the pair files (cfg: init_from, val_data, val_fraction, data_dir, dpo_beta)."""
    if cfg.init_from == "scratch" or tokenizer.ready is None:
        raise UserError("preference pairs tune a model that already answers: give --init_from (an instruction-tuned "
                        "out_dir or checkpoint, e.g. out/sft_tasks); DPO's reference is that starting model")
    train = [p for f in files for p in read_pairs(f)]
    val_data = getattr(cfg, "val_data", None)
    if val_data:
        val_files = jsonl_files(val_data, None, cfg.data_dir)
        if val_files is None or jsonl_kind(val_files) != "pairs":
            raise UserError(f"val_data {val_data} is not preference pairs in .jsonl files: give pairs to validate on")
        val = [p for f in val_files for p in read_pairs(f)]
    else:
        where = train[0].where.rsplit(":", 1)[0] if train else "the data"
        held = held_out(len(train), cfg.val_fraction, what="pair", where=where, content=lambda i: json.dumps(
            [[m.role, m.content] for m in train[i].prompt] + [train[i].chosen, train[i].rejected], ensure_ascii=False))
        train, val = [p for i, p in enumerate(train) if i not in held], [p for i, p in enumerate(train) if i in held]
    return PreferenceData(train, val, ChatTemplate.add_tokens(tokenizer.ready), getattr(cfg, "dpo_beta", 0.5),
                          source=",".join(str(f) for f in files), nll_weight=getattr(cfg, "dpo_nll", 1.0))


class Pairs:
    """The kind of training data this module adds to train.py (registered in gpt/layers.py by gpt/post)."""

    name = "pairs"
    line_help = PAIR_HELP

    def recognises(self, line: dict[str, Any]) -> bool:
        return "chosen" in line or "rejected" in line

    def chosen_by(self, cfg: Any) -> bool:
        return False  # known by its lines

    def open(self, files: list[Path], cfg: Any, tokenizer: TokenizerChoice) -> PreferenceData:
        return open_pairs(files, cfg, tokenizer)


PAIRS = Pairs()


# ---------------------------------------------------------------------------------------------------
# Scoring a model on pairs (python -m gpt.tasks eval --data pairs.jsonl)


@torch.no_grad()
def score_pairs(model: torch.nn.Module, template: ChatTemplate, pairs: list[Pair], *, batch_size: int = 32,
                reference: torch.nn.Module | None = None, beta: float = 0.1) -> dict[str, Any]:
    """How a model ranks each pair's two answers, overall, per task and per kind of mistake: prefers_chosen (the
    model's own preference), and with a reference DPO's accuracy and mean margin (see the module docstring).
    Pairs longer than the model's context are left out (counted in "too_long"), and so are pairs holding text
    the model's tokenizer cannot encode (a character a char tokenizer never saw; counted in "unencodable")."""
    encodable = []
    for pair in pairs:
        try:
            RenderedPairs(template, [pair])
            encodable.append(pair)
        except UserError:
            pass
    unencodable, pairs = len(pairs) - len(encodable), encodable
    rendered = RenderedPairs(template, pairs)
    block_size = model.config.block_size
    stream = PairBatches(rendered, block_size, batch_size, seed=0, device=next(model.parameters()).device,
                         pad_id=template.end_id)
    kept = stream.usable.tolist()
    rows: list[dict[str, float]] = []
    for start in range(0, len(kept), batch_size):
        indices = kept[start: start + batch_size]
        x, y = stream.tensors(indices)
        B = len(indices)
        policy = sequence_logprobs(model(x, all_logits=True)[0], y)
        ref = sequence_logprobs(reference(x, all_logits=True)[0], y) if reference is not None else policy
        scores = [dpo_loss(policy[i:i + 1], policy[B + i:B + i + 1], ref[i:i + 1], ref[B + i:B + i + 1], beta)
                  for i in range(B)]
        rows += [{k: float(v) for k, v in s.items()} for s in scores]

    def summary(picked: list[dict[str, float]]) -> dict[str, float]:
        out = {"n": len(picked)}
        for name in ("prefers_chosen", "chosen_logp", "rejected_logp") + (
                ("accuracy", "margin", "loss") if reference is not None else ()):
            out[name] = sum(r[name] for r in picked) / max(len(picked), 1)
        return out

    by_task: dict[str, list] = {}
    by_mistake: dict[str, list] = {}
    for i, row in zip(kept, rows):
        by_task.setdefault(pairs[i].task or "(no task)", []).append(row)
        mistake = pairs[i].extra.get("mistake")
        if mistake is not None:
            by_mistake.setdefault(str(mistake), []).append(row)
    report: dict[str, Any] = {**summary(rows), "too_long": len(pairs) - len(kept), "unencodable": unencodable,
                              "beta": beta,
                              "tasks": {t: summary(r) for t, r in sorted(by_task.items())}}
    if by_mistake:
        report["mistakes"] = {m: summary(r) for m, r in sorted(by_mistake.items())}
    return report
