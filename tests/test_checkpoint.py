"""Checkpoints: atomic saves, safe loads (no code runs), and resolving --ckpt specs."""

import errno
import os
import stat

import pytest
import torch

from gpt.checkpoint import (
    SaveError,
    clean_state_dict,
    load_checkpoint,
    load_model,
    model_config_dict,
    resolve_checkpoint_path,
    save_checkpoint,
)
from gpt.errors import UserError
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import CharTokenizer


def make_state():
    tokenizer = CharTokenizer("hello world\n")
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))
    return model, tokenizer, {
        "model_config": model_config_dict(model),
        "model": clean_state_dict(model),
        "tokenizer": tokenizer.to_dict(),
        "step": 7,
        "rng": {"torch": torch.get_rng_state()},
    }


def test_save_and_load_round_trip(tmp_path):
    model, tokenizer, state = make_state()
    save_checkpoint(state, tmp_path / "run" / "ckpt.pt")
    loaded = load_model(tmp_path / "run")
    assert loaded.path == tmp_path / "run" / "ckpt.pt" and loaded.checkpoint["step"] == 7
    assert loaded.tokenizer.encode("hello") == tokenizer.encode("hello")
    idx = torch.tensor([tokenizer.encode("hello")])
    torch.testing.assert_close(loaded.model(idx)[0], model.eval()(idx)[0])
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["ckpt.pt"]  # no temp files left


def test_out_dir_prefers_best(tmp_path):
    _, _, state = make_state()
    save_checkpoint(state, tmp_path / "ckpt.pt")
    save_checkpoint({**state, "step": 3}, tmp_path / "best.pt")
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "best.pt"


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, _, state = make_state()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(state, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(SaveError, match=r"cannot save .*ckpt\.pt: no space left on the device \(it needs about [\d.]+ MB"):
        save_checkpoint({**state, "step": 8}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 7
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_saved_files_get_the_permissions_a_plain_write_gives(tmp_path):
    _, _, state = make_state()
    previous = os.umask(0o027)
    try:
        save_checkpoint(state, tmp_path / "new.pt")
        assert stat.S_IMODE((tmp_path / "new.pt").stat().st_mode) == 0o640  # 0666 less the umask
        (tmp_path / "old.pt").write_bytes(b"")
        os.chmod(tmp_path / "old.pt", 0o644)
        save_checkpoint(state, tmp_path / "old.pt")
        assert stat.S_IMODE((tmp_path / "old.pt").stat().st_mode) == 0o644  # a replaced file keeps its mode
    finally:
        os.umask(previous)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, _, state = make_state()
    state["payload"] = RunsCode()
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match="refused to load .*evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.pt"
    _, _, state = make_state()
    save_checkpoint(state, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)
    with pytest.raises(UserError, match="holds no checkpoint"):
        load_model(tmp_path)


def test_clean_state_dict_strips_wrapper_prefixes():
    model, _, _ = make_state()
    wrapper = torch.nn.Module()
    wrapper.module = model
    assert set(clean_state_dict(wrapper)) == set(model.state_dict())


def test_hf_folder_loads_with_its_own_tokenizer_files(tmp_path):
    import shutil

    from conftest import shared_path
    from gpt.hf import save_hf_gpt2

    gpt2 = shared_path("gpt2")
    model = GPT(GPTConfig(vocab_size=50257, block_size=8, n_layer=1, n_head=2, n_embd=16))
    save_hf_gpt2(model, tmp_path / "hf")
    shutil.copy(gpt2 / "encoder.json", tmp_path / "hf" / "vocab.json")
    shutil.copy(gpt2 / "vocab.bpe", tmp_path / "hf" / "merges.txt")
    loaded = load_model(tmp_path / "hf")
    assert loaded.checkpoint is None and loaded.tokenizer.name == "gpt2"
    assert loaded.tokenizer.encode("Hello world") == [15496, 995]
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\nx y\n")
    with pytest.raises(UserError, match="not GPT-2's tokenizer files"):
        load_model(tmp_path / "hf")


def test_a_reader_never_sees_half_a_checkpoint_while_it_is_rewritten(tmp_path):
    import threading

    _, _, state = make_state()
    path = tmp_path / "best.pt"
    save_checkpoint(state, path)
    errors = []

    def write():
        for step in range(30):
            save_checkpoint({**state, "step": step}, path)

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        try:
            load_checkpoint(path)
        except Exception as e:  # a half-written file would fail to load
            errors.append(e)
    writer.join()
    assert errors == [] and load_checkpoint(path)["step"] == 29
