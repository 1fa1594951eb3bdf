"""Sampling internals (gpt/generate.py): the top-k/top-p masks, the window policy with and without the KV
cache, UTF-8-safe streaming with stop strings, and the probability table. The command line is tested in
tests/test_sample_cli.py (it imports `train_tiny_checkpoint` from here)."""

from __future__ import annotations

import dataclasses
import functools
from contextlib import contextmanager

import pytest
import tiktoken
import torch

from gpt.checkpoint import clean_state_dict, save_checkpoint
from gpt.errors import UserError
from gpt.generate import (
    Decoder,
    TextStream,
    encode_prompt,
    generate_tokens,
    next_token_probs,
    probability_table,
    sample,
    show_token,
    top_k_filter,
    top_p_filter,
)
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import CharTokenizer, Tokenizer

TINY_TEXT = "the cat sat on the mat. the dog ate a log!\nand then, the bird sang: la la la.\n" * 20


@contextmanager
def one_thread():
    # Tiny models run fastest on one thread, and other test processes share the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def train_tiny_model(steps: int = 120) -> tuple[GPT, CharTokenizer]:
    """A 2-layer, 32-wide char model trained in-process for a couple of seconds (once per test session)."""
    with one_thread():
        torch.manual_seed(0)
        tokenizer = CharTokenizer(TINY_TEXT)
        data = torch.tensor(tokenizer.encode(TINY_TEXT))
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        T = model.config.block_size
        for _ in range(steps):
            starts = torch.randint(len(data) - T - 1, (16,), generator=generator)
            x = torch.stack([data[i : i + T] for i in starts])
            y = torch.stack([data[i + 1 : i + T + 1] for i in starts])
            _, loss = model(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert loss.item() < 1.0, "the tiny model should have learned the repeated text"
    return model.eval(), tokenizer


def train_tiny_checkpoint(path) -> tuple[GPT, CharTokenizer]:
    """The tiny model, saved as a checkpoint (the format of CONVENTIONS.md) at `path`."""
    model, tokenizer = train_tiny_model()
    save_checkpoint({"model_config": dataclasses.asdict(model.config), "model": clean_state_dict(model),
                     "tokenizer": tokenizer.to_dict(), "step": 120}, path)
    return model, tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt.pt")


# ---------------------------------------------------------------------------------------------------
# Sampling strategies


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 9.0, 8.0, 7.0]])
    kept = top_k_filter(logits, 2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False], [False, False, True, True, False]]
    assert kept[0, 1] == 5.0 and kept[1, 3] == 8.0  # kept logits unchanged
    assert torch.isfinite(top_k_filter(logits, 99)).all()  # k beyond the vocabulary keeps everything


@pytest.mark.parametrize("p, kept", [(1e-9, 1), (0.5, 1), (0.50001, 2), (0.8, 2), (0.80001, 3), (0.99, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([[0.3, 0.5, 0.05, 0.15]])  # sorted: 0.5, 0.3, 0.15, 0.05
    filtered = top_p_filter(probs.log(), p)
    assert int(torch.isfinite(filtered).sum()) == kept
    order = [1, 0, 3, 2]  # most likely first
    assert torch.isfinite(filtered[0, order[:kept]]).all()


def test_next_token_probs_temperature_and_filters():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    for t in (0.5, 1.0, 2.0):
        torch.testing.assert_close(next_token_probs(logits, t).sum(-1), torch.ones(3))
    sharp, flat = next_token_probs(logits, 0.5), next_token_probs(logits, 2.0)
    assert (sharp.max(-1).values > flat.max(-1).values).all()
    greedy = next_token_probs(logits, 0.0)
    assert greedy.sum(-1).tolist() == [1.0] * 3 and (greedy.argmax(-1) == logits.argmax(-1)).all()
    assert ((next_token_probs(logits, 1.0, top_k=5) > 0).sum(-1) == 5).all()
    nucleus = next_token_probs(logits, 1.0, top_p=0.5)
    torch.testing.assert_close(nucleus.sum(-1), torch.ones(3))
    assert ((nucleus > 0).sum(-1) < 50).all()


def test_sample_is_greedy_at_zero_and_reproducible_with_a_seed():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    assert sample(logits, 0.0).tolist() == logits.argmax(-1).tolist()
    assert sample(logits, 1.0, top_k=1).tolist() == logits.argmax(-1).tolist()
    assert sample(logits, 1.0, top_p=1e-6).tolist() == logits.argmax(-1).tolist()
    draws = [sample(logits.repeat(50, 1), 1.0, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert draws[0].tolist() == draws[1].tolist() and draws[0].tolist() != draws[2].tolist()


# ---------------------------------------------------------------------------------------------------
# The decode loop and its context-window policy


def greedy(model, prompt, n, use_kv_cache):
    ids = torch.tensor([prompt])
    return [int(t) for t in generate_tokens(model, ids, n, temperature=0.0, use_kv_cache=use_kv_cache)]


@pytest.mark.parametrize("n_new", [20, 3 * 32 + 7])  # within block_size, and well past it
def test_greedy_is_identical_with_and_without_the_kv_cache(tiny, n_new):
    model, tokenizer = tiny
    prompt = tokenizer.encode("the dog ")
    with one_thread():
        assert greedy(model, prompt, n_new, True) == greedy(model, prompt, n_new, False)


def test_cached_logits_match_recomputed_logits_step_by_step():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()
    prompt = torch.randint(11, (2, 3))  # batch of 2
    cached, plain = Decoder(model, prompt, use_kv_cache=True), Decoder(model, prompt, use_kv_cache=False)
    for step in range(40):  # 5x block_size: several window restarts
        a, b = cached.next_logits(), plain.next_logits()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for a_row, b_row in zip(cached.rows, plain.rows):
            assert a_row.start == b_row.start and len(a_row.ids) - a_row.start <= 8
        next_ids = a.argmax(-1)
        cached.append(next_ids)
        plain.append(next_ids)
    # the window restarted at the last block_size // 2 tokens each time it filled up
    assert cached.rows[0].start % 4 == 3 and cached.rows[0].start > 8


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_rows_joining_and_leaving_the_batch_decode_as_each_prompt_alone(tiny, use_kv_cache):
    # What the server does: prompts of different lengths join the batch at different steps and leave it when
    # done (the last row moving into the freed place). Each gets the greedy tokens it gets decoded alone,
    # across window restarts too (block_size is 32).
    model, tokenizer = tiny
    prompts = ["the dog ", "la", "and then, the bird sang: ", "t", "the cat sat on the mat. the dog ate "]
    lengths = [40, 10, 70, 25, 5]
    joins = [0, 0, 3, 12, 12]
    with one_thread():
        alone = [greedy(model, tokenizer.encode(p), n, use_kv_cache) for p, n in zip(prompts, lengths)]
        decoder = Decoder(model, None, use_kv_cache=use_kv_cache, max_rows=4)
        active: list[tuple[int, list[int]]] = []  # (prompt, its tokens so far), in the decoder's row order
        got: dict[int, list[int]] = {}
        step = 0
        while len(got) < len(prompts):
            for i in (i for i, when in enumerate(joins) if when == step):
                decoder.add(tokenizer.encode(prompts[i]))
                active.append((i, []))
            picks = decoder.next_logits().argmax(-1)
            decoder.append(picks)
            for (i, tokens), token in zip(active, picks.tolist()):
                tokens.append(token)
            for row in reversed(range(len(active))):
                i, tokens = active[row]
                if len(tokens) == lengths[i]:
                    got[i] = tokens
                    decoder.remove(row)
                    active[row] = active[-1]
                    active.pop()
            step += 1
    assert [got[i] for i in range(len(prompts))] == alone


def test_a_full_batch_refuses_another_row():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    decoder = Decoder(model, None, max_rows=2)
    decoder.add([1, 2])
    decoder.add([3])
    with pytest.raises(ValueError, match="full"):
        decoder.add([4])


def test_a_prompt_longer_than_block_size_is_cut_to_its_last_block_size_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.randint(11, (1, 20))
    decoder = Decoder(model, prompt, use_kv_cache=True)
    torch.testing.assert_close(decoder.next_logits(), model(prompt[:, -8:])[0][:, -1], atol=1e-5, rtol=1e-4)


def test_ids_beyond_the_tokenizer_are_never_picked():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    tokens = generate_tokens(model, torch.zeros(8, 1, dtype=torch.long), 20, temperature=5.0, vocab_size=5,
                             generator=torch.Generator().manual_seed(0))
    assert max(int(t.max()) for t in tokens) < 5


# ---------------------------------------------------------------------------------------------------
# Text out: UTF-8 safety and stop strings


class ByteTokenizer(Tokenizer):
    """A byte-level BPE built by hand with tiktoken (no download): 256 byte tokens plus a few merges, so
    multi-byte characters are split across tokens, as they are with GPT-2's tokenizer."""

    def __init__(self):
        ranks = {bytes([i]): i for i in range(256)}
        for merge in (b"th", b"he", b"the"):
            ranks[merge] = len(ranks)
        self.encoding = tiktoken.Encoding("tiny-bytes", pat_str=r"\s?\S+|\s+", mergeable_ranks=ranks,
                                          special_tokens={"<|endoftext|>": len(ranks)})
        self.name, self.vocab_size, self.eot_id = "tiny-bytes", len(ranks) + 1, len(ranks)

    def encode(self, text):
        return self.encoding.encode_ordinary(text)

    def decode_bytes(self, ids):
        return self.encoding.decode_bytes(list(ids))

    def to_dict(self):
        return {}


def stream_pieces(tokenizer, text, stop=()):
    stream = TextStream(tokenizer, stop)
    pieces = [stream.push(t) for t in tokenizer.encode(text)]
    pieces.append(stream.finish())
    return pieces, stream


def test_streaming_never_prints_a_character_split_across_tokens():
    tokenizer = ByteTokenizer()
    text = "the café costs 5€ 🙂 ok"
    ids = tokenizer.encode(text)
    assert tokenizer.decode_bytes(ids[:1]) == b"the"  # the merges work
    assert any(b"\xe2" == tokenizer.decode_bytes([i]) for i in ids)  # the euro sign is split
    pieces, stream = stream_pieces(tokenizer, text)
    assert "".join(pieces) == text == stream.text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # the first bytes of a split character were held back


def test_stop_strings_end_the_sample_and_are_never_printed():
    tokenizer = ByteTokenizer()
    pieces, stream = stream_pieces(tokenizer, "the cat. the dog. more", stop=[". the d", "zzz"])
    assert "".join(pieces) == "the cat" and stream.done
    # the partial ". the" was held back (it could have been the stop string) ...
    pieces, _ = stream_pieces(tokenizer, "a. the cat", stop=[". the d"])
    assert "".join(pieces) == "a. the cat" and not any(". the" in p for p in pieces[:-1] if p.endswith(". the"))
    # ... and released when it turned out not to be
    pieces, _ = stream_pieces(tokenizer, "é€ stop here", stop=["€ s"])
    assert "".join(pieces) == "é"


def test_char_tokenizer_stream_with_several_stop_strings():
    tokenizer = CharTokenizer(TINY_TEXT)
    pieces, stream = stream_pieces(tokenizer, "the bird sang: la la", stop=["la la", "sang"])
    assert "".join(pieces) == "the bird " == stream.text


# ---------------------------------------------------------------------------------------------------
# Prompts and the probability table


def test_empty_prompt_starts_from_endoftext_or_newline():
    assert encode_prompt(ByteTokenizer(), "") == [ByteTokenizer().eot_id]
    chars = CharTokenizer("ab\n")
    assert encode_prompt(chars, "") == chars.encode("\n")
    with pytest.raises(UserError, match="empty"):
        encode_prompt(CharTokenizer("ab"), "")


def test_show_token_makes_whitespace_and_partial_bytes_visible():
    tokenizer = ByteTokenizer()
    assert show_token(tokenizer, tokenizer.encode("\n")[0]) == "'\\n'"
    assert show_token(tokenizer, tokenizer.encode("the")[0]) == "'the'" and show_token(tokenizer, 32) == "' '"
    assert show_token(tokenizer, 0xE2) == "b'\\xe2'"


def test_probability_table_marks_the_pick_even_outside_the_top_k():
    tokenizer = CharTokenizer("abcd")
    probs = torch.tensor([0.1, 0.6, 0.2, 0.1])
    table = probability_table(tokenizer, probs, 2, picked=3).splitlines()
    assert "'b'" in table[1] and "0.6000" in table[1] and "'c'" in table[2]
    assert "'d'" in table[3] and table[3].strip().startswith("3") and table[3].endswith("<- picked")
    assert "0.8000" in table[-1]  # the top-2 sum


def test_unescape_reads_the_common_escapes_only():
    from gpt.generate import unescape

    assert unescape("\\n\\n") == "\n\n"
    assert unescape("a\\tb\\\\n") == "a\tb\\n"
    assert unescape("C:\\x café") == "C:\\x café"
