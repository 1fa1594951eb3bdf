"""gpt/tokenizer_files.py: GPT-2's tokenizer loads offline (tiktoken's cache, a folder, r50k_base.tiktoken) and agrees
with transformers; .tiktoken files round-trip and tiktoken reads ours; the merges written for Hugging Face are
GPT-2's own; and every bad file is a one-line UserError. The fixtures (offline, corpus, bpe, ...) are
tests/test_tokenizer.py's."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import gpt.tokenizer_files as tokenizer_files
from conftest import shared_path
from gpt.errors import UserError
from gpt.tokenizer import EOT, TiktokenTokenizer
from gpt.tokenizer_files import gpt2_byte_to_char, load_gpt2, load_tokenizer, merges_from_ranks, save_tiktoken
from test_tokenizer import (  # noqa: F401 (fixtures: pytest finds them by name in this module)
    GPT2_BASE_URL,
    GPT2_DIR,
    PARAGRAPHS,
    SAMPLES,
    TEXTS,
    bpe,
    corpus,
    every_kind,
    need_gpt2_files,
    offline,
)


# ---------------------------------------------------------------------------------------------------
# gpt2


@pytest.fixture(scope="module")
def gpt2() -> TiktokenTokenizer:
    need_gpt2_files()
    return load_gpt2(GPT2_DIR)


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
    _fill_tiktoken_cache(only_r50k, {tokenizer_files.R50K_URL: GPT2_DIR / "r50k_base.tiktoken"})
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
    for name, sha in tokenizer_files.GPT2_FILES.items():
        assert seen[GPT2_BASE_URL + name] == sha
    assert seen[tokenizer_files.R50K_URL] == tokenizer_files.R50K_SHA256


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
# .tiktoken files


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


# ---------------------------------------------------------------------------------------------------
# A Hugging Face folder's merges.txt


def test_gpt2s_merges_are_recovered_exactly_from_its_ranks():
    gpt2_dir = shared_path("gpt2", "vocab.bpe").parent
    spell = gpt2_byte_to_char()
    ours = [" ".join("".join(spell[b] for b in part) for part in pair) for pair in merges_from_ranks(load_gpt2(gpt2_dir).ranks)]
    official = [line for line in (gpt2_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
                if line and not line.startswith("#version")]
    assert ours == official


def test_a_tokenizer_choice_is_settled_once_and_answers_the_same_questions_either_way():
    from gpt.tokenizer_files import TokenizerChoice, tokenizer_digest

    to_fit = TokenizerChoice.of("bpe:262")
    assert to_fit.ready is None and to_fit.has_eot and to_fit.identity() == {"spec": "bpe:262"}
    assert TokenizerChoice.of(to_fit) is to_fit  # the edge converts once; passing it on changes nothing
    chars = TokenizerChoice.of("char")
    assert not chars.has_eot and chars.fit("abca").vocab_size == 3
    fitted = to_fit.fit("hello world, " * 200)
    ready = TokenizerChoice.of(fitted)  # a checkpoint's tokenizer, handed over as an object
    assert ready.fit("anything else") is fitted and ready.has_eot
    assert ready.identity() == {"object": fitted.name, "blake2b": tokenizer_digest(fitted)}
    with pytest.raises(UserError, match="unknown tokenizer"):
        TokenizerChoice.of("wordpiece")
    with pytest.raises(UserError, match="a spec such as 'char'"):
        TokenizerChoice.of(3)
