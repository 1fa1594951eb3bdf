"""gpt/tokenizer.py: every kind round-trips text, saves and reloads identically, GPT-2's loads offline and
agrees with transformers, and every user mistake is a one-line UserError."""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpt.tokenizer as tokenizer_module
from gpt.errors import UserError
from gpt.tokenizer import (
    EOT,
    CharTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
    save_tiktoken,
    tokenizer_from_dict,
)

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
def gpt2() -> TiktokenTokenizer:
    need_gpt2_files()
    return tokenizer_module.load_gpt2(GPT2_DIR)


# ---------------------------------------------------------------------------------------------------
# char


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = load_tokenizer("char", "hello world")
    assert tok.vocab_size == len(set("hello world")) and tok.eot_id is None
    assert tok.decode(tok.encode("low held")) == "low held"
    assert tok.decode_bytes(tok.encode("hello")) == b"hello"
    with pytest.raises(UserError, match=r"2 character\(s\) not in .*'x', 'z'"):
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
# gpt2


def test_gpt2_hello_world(gpt2):
    assert gpt2.name == "gpt2" and gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(EOT) == [50256]


def test_gpt2_agrees_with_transformers(gpt2, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Hugging Face names the same two files vocab.json / merges.txt; a local folder loads with no hub access.
    shutil.copy(GPT2_DIR / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(GPT2_DIR / "vocab.bpe", tmp_path / "merges.txt")
    reference = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    for text in PARAGRAPHS:
        assert gpt2.encode(text) == reference.encode(text), text
        assert gpt2.decode(gpt2.encode(text)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_gpt2_round_trip(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_from_env_folder_and_r50k_file_are_the_same(gpt2, monkeypatch):
    monkeypatch.setenv("GPT2_TOKENIZER_DIR", str(GPT2_DIR))
    from_env = load_tokenizer("gpt2")
    from_file = load_tokenizer(str(GPT2_DIR / "r50k_base.tiktoken"))
    assert from_env.ranks == gpt2.ranks == from_file.ranks
    assert from_file.eot_id == 50256 and from_file.encode("Hello world") == [15496, 995]


def _fill_tiktoken_cache(cache: Path, files: dict[str, Path]) -> None:
    cache.mkdir(exist_ok=True)
    for url, source in files.items():
        shutil.copy(source, cache / hashlib.sha1(url.encode()).hexdigest())


def test_gpt2_from_tiktoken_cache_without_any_folder(gpt2, tmp_path, monkeypatch):
    need_gpt2_files()
    cache = tmp_path / "cache"
    _fill_tiktoken_cache(cache, {GPT2_BASE_URL + n: GPT2_DIR / n for n in ("encoder.json", "vocab.bpe")})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    assert load_tokenizer("gpt2").ranks == gpt2.ranks

    only_r50k = tmp_path / "r50k-cache"
    _fill_tiktoken_cache(only_r50k, {tokenizer_module.R50K_URL: GPT2_DIR / "r50k_base.tiktoken"})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(only_r50k))
    assert load_tokenizer("gpt2").ranks == gpt2.ranks


def test_gpt2_ignores_a_corrupt_cache_and_falls_back(gpt2, tmp_path, monkeypatch):
    need_gpt2_files()
    cache = tmp_path / "cache"
    _fill_tiktoken_cache(cache, {GPT2_BASE_URL + n: GPT2_DIR / n for n in ("encoder.json", "vocab.bpe")})
    (cache / hashlib.sha1((GPT2_BASE_URL + "vocab.bpe").encode()).hexdigest()).write_bytes(b"#version: 0.2\n")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    with pytest.raises(UserError, match="not available offline"):
        load_tokenizer("gpt2")
    assert load_tokenizer("gpt2", gpt2_dir=GPT2_DIR).ranks == gpt2.ranks


def test_pinned_hashes_are_tiktokens():
    """Our pinned sha256s are the ones tiktoken's own gpt2/r50k_base definitions pass to its loaders."""
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    seen = {}

    def capture_data_gym(vocab_bpe_file, encoder_json_file, vocab_bpe_hash, encoder_json_hash, **_):
        seen[vocab_bpe_file], seen[encoder_json_file] = vocab_bpe_hash, encoder_json_hash
        return {}

    def capture_tiktoken(url, expected_hash):
        seen[url] = expected_hash
        return {}

    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", capture_data_gym)
        m.setattr(openai_public, "load_tiktoken_bpe", capture_tiktoken)
        openai_public.gpt2()
        openai_public.r50k_base()
    for name, sha in tokenizer_module.GPT2_FILES.items():
        assert seen[GPT2_BASE_URL + name] == sha
    assert seen[tokenizer_module.R50K_URL] == tokenizer_module.R50K_SHA256


def test_gpt2_missing_everywhere_says_what_to_download():
    with pytest.raises(UserError) as info:
        load_tokenizer("gpt2")
    message = str(info.value)
    assert "encoder.json" in message and "vocab.bpe" in message and GPT2_BASE_URL in message
    assert "GPT2_TOKENIZER_DIR" in message and "\n" not in message


def test_gpt2_folder_errors(tmp_path):
    need_gpt2_files()
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer("gpt2", gpt2_dir=tmp_path / "nowhere")
    shutil.copy(GPT2_DIR / "encoder.json", tmp_path / "encoder.json")
    with pytest.raises(UserError, match=r"lacks vocab.bpe: download .*vocab.bpe into it"):
        load_tokenizer("gpt2", gpt2_dir=tmp_path)
    (tmp_path / "vocab.bpe").write_bytes((GPT2_DIR / "vocab.bpe").read_bytes()[:-10])
    with pytest.raises(UserError, match=r"vocab.bpe has sha256 .* not the 1ce1664773c50f3e.* download it again"):
        load_tokenizer("gpt2", gpt2_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------
# Saving and loading: plain data (through a weights_only checkpoint) and .tiktoken files.


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


@pytest.fixture(scope="module")
def every_kind(corpus, bpe) -> dict:
    kinds = {"char": load_tokenizer("char", corpus), "bpe": bpe}
    if GPT2_DIR.is_dir():
        kinds["gpt2"] = tokenizer_module.load_gpt2(GPT2_DIR)
        kinds["tiktoken"] = load_tokenizer(str(GPT2_DIR / "r50k_base.tiktoken"))
    return kinds


def test_every_tokenizer_survives_a_weights_only_checkpoint(every_kind):
    for kind, tok in every_kind.items():
        data = tok.to_dict()
        restored = tokenizer_from_dict(_through_checkpoint(data))
        assert type(restored) is type(tok), kind
        _same_tokenizer(tok, restored)
        assert restored.to_dict() == data


def test_every_bpe_survives_a_tiktoken_file(every_kind, tmp_path):
    for kind, tok in every_kind.items():
        if kind == "char":
            with pytest.raises(UserError, match="only byte-level BPE"):
                save_tiktoken(tok, tmp_path / "char.tiktoken")
            continue
        path = save_tiktoken(tok, tmp_path / f"{kind}.tiktoken")
        loaded = load_tokenizer(str(path))
        assert loaded.name == str(path) and loaded.ranks == tok.ranks
        assert [loaded.encode(t) for t in SAMPLES + PARAGRAPHS] == [tok.encode(t) for t in SAMPLES + PARAGRAPHS]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{k}.tiktoken" for k in every_kind if k != "char")


def test_saved_bpe_file_has_tiktoken_format(bpe, tmp_path, monkeypatch):
    path = save_tiktoken(bpe, tmp_path / "mine.tiktoken")
    tiktoken_load = pytest.importorskip("tiktoken.load")
    # tiktoken's own reader (a local path; caching turned off so nothing is written anywhere).
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tiktoken_load.load_tiktoken_bpe(str(path)) == {t: i for i, t in enumerate(bpe.ranks)}


def test_save_tiktoken_needs_the_suffix(bpe, tmp_path):
    with pytest.raises(UserError, match=r"\.tiktoken suffix"):
        save_tiktoken(bpe, tmp_path / "mine.txt")
    with pytest.raises(UserError, match="cannot write"):
        save_tiktoken(bpe, tmp_path / "no" / "such" / "dir.tiktoken")


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no tokens"),
        (b"not base64!! 0\n", "line 1"),
        (b"QQ== 0 extra\n", "line 1"),
        (b"QQ== zero\n", "line 1"),
        (b"QQ== 0\nQg== 0\n", "rank 0 appears twice"),
        (b"QQ== 0\nQg== 2\n", "1 is missing"),
        (b"QQ== 0\nQg== 1\n", "lacks 254 of the 256 single-byte tokens"),
        (b"\xff\xfe garbage\x00\n", "line 1"),
    ],
)
def test_malformed_tiktoken_file(tmp_path, content, message):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        load_tokenizer(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_tiktoken_file(tmp_path):
    with pytest.raises(UserError, match="cannot read tokenizer file .*missing.tiktoken"):
        load_tokenizer(str(tmp_path / "missing.tiktoken"))
    (tmp_path / "folder.tiktoken").mkdir()
    with pytest.raises(UserError, match="cannot read tokenizer file"):
        load_tokenizer(str(tmp_path / "folder.tiktoken"))


def test_duplicate_tokens_in_tiktoken_file(tmp_path):
    lines = [f"{__import__('base64').b64encode(bytes([b])).decode()} {b}" for b in range(256)] + ["QQ== 256"]
    path = tmp_path / "dup.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="duplicate tokens"):
        load_tokenizer(str(path))


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


def test_char_tokenizer_is_plain_data():
    tok = CharTokenizer("abc")
    assert tokenizer_from_dict(_through_checkpoint(tok.to_dict())).encode("cab") == [2, 0, 1]
