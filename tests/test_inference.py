"""Inference options (gpt/inference.py): int8 and bf16 weights keep the model's predictions close, work
through sample.py and gpt.evaluate, and bad combinations are one-line errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from gpt.errors import UserError
from gpt.evaluate import main as evaluate_main
from gpt.decoding import generate_tokens
from gpt.generate import main as sample_main
from gpt.inference import prepare_for_inference
from test_decoding import TINY_TEXT, one_thread, train_tiny_checkpoint, train_tiny_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("inference_run")
    train_tiny_checkpoint(out / "ckpt.pt")
    return out


def logits_of(model, ids):
    with torch.inference_mode():
        return model(ids, all_logits=True)[0].float()


def test_int8_quantizes_every_linear_and_stays_close():
    model, tokenizer = train_tiny_model()
    ids = torch.tensor([tokenizer.encode(TINY_TEXT[:32])])
    quantized = prepare_for_inference(copy.deepcopy(model), "int8")
    assert not any(type(m) is nn.Linear for m in quantized.modules())  # the LM head too
    reference, approx = logits_of(model, ids), logits_of(quantized, ids)
    assert (approx - reference).abs().max() < 0.1 * reference.abs().max()
    assert (approx.argmax(-1) == reference.argmax(-1)).float().mean() > 0.95


def test_bfloat16_weights_decode_the_same_greedy_text():
    model, tokenizer = train_tiny_model()
    half = prepare_for_inference(copy.deepcopy(model), "bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    prompt = torch.tensor([tokenizer.encode("the dog ")])
    with one_thread():
        full = [int(t) for t in generate_tokens(model, prompt, 20, temperature=0.0)]
        assert [int(t) for t in generate_tokens(half, prompt, 20, temperature=0.0)] == full


def test_bad_settings_are_one_line_errors():
    model, _ = train_tiny_model()
    with pytest.raises(UserError, match="unknown weights 'int4'"):
        prepare_for_inference(copy.deepcopy(model), "int4")
    with pytest.raises(UserError, match="int8 computes in float32"):
        prepare_for_inference(copy.deepcopy(model), "int8", dtype=torch.bfloat16)
    with pytest.raises(UserError, match="compile does not combine with weights = int8"):
        prepare_for_inference(copy.deepcopy(model), "int8", compile=True)


def test_sample_py_and_evaluate_take_the_weights_setting(ckpt, capsys):
    with one_thread():
        assert sample_main(["--ckpt", str(ckpt), "--prompt", "the ", "--max_new_tokens", "10", "--weights", "int8",
                            "--temperature", "0"]) == 0
        assert capsys.readouterr().out.startswith("the ")
        data = ckpt / "text.txt"
        data.write_text(TINY_TEXT)
        scores = {}
        for weights in ("float32", "int8"):
            assert evaluate_main(["--ckpt", str(ckpt), "--data", str(data), "--weights", weights, "--json",
                                  "--progress", "false"]) == 0
            scores[weights] = json.loads(capsys.readouterr().out)["bits_per_byte"]
    assert scores["int8"] == pytest.approx(scores["float32"], abs=0.05) and scores["int8"] != scores["float32"]


@pytest.mark.slow  # compiling takes a minute or more on a CPU
def test_a_compiled_model_decodes_the_same_greedy_text():
    model, tokenizer = train_tiny_model()
    compiled = prepare_for_inference(copy.deepcopy(model), compile=True)
    prompt = torch.tensor([tokenizer.encode("the dog ")] * 2)
    with one_thread():
        expected = [t.tolist() for t in generate_tokens(model, prompt, 40, temperature=0.0)]
        assert [t.tolist() for t in generate_tokens(compiled, prompt, 40, temperature=0.0)] == expected
