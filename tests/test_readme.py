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
