"""gpt/bpe.py: the pre-split agrees with tiktoken's, and the fast trainer learns exactly what a slow,
obvious trainer learns (same tie-break), on small texts."""

from __future__ import annotations

import unicodedata
from collections import Counter

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt.bpe import EOT, GPT2_PATTERN, split_words, train_bpe
from gpt.errors import UserError


# ---------------------------------------------------------------------------------------------------
# The pre-split, checked against tiktoken itself.


def tiktoken_pieces(text: str) -> list[str]:
    """tiktoken's own GPT-2 pre-split of `text`.

    tiktoken does not expose its split, but BPE merges only inside a piece: with every substring of the
    text's bytes in the vocabulary, each piece merges all the way into one token, so the tokens are the
    pieces.
    """
    data = text.encode("utf-8")
    substrings = {data[i:j] for i in range(len(data)) for j in range(i + 1, len(data) + 1)}
    substrings |= {bytes([b]) for b in range(256)}
    ordered = sorted(substrings, key=lambda s: (len(s), s))
    encoding = tiktoken.Encoding(
        name="split-oracle", pat_str=GPT2_PATTERN, mergeable_ranks={s: i for i, s in enumerate(ordered)}, special_tokens={}
    )
    return [encoding.decode_single_token_bytes(t).decode("utf-8") for t in encoding.encode_ordinary(text)]


VARIED = [
    "Hello world! It's 2024; we'll see, they've 3.14159 apples... don't   stop\n\n\nnow",
    "  leading and trailing spaces   ",
    "tabs\tand\r\nCRLF\r\n\r\nlines\x0b\x0cand\x1c\x1d\x1e\x1f separators\x85next\u2028line\u2029para",
    "NUL\x00in\x00the middle\x00",
    "日本語のテキスト、中文字符，한국어 텍스트。",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "combining: e\u0301 a\u0308 \u0915\u093f \u05e9\u05c1 Zalgo z\u0336\u0353a\u0337\u035c",
    "numbers: ²³ ½ Ⅻ ٣٤٥ ४२ 一二三 ①②",
    "nbsp\u00a0and\u2003em\u3000ideographic space, zero\u200bwidth",
    "CAPS'S 'quoted' ''double'' 'LL 'Re 'm'd's",
    "x" * 5 + " " * 7 + "y" + "\n" * 3 + " \n \n" + "end",
    "Ελληνικά, кириллица, עִבְרִית, العربية, ไทย",
    "_under_score__ $dollar #hash @at ~tilde `tick` ^caret",
]


@pytest.mark.parametrize("text", VARIED)
def test_split_agrees_with_tiktoken_on_varied_text(text):
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert pieces == tiktoken_pieces(text)


def _assigned(c: str) -> bool:
    # Code points this Python's Unicode database does not know may be letters to tiktoken's newer tables.
    return unicodedata.category(c) not in ("Cn", "Cs")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from(list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2003\u3000'sdmtlrve0123456789aZ.,!-_")),
            st.characters(codec="utf-8").filter(_assigned),
        ),
        max_size=30,
    )
)
def test_split_agrees_with_tiktoken_on_arbitrary_text(text):
    assert split_words(text) == tiktoken_pieces(text)


def test_split_survives_lone_surrogates():
    # Not UTF-8 encodable; the trainer replaces them (as tiktoken does) rather than crash.
    ranks = train_bpe("ab\ud800ab ab", 258)
    assert ranks[256] == b"ab"


# ---------------------------------------------------------------------------------------------------
# The slow, obvious reference trainer: recount every pair of every word (not deduplicated) each step.


def reference_train(text: str, vocab_size: int) -> list[bytes]:
    """Pick the most frequent adjacent pair (ties: smallest (A, B) as byte strings), merge it left to right
    in every word, repeat. Tokens are byte strings; a merge whose result is already a token adds none."""
    words = [[bytes([b]) for b in w.encode("utf-8")] for doc in text.split(EOT) for w in split_words(doc)]
    vocab = [bytes([i]) for i in range(256)]
    while len(vocab) < vocab_size - 1:
        counts = Counter(pair for w in words for pair in zip(w, w[1:]))
        if not counts:
            raise UserError(f"supports only {len(vocab) + 1}")
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merged = best[0] + best[1]
        if merged not in vocab:
            vocab.append(merged)
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    return vocab


def reference_capacity(text: str) -> int:
    """The largest vocabulary the reference reaches on `text` (it merges until no pair is left)."""
    size = 257
    while True:
        try:
            reference_train(text, size + 1)
        except UserError:
            return size
        size += 1


SMALL_TEXTS = [
    "aaaa aaaa aaa aa a",  # overlapping runs
    "abababab baba ab ba",  # ties between (a,b) and (b,a)
    "xy yx",  # all counts 1: (b' ', b'y') is the smallest pair
    "the cat sat on the mat; the hat is flat. That's that!",
    "low lower lowest newer newest wider wide",
    "héllo wörld ☃☃ 日本日本 ab\r\nab\r\n",
    "one<|endoftext|>one two<|endoftext|>two",
    "  \n\n  \t\t 12 123 1234 12345",
]


@pytest.mark.parametrize("text", SMALL_TEXTS)
def test_fast_trainer_equals_reference(text):
    capacity = reference_capacity(text)
    assert train_bpe(text, capacity) == reference_train(text, capacity)
    with pytest.raises(UserError, match=f"supports only {capacity} BPE tokens"):
        train_bpe(text, capacity + 1)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab c\nxyé☃'", min_size=1, max_size=60), st.integers(257, 290))
def test_fast_trainer_equals_reference_on_random_text(text, vocab_size):
    try:
        expected = reference_train(text, vocab_size)
    except UserError:
        with pytest.raises(UserError, match="supports only"):
            train_bpe(text, vocab_size)
        return
    assert train_bpe(text, vocab_size) == expected


def test_tie_break_is_smallest_pair_of_byte_strings():
    assert train_bpe("xy yx", 258)[256] == b" y"  # three pairs, each once: (b" ", b"y") sorts first
    assert train_bpe("ba\nab", 259)[256:] == [b"ab", b"ba"]  # equal counts: b"a" before b"b"
    # " ba ba ab ab": (b" ", b"a"), (b"a", b"b") and (b"b", b"a") all occur twice; b" " sorts first
    assert train_bpe(" ba ba ab ab", 258)[256] == b" a"


def test_ranks_layout_and_eot_never_learned():
    ranks = train_bpe("<|endoftext|>ab<|endoftext|>ab ab<|endoftext|>", 259)
    assert ranks[:256] == [bytes([i]) for i in range(256)]
    assert len(ranks) == 258
    assert not any(b"<|" in r or b"|>" in r for r in ranks[256:])


def test_trains_a_real_vocabulary_on_shakespeare(shakespeare):
    ranks = train_bpe(shakespeare[:200_000], 1024)
    assert len(ranks) == 1023 and len(set(ranks)) == 1023
    assert ranks[256:259] == [b" t", b"he", b"ou"]  # the most frequent English pairs come first
    assert b" the" in ranks and b" and" in ranks


@pytest.fixture(scope="module")
def shakespeare():
    from conftest import shared_path

    return shared_path("corpora", "tinyshakespeare.txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# Bad input.


def test_empty_corpus_is_a_user_error():
    for text in ("", EOT, EOT * 3):
        with pytest.raises(UserError, match="empty corpus"):
            train_bpe(text, 300)


@pytest.mark.parametrize("size", [0, 100, 256])
def test_vocab_below_257_is_a_user_error(size):
    with pytest.raises(UserError, match=r"at least 257 tokens.*got " + str(size)):
        train_bpe("some text", size)


def test_vocab_larger_than_the_corpus_supports_says_what_was_reached():
    text = "abc abc"
    capacity = reference_capacity(text)
    with pytest.raises(UserError, match=rf"supports only {capacity} BPE tokens \({capacity - 257} merges") as info:
        train_bpe(text, 5000)
    assert f"bpe:{capacity}" in str(info.value) and "\n" not in str(info.value)


def test_both_split_forms_agree_on_text_without_astral_characters():
    from gpt.bpe import _python_patterns

    bmp_only, any_text = _python_patterns()
    for text in VARIED:
        text = "".join(c for c in text if c < "\U00010000")
        assert bmp_only.findall(text) == any_text.findall(text) == tiktoken_pieces(text)
