"""LoRA adapters (gpt/post/lora.py, adapters.py, adapter_files.py, export.py): a fresh adapter is a no-op, only adapters train, the switch back to the base is
exact, merging equals not merging, adapter files round-trip and find their base, one base serves several adapters,
and Hugging Face peft (an outside oracle) computes our logits from the exported adapter.

The runs go through train.py's `main(argv)` in this process with a tiny model (a second or so each); one
subprocess runs `sample.py --adapter` as a user would.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt_io
from gpt.post import adapter_files, adapters, export, lora
from gpt.errors import UserError
from gpt.model import GPT, GPTConfig
from gpt.optim import make_optimizer
from gpt.reshape import grow_vocab
from gpt.runtime import training_flops_per_token
from gpt.trainer import TrainConfig
from gpt.trainer import main as train_main

REPO = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: fastest and bitwise repeatable on one thread
    yield
    torch.set_num_threads(before)


def write_corpus(path: Path, seed: int, words: list[str] = WORDS) -> Path:
    rng = random.Random(seed)
    path.write_text(" ".join(rng.choice(words) for _ in range(3000)) + "\n", encoding="utf-8")
    return path


def run_args(root: Path, corpus: Path, out: str, *extra: str) -> list[str]:
    return [f"--data={corpus}", f"--data_dir={root / 'data'}", f"--out_dir={root / out}", "--n_layer=2", "--n_head=2",
            "--n_embd=16", "--block_size=16", "--batch_size=4", "--eval_iters=2", "--eval_interval=4",
            "--log_interval=2", "--max_iters=4", "--warmup_iters=0", "--decay_lr=false", "--plot=false",
            "--progress=false", "--peak_flops=1e11", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base model and two adapters over it: A on every Linear layer of the blocks, B on c_attn and the embedding."""
    root = tmp_path_factory.mktemp("lora")
    torch.set_num_threads(1)
    base_text = write_corpus(root / "base.txt", seed=0)
    assert train_main(run_args(root, base_text, "base", "--bias=true", "--arch=gpt2", "--optimizer=adamw", "--learning_rate=1e-2")) == 0
    a_text = write_corpus(root / "a.txt", seed=1, words=WORDS[:6])
    b_text = write_corpus(root / "b.txt", seed=2, words=WORDS[6:])
    common = [f"--init_from={root / 'base'}", "--learning_rate=2e-2"]
    # A: attn, mlp and head (nothing more for this tied head): without "tokens", so that peft can take it (export)
    assert train_main(run_args(root, a_text, "adapter_a", *common, "--lora_rank=4", "--lora_alpha=8",
                               "--lora_targets=attn,mlp,head")) == 0
    assert train_main(run_args(root, b_text, "adapter_b", *common, "--lora_rank=2",
                               "--lora_targets=attn.c_attn,wte", "--seed=7")) == 0
    return root


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, all_logits=True)[0]


def tiny_ids(vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))


def random_gpt(**changes) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**dict(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16), **changes})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # biases and LayerNorms away from 0 and 1: every weight matters
    return model


def randomize_adapters(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.2)


# ---------------------------------------------------------------------------------------------------
# The mechanics, on models built in the test


def test_a_fresh_adapter_is_a_no_op_and_only_its_parameters_train():
    model = random_gpt(bias=True)
    ids = tiny_ids(30)
    before = logits_of(model, ids)
    adapters.attach(model, lora.LoRASettings(rank=4, targets=("attn", "mlp", "wte")))
    assert torch.equal(logits_of(model, ids), before)  # B = 0: exactly the base's logits
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.rsplit(".", 1)[1] in ("lora_A", "lora_B") for name in trainable)
    # 2 blocks x 4 Linear layers + the embedding (whose factors the tied head shares: counted once).
    assert len(trainable) == 2 * (2 * 4 + 1)
    assert {"transformer.h.0.attn.c_attn.weight", "lm_head.weight"} <= set(model.state_dict())  # base names kept
    # A frozen base weight does no gradient of its own: 2 FLOPs per weight and token fewer.
    frozen = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad and "wpe" not in n)
    attention = 12 * model.config.n_layer * model.config.n_embd * model.config.block_size
    assert training_flops_per_token(model) == 6 * model.num_params() - 2 * frozen + attention


def test_training_changes_the_adapters_and_nothing_of_the_base():
    model = random_gpt()
    base = {name: t.clone() for name, t in model.state_dict().items()}
    adapters.attach(model, lora.LoRASettings(rank=2, targets=("attn", "mlp", "wte")))
    optimizer = make_optimizer(model, TrainConfig(learning_rate=1e-2, weight_decay=0.1))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len([p for p in model.parameters() if p.requires_grad])
    model.train()
    ids = tiny_ids(30)
    for _ in range(3):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = model.state_dict()
    for name, tensor in base.items():
        assert torch.equal(state[name], tensor), name  # bitwise: no gradient, no weight decay, nothing
    assert all(state[name].abs().sum() > 0 for name in state if name.endswith("lora_B"))  # B left zero: it trained


def test_adapters_disabled_gives_the_base_logits_exactly_and_merge_gives_the_adapted_ones():
    model = random_gpt(bias=True)
    ids = tiny_ids(30)
    base_logits = logits_of(model, ids)
    adapters.attach(model, lora.LoRASettings(rank=3, alpha=5.0, targets=("attn", "mlp", "wte")))
    randomize_adapters(model)
    adapted = logits_of(model, ids)
    assert not torch.allclose(adapted, base_logits, atol=1e-3)
    with adapters.adapters_disabled(model):
        assert torch.equal(logits_of(model, ids), base_logits)  # the frozen reference of DPO, exactly
    assert torch.equal(logits_of(model, ids), adapted)  # switched back on after the block
    adapters.merge_adapter(model)
    assert adapters.attached(model) is None and not any("lora" in n for n in model.state_dict())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied, the embedding's change merged once
    torch.testing.assert_close(logits_of(model, ids), adapted, rtol=1e-5, atol=1e-5)


def test_adapters_disabled_is_the_frozen_reference_of_preference_tuning_without_a_copy():
    model = random_gpt(bias=True)
    ids = tiny_ids(30)
    base_logits = logits_of(model, ids)
    with pytest.raises(ValueError, match="no adapter"):  # no base inside a plain model: the caller keeps a copy
        with adapters.adapters_disabled(model):
            pass
    adapters.attach(model, lora.LoRASettings(rank=2, targets=("attn", "mlp", "wte")))
    randomize_adapters(model)
    before = {name: p.data_ptr() for name, p in model.state_dict().items()}
    model.train()
    # One step as DPO takes it: the policy's log-probabilities with gradients, the reference's without, in one model.
    policy = torch.log_softmax(model(ids, all_logits=True)[0], -1)
    with torch.no_grad(), adapters.adapters_disabled(model):
        reference = torch.log_softmax(model(ids, all_logits=True)[0], -1)
    assert torch.equal(reference, torch.log_softmax(base_logits, -1))
    (policy - reference).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())  # the adapters' gradients only
    assert {name: p.data_ptr() for name, p in model.state_dict().items()} == before  # nothing copied or moved
    with pytest.raises(RuntimeError, match="inside"):  # switched back on however the block ends
        with adapters.adapters_disabled(model):
            raise RuntimeError("inside")
    assert all(layer.enabled for _, layer in adapters.lora_layers(model))


def test_remove_adapter_restores_the_plain_model():
    model = random_gpt()
    ids = tiny_ids(30)
    before = logits_of(model, ids)
    layers = {name: module for name, module in model.named_modules()}
    adapters.attach(model, lora.LoRASettings(rank=2, targets=("attn.c_attn", "wte")))
    with pytest.raises(ValueError, match="already carries"):
        adapters.attach(model, lora.LoRASettings(rank=2))
    randomize_adapters(model)
    adapters.remove_adapter(model)
    assert all(p.requires_grad for p in model.parameters())
    assert {name: module for name, module in model.named_modules()} == layers  # the very same layers
    assert torch.equal(logits_of(model, ids), before)


def test_rows_of_tokens_new_to_the_base_train_with_the_adapter_and_come_back_from_its_file():
    base = random_gpt()  # 30 tokens
    old_ids = tiny_ids(30)
    base_logits = logits_of(base, old_ids)
    def grow(model):  # as the data's code gives a model rows for 3 new special tokens
        model = grow_vocab(model, 30, 33)
        with torch.no_grad():
            model.transformer.wte.weight[30:] = torch.randn(3, 16) * 0.02
        return model

    grown = adapters.attach(copy.deepcopy(base), lora.LoRASettings(rank=2, targets=("attn",)))
    grown = adapter_files.with_new_token_rows(grown, 30, grow)
    rows = grown.transformer.wte.new_rows
    assert rows.shape == (3, 16) and rows.requires_grad and grown.lm_head.new_rows is rows  # tied, as the matrix
    # The old tokens' logits are still the base's.
    torch.testing.assert_close(logits_of(grown, old_ids)[..., :30], base_logits, rtol=0, atol=1e-6)
    frozen = grown.transformer.wte.weight.clone()
    optimizer = make_optimizer(grown, TrainConfig(learning_rate=1e-2))
    ids = tiny_ids(33, seed=1)
    at_start = logits_of(grown, ids)
    for _ in range(2):
        grown(ids[:, :-1], ids[:, 1:])[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(grown.transformer.wte.weight, frozen) and not torch.equal(rows[:, :], frozen[30:])
    adapted = logits_of(grown, ids)
    with adapters.adapters_disabled(grown):  # the run's starting model, the new tokens' rows included
        assert torch.equal(logits_of(grown, ids), at_start)
    # The adapter file holds the new rows: the base (30 tokens) + the file give the same model.
    adapter = adapter_files.Adapter(lora.LoRASettings(rank=2, targets=("attn",)), adapters.adapter_weights(grown),
                           {"fingerprint": adapter_files.fingerprint(base)}, dataclasses.asdict(grown.config), None, {}, 30)
    assert "transformer.wte.new_rows" in adapter.weights
    assert torch.equal(logits_of(adapter_files.adapted_model(base, adapter), ids), adapted)
    adapters.merge_adapter(grown)
    torch.testing.assert_close(logits_of(grown, ids), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="grown vocabulary"):
        export.check_exportable(adapter)  # peft's adapters over the base have no rows for new tokens


def test_the_default_adapter_adapts_an_untied_head_and_trains_the_embedding_rows_a_tied_head_shares():
    untied = random_gpt(tie_embeddings=False)
    adapters.attach(untied, lora.LoRASettings(rank=2))
    trainable = {name for name, p in untied.named_parameters() if p.requires_grad}
    assert {"lm_head.lora_A", "lm_head.lora_B", "transformer.wte.new_rows"} <= trainable
    assert len(trainable) == 2 * (2 * 4 + 1) + 1
    _, loss = untied(tiny_ids(30), tiny_ids(30, seed=1))
    loss.backward()
    assert untied.lm_head.lora_B.grad.abs().sum() > 0  # the head's change gets a gradient from the first step
    tied = random_gpt()  # GPT-2's layout: the head is the embedding, whose rows (trained) are the head's too
    adapters.attach(tied, lora.LoRASettings(rank=2))
    assert len([p for p in tied.parameters() if p.requires_grad]) == 2 * 2 * 4 + 1
    assert tied.lm_head.new_rows is tied.transformer.wte.new_rows


def test_default_adapters_learn_a_task_that_changes_what_the_model_outputs():
    """Next token = a fixed relabelling of the current one, over a frozen random base with an untied head. Full
    fine-tuning learns it in 60 steps; adapters on the blocks alone, their head frozen, barely start (how LoRA
    lagged full fine-tuning on the task suite, issue 28); the default adapters, with the head, learn it."""

    def loss_after_training(targets: tuple[str, ...] | None) -> float:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32, position="rope",
                              mlp="relu2", qk_norm=True, tie_embeddings=False))
        settings = lora.LoRASettings(rank=4) if targets is None else lora.LoRASettings(rank=4, targets=targets)
        adapters.attach(model, settings)
        cfg = TrainConfig(optimizer="adamw", learning_rate=3e-2, weight_decay=0.0)
        optimizer = make_optimizer(model, cfg)
        relabel = torch.randperm(32, generator=torch.Generator().manual_seed(2))
        batches = torch.Generator().manual_seed(1)
        for _ in range(60):
            ids = torch.randint(32, (8, 16), generator=batches)
            _, loss = model(ids, relabel[ids])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ids = torch.randint(32, (32, 16), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            return model(ids, relabel[ids])[1].item()

    blocks_only, default = loss_after_training(("attn", "mlp")), loss_after_training(None)
    assert blocks_only > 3.0  # ln 32 = 3.47 at the start: the frozen head holds it back
    assert default < 0.7 * blocks_only


def test_the_tokens_target_trains_every_embedding_row_so_tokens_the_base_confuses_can_be_told_apart():
    """Two tokens whose embedding rows the base made equal (it never needed to tell them apart) and a task that
    maps them to different answers: adapters on every Linear layer and the head cannot separate them (the two give
    the same numbers through the whole model), so their loss stays at ln 2 at best; trained rows learn it. How the
    task suite's letters, Python source to the base, take new jobs (issue 28: full fine-tuning's embedding change
    carried more than half of what it learned)."""

    def loss_on_the_twins(targets: tuple[str, ...]) -> float:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16, position="rope",
                              mlp="relu2", qk_norm=True, tie_embeddings=False))
        with torch.no_grad():
            model.transformer.wte.weight[1] = model.transformer.wte.weight[0]
        adapters.attach(model, lora.LoRASettings(rank=4, targets=targets))
        optimizer = make_optimizer(model, TrainConfig(optimizer="adamw", learning_rate=3e-2, weight_decay=0.0))
        answer = torch.arange(16).roll(1)  # token t -> t - 1: tokens 0 and 1 -> 15 and 0
        batches = torch.Generator().manual_seed(1)
        for _ in range(40):
            ids = torch.randint(16, (8, 8), generator=batches)
            _, loss = model(ids, answer[ids])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ids = torch.randint(2, (16, 8), generator=torch.Generator().manual_seed(3))  # only the twins
        with torch.no_grad():
            return model(ids, answer[ids])[1].item()

    frozen_rows, trained_rows = loss_on_the_twins(("attn", "mlp", "head")), loss_on_the_twins(lora.DEFAULT_TARGETS)
    assert frozen_rows > 0.65  # ln 2 = 0.693: a coin toss between the two answers
    assert trained_rows < 0.2


def test_trained_embedding_rows_switch_off_merge_and_come_back_from_the_adapter_file():
    for tied in (True, False):
        base = random_gpt(tie_embeddings=tied)
        ids = tiny_ids(30)
        base_logits = logits_of(base, ids)
        settings = lora.LoRASettings(rank=2, targets=("attn", "tokens"))
        model = adapters.attach(copy.deepcopy(base), settings)
        rows = model.transformer.wte.new_rows
        assert rows.shape == (30, 16) and rows.requires_grad
        assert (getattr(model.lm_head, "new_rows", None) is rows) == tied  # a tied head is the embedding: its rows train with it
        with torch.no_grad():
            rows.add_(torch.randn_like(rows))
        randomize_adapters(model)
        adapted = logits_of(model, ids)
        with adapters.adapters_disabled(model):
            assert torch.equal(logits_of(model, ids), base_logits)
        adapter = adapter_files.Adapter(settings, adapters.adapter_weights(model), {"fingerprint": adapter_files.fingerprint(base)},
                                        dataclasses.asdict(model.config), None, {}, None)
        assert torch.equal(logits_of(adapter_files.adapted_model(copy.deepcopy(base), adapter), ids), adapted)
        adapters.merge_adapter(model)
        torch.testing.assert_close(logits_of(model, ids), adapted, rtol=1e-4, atol=1e-4)
        with pytest.raises(UserError, match="tokens"):
            export.check_exportable(adapter)  # peft's LoRA adapters hold low-rank changes, not trained rows


@pytest.mark.parametrize("targets, model_changes, needles", [
    (("attn.c_atn",), {}, ["'attn.c_atn'", "valid targets: attn, attn.c_attn, attn.c_proj, head, lm_head, mlp, mlp.c_fc"]),
    (("lm_head",), {}, ["tied", "wte"]),
    (("mlp",), {"attention_only": True}, ["attention-only", "valid targets: attn, attn.c_attn"]),
])
def test_targets_that_name_no_layer_are_one_line_errors_listing_the_valid_ones(targets, model_changes, needles):
    model = random_gpt(**model_changes)
    with pytest.raises(UserError) as e:
        adapters.attach(model, lora.LoRASettings(rank=2, targets=targets))
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)
    assert adapters.attached(model) is None and all(p.requires_grad for p in model.parameters())  # nothing changed


# ---------------------------------------------------------------------------------------------------
# Runs, files and loading


def test_an_adapter_run_saves_only_the_adapter_and_its_base(runs):
    base_state = ckpt_io.load_checkpoint(runs / "base" / "best.pt")
    for name in ("best.pt", "ckpt.pt"):
        state = ckpt_io.load_checkpoint(runs / "adapter_a" / name)
        assert "model" not in state and set(state["adapter"]) == {"settings", "weights", "base", "new_rows_from"}
        assert set(state["adapter"]["weights"]) == {f"transformer.h.{i}.{layer}.lora_{ab}" for i in (0, 1)
                                                    for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
                                                    for ab in "AB"}
    ckpt = ckpt_io.load_checkpoint(runs / "adapter_a" / "ckpt.pt")
    moments = ckpt["optimizer"]["state"]
    assert len(moments) == 16 and all(m["exp_avg"].shape in {(4, 16), (4, 64), (48, 4), (16, 4), (64, 4)}
                                      for m in moments.values())  # optimizer state for the adapters only
    adapter = adapter_files.read_adapter(runs / "adapter_a")
    # The default targets; "head" adds nothing on this base, whose head is its embedding (tied).
    assert adapter.settings == lora.LoRASettings(rank=4, alpha=8.0, dropout=0.0, targets=("attn", "mlp", "head"))
    assert adapter.base["path"] == str((runs / "base" / "best.pt").resolve())
    assert adapter.base["from_out_dir"] == os.path.join("..", "base", "best.pt")
    base = ckpt_io.load_model(runs / "base")
    assert adapter.base["fingerprint"] == adapter_files.fingerprint(base.model)
    # The base is exactly what it was, and the loaded adapter carries it unchanged under the trained adapter.
    loaded = ckpt_io.load_model(runs / "adapter_a")
    assert loaded.base_path == (runs / "base" / "best.pt").resolve()
    weights = loaded.model.state_dict()
    for name, tensor in base_state["model"].items():
        assert torch.equal(weights[name], tensor), name
    assert all(t.abs().sum() > 0 for n, t in adapter.weights.items() if n.endswith("lora_B"))
    assert (runs / "adapter_a" / "best.pt").stat().st_size < (runs / "base" / "best.pt").stat().st_size / 2


def test_an_adapter_file_round_trips_into_the_model_it_was(runs):
    loaded = ckpt_io.load_model(runs / "adapter_b")
    assert adapters.attached(loaded.model).settings.targets == ("attn.c_attn", "wte")
    by_hand = adapters.attach(ckpt_io.load_model(runs / "base").model, lora.LoRASettings(rank=2, targets=("attn.c_attn", "wte")))
    adapters.load_adapter_weights(by_hand, adapter_files.read_adapter(runs / "adapter_b").weights)
    ids = tiny_ids(loaded.model.config.vocab_size)
    assert torch.equal(logits_of(loaded.model, ids), logits_of(by_hand, ids))
    assert loaded.tokenizer.to_dict() == ckpt_io.load_model(runs / "base").tokenizer.to_dict()


def test_one_base_switches_between_adapters_without_reloading(runs):
    base = ckpt_io.load_model(runs / "base").model
    ids = tiny_ids(base.config.vocab_size)
    base_logits = logits_of(base, ids)
    weights = [p for p in base.parameters()]
    a, b = adapter_files.read_adapter(runs / "adapter_a"), adapter_files.read_adapter(runs / "adapter_b")
    expected = {name: logits_of(ckpt_io.load_model(runs / name).model, ids) for name in ("adapter_a", "adapter_b")}
    for adapter, name in ((a, "adapter_a"), (b, "adapter_b"), (a, "adapter_a")):
        adapter_files.use_adapter(base, adapter)
        assert torch.equal(logits_of(base, ids), expected[name])
    with adapters.adapters_disabled(base):
        assert torch.equal(logits_of(base, ids), base_logits)
    adapters.remove_adapter(base)
    assert torch.equal(logits_of(base, ids), base_logits)
    assert all(p is q for p, q in zip(base.parameters(), weights))  # the same tensors all along: nothing reloaded
    other = random_gpt(vocab_size=base.config.vocab_size)
    with pytest.raises(UserError, match="trained on another base"):
        adapter_files.use_adapter(other, a)


@pytest.fixture(scope="module")
def padded_chat(runs, tmp_path_factory) -> Path:
    """An adapter tuned on conversations from a base without the chat markers: its run grew the base's vocabulary,
    rounded up to a multiple of 10 (32 tokens: 40 rows), and the adapter trained the new rows."""
    root = tmp_path_factory.mktemp("padded_chat")
    chats = write_conversations(root / "chats.jsonl", 8)
    assert train_main(run_args(root, chats, "chat", f"--init_from={runs / 'base'}", "--lora_rank=2",
                               "--learning_rate=2e-2", "--max_iters=2", "--eval_interval=2", "--vocab_multiple=10")) == 0
    return root / "chat"


def test_one_base_switches_to_an_adapter_that_trained_rows_for_new_tokens_too(runs, padded_chat):
    # Switched on over the loaded base, such an adapter is the model that loading it gives; switched off, or for
    # another adapter, the base is its own size again.
    chat, a = adapter_files.read_adapter(padded_chat), adapter_files.read_adapter(runs / "adapter_a")
    base = ckpt_io.load_model(runs / "base").model
    known = base.config.vocab_size
    assert chat.new_rows_from == known and chat.model_config["vocab_size"] > known
    own = dict(base.named_parameters())
    ids, old_ids = tiny_ids(chat.model_config["vocab_size"]), tiny_ids(known)
    loaded = ckpt_io.load_model(padded_chat).model  # the base with the adapter, as load_with_adapter opens it
    expected = logits_of(loaded, ids)
    with adapters.adapters_disabled(loaded):
        expected_off = logits_of(loaded, ids)
    expected_a = logits_of(ckpt_io.load_model(runs / "adapter_a").model, old_ids)
    base_logits = logits_of(base, old_ids)
    for adapter in (chat, a, chat):
        adapter_files.use_adapter(base, adapter)
        if adapter is chat:
            assert base.config.vocab_size == chat.model_config["vocab_size"]
            assert torch.equal(logits_of(base, ids), expected)
            with adapters.adapters_disabled(base):  # the run's starting model: the base with its grown rows
                assert torch.equal(logits_of(base, ids), expected_off)
        else:
            assert base.config.vocab_size == known
            assert torch.equal(logits_of(base, old_ids), expected_a)
    adapters.remove_adapter(base)
    assert base.config.vocab_size == known and dict(base.named_parameters()) == own  # its own tensors again
    assert torch.equal(logits_of(base, old_ids), base_logits)


def test_merge_grows_the_base_as_the_adapter_run_did_its_vocabulary_rounded_up(padded_chat, tmp_path):
    # merge took vocab_multiple 1 where the run had 10: the base grew to 32 rows, not the run's 40 ("damaged").
    assert export.main(["merge", "--ckpt", str(padded_chat), "--out", str(tmp_path / "merged.pt")]) == 0
    merged, loaded = ckpt_io.load_model(tmp_path / "merged.pt").model, ckpt_io.load_model(padded_chat).model
    assert merged.config.vocab_size == loaded.config.vocab_size == 40
    ids = tiny_ids(40)
    torch.testing.assert_close(logits_of(merged, ids), logits_of(loaded, ids), rtol=1e-5, atol=1e-5)


def test_resuming_an_adapter_run_continues_it_exactly_in_bfloat16(runs, tmp_path):
    text = write_corpus(tmp_path / "text.txt", seed=3, words=WORDS[:6])
    common = [f"--init_from={runs / 'base'}", "--lora_rank=2", "--dtype=bfloat16", "--eval_interval=3",
              "--log_interval=1"]
    assert train_main(run_args(tmp_path, text, "straight", *common, "--max_iters=6")) == 0
    assert train_main(run_args(tmp_path, text, "resumed", *common, "--max_iters=3")) == 0
    assert train_main([f"--out_dir={tmp_path / 'resumed'}", "--resume", "--max_iters=6"]) == 0

    def losses(out):
        import json
        return [r["loss"] for r in map(json.loads, (tmp_path / out / "log.jsonl").read_text().splitlines())
                if r["kind"] == "train"]

    assert losses("resumed") == losses("straight") and len(losses("straight")) == 6
    assert losses("straight")[-1] < losses("straight")[0]


def test_merge_writes_a_plain_checkpoint_with_the_adapted_logits(runs, tmp_path, capsys):
    out = tmp_path / "merged.pt"
    assert export.main(["merge", "--ckpt", str(runs / "adapter_b"), "--out", str(out)]) == 0
    state = ckpt_io.load_checkpoint(out)
    assert "adapter" not in state and "optimizer" not in state and "model" in state
    merged, adapted = ckpt_io.load_model(out), ckpt_io.load_model(runs / "adapter_b")
    ids = tiny_ids(merged.model.config.vocab_size)
    torch.testing.assert_close(logits_of(merged.model, ids), logits_of(adapted.model, ids), rtol=1e-5, atol=1e-5)
    before = out.read_bytes()
    capsys.readouterr()
    assert export.main(["merge", "--ckpt", str(runs / "adapter_a"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before  # nothing overwritten


def test_a_hugging_face_folder_is_a_base_too_and_gpt_hf_exports_an_adapter_run_merged(runs, tmp_path):
    from gpt import hf_export as hf

    folder = tmp_path / "hf"
    assert hf.main(["--ckpt", str(runs / "adapter_a"), "--out", str(folder)]) == 0  # base + adapter, merged
    ids = tiny_ids(28)
    torch.testing.assert_close(logits_of(ckpt_io.load_model(folder).model, ids),
                               logits_of(ckpt_io.load_model(runs / "adapter_a").model, ids), rtol=1e-5, atol=1e-5)
    text = write_corpus(tmp_path / "t.txt", seed=5, words=WORDS[3:9])
    assert train_main(run_args(tmp_path, text, "over_hf", f"--init_from={folder}", "--lora_rank=2",
                               "--max_iters=2", "--eval_interval=2")) == 0
    loaded = ckpt_io.load_model(tmp_path / "over_hf")
    assert loaded.base_path == folder.resolve() and adapters.attached(loaded.model).settings.rank == 2


def test_inference_options_fold_the_adapter_in_first(runs):
    from gpt.inference import prepare_for_inference

    ids = tiny_ids(28)
    adapted = logits_of(ckpt_io.load_model(runs / "adapter_a").model, ids)
    for weights in ("float32", "int8"):  # int8 converts nn.Linear layers: an adapter's own would stay float
        model = prepare_for_inference(ckpt_io.load_model(runs / "adapter_a").model, weights)
        assert adapters.attached(model) is None and not list(adapters.lora_layers(model))
        torch.testing.assert_close(logits_of(model, ids), adapted, rtol=0, atol=1e-5 if weights == "float32" else 0.1)


def test_sample_py_applies_an_adapter_to_its_base(runs, capsys):
    from gpt.generate import main as sample_main

    args = ["--prompt", "the ", "--temperature", "1", "--seed", "3", "--max_new_tokens", "40", "--stream=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = subprocess.run([sys.executable, "sample.py", "--ckpt", str(runs / "base"), "--adapter",
                          str(runs / "adapter_a"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert sample_main(["--ckpt", str(runs / "adapter_a"), *args]) == 0  # the base found from the adapter
    assert capsys.readouterr().out == cli.stdout
    assert sample_main(["--ckpt", str(runs / "base"), *args]) == 0
    assert capsys.readouterr().out != cli.stdout  # the adapter changes what is sampled


def write_conversations(path: Path, seed: int, count: int = 200) -> Path:
    """A task in the chat template's form, in the base's characters: the first letter of a word."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(count)]
    path.write_text("".join(json.dumps({"prompt": w, "response": w[0]}) + "\n" for w in words), encoding="utf-8")
    return path


def test_adapters_tune_on_conversations_from_a_text_base_and_over_an_instruction_tuned_run(runs, tmp_path, capsys):
    from gpt.post.tasks import cli
    from gpt.generate import main as sample_main

    chats, test = write_conversations(tmp_path / "chats.jsonl", 8), write_conversations(tmp_path / "test.jsonl", 9, 12)
    base_bytes = (runs / "base" / "best.pt").read_bytes()
    base = ckpt_io.load_model(runs / "base")
    known = base.tokenizer.vocab_size
    capsys.readouterr()
    # From a base that continues text: the template's 4 markers are new tokens, and the adapter trains their rows
    # (only theirs without the "tokens" target, which would train every row).
    assert train_main(run_args(tmp_path, chats, "chat", f"--init_from={runs / 'base'}", "--lora_rank=4",
                               "--lora_targets=attn,mlp,head", "--learning_rate=2e-2", "--max_iters=6",
                               "--eval_interval=6")) == 0
    assert "4 new tokens" in capsys.readouterr().out
    state = ckpt_io.load_checkpoint(tmp_path / "chat" / "best.pt")
    assert state["adapter"]["new_rows_from"] == known and "chat_template" in state
    assert state["adapter"]["weights"]["transformer.wte.new_rows"].shape == (state["model_config"]["vocab_size"] - known, 16)
    assert (runs / "base" / "best.pt").read_bytes() == base_bytes  # the base's file stays as it was
    chat = ckpt_io.load_model(tmp_path / "chat")
    assert chat.chat_template is not None and chat.tokenizer.special_tokens == chat.chat_template.tokenizer.special_tokens
    ids = tiny_ids(known)
    with adapters.adapters_disabled(chat.model):  # the known tokens' logits are the base's
        torch.testing.assert_close(logits_of(chat.model, ids)[..., :known], logits_of(base.model, ids), rtol=0, atol=1e-6)
    # sample.py --chat, and the task scorer, through the adapter (found from it, or applied to the base named).
    args = ["--chat", "--prompt=dog", "--temperature=0", "--max_new_tokens=4", "--stream=false"]
    assert sample_main([f"--ckpt={tmp_path / 'chat'}", *args]) == 0
    answer = capsys.readouterr().out
    assert sample_main([f"--ckpt={runs / 'base'}", f"--adapter={tmp_path / 'chat'}", *args]) == 0
    assert capsys.readouterr().out == answer and "<|" not in answer
    assert cli.main(["eval", f"--ckpt={runs / 'base'}", f"--adapter={tmp_path / 'chat'}", f"--data={test}",
                       "--json", "--max_new_tokens=4", "--progress=false"]) == 0
    assert json.loads(capsys.readouterr().out)["prompting"] == "chat template"
    # Merged: a plain chat model with the same logits and template.
    assert export.main(["merge", "--ckpt", str(tmp_path / "chat"), "--out", str(tmp_path / "merged.pt")]) == 0
    merged = ckpt_io.load_model(tmp_path / "merged.pt")
    assert merged.chat_template.to_dict() == chat.chat_template.to_dict()
    ids = tiny_ids(merged.model.config.vocab_size)
    torch.testing.assert_close(logits_of(merged.model, ids), logits_of(chat.model, ids), rtol=1e-5, atol=1e-5)
    # Over an instruction-tuned model (the merged one): it has the markers, so nothing grows; its template carries on.
    more = write_conversations(tmp_path / "more.jsonl", 10)
    assert train_main(run_args(tmp_path, more, "again", f"--init_from={tmp_path / 'merged.pt'}", "--lora_rank=2",
                               "--max_iters=2", "--eval_interval=2")) == 0
    again = ckpt_io.load_model(tmp_path / "again")
    assert again.checkpoint["adapter"]["new_rows_from"] is None and again.base_path == tmp_path / "merged.pt"
    assert again.chat_template.to_dict() == merged.chat_template.to_dict()


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, nothing overwritten


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("extra, needles", [
    (["--lora_rank=-1"], ["lora_rank", "0 for full fine-tuning"]),
    (["--lora_rank=4", "--lora_alpha=0"], ["lora_alpha", "positive"]),
    (["--lora_rank=4", "--lora_targets=attn,mlp.c_fx"], ["mlp.c_fx", "valid targets", "mlp.c_fc"]),
    (["--lora_rank=4", "--lora_targets=lm_head"], ["tied", "wte"]),
])
def test_bad_lora_settings_fail_with_one_line(runs, tmp_path, capsys, extra, needles):
    text = write_corpus(tmp_path / "t.txt", seed=4)
    error = _one_line_error(capsys, train_main(run_args(tmp_path, text, "out", f"--init_from={runs / 'base'}", *extra)))
    for needle in needles:
        assert needle in error, error
    assert not (tmp_path / "out").exists()


def test_an_adapter_needs_a_trained_model_and_keeps_its_settings_on_resume(runs, tmp_path, capsys):
    text = write_corpus(tmp_path / "t.txt", seed=4)
    assert "init_from" in _one_line_error(capsys, train_main(run_args(tmp_path, text, "out", "--lora_rank=4")))
    copy = tmp_path / "adapter_a"
    shutil.copytree(runs / "adapter_a", copy)
    before = (copy / "ckpt.pt").read_bytes()
    error = _one_line_error(capsys, train_main([f"--out_dir={copy}", "--resume", "--lora_rank=8"]))
    assert "lora_rank" in error and (copy / "ckpt.pt").read_bytes() == before


def test_an_adapter_finds_its_base_or_says_which_one_it_needs(runs, tmp_path):
    fingerprint = adapter_files.read_adapter(runs / "adapter_a").base["fingerprint"][:12]
    # The base and the adapter moved together (and the recorded path is gone): found beside the adapter's out_dir.
    moved = tmp_path / "moved"
    shutil.copytree(runs / "base", moved / "base")
    (moved / "adapter_a").mkdir()
    state = ckpt_io.load_checkpoint(runs / "adapter_a" / "best.pt")
    state["adapter"]["base"]["path"] = str(tmp_path / "gone" / "best.pt")
    ckpt_io.save_checkpoint(state, moved / "adapter_a" / "best.pt")
    assert ckpt_io.load_model(moved / "adapter_a").base_path == moved / "adapter_a" / ".." / "base" / "best.pt"
    # Another model of the same shape (the base trained further), another shape, a missing path: one line each.
    changed = ckpt_io.load_checkpoint(runs / "base" / "best.pt")
    changed["model"]["transformer.ln_f.weight"] = changed["model"]["transformer.ln_f.weight"] + 1e-3
    ckpt_io.save_checkpoint(changed, tmp_path / "changed.pt")
    other_shape = random_gpt(vocab_size=changed["model_config"]["vocab_size"], n_embd=32)
    ckpt_io.save_checkpoint({"model_config": dataclasses.asdict(other_shape.config),
                             "model": ckpt_io.clean_state_dict(other_shape), "tokenizer": changed["tokenizer"]},
                            tmp_path / "other.pt")
    cases = [(tmp_path / "changed.pt", "other weights"), (tmp_path / "other.pt", "another shape"),
             (tmp_path / "nowhere", "does not exist")]
    for base, needle in cases:
        with pytest.raises(UserError) as e:
            ckpt_io.load_model(runs / "adapter_a", base=base)
        message = str(e.value)
        assert needle in message and fingerprint in message and "--base" in message and "\n" not in message
    # The right one, named explicitly (a moved base), loads.
    assert ckpt_io.load_model(moved / "adapter_a", base=moved / "base").base_path == moved / "base" / "best.pt"
    with pytest.raises(UserError, match="no longer at"):
        ckpt_io.load_model(moved / "adapter_a" / "best.pt", base=None) if False else \
            adapter_files.find_base(dataclasses.replace(adapter_files.read_adapter(moved / "adapter_a"), path=None))
    with pytest.raises(UserError, match="not an adapter"):
        adapter_files.read_adapter(runs / "base")
    with pytest.raises(UserError, match="give the base once"):
        ckpt_io.load_model(runs / "base", adapter=runs / "adapter_a", base=runs / "base")


def test_merge_and_export_refuse_what_they_cannot_do(runs, tmp_path, capsys):
    error = _one_line_error(capsys, export.main(["merge", "--ckpt", str(runs / "base"), "--out", str(tmp_path / "m.pt")]))
    assert "not an adapter" in error and not (tmp_path / "m.pt").exists()
    error = _one_line_error(capsys, export.main(["export", "--ckpt", str(runs / "adapter_b"), "--out", str(tmp_path / "p")]))
    assert "wte" in error and "merge" in error and not (tmp_path / "p").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    error = _one_line_error(capsys, export.main(["export", "--ckpt", str(runs / "adapter_a"), "--out", str(tmp_path / "full")]))
    assert "not empty" in error and (tmp_path / "full" / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------------
# Hugging Face peft, the outside oracle


def test_peft_loads_the_exported_adapter_onto_the_exported_base_and_computes_our_logits(runs, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is the outside oracle here")
    peft = pytest.importorskip("peft", reason="peft (dev extra) is the outside oracle here")
    assert export.main(["export", "--ckpt", str(runs / "adapter_a"), "--out", str(tmp_path / "peft"),
                      "--base_out", str(tmp_path / "hf_base")]) == 0
    ours = ckpt_io.load_model(runs / "adapter_a").model
    hf_base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf_base").eval()
    hf = peft.PeftModel.from_pretrained(hf_base, tmp_path / "peft").eval()
    ids = tiny_ids(ours.config.vocab_size)
    with torch.no_grad():
        theirs = hf(ids).logits
        with hf.disable_adapter():
            theirs_base = hf(ids).logits
    torch.testing.assert_close(theirs, logits_of(ours, ids), rtol=1e-4, atol=1e-5)
    with adapters.adapters_disabled(ours):
        torch.testing.assert_close(theirs_base, logits_of(ours, ids), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(theirs, theirs_base, atol=1e-4)  # the adapter matters
