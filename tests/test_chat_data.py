"""gpt/post/chat_data.py: conversations as training data. Recognising JSONL, rendering into the cache, packing whole
conversations into windows, the batch stream (padding never a target, answers marked, deterministic, exactly
resumable, sliced over processes), overlong conversations, validation, and {"text"} JSONL as plain text."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gpt.post.chat import ChatTemplate
from gpt.datasets import jsonl_files
from gpt.post.chat_data import ChatData, document_mask, pack
from gpt.datasets import TextData, open_training_data
from gpt.errors import UserError
from gpt.model import ARCHITECTURES, GPT, GPTConfig


def conversations(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 7)))
        if long_every and i % long_every == 0:
            word *= 12
        lines.append({"prompt": f"Reverse {word}.", "response": word[::-1], "task": "reverse"})
    return lines


def write_jsonl(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def config(tmp_path, data, **extra):
    values = dict(data=[str(data)], include=None, val_fraction=0.1, val_data=None, data_dir=str(tmp_path / "cache"),
                  on_invalid_utf8="error", loss_on="assistant")
    values.update(extra)
    return SimpleNamespace(**values)


@pytest.fixture
def chat(tmp_path) -> ChatData:
    path = write_jsonl(tmp_path / "train.jsonl", conversations(200))
    data = open_training_data(config(tmp_path, path), "char", progress=False)
    assert isinstance(data, ChatData)
    return data


def test_pack_places_every_conversation_once_whole_and_fills_windows_best_first():
    lengths = np.array([5, 5, 3, 2, 7, 1, 4])
    rows = pack(lengths, 8, np.arange(7))
    assert sorted(i for row in rows for i in row) == list(range(7))
    assert all(lengths[row].sum() <= 8 for row in rows)
    assert rows == [[0, 2], [1, 3, 5], [4], [6]]  # each goes where the least room holds it
    # Best fit fills the 6's window with the 2 and the 5's with the 3; filling windows in turn would need three.
    assert pack(np.array([6, 5, 2, 3]), 8, np.arange(4)) == [[0, 2], [1, 3]]


def test_batches_mark_answers_and_never_count_padding(chat):
    template = chat.template
    x, y, answer, pos = chat.batches("train", 40, 6, seed=1).next()
    assert x.shape == y.shape == answer.shape == (6, 40) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], torch.where(y[:, :-1] >= 0, y[:, :-1], x[:, 1:]))  # y is x shifted by one
    end, assistant = template.end_id, template.role_ids["assistant"]
    for row_x, row_y, row_answer in zip(x.tolist(), y.tolist(), answer.tolist()):
        filled = [t for t in row_y if t >= 0]
        assert row_y[len(filled):] == [-1] * (40 - len(filled))  # padding is at the end, and only -1
        assert not any(row_answer[len(filled):])
        # What counts: after <|assistant|>, every token up to and including <|end|>; nothing else.
        counting = False
        for t, (inp, target, counted) in enumerate(zip(row_x, row_y, row_answer)):
            if inp == assistant:
                counting = True
            assert counted == (counting and target >= 0), t
            if target == end:
                counting = False
        # Whole conversations: every row starts with a user marker and ends a turn.
        assert row_x[0] == template.role_ids["user"] and filled[-1] == end


def test_the_stream_is_deterministic_resumable_and_sliced_over_processes(chat):
    def draw(stream, n):
        return [stream.next() for _ in range(n)]

    a = chat.batches("train", 40, 4, seed=3)
    first = draw(a, 30)  # several epochs of this small split
    b = chat.batches("train", 40, 4, seed=3)
    draw(b, 12)
    state = b.state_dict()
    c = chat.batches("train", 40, 4, seed=3)
    c.load_state_dict(state)
    for got, want in zip(draw(c, 18), first[12:]):
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    other = chat.batches("train", 40, 4, seed=4).next()
    assert not torch.equal(other[0], first[0][0])
    # Two processes with batch 2 each see together exactly the rows one process sees with batch 4.
    ranks = [chat.batches("train", 40, 2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for step in range(5):
        halves = [r.next() for r in ranks]
        for part in range(4):
            assert torch.equal(torch.cat([h[part] for h in halves]), first[step][part])
    # An epoch uses every conversation that fits exactly once.
    rows = a.epoch_rows(0)
    assert sorted(i for row in rows for i in row) == list(range(len(chat.splits["train"])))
    with pytest.raises(UserError, match="different block_size"):
        chat.batches("train", 30, 4, seed=3).load_state_dict(state)


def test_the_loss_counts_answers_or_everything_and_validation_always_the_answers(tmp_path, chat):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=chat.tokenizer.vocab_size, block_size=40, n_layer=1, n_head=2, n_embd=16))
    batch = chat.batches("val", 40, 4, seed=0).next()
    x, y, answer, pos = batch
    masked = torch.nn.functional.cross_entropy(model(x, all_logits=True, pos=pos, mask=document_mask(pos))[0].flatten(0, 1),
                                               y.masked_fill(~answer, -1).flatten(), ignore_index=-1)
    assert torch.allclose(chat.loss(model, batch), masked)
    everything = ChatData(chat.folder, chat.meta, chat.tokenizer, loss_on="all")
    assert not torch.allclose(everything.loss(model, batch), masked)
    assert torch.allclose(everything.metrics(model, batch)["loss"], masked)  # comparable across loss_on
    assert chat.bits_per_byte("val", 1.0) is None and chat.checkpoint_extras() == {"chat_template": chat.template.to_dict()}


@pytest.mark.parametrize("arch", ["gpt2", "modern"])  # learned positions, and RoPE
def test_a_packed_conversation_sees_only_itself_as_it_would_alone(chat, arch):
    torch.manual_seed(0)
    options = {**ARCHITECTURES[arch], "zero_init": False}  # zero_init's blocks start as the identity: no mixing
    model = GPT(GPTConfig(vocab_size=chat.tokenizer.vocab_size, block_size=80, n_layer=2, n_head=2, n_embd=16,
                          **options)).eval()
    split, stream = chat.splits["val"], chat.batches("val", 80, 4, seed=0)
    row = next(r for r, convs in enumerate(stream.epoch_rows(0)[:4]) if len(convs) >= 2)
    first, second = stream.epoch_rows(0)[row][:2]
    batch = [t[row: row + 1].clone() for t in stream.next()]  # this row alone: x, y, answer, ...
    n0, n1 = (int(n) for n in split.lengths[[first, second]])
    batch[1][:, :n0] = -1  # the loss of the second conversation only (its answer; the loss counts answers)
    batch[1][:, n0 + n1 - 1:] = -1

    packed = chat.loss(model, batch)
    batch[0][0, 1:n0] = batch[0][0, 1:n0].flip(0)  # another neighbour: the first conversation's tokens reversed
    assert torch.allclose(chat.loss(model, batch), packed, rtol=0, atol=1e-6)  # before the fix: 1e-4 to 3e-4 apart
    start, end = int(split.offsets[second]), int(split.offsets[second + 1])
    ids, learned = torch.tensor(split.ids[start:end], dtype=torch.long), torch.tensor(split.learned[start:end] == 1)
    alone = model(ids[None, :-1], ids[None, 1:].masked_fill(~learned[None, 1:], -1))[1]
    assert torch.allclose(packed, alone, rtol=0, atol=1e-6)

    # The logits too, through the model's pos and mask, and the same in the written-out attention.
    x, pos = batch[0], batch[3]
    assert pos[0, :n0 + n1].tolist() == list(range(n0)) + list(range(n1))
    mask = document_mask(pos)
    assert mask.shape == (1, 1, 80, 80) and not mask[0, 0, n0, :n0].any() and mask[0, 0, n0 + 1, n0: n0 + 2].all()
    want = model(ids[None, :-1], all_logits=True)[0][0]  # [n1 - 1, V]
    for plain in (False, True):
        for block in model.transformer.h:
            block.attn.plain = plain
        logits = model(x, all_logits=True, pos=pos, mask=mask)[0][0, n0: n0 + n1 - 1]
        assert torch.allclose(logits, want, rtol=0, atol=1e-5)


def test_validation_share_and_separate_file_and_the_cache(tmp_path):
    lines = conversations(100)
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    data = open_training_data(config(tmp_path, path, val_fraction=0.2), "char", progress=False)
    assert [len(data.splits[s]) for s in ("train", "val")] == [80, 20]
    # The pick depends on the content, not the order of the lines.
    shuffled = write_jsonl(tmp_path / "shuffled.jsonl", random.Random(1).sample(lines, len(lines)))
    again = open_training_data(config(tmp_path, shuffled, val_fraction=0.2), "char", progress=False)
    val_text = sorted(data.tokenizer.decode(data.splits["val"].ids[s:e].tolist()) for s, e in
                      zip(data.splits["val"].offsets[:-1], data.splits["val"].offsets[1:]))
    val_again = sorted(again.tokenizer.decode(again.splits["val"].ids[s:e].tolist()) for s, e in
                       zip(again.splits["val"].offsets[:-1], again.splits["val"].offsets[1:]))
    assert val_text == val_again
    # The same inputs reuse the cache folder; a separate val file replaces the share.
    folders = list((tmp_path / "cache" / "train.chat").iterdir())
    assert open_training_data(config(tmp_path, path, val_fraction=0.2), "char", progress=False).folder == data.folder
    assert list((tmp_path / "cache" / "train.chat").iterdir()) == folders
    val_path = write_jsonl(tmp_path / "val.jsonl", conversations(7, seed=5))
    separate = open_training_data(config(tmp_path, path, val_data=str(val_path)), "char", progress=False)
    assert [len(separate.splits[s]) for s in ("train", "val")] == [100, 7]
    assert ChatTemplate.of_tokenizer(separate.tokenizer) is not None


def test_overlong_conversations_are_left_out_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", conversations(60, long_every=10))
    data = open_training_data(config(tmp_path, path), "char", progress=False)
    data.check_fits(40, 4, 1)
    text = data.describe()
    longest = int(data.splits["train"].lengths.max())
    assert "longer than block_size + 1 = 41 tokens left out" in text and f"the longest: {longest}" in text
    assert "padding" in text and "conversations per window" in text
    rows = data.batches("train", 40, 4, seed=0).epoch_rows(0)
    used = {i for row in rows for i in row}
    assert all(data.splits["train"].lengths[i] <= 41 for i in used) and len(used) < len(data.splits["train"])
    with pytest.raises(UserError, match="every conversation of the train split is longer"):
        data.check_fits(10, 4, 1)


def test_text_jsonl_is_plain_text_and_other_data_is_not_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "texts.jsonl", [{"text": "hello world " * 30}, {"text": "good night " * 30}])
    data = open_training_data(config(tmp_path, path), "char", progress=False)
    assert isinstance(data, TextData) and data.checkpoint_extras() == {}
    assert "<" not in data.tokenizer.to_dict()["chars"]  # joined by a blank line, not a marker, for char tokens
    assert data.split_size("train")[0] + data.split_size("val")[0] == len("hello world " * 30 + "\n\n" + "good night " * 30)
    with pytest.raises(UserError, match="val_data"):
        open_training_data(config(tmp_path, path, val_data=str(path)), "char", progress=False)
    txt = tmp_path / "a.txt"
    txt.write_text("plain text\n")
    assert jsonl_files([str(txt)], None, tmp_path) is None and jsonl_files(["stdlib"], None, tmp_path) is None
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", conversations(3))
    assert jsonl_files([str(folder)], None, tmp_path) == [folder / "a.jsonl"]
    (folder / "notes.md").write_text("# notes\n")
    assert jsonl_files([str(folder)], None, tmp_path) is None  # not all .jsonl: a folder of text, as before
    assert jsonl_files([str(folder)], "*.jsonl", tmp_path) == [folder / "a.jsonl"]
    write_jsonl(folder / "b.jsonl", [{"text": "x"}])
    with pytest.raises(UserError, match="one kind at a time"):
        open_training_data(config(tmp_path, folder, include="*.jsonl"), "char", progress=False)


def test_records_that_cannot_fit_a_window_are_refused_or_left_out_with_a_note():
    import numpy as np

    from gpt.datasets import check_lengths

    class _Records:  # what a split of rendered records offers: its length and each record's tokens
        def __init__(self, lengths):
            self.lengths = np.array(lengths)

        def __len__(self):
            return len(self.lengths)

    assert check_lengths({"train": _Records([5, 9]), "val": _Records([3])}, 8, "pair") == []
    assert check_lengths({"train": _Records([5, 12, 30])}, 8, "conversation") == [
        "2 train conversations longer than block_size + 1 = 9 tokens left out (the longest: 30)"]
    with pytest.raises(UserError, match="the val split holds no pairs"):
        check_lengths({"train": _Records([5]), "val": _Records([])}, 8, "pair")
    with pytest.raises(UserError, match="every conversation of the train split .* shortest has 10"):
        check_lengths({"train": _Records([10, 11])}, 8, "conversation")
