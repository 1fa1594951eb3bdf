"""The decode loop (gpt/decoding.py): the window policy with and without the KV cache, the ragged cache of the
server's rows, UTF-8-safe streaming with stop strings, and the prompt's first token.

The tiny char model trained here once per test session (`train_tiny_model`, `train_tiny_checkpoint`) is shared
by the tests of sample.py, the server, the lab and inference, which import it from this file.
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import contextmanager

import pytest
import tiktoken
import torch

from gpt.checkpoint import clean_state_dict, save_checkpoint
from gpt.decoding import Decoder, RaggedKVCache, TextStream, encode_prompt, generate_tokens
from gpt.errors import UserError
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


@pytest.mark.parametrize("use_kv_cache, prefill_chunk", [(True, 0), (False, 0), (True, 3)])
def test_rows_joining_and_leaving_the_batch_decode_as_each_prompt_alone(tiny, use_kv_cache, prefill_chunk):
    # What the server does: prompts of different lengths join the batch at different steps and leave it when
    # done (the last row moving into the freed place); with prefill_chunk, a prompt fills its cache 3 tokens a
    # step while the other rows go on (and gives no token meanwhile). Each gets the greedy tokens it gets decoded alone,
    # across window restarts too (block_size is 32).
    model, tokenizer = tiny
    prompts = ["the dog ", "la", "and then, the bird sang: ", "t", "the cat sat on the mat. the dog ate "]
    lengths = [40, 10, 70, 25, 5]
    joins = [0, 0, 3, 12, 12]
    with one_thread():
        alone = [greedy(model, tokenizer.encode(p), n, use_kv_cache) for p, n in zip(prompts, lengths)]
        decoder = Decoder(model, None, use_kv_cache=use_kv_cache, max_rows=4, prefill_chunk=prefill_chunk)
        active: list[tuple[int, list[int]]] = []  # (prompt, its tokens so far), in the decoder's row order
        got: dict[int, list[int]] = {}
        step, filled_in_chunks = 0, False
        while len(got) < len(prompts):
            for i in (i for i, when in enumerate(joins) if when == step):
                decoder.add(tokenizer.encode(prompts[i]))
                active.append((i, []))
            picks = decoder.next_logits().argmax(-1)
            decoder.append(picks)
            filling = sum(row.filling for row in decoder.rows)
            for (i, tokens), token, row in zip(active, picks.tolist(), decoder.rows):
                if not row.filling:
                    tokens.append(token)
            for row in reversed(range(len(active))):
                i, tokens = active[row]
                if len(tokens) == lengths[i]:
                    got[i] = tokens
                    decoder.remove(row)
                    active[row] = active[-1]
                    active.pop()
            step += 1
            filled_in_chunks = filled_in_chunks or filling > 0
    assert [got[i] for i in range(len(prompts))] == alone
    assert filled_in_chunks == (prefill_chunk > 0)


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


def test_ragged_cache_rows_of_different_lengths_match_each_row_alone():
    # Three sequences of 3, 9 and 6 tokens filled row by row (through row views), then two steps together:
    # each row's logits are those of its own sequence run alone, and no row sees another row's keys.
    model = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    seqs = [torch.randint(0, 37, (1, n)) for n in (3, 9, 6)]
    cache = RaggedKVCache.for_model(model, batch_size=3)
    for row, seq in enumerate(seqs):
        model(seq, kv_cache=cache.rows_view(row, row + 1))
    assert cache.lengths.tolist() == [3, 9, 6]
    cache.length = 9
    for step in range(2):
        new = torch.randint(0, 37, (3, 1))
        logits, _ = model(new, kv_cache=cache)
        for row in range(3):
            seqs[row] = torch.cat([seqs[row], new[row : row + 1]], dim=1)
            alone, _ = model(seqs[row])
            torch.testing.assert_close(logits[row], alone[0], atol=1e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [5, 11, 8] and cache.length == 11


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


def test_empty_prompt_starts_from_endoftext_or_newline():
    assert encode_prompt(ByteTokenizer(), "") == [ByteTokenizer().eot_id]
    chars = CharTokenizer("ab\n")
    assert encode_prompt(chars, "") == chars.encode("\n")
    with pytest.raises(UserError, match="empty"):
        encode_prompt(CharTokenizer("ab"), "")
