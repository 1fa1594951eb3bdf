"""gpt/tokenizer.py: every kind round-trips text and survives a checkpoint as plain data, and every user mistake
is a one-line UserError. Its file formats (GPT-2's, .tiktoken) are tested in tests/test_tokenizer_files.py,
which shares this file's fixtures."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt.errors import UserError
from gpt.tokenizer import EOT, CharTokenizer, TiktokenTokenizer, tokenizer_from_dict
from gpt.tokenizer_files import load_gpt2, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GPT2_DIR = SHARED / "gpt2"
SHAKESPEARE = SHARED / "corpora" / "tinyshakespeare.txt"
GPT2_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"

SAMPLES = [
    "Hello world",
    "First Citizen:\nBefore we proceed any further, hear me speak.\r\n\r\n",
    "It's 2024 — naïve café, 日本語, emoji 😀👍🏽, e\u0301, NUL\x00, tabs\t\tand   spaces   ",
    "doc one" + EOT + "doc two",
    "",
]

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. It wasn't the dog's fault; they'd been running for 3.5 hours!",
    "In 1969, Apollo 11's crew — Armstrong, Aldrin & Collins — landed on the Moon.\n\nSee https://nasa.gov/apollo?id=11#top",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\n",
    "Ünïcödé: naïve café résumé; Ελληνικά; кириллица; 中文字符；日本語のテキスト；한국어 😀🎉👨‍👩‍👧",
    "   Leading spaces, trailing spaces   \t\tTabs\r\nWindows lines\r\n   ",
    "Numbers 1234567890 12,345.67 ½ ² Ⅻ and symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "first<|endoftext|>second document I'M SHOUTING 'quoted' ''double'' it's we'll they've I'd",
]

# Arbitrary Unicode (hypothesis never makes lone surrogates, which UTF-8 cannot hold), plus the awkward bits.
TEXTS = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
        st.sampled_from(["\x00", "\r\n", "\r", " ", "   ", "\t", "\u0301", "😀", "👨‍👩‍👧", "日本", EOT, "'s", "\n\n "]),
    ),
    max_size=12,
).map("".join)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No test may reach the network or read a real tiktoken cache or a user's GPT-2 folder."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("empty-tiktoken-cache")))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.delenv("GPT2_TOKENIZER_DIR", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def need_gpt2_files() -> Path:
    from conftest import shared_path

    for name in ("encoder.json", "vocab.bpe", "r50k_base.tiktoken"):
        shared_path("gpt2", name)
    return GPT2_DIR


@pytest.fixture(scope="module")
def corpus() -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    # Without the shared corpus: real English-and-code text that every Python install has.
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text(encoding="utf-8") for name in ("argparse.py", "textwrap.py", "difflib.py"))
    return text[:300_000] + " ".join(PARAGRAPHS * 5)


@pytest.fixture(scope="module")
def bpe(corpus) -> TiktokenTokenizer:
    return load_tokenizer("bpe:1000", corpus)


@pytest.fixture(scope="module")
def every_kind(corpus, bpe) -> dict:
    kinds = {"char": load_tokenizer("char", corpus), "bpe": bpe}
    if GPT2_DIR.is_dir():
        kinds["gpt2"] = load_gpt2(GPT2_DIR)
        kinds["tiktoken"] = load_tokenizer(str(GPT2_DIR / "r50k_base.tiktoken"))
    return kinds


# ---------------------------------------------------------------------------------------------------
# char


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = load_tokenizer("char", "hello world")
    assert tok.vocab_size == len(set("hello world")) and tok.eot_id is None
    assert tok.decode(tok.encode("low held")) == "low held"
    assert tok.decode_bytes(tok.encode("hello")) == b"hello"
    with pytest.raises(UserError, match=r"2 characters not in .*'x', 'z'"):
        tok.encode("xz hello")


# ---------------------------------------------------------------------------------------------------
# bpe:<N>


def test_bpe_tokenizer_shape(bpe, corpus):
    assert bpe.name == "bpe:1000" and bpe.vocab_size == 1000 and bpe.eot_id == 999
    assert bpe.encode(EOT) == [999]
    assert len(bpe.encode(corpus[:5000])) < 5000 / 2  # it compresses the text it was trained on


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_bpe_round_trip(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.decode_bytes(ids) == text.encode("utf-8")


def test_decode_bytes_streams_partial_characters(bpe):
    ids = bpe.encode("☃")  # 3 UTF-8 bytes; this small BPE has no token for it
    assert len(ids) > 1
    assert b"".join(bpe.decode_bytes([i]) for i in ids) == "☃".encode()
    assert bpe.decode_bytes(ids[:1]) == "☃".encode()[: len(bpe.decode_bytes(ids[:1]))]


def test_decode_rejects_ids_outside_the_vocabulary(bpe):
    with pytest.raises(ValueError, match="5000"):
        bpe.decode([5000])


# ---------------------------------------------------------------------------------------------------
# Saving and loading: plain data, through a weights_only checkpoint


def _through_checkpoint(data: dict) -> dict:
    buffer = io.BytesIO()
    torch.save({"tokenizer": data}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["tokenizer"]


def _same_tokenizer(a, b) -> None:
    assert (a.name, a.vocab_size, a.eot_id) == (b.name, b.vocab_size, b.eot_id)
    for text in SAMPLES + PARAGRAPHS:
        try:
            expected = a.encode(text)
        except UserError:  # char: characters outside its vocabulary fail the same way
            with pytest.raises(UserError):
                b.encode(text)
            continue
        assert b.encode(text) == expected
        assert b.decode(expected) == a.decode(expected)


def test_every_tokenizer_survives_a_weights_only_checkpoint(every_kind):
    for kind, tok in every_kind.items():
        data = tok.to_dict()
        restored = tokenizer_from_dict(_through_checkpoint(data))
        assert type(restored) is type(tok), kind
        _same_tokenizer(tok, restored)
        assert restored.to_dict() == data


def test_char_tokenizer_is_plain_data():
    tok = CharTokenizer("abc")
    assert tokenizer_from_dict(_through_checkpoint(tok.to_dict())).encode("cab") == [2, 0, 1]


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "spec, corpus, message",
    [
        ("words", "text", "unknown tokenizer 'words': use char, bpe:<vocab_size>, gpt2"),
        ("bpe:lots", "text", "must be an integer"),
        ("bpe:100", "text", "at least 257 tokens"),
        ("bpe:256", "text", "at least 257 tokens"),
        ("bpe:512", None, "trained on a corpus"),
        ("bpe:512", "", "empty corpus"),
        ("bpe:5000", "tiny text", r"supports only \d+ BPE tokens"),
        ("char", None, "built from a corpus"),
        ("char", "", "empty corpus"),
    ],
)
def test_bad_specs_and_corpora(spec, corpus, message):
    with pytest.raises(UserError, match=message) as info:
        load_tokenizer(spec, corpus)
    assert "\n" not in str(info.value)


def test_damaged_saved_data(bpe):
    with pytest.raises(UserError, match="unknown tokenizer kind 'word'"):
        tokenizer_from_dict({"kind": "word"})
    data = bpe.to_dict()
    del data["token_bytes"]
    with pytest.raises(UserError, match="lacks token_bytes"):
        tokenizer_from_dict(data)
    data = bpe.to_dict()
    data["token_bytes"] = data["token_bytes"][:-1]
    with pytest.raises(UserError, match="disagree"):
        tokenizer_from_dict(data)
