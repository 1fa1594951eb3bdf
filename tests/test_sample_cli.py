"""sample.py as a user runs it: every control, on a tiny char model trained in the test.

The end-to-end checks (stdin, interactive mode, streaming, the refused malicious checkpoint) run
`python sample.py` in a subprocess; the rest call the same `main(argv)` in-process, which is the whole
command line except the interpreter start-up (about 2 s a process here: the suite must stay fast).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
import torch

from gpt.generate import COMPLETION_END, main, probability_table, show_token
from gpt.tokenizer import CharTokenizer
from test_decoding import TINY_TEXT, ByteTokenizer, train_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEPARATOR = "-" * 15 + "\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tiny_run")
    train_tiny_checkpoint(out_dir / "ckpt.pt")
    return str(out_dir)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args, stdin_text: str = ""):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "sample.py", *args], cwd=REPO, input=stdin_text, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=120)


def call(capsys, monkeypatch, *args, stdin_text: str = ""):
    """main(argv) in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def sample_text(ckpt, capsys, monkeypatch):
    """stdout of `sample.py --ckpt <tiny> ARGS...`, checked to have succeeded."""

    def run(*args, stdin_text=""):
        code, out, err = call(capsys, monkeypatch, "--ckpt", ckpt, *args, stdin_text=stdin_text)
        assert code == 0 and err == "", err
        return out

    return run


GREEDY = ("--temperature", "0", "--max_new_tokens", "40")


# ---------------------------------------------------------------------------------------------------
# Decoding controls


def test_greedy_is_deterministic_and_continues_the_prompt(sample_text):
    out = sample_text("--prompt", "the dog ", *GREEDY)
    assert out == sample_text("--prompt", "the dog ", *GREEDY)
    assert out.startswith("the dog ") and len(out) == len("the dog ") + 40 + 1 and out.endswith("\n")
    assert "the " in out[len("the dog "):] and "bird" in out  # the tiny model learned its text


def test_more_samples_never_change_the_first_and_each_has_its_own_stream(sample_text, ckpt):
    args = ("--prompt", "the ", "--max_new_tokens", "30", "--seed", "5", "--temperature", "1.5")
    one = sample_text(*args)
    three = sample_text(*args, "--num_samples", "3").split(SEPARATOR)
    assert len(three) == 3 and three[0] == one
    assert len(set(three)) == 3  # separate streams, not three copies
    # The Python API, with the same per-sample streams, writes the same texts as the command line.
    from gpt.checkpoint import load_model
    from gpt.decoding import generate_tokens
    from gpt.sampling import sample_generators

    loaded = load_model(ckpt)
    ids = loaded.tokenizer.encode("the ")
    rows = [[] for _ in range(3)]
    for step in generate_tokens(loaded.model, torch.tensor([ids] * 3), 30, 1.5, 200, 1.0,
                                sample_generators(5, 3)):
        for b, token in enumerate(step.tolist()):
            rows[b].append(token)
    assert ["the " + loaded.tokenizer.decode(r) + "\n" for r in rows] == three


def test_seed_reproducibility(sample_text):
    args = ("--prompt", "the ", "--temperature", "1.5", "--top_k", "0", "--max_new_tokens", "60")
    first = sample_text(*args, "--seed", "1")
    assert first == sample_text(*args, "--seed", "1")
    assert first != sample_text(*args, "--seed", "2")


def test_top_k_1_and_tiny_top_p_equal_greedy(sample_text):
    greedy = sample_text("--prompt", "the ", *GREEDY)
    sampled = ("--prompt", "the ", "--temperature", "1.5", "--max_new_tokens", "40")
    assert sample_text(*sampled, "--top_k", "1") == greedy
    assert sample_text(*sampled, "--top_k", "0", "--top_p", "1e-6") == greedy
    assert sample_text(*sampled, "--top_k", "0") != greedy  # sampling really samples


def test_max_new_tokens_and_num_samples(sample_text):
    out = sample_text("--prompt", "a", "--max_new_tokens", "17", "--num_samples", "3", "--temperature", "1.2")
    samples = out.split(SEPARATOR)
    assert len(samples) == 3 and all(len(s) == 1 + 17 + 1 and s.startswith("a") for s in samples)
    assert len(set(samples)) > 1  # one batch, but each sample draws its own tokens
    assert sample_text("--prompt", "the", "--max_new_tokens", "0") == "the\n"


def test_stop_strings_end_each_sample_and_are_not_printed(sample_text):
    greedy = sample_text("--prompt", "the ", *GREEDY)[:-1]
    completion = greedy[len("the "):]
    assert "log" in completion
    cut = "the " + completion[: completion.index("log")]
    assert sample_text("--prompt", "the ", *GREEDY, "--stop", "log") == cut + "\n"
    # repeatable: the earliest of several stop strings wins
    stops = ("--stop", "zzz", "--stop", "ate", "--stop", "log")
    assert sample_text("--prompt", "the ", *GREEDY, *stops) == "the " + completion[: completion.index("ate")] + "\n"
    samples = sample_text("--prompt", "the ", "--temperature", "1.3", "--max_new_tokens", "60", "--num_samples", "4",
                          "--stop", "\n").split(SEPARATOR)
    assert len(samples) == 4 and all(s.count("\n") == 1 for s in samples)  # only the line end print adds
    # typed as a backslash and an n, as in the README's --stop "\n\n", it means the newline too
    escaped = sample_text("--prompt", "the ", "--temperature", "1.3", "--max_new_tokens", "60", "--num_samples", "4",
                          "--stop", "\\n").split(SEPARATOR)
    assert escaped == samples


def test_greedy_with_and_without_kv_cache_is_identical_past_block_size(sample_text):
    args = ("--prompt", "the cat", "--temperature", "0", "--max_new_tokens", "120")  # block_size is 32
    assert sample_text(*args) == sample_text(*args, "--no_kv_cache")


# ---------------------------------------------------------------------------------------------------
# Prompts


def test_prompt_file_and_stdin_give_the_same_text_as_prompt(sample_text, tmp_path):
    expected = sample_text("--prompt", "the bird ", *GREEDY)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("the bird ", encoding="utf-8")
    assert sample_text("--prompt_file", str(prompt_file), *GREEDY) == expected
    assert sample_text(*GREEDY, stdin_text="the bird ") == expected


def test_prompt_bytes_are_read_as_they_are_from_every_source(tmp_path):
    from gpt.generate import SampleConfig, read_prompt

    text = "line one\r\nline two\rthree\n"
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_bytes(text.encode("utf-8"))

    class Piped(io.StringIO):
        def __init__(self, data: bytes):
            super().__init__()
            self.buffer = io.BytesIO(data)

    assert read_prompt(SampleConfig(prompt_file=str(prompt_file)), io.StringIO()) == text
    assert read_prompt(SampleConfig(), Piped(text.encode("utf-8"))) == text
    assert read_prompt(SampleConfig(prompt=text), io.StringIO()) == text


def test_a_tiny_temperature_is_greedy_not_a_crash(sample_text):
    assert sample_text("--prompt", "the dog ", "--temperature", "1e-39", "--max_new_tokens", "40") == \
        sample_text("--prompt", "the dog ", *GREEDY)


def test_piped_output_comes_line_by_line_and_ctrl_c_keeps_it(ckpt):
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "sample.py", "--ckpt", ckpt, "--prompt", "the ", "--temperature", "1",
                             "--max_new_tokens", "1000000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8", env=env)
    try:
        first_line = proc.stdout.readline()  # arrives long before the million tokens are done
        assert first_line.startswith("the ") and first_line.endswith("\n")
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip() == "interrupted"
    assert rest.endswith("\n") and "Traceback" not in err  # what was generated after the first line is kept


def test_empty_prompt_starts_from_a_newline(sample_text):
    out = sample_text("--prompt", "", *GREEDY)
    assert len(out) == 40 + 1  # the start newline itself is not printed


def test_stdin_prompt_through_the_command_line(ckpt, sample_text):
    result = run_cli("--ckpt", ckpt, *GREEDY, stdin_text="the cat ")
    assert result.returncode == 0, result.stderr
    assert result.stdout == sample_text("--prompt", "the cat ", *GREEDY)


def test_interactive_mode_answers_each_line(ckpt, sample_text):
    lines = ["the cat ", "and then", "la la"]
    result = run_cli("--ckpt", ckpt, "--interactive", *GREEDY, stdin_text="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    # Each completion (which may span lines) is followed by a line of '=': where one ends and the next begins.
    completions = result.stdout.split(COMPLETION_END)
    expected = [sample_text("--prompt", line, *GREEDY)[len(line):] for line in lines]
    assert completions == [*expected, ""]
    spanning = run_cli("--ckpt", ckpt, "--interactive", "--temperature", "0", "--max_new_tokens", "120",
                       stdin_text="the cat \nthe dog \n")
    assert spanning.returncode == 0 and spanning.stdout.count(COMPLETION_END) == 2
    assert all(c.count("\n") > 1 for c in spanning.stdout.split(COMPLETION_END)[:2])  # several lines each


def test_forced_streaming_prints_the_same_text(ckpt, sample_text):
    args = ("--prompt", "the ", "--temperature", "0.9", "--max_new_tokens", "50", "--num_samples", "2", "--stop", "!")
    result = run_cli("--ckpt", ckpt, *args, "--stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == sample_text(*args)


# ---------------------------------------------------------------------------------------------------
# Seeing the prediction


def table_rows(out):
    return [(m.group(1), float(m.group(2)), bool(m.group(3)))
            for m in re.finditer(r"^\s+\d+\s+('.*?'|b'.*?')\s+([01]\.\d{4})\s+\S*( +<- picked)?$", out, re.M)]


def test_show_probs_table_follows_temperature(sample_text):
    vocab = len(set(TINY_TEXT))
    full = table_rows(sample_text("--prompt", "the ", "--show_probs", str(vocab), "--top_k", "0", "--temperature", "1"))
    assert len(full) == vocab and abs(sum(p for _, p, _ in full) - 1.0) < 2e-3
    probs = [p for _, p, _ in full]
    assert probs == sorted(probs, reverse=True)
    sharp = table_rows(sample_text("--prompt", "the ", "--show_probs", "5", "--temperature", "0.5"))
    flat = table_rows(sample_text("--prompt", "the ", "--show_probs", "5", "--temperature", "2"))
    assert sharp[0][0] == flat[0][0] == full[0][0] and sharp[0][1] > full[0][1] > flat[0][1]
    greedy_table = sample_text("--prompt", "the ", "--show_probs", "5", "--temperature", "0", "--top_k", "0")
    assert table_rows(greedy_table)[:5] == full[:5] and "temperature 1" in greedy_table
    assert "\\n" in "".join(name for name, _, _ in full)  # the newline token is shown escaped


def test_show_probs_with_steps_marks_each_pick(sample_text):
    out = sample_text("--prompt", "the ", "--show_probs", "3", "--steps", "4", "--temperature", "0")
    assert out.count("step ") == 4 and out.count("<- picked") == 4
    greedy = sample_text("--prompt", "the ", "--temperature", "0", "--max_new_tokens", "4")[:-1]
    assert out.rstrip().endswith(f"text: {greedy!r}")
    picks = [name for name, _, picked in table_rows(out) if picked]
    assert "".join(eval(name) for name in picks) == greedy[len("the "):]


def test_help_documents_the_window_policy(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "block_size//2" in text and "--show_probs" in text and "--stop" in text
    assert '--stop "\\n\\n"' in text  # the example as it is typed, not two real line breaks


# ---------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2, no traceback


@pytest.mark.parametrize("args, message", [
    (("--top_p", "0"), "top_p"),
    (("--top_p", "1.5"), "top_p"),
    (("--top_k", "-1"), "top_k"),
    (("--max_new_tokens", "-1"), "max_new_tokens"),
    (("--num_samples", "0"), "num_samples"),
    (("--temperature", "-0.5"), "temperature"),
    (("--temperature", "inf"), "temperature"),
    (("--prompt_file", "/nonexistent/prompt.txt"), "prompt file"),
    (("--steps", "3"), "show_probs"),
    (("--stop", ""), "stop"),
])
def test_bad_settings_are_one_line_errors(ckpt, capsys, monkeypatch, args, message):
    code, out, err = call(capsys, monkeypatch, "--ckpt", ckpt, "--prompt", "the", *args) if "--prompt_file" not in args \
        else call(capsys, monkeypatch, "--ckpt", ckpt, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_missing_and_corrupt_checkpoints_are_one_line_errors(ckpt, tmp_path, capsys, monkeypatch):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(os.path.join(ckpt, "ckpt.pt"), "rb").read()[:3000])
    # a missing path, a folder without a checkpoint, a truncated file
    for spec in (tmp_path / "nowhere", tmp_path, truncated):
        code, out, err = call(capsys, monkeypatch, "--ckpt", str(spec), "--prompt", "x")
        assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err


def test_a_garbage_file_as_checkpoint_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    code, _, err = call(capsys, monkeypatch, "--ckpt", str(garbage), "--prompt", "x")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_unknown_prompt_characters_are_listed_on_one_line(ckpt, capsys, monkeypatch):
    code, out, err = call(capsys, monkeypatch, "--ckpt", ckpt, "--prompt", "the Q€Z cat")
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    assert all(repr(c) in err for c in "Q€Z")


class CreatesAFile:
    """Unpickling this calls open(marker, "w"): code running at load time, as a crafted checkpoint would."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_is_refused_and_nothing_runs(ckpt, tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    state = torch.load(os.path.join(ckpt, "ckpt.pt"), weights_only=True)
    torch.save({**state, "model_config": CreatesAFile(marker)}, evil)
    result = run_cli("--ckpt", str(evil), "--prompt", "the")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: refused to load") and result.stderr.count("\n") == 1
    assert not marker.exists()
    # the file really is malicious: loading it the unsafe way runs its code
    torch.load(evil, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------
# The probability table and the command line's helpers


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
