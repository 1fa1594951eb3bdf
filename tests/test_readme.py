"""The documentation is part of the product: README.md (the front page) and the chapters in docs/. Their commands
must match CI and run, and their references and links must exist."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

from gpt.config import _field_types

REPO = Path(__file__).resolve().parents[1]
README_LINES = 250  # the front page stays a front page; the chapters live in docs/


def documentation() -> dict[str, str]:
    """The text of every documentation page by its path: README.md first, then every docs/*.md."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {page.relative_to(REPO).as_posix(): page.read_text(encoding="utf-8") for page in pages}


def documentation_text() -> str:
    return "\n".join(documentation().values())


def code_lines(text: str | None = None) -> list[str]:
    """Command lines from the bash blocks of `text` (default: all the documentation, README.md first), with
    continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", documentation_text() if text is None else text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def readme() -> str:
    return documentation()["README.md"]


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    ci = (REPO / ".ci" / "run").read_text()
    marker = "# --- README: test command (keep in sync) ---\n"
    ci_commands = [c for c in ci.split(marker, 1)[1].splitlines() if c.strip()]
    test_command = next(line for line in code_lines(readme()) if "[dev]" in line and "pytest" in line)
    assert " && ".join(ci_commands) in test_command


def test_first_command_trains_then_samples():
    first = code_lines(readme())[0]
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
    assert commands, f"the documentation shows no {tool} command"
    for words in commands:
        for word in words:
            if word.startswith("--"):
                flag = word[2:].split("=")[0].replace("-", "_")
                assert flag in settings or flag == "help", f"docs: {tool} has no setting --{flag}"
            elif word.endswith(".toml"):
                assert (REPO / word).is_file(), f"docs name {word}, which does not exist"


def test_every_code_reference_exists():
    text = documentation_text()
    references = set(re.findall(r"`(gpt/[\w/]+\.py):([\w.]+)`", text))
    assert len(references) > 15
    missing = []  # every one at once, so that one run lists all there are to fix
    for path, qualname in sorted(references):
        if not (REPO / path).is_file():
            missing.append(f"{path}:{qualname}")
            continue
        obj = importlib.import_module(path[:-3].replace("/", "."))
        for part in qualname.split("."):
            if not hasattr(obj, part):
                missing.append(f"{path}:{qualname}")
                break
            obj = getattr(obj, part)
    for path in sorted(set(re.findall(r"(?:configs|gpt|bench)/[\w/]+\.(?:py|toml|sh)", text))):
        if not (REPO / path).exists():
            missing.append(path)
    assert missing == [], f"the documentation names what does not exist: {missing}"


def test_the_readme_is_a_front_page_whose_chapter_map_is_complete():
    text = readme()
    assert len(text.splitlines()) <= README_LINES, f"README.md has {len(text.splitlines())} lines: move some to docs/"
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)(?:#[\w-]*)?\)", text))
    chapters = {page for page in documentation() if page.startswith("docs/")}
    assert linked, "README.md links to no chapter"
    assert linked - chapters == set(), f"README.md links to chapters that do not exist: {linked - chapters}"
    assert chapters - linked == set(), f"chapters README.md does not link to: {chapters - linked}"


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, -1, -2 ...
    after repeats."""
    seen: dict[str, int] = {}
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_the_reading_order_gives_each_file_its_true_length():
    """The front page tells a learner how long each core file is; the counts follow the code."""
    text = readme()
    rows = re.findall(r"^\| `(gpt/[\w/]+\.py)` \| ([\d,]+) \|", text, flags=re.M)
    assert len(rows) >= 10
    counts = {path: len((REPO / path).read_text(encoding="utf-8").splitlines()) for path, _ in rows}
    assert {path: int(n.replace(",", "")) for path, n in rows} == counts
    total = re.search(r"^([\d,]+) lines in all", text, flags=re.M)
    assert total and int(total.group(1).replace(",", "")) == sum(counts.values())


def test_every_relative_link_and_anchor_exists():
    for page, text in documentation().items():
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / page).parent / path if path else REPO / page
            assert file.resolve().is_relative_to(REPO) and file.exists(), f"{page} links to {target}: no such file"
            if anchor and file.suffix == ".md":
                assert anchor in anchors(file.read_text(encoding="utf-8")), f"{page} links to {target}: no such heading"


# ---------------------------------------------------------------------------------------------------
# Every sampling example in the documentation does what it says, on a model trained here (its --ckpt replaced).

EXAMPLE_TEXT = ("def add(a, b):\n    return a + b\n\nimport os\nclass Point:\n    pass\nROMEO: To be, or not to be, that is the question.\n"
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
    """(stdin, arguments) of every `python sample.py ...` line in the documentation's bash blocks."""
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


def test_every_documented_sampling_example_does_what_it_says(example_ckpt, one_thread, tmp_path, monkeypatch, capsys):
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
