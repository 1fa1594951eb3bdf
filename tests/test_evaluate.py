"""gpt/evaluate.py: the numbers it reports, the windows it scores, and its command line."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt.checkpoint import clean_state_dict, save_checkpoint
from gpt.errors import UserError
from gpt.evaluate import encode_documents, evaluate, main, plan_windows
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import CharTokenizer

from conftest import REPO

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n"
)
BLOCK = 16


def tiny_model(vocab_size: int, block_size: int = BLOCK) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():  # sharper than the init, so that context matters and loss differs per position
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(TEXT + "é")


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer.vocab_size)


@pytest.fixture(scope="module")
def ids(tokenizer):
    return torch.tensor(tokenizer.encode(TEXT))


def nll_per_token(model, ids):
    """-log p(ids[j+1] | ids[max(0, j+1-block)..j]) for each j, one token at a time: the plain reference."""
    block = model.config.block_size
    out = []
    with torch.no_grad():
        for j in range(len(ids) - 1):
            context = ids[max(0, j + 1 - block) : j + 1][None]
            logits, _ = model(context)
            out.append(-F.log_softmax(logits[0, -1].double(), dim=-1)[ids[j + 1]].item())
    return out


def test_reported_numbers_are_consistent(model, ids):
    result = evaluate(model, ids, num_bytes=123)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert result["bits_per_byte"] == pytest.approx(result["loss"] * result["tokens"] / (123 * math.log(2)), rel=1e-12)
    assert result["tokens"] == len(ids) - 1
    assert result["stride"] == BLOCK // 2 and result["block_size"] == BLOCK


def test_stride_one_matches_the_per_token_reference(model, ids):
    # With stride 1 every token sees a full window of context (or everything before it, near the start).
    ids = ids[:45]
    reference = nll_per_token(model, ids)
    result = evaluate(model, ids, stride=1, batch_size=5)
    assert result["loss"] == pytest.approx(sum(reference) / len(reference), abs=1e-5)


def test_stride_equal_to_block_size_is_independent_windows(model, ids):
    with torch.no_grad():
        total, count = 0.0, 0
        for start in range(0, len(ids) - 1, BLOCK):
            chunk = ids[start : start + BLOCK + 1]
            logits, _ = model(chunk[:-1][None], all_logits=True)
            total += F.cross_entropy(logits[0].double(), chunk[1:], reduction="sum").item()
            count += len(chunk) - 1
    result = evaluate(model, ids, stride=BLOCK, batch_size=3)
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, abs=1e-5)


@pytest.mark.parametrize("stride", [3, 8, 11])
def test_every_stride_scores_each_token_once_with_its_window_context(model, ids, stride):
    # The loss of token j+1 depends only on the window it was scored in: rebuild that from plan_windows.
    with torch.no_grad():
        expected = 0.0
        for begin, first_scored, end in plan_windows(len(ids) - 1, BLOCK, stride):
            assert end - begin <= BLOCK
            assert first_scored == 0 or first_scored - begin >= BLOCK - stride
            logits, _ = model(ids[begin:end][None], all_logits=True)
            targets = ids[begin + 1 : end + 1].clone()
            targets[: first_scored - begin] = -1
            expected += F.cross_entropy(logits[0].double(), targets, ignore_index=-1, reduction="sum").item()
    result = evaluate(model, ids, stride=stride, batch_size=4)
    assert result["loss"] == pytest.approx(expected / (len(ids) - 1), abs=1e-5)


def test_plan_windows_covers_every_prediction_once():
    for n in range(1, 60):
        for block in (1, 4, 7):
            for stride in range(1, block + 1):
                scored = []
                for begin, first, end in plan_windows(n, block, stride):
                    assert begin <= first < end <= begin + block
                    scored += range(first, end)
                assert scored == list(range(n))


def test_text_shorter_than_block_size_is_one_forward_for_any_stride(model, ids):
    short = ids[:10]
    with torch.no_grad():
        _, loss = model(short[:-1][None], short[1:][None])
    for stride in (1, 4, BLOCK):
        result = evaluate(model, short, stride=stride)
        assert result["loss"] == pytest.approx(loss.item(), abs=1e-6)
        assert result["tokens"] == 9


def test_batch_size_does_not_change_the_result(model, ids):
    losses = [evaluate(model, ids, stride=5, batch_size=b)["loss"] for b in (1, 3, 100)]
    assert max(losses) - min(losses) < 1e-6


def test_bad_arguments(model, ids):
    for stride in (-1, BLOCK + 1):
        with pytest.raises(UserError, match="stride"):
            evaluate(model, ids, stride=stride)
    with pytest.raises(UserError, match="at least 2"):
        evaluate(model, ids[:1])
    with pytest.raises(UserError, match="vocabulary"):
        evaluate(model, torch.tensor([0, 1, 1000]))


class WithEot(CharTokenizer):
    """A char tokenizer with an <|endoftext|> id, to check how documents are joined."""

    def __init__(self, chars):
        super().__init__(chars)
        self.eot_id = self.vocab_size
        self.vocab_size += 1


def test_encode_documents_joins_with_eot_and_counts_the_bytes_of_scored_tokens():
    plain = CharTokenizer("abcé")
    ids, nbytes = encode_documents(["abé", "ca"], plain)
    # The first token is context only: 'a' is never predicted, so its byte does not count ('béca': 5 bytes).
    assert ids.tolist() == plain.encode("abéca") and nbytes == 5
    eot = WithEot("abcé")
    ids, nbytes = encode_documents(["abé", "ca"], eot)
    assert ids.tolist() == [4, 0, 1, 3, 4, 2, 0] and nbytes == 6  # separators are tokens, not bytes
    ids, nbytes = encode_documents(["abé", "ca"], plain, max_tokens=2)  # 2 scored = 3 tokens of text
    assert ids.tolist() == plain.encode("abé") and nbytes == 3
    ids, nbytes = encode_documents(["abé", "ca"], eot, max_tokens=4)
    assert ids.tolist() == [4, 0, 1, 3, 4] and nbytes == 4
    _, nbytes = encode_documents(["ab"], plain)  # two characters: one scored, one byte (not two)
    assert nbytes == 1


# ---------------------------------------------------------------------------------------------------
# The command line


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gpt.evaluate", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, tokenizer):
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint({"model_config": dataclasses.asdict(model.config), "model": clean_state_dict(model),
                     "tokenizer": tokenizer.to_dict(), "step": 0, "config": {}}, folder / "ckpt.pt")
    (folder / "text.txt").write_text(TEXT, encoding="utf-8")
    return folder


def test_cli_json(checkpoint, model, ids):
    result = run_cli("--ckpt", checkpoint, "--data", checkpoint / "text.txt", "--stride=4", "--json", "--device=cpu")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = evaluate(model, ids, stride=4, num_bytes=len(TEXT.encode()) - 1)
    for key in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "stride"):
        assert out[key] == pytest.approx(expected[key], rel=1e-6), key
    assert out["bytes"] == len(TEXT.encode()) - 1 and out["tokens"] == len(TEXT) - 1 and out["split"] == "all"
    assert out["bits_per_byte"] == pytest.approx(out["loss"] * out["tokens"] / (out["bytes"] * math.log(2)))


def test_cli_report_and_help(checkpoint, capsys):
    code = main(["--ckpt", str(checkpoint), "--data", str(checkpoint / "text.txt"), "--max_tokens=50",
                 "--device=cpu", "--progress=false"])
    out = capsys.readouterr().out
    assert code == 0
    assert "stride         8 " in out and "bits per byte" in out and "50 tokens scored" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "--stride" in help_text and "block_size // 2" in help_text


def test_cli_bad_input_exits_2_with_one_line(checkpoint):
    result = run_cli("--ckpt", checkpoint, "--data", checkpoint / "text.txt", "--stride=17", "--device=cpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "stride 17" in lines[0], result.stderr


@pytest.mark.parametrize("make_args, words", [
    (lambda d: ["--ckpt", d / "nowhere", "--data", d / "text.txt"], "not found"),
    (lambda d: ["--ckpt", d, "--data", d / "missing.txt"], "missing.txt not found"),
    (lambda d: ["--ckpt", d, "--data", d / "short.txt"], "at least 2"),
    (lambda d: ["--ckpt", d, "--data", d / "unknown.txt"], "not in this char tokenizer"),
    (lambda d: ["--ckpt", d, "--data", d / "text.txt", "--stride=-2"], "stride -2"),
    (lambda d: ["--ckpt", d, "--data", d / "text.txt", "--batch_size=0"], "batch_size"),
    (lambda d: ["--ckpt", d, "--data", d / "text.txt", "--max_tokens=-1"], "max_tokens"),
    (lambda d: ["--data", d / "text.txt"], "--ckpt"),
    (lambda d: ["--ckpt", d], "--data"),
])
def test_cli_bad_input(checkpoint, make_args, words, capsys):
    # In-process (main is what `python -m gpt.evaluate` runs; the subprocess test above checks the launch).
    (checkpoint / "short.txt").write_text("F", encoding="utf-8")
    (checkpoint / "unknown.txt").write_text("First Citizen: ZQX", encoding="utf-8")
    code = main([str(a) for a in make_args(checkpoint)] + ["--device=cpu", "--progress=false"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err


def test_invalid_utf8_is_named_with_its_offset_or_replaced(tmp_path):
    from gpt.errors import UserError
    from gpt.evaluate import read_documents

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    with pytest.raises(UserError, match="bad.txt is not valid UTF-8 at byte offset 6"):
        list(read_documents(str(bad)))
    assert list(read_documents(str(bad), on_invalid_utf8="replace")) == ["hello \ufffd world"]


def test_split_val_scores_exactly_the_text_training_held_out(checkpoint, tmp_path, capsys):
    from gpt.data import prepare, split_texts

    text = tmp_path / "text.txt"
    text.write_text(TEXT * 3, encoding="utf-8")
    prepared = prepare(str(text), "char", data_dir=tmp_path / "data", val_fraction=0.2, progress=False)
    val_ids = np.fromfile(prepared.val_bin, dtype=prepared.dtype)
    assert "".join(split_texts(str(text), "val", val_fraction=0.2)) == prepared.tokenizer.decode(val_ids.tolist())
    assert "".join(split_texts(str(text), "all")) == TEXT * 3

    code = main(["--ckpt", str(checkpoint), "--data", str(text), "--split", "val", "--val_fraction", "0.2",
                 "--device=cpu", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["split"] == "val" and out["tokens"] == len(val_ids) - 1
    code = main(["--ckpt", str(checkpoint), "--data", str(text), "--split", "val", "--device=cpu"])
    assert code == 0 and "its val split only" in capsys.readouterr().out
