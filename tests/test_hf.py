"""gpt/hf.py against the outside implementation: transformers' GPT-2 computes the same logits as our GPT.

All offline: the Hugging Face models are built with random weights from a GPT2Config, never downloaded.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch

from conftest import shared_path
from gpt.errors import UserError
from gpt.hf import load_hf_gpt2, read_safetensors, save_hf_gpt2, write_safetensors
from gpt.model import GPT, GPTConfig

transformers = pytest.importorskip(
    "transformers", reason="transformers (a dev dependency: pip install -e '.[dev]') is the outside oracle here"
)

SHAPES = [  # (vocab_size, n_positions, n_layer, n_head, n_embd)
    (67, 16, 2, 4, 32),
    (101, 24, 1, 2, 16),
    (50, 8, 3, 3, 24),
]


def hf_model(vocab_size=67, n_positions=16, n_layer=2, n_head=4, n_embd=32, **extra):
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        bos_token_id=None, eos_token_id=None, **extra,
    )
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).eval()
    # Random init leaves biases and LayerNorms at 0 and 1; perturb everything so each weight matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def our_logits(model, ids):
    with torch.no_grad():
        return model(ids, all_logits=True)[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_load_safetensors_matches_transformers(tmp_path, shape):
    vocab_size, n_positions, *_ = shape
    ref = hf_model(*shape)
    ref.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model = load_hf_gpt2(tmp_path).eval()
    assert model.config.block_size == n_positions and model.config.vocab_size == vocab_size
    ids = torch.randint(0, vocab_size, (3, n_positions))
    diff = (our_logits(model, ids) - hf_logits(ref, ids)).abs().max().item()
    assert diff < 1e-4


def test_load_pytorch_bin_with_legacy_names_and_mask_buffers(tmp_path):
    # Old GPT-2 files: pytorch_model.bin, names without "transformer.", the causal mask stored as buffers
    # attn.bias / attn.masked_bias, and an explicit (tied) lm_head.weight.
    ref = hf_model()
    state = {}
    for key, value in ref.state_dict().items():
        state[key.removeprefix("transformer.")] = value.clone()
    for i in range(ref.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16, dtype=torch.uint8)).view(1, 1, 16, 16)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ref.config.save_pretrained(tmp_path)
    model = load_hf_gpt2(tmp_path).eval()
    ids = torch.randint(0, 67, (2, 16))
    assert (our_logits(model, ids) - hf_logits(ref, ids)).abs().max().item() < 1e-4


def test_load_pytorch_bin_with_prefixed_names(tmp_path):
    ref = hf_model(n_layer=1)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ref.config.save_pretrained(tmp_path)
    model = load_hf_gpt2(tmp_path).eval()
    ids = torch.randint(0, 67, (2, 16))
    assert (our_logits(model, ids) - hf_logits(ref, ids)).abs().max().item() < 1e-4


def test_load_half_precision_file(tmp_path):
    ref = hf_model(n_layer=1)
    state = {k: v.to(torch.bfloat16) for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    write_safetensors(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ref.config.save_pretrained(tmp_path)
    model = load_hf_gpt2(tmp_path)
    assert model.transformer.wte.weight.dtype == torch.float32
    assert torch.equal(model.transformer.wte.weight, state["transformer.wte.weight"].float())


@pytest.mark.parametrize("bias, tied", [(True, True), (False, True), (False, False)])
def test_round_trip_through_transformers(tmp_path, bias, tied):
    # An untied LM head is GPT-2 with tie_word_embeddings = false; zero_init only changes the initial weights.
    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=53, block_size=12, n_layer=2, n_head=2, n_embd=16, bias=bias,
                          tie_embeddings=tied, zero_init=not tied)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_hf_gpt2(model, tmp_path / "hf")
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 53, (2, 12))
    assert (our_logits(model, ids) - hf_logits(ref, ids)).abs().max().item() < 1e-4
    again = load_hf_gpt2(tmp_path / "hf").eval()
    assert again.config.tie_embeddings == tied and ref.config.tie_word_embeddings == tied
    assert (our_logits(again, ids) - our_logits(model, ids)).abs().max().item() < 1e-6
    assert not list((tmp_path / "hf").glob("*.tmp")), "temp files left behind"


def test_own_safetensors_reader_and_writer_agree_with_the_package(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="the safetensors package is the oracle")
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3),
        "d": torch.randn(2, 2).half(),
        "e": torch.zeros(0, 4),
        "f": torch.tensor([True, False]),
    }
    ours = tmp_path / "ours.safetensors"
    write_safetensors(tensors, ours, metadata={"format": "pt"})
    theirs = safetensors_torch.load_file(str(ours))
    assert set(theirs) == set(tensors)
    for k, v in tensors.items():
        assert theirs[k].dtype == v.dtype and torch.equal(theirs[k], v)
    packaged = tmp_path / "theirs.safetensors"
    safetensors_torch.save_file(tensors, str(packaged), metadata={"format": "pt"})
    back = read_safetensors(packaged)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_loads_without_the_safetensors_package(tmp_path, monkeypatch):
    import builtins

    ref = hf_model(n_layer=1)
    ref.save_pretrained(tmp_path)
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name == "safetensors" or name.startswith("safetensors."):
            raise ImportError("safetensors hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    model = load_hf_gpt2(tmp_path).eval()
    monkeypatch.undo()
    ids = torch.randint(0, 67, (1, 16))
    assert (our_logits(model, ids) - hf_logits(ref, ids)).abs().max().item() < 1e-4


# ---------------------------------------------------------------------------------------------------
# Bad input: a one-line UserError naming what is wrong, never a silently different model.


@pytest.fixture
def saved(tmp_path):
    hf_model(n_layer=1).save_pretrained(tmp_path)
    return tmp_path


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, words", [
    ({"model_type": "llama"}, ["model_type", "llama"]),
    ({"model_type": ...}, ["model_type", "None"]),
    ({"architectures": ["GPT2ForSequenceClassification"]}, ["GPT2ForSequenceClassification"]),
    ({"activation_function": "relu"}, ["activation_function", "relu"]),
    ({"layer_norm_epsilon": 1e-6}, ["layer_norm_epsilon", "1e-06"]),
    ({"scale_attn_by_inverse_layer_idx": True}, ["scale_attn_by_inverse_layer_idx"]),
    ({"scale_attn_weights": False}, ["scale_attn_weights"]),
    ({"add_cross_attention": True}, ["add_cross_attention"]),
    ({"n_inner": 100}, ["n_inner", "100", "128"]),
    ({"n_head": 5}, ["n_embd", "n_head"]),
    ({"n_embd": 64, "n_head": 4}, ["wte.weight", "(67, 32)", "(67, 64)"]),
    ({"vocab_size": 68}, ["wte", "(68, 32)", "(67, 32)"]),
    ({"n_layer": 2}, ["lacks", "h.1."]),
    ({"n_positions": "many"}, ["n_positions", "many"]),
])
def test_bad_config(saved, changes, words):
    edit_config(saved, **changes)
    with pytest.raises(UserError) as err:
        load_hf_gpt2(saved)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_gelu_pytorch_tanh_and_reorder_and_upcast_attn_are_accepted(saved):
    # Both compute the same function as our model (tanh GELU; fp32 attention inside mixed precision).
    edit_config(saved, activation_function="gelu_pytorch_tanh", reorder_and_upcast_attn=True)
    assert isinstance(load_hf_gpt2(saved), GPT)


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(UserError, match="not found.*nothing is downloaded"):
        load_hf_gpt2(tmp_path / "gpt2-nowhere")
    (saved / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        load_hf_gpt2(saved)
    (saved / "config.json").unlink()
    with pytest.raises(UserError, match="config.json"):
        load_hf_gpt2(saved)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        load_hf_gpt2(tmp_path / "file")


def test_corrupt_and_unexpected_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt"):
        load_hf_gpt2(saved)
    (saved / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(UserError, match="corrupt"):
        read_safetensors(saved / "model.safetensors")
    (saved / "model.safetensors").unlink()
    ref = hf_model(n_layer=1)
    state = dict(ref.state_dict())
    state["transformer.h.0.crossattention.c_attn.weight"] = torch.zeros(32, 64)
    torch.save(state, saved / "pytorch_model.bin")
    with pytest.raises(UserError, match="crossattention"):
        load_hf_gpt2(saved)
    state = dict(ref.state_dict())
    state["lm_head.weight"] = torch.randn(67, 32)  # an untied head: loading it tied would be another model
    torch.save(state, saved / "pytorch_model.bin")
    with pytest.raises(UserError, match="untied"):
        load_hf_gpt2(saved)


def test_pickled_code_is_refused(saved):
    (saved / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, saved / "pytorch_model.bin")
    with pytest.raises(UserError, match="refused"):
        load_hf_gpt2(saved)


def test_save_into_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        save_hf_gpt2(GPT(GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4)), tmp_path / "f")


def test_attention_only_model_is_refused(tmp_path):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, attention_only=True))
    with pytest.raises(UserError, match="attention-only"):
        save_hf_gpt2(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("option", [dict(position="rope"), dict(norm="rmsnorm"), dict(mlp="relu2"),
                                    dict(mlp="swiglu"), dict(qk_norm=True), dict(logit_softcap=30.0)])
def test_options_gpt2_cannot_compute_are_refused(tmp_path, option):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, **option))
    with pytest.raises(UserError) as info:
        save_hf_gpt2(model, tmp_path / "hf")
    (name,) = option
    assert "cannot be written as GPT-2" in str(info.value) and name in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------------------------------
# The tokenizer travels with the weights


def test_a_char_model_comes_back_with_its_own_tokenizer(tmp_path):
    from gpt.checkpoint import load_model
    from gpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abcdefgh \n")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_hf_gpt2(model, tmp_path / "hf", tokenizer)
    loaded = load_model(tmp_path / "hf")
    assert loaded.tokenizer.to_dict() == tokenizer.to_dict()
    assert not (tmp_path / "hf" / "vocab.json").exists()  # Hugging Face has no char-level GPT-2 tokenizer


def test_a_folder_whose_tokenizer_outgrows_the_model_is_a_one_line_error(tmp_path, monkeypatch):
    from gpt.checkpoint import load_model

    gpt2_dir = shared_path("gpt2", "encoder.json").parent
    monkeypatch.setenv("GPT2_TOKENIZER_DIR", str(gpt2_dir))
    model = GPT(GPTConfig(vocab_size=65, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_hf_gpt2(model, tmp_path / "hf")  # no tokenizer: read back with GPT-2's, 50,257 tokens
    with pytest.raises(UserError, match="50257 tokens but the model only 65") as e:
        load_model(tmp_path / "hf")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="do not belong together"):
        from gpt.tokenizer_files import load_tokenizer

        save_hf_gpt2(model, tmp_path / "hf2", load_tokenizer("gpt2"))


def test_a_bpe_model_exports_a_tokenizer_transformers_reads(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gpt.checkpoint import load_model
    from gpt.tokenizer_files import load_tokenizer

    text = ("The quick brown fox jumps over the lazy dog. Les élèves naïfs; 日本語 text, tabs\tand  spaces.\n" * 40
            + "def f(x):\n    return x ** 2  # squares\n" * 40)
    tokenizer = load_tokenizer("bpe:330", corpus=text)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_hf_gpt2(model, tmp_path / "hf", tokenizer)
    theirs = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "hf")
    sample = "The lazy fox returns x ** 2; naïve élèves 日本 tabs\tand  spaces.\n<|endoftext|>def g(y):\n"
    assert theirs.encode(sample) == tokenizer.encode(sample)
    assert load_model(tmp_path / "hf").tokenizer.to_dict() == tokenizer.to_dict()


def test_export_command_writes_a_folder_that_loads_back_the_same(tmp_path, capsys):
    import dataclasses

    from gpt.checkpoint import load_model, save_checkpoint
    from gpt.hf_export import main
    from gpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("hello world\n")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=False))
    save_checkpoint({"model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                     "tokenizer": tokenizer.to_dict(), "step": 0}, tmp_path / "run" / "ckpt.pt")
    assert main(["--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert "gpt_tokenizer.json" in capsys.readouterr().out
    back = load_model(tmp_path / "hf")
    idx = torch.tensor([tokenizer.encode("hello")])
    torch.testing.assert_close(back.model(idx, all_logits=True)[0], model.eval()(idx, all_logits=True)[0])
    assert back.tokenizer.to_dict() == tokenizer.to_dict()
    assert main(["--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2  # never overwrites
    assert "already holds a model" in capsys.readouterr().err
