"""The README is part of the product: its commands must match CI and its references must exist."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

from gpt.config import _field_types

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def code_lines() -> list[str]:
    """Command lines from the README's bash blocks, with continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    ci = (REPO / ".ci" / "run").read_text()
    marker = "# --- README: test command (keep in sync) ---\n"
    ci_commands = [c for c in ci.split(marker, 1)[1].splitlines() if c.strip()]
    test_command = next(line for line in code_lines() if "[dev]" in line and "pytest" in line)
    assert " && ".join(ci_commands) in test_command


def test_first_command_trains_then_samples():
    first = code_lines()[0]
    assert first.startswith("python3 -m venv .venv") and first.endswith("python train.py && python sample.py")


TOOLS = {
    "train.py": "gpt.trainer:TrainConfig",
    "sample.py": "gpt.generate:SampleConfig",
    "gpt.evaluate": "gpt.evaluate:EvalConfig",
    "gpt.data": "gpt.data:PrepareConfig",
    "gpt.hf": "gpt.hf_export:ExportConfig",
    "gpt.serve": "gpt.serve.app:ServeConfig",
}


def commands_of(tool: str) -> list[list[str]]:
    found = []
    for line in code_lines():
        for command in re.split(r"&&|\|", line):
            words = shlex.split(command)
            if tool in words[:3]:
                found.append(words[words.index(tool) + 1:])
    return found


@pytest.mark.parametrize("tool", TOOLS)
def test_every_flag_shown_is_a_real_setting(tool):
    module, name = TOOLS[tool].split(":")
    settings = _field_types(getattr(importlib.import_module(module), name))
    commands = commands_of(tool)
    assert commands, f"the README shows no {tool} command"
    for words in commands:
        for word in words:
            if word.startswith("--"):
                flag = word[2:].split("=")[0].replace("-", "_")
                assert flag in settings or flag == "help", f"README: {tool} has no setting --{flag}"
            elif word.endswith(".toml"):
                assert (REPO / word).is_file(), f"README names {word}, which does not exist"


def test_every_code_reference_exists():
    references = set(re.findall(r"`(gpt/\w+\.py):([\w.]+)`", README))
    assert len(references) > 15
    for path, qualname in references:
        assert (REPO / path).is_file(), path
        obj = importlib.import_module(path[:-3].replace("/", "."))
        for part in qualname.split("."):
            assert hasattr(obj, part), f"README refers to {path}:{qualname}, which does not exist"
            obj = getattr(obj, part)
    for path in set(re.findall(r"(?:configs|gpt|bench)/[\w/]+\.(?:py|toml|sh)", README)):
        assert (REPO / path).exists(), f"README names {path}, which does not exist"


# ---------------------------------------------------------------------------------------------------
# Every sampling example in the README does what it says, on a model trained here (its --ckpt replaced).

EXAMPLE_TEXT = ("def add(a, b):\n    return a + b\n\nimport os\nROMEO: To be, or not to be, that is the question.\n"
                "JULIET: The meaning of life is a rose by any other name.\n") * 30


@pytest.fixture(scope="module")
def example_ckpt(tmp_path_factory):
    import dataclasses

    import torch

    from gpt.checkpoint import save_checkpoint
    from gpt.model import GPT, GPTConfig
    from gpt.tokenizer import CharTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains fastest on one thread, and the machine may be busy
    torch.manual_seed(0)
    tokenizer = CharTokenizer(EXAMPLE_TEXT)
    data = torch.tensor(tokenizer.encode(EXAMPLE_TEXT))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        starts = torch.randint(len(data) - 33, (16,))
        x = torch.stack([data[i : i + 32] for i in starts])
        y = torch.stack([data[i + 1 : i + 33] for i in starts])
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("example") / "ckpt.pt"
    save_checkpoint({"model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                     "tokenizer": tokenizer.to_dict(), "step": 150}, path)
    return path


def sample_examples() -> list[tuple[str, list[str]]]:
    """(stdin, arguments) of every `python sample.py ...` line in the README's bash blocks."""
    examples = []
    for line in code_lines():
        for piped in line.split("&&"):
            stdin = ""
            if "| python sample.py" in piped:
                echoed, piped = piped.split("|", 1)
                stdin = shlex.split(echoed)[1] + "\n"
            words = shlex.split(piped)
            if words[:2] == ["python", "sample.py"]:
                examples.append((stdin, words[2:]))
    return examples


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_readme_sampling_example_does_what_it_says(example_ckpt, one_thread, tmp_path, monkeypatch, capsys):
    import io
    import sys

    from gpt.generate import main, unescape

    examples = sample_examples()
    assert len(examples) >= 6
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompt.txt").write_text("import os\n", encoding="utf-8")
    for stdin, args in examples:
        if "--chat" in args:
            continue  # these need a model tuned on conversations: tests/test_sft.py runs them on one
        args = list(args)
        for flag in ("--ckpt", "--adapter"):  # the model trained here instead (tests/test_lora.py runs adapters)
            if flag in args:
                del args[args.index(flag) : args.index(flag) + 2]
        if "--interactive" in args:
            stdin = "def \nROMEO:\n"
        short = [] if "--show_probs" in args else ["--max_new_tokens", "60"]
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main([*args, *short, "--ckpt", str(example_ckpt), "--device", "cpu"])
        out, err = capsys.readouterr()
        assert code == 0 and err == "" and out.strip(), (args, err)
        if "--stop" in args:  # each sample ends where the stop string appears, which is never printed
            stop = unescape(args[args.index("--stop") + 1])
            prompt = args[args.index("--prompt") + 1]
            samples = out.split("-" * 15 + "\n")
            assert len(samples) == int(args[args.index("--num_samples") + 1])
            assert all(stop not in sample[len(prompt):-1] and len(sample) < len(prompt) + 61 for sample in samples)
        if "--temperature" in args and args[args.index("--temperature") + 1] == "0":  # greedy: the same each time
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
            assert main([*args, *short, "--ckpt", str(example_ckpt), "--device", "cpu"]) == 0
            assert capsys.readouterr().out == out
