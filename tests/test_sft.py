"""Instruction tuning end to end, as a user runs it: the task suite, train.py on conversations, the scorer, and
sample.py --chat. A tiny model is tuned in the test and must beat its untuned self on the suite; the template
survives checkpoints and later fine-tunes; a pretrained model's vocabulary grows for the template's markers;
conversation runs resume exactly; bad data is a one-line error naming the file and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt_io
from gpt.post.tasks import cli
from gpt.post.chat import ChatTemplate, Message
from gpt.trainer import main as train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
SUITE_TASKS = "count_letter,length,compare,lookup,max_number"


def tiny(root: Path, out: str, *extra: str) -> list[str]:
    suite = root / "suite"
    return [f"--data={suite / 'train.jsonl'}", f"--val_data={suite / 'val.jsonl'}", f"--data_dir={root / 'data'}",
            f"--out_dir={root / out}", "--n_layer=2", "--n_head=2", "--n_embd=48", "--block_size=64",
            "--batch_size=8", "--learning_rate=5e-3", "--warmup_iters=20", "--lr_decay_iters=300", "--eval_iters=2",
            "--log_interval=50", "--plot=false", "--progress=false", "--peak_flops=1e11", "--threads=1",
            "--arch=gpt2", "--optimizer=adamw", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The suite, an untuned model (one step) and the same model tuned for 300 steps."""
    root = tmp_path_factory.mktemp("sft")
    assert cli.main(["make", f"--out={root / 'suite'}", f"--tasks={SUITE_TASKS}", "--held_out=max_number",
                       "--train_per_task=400", "--val_per_task=20", "--test_per_task=25"]) == 0
    assert train(tiny(root, "untuned", "--max_iters=1", "--eval_interval=1")) == 0
    assert train(tiny(root, "tuned", "--max_iters=300", "--eval_interval=300")) == 0
    return root


def score(root: Path, run: str, capsys) -> dict:
    capsys.readouterr()
    assert cli.main(["eval", f"--ckpt={root / run}", f"--data={root / 'suite' / 'test.jsonl'}", "--json",
                       "--max_new_tokens=8", "--progress=false"]) == 0
    return json.loads(capsys.readouterr().out)


def test_instruction_tuning_beats_the_untuned_model_on_the_suite(runs, capsys):
    before, after = score(runs, "untuned", capsys), score(runs, "tuned", capsys)
    assert before["prompting"] == after["prompting"] == "chat template"
    trained = after["groups"]["new_inputs"]
    # The untuned model neither answers nor stops. The tuned one (300 small steps) ends every answer, in the
    # form each task asks for, and gets some right: far from mastering these tasks (see README), but better.
    assert before["exact_match"] <= 0.02 and before["ended"] <= 0.1
    assert trained["ended"] >= 0.95 and trained["exact_match"] >= 0.05, trained
    assert after["groups"]["new_inputs"]["tasks"]["count_letter"]["exact_match"] >= 0.15
    assert set(after["groups"]) == {"new_inputs", "new_phrasings", "held_out_tasks"}
    assert set(after["tasks"]) == set(SUITE_TASKS.split(","))


def test_the_template_is_in_the_checkpoint_and_later_fine_tunes_keep_it(runs, tmp_path):
    loaded = ckpt_io.load_model(runs / "tuned")
    template = loaded.chat_template
    assert template is not None and template.to_dict() == loaded.checkpoint["chat_template"]
    assert loaded.model.config.vocab_size == loaded.tokenizer.vocab_size  # the markers have rows
    messages = [Message("user", "length: abc")]
    assert template.prompt(messages) == ChatTemplate(loaded.tokenizer).prompt(messages)
    # Fine-tuning the tuned model again, on plain text: the markers and the template stay.
    text = tmp_path / "more.txt"
    text.write_text("count a in banana. 3 length: abc 3 " * 40, encoding="utf-8")  # the suite has no newline
    args = ["--n_layer=2", "--n_head=2", "--n_embd=48", "--block_size=32", "--batch_size=4", "--max_iters=2",
            "--eval_interval=2", "--eval_iters=1", "--plot=false", "--progress=false", "--threads=1",
            f"--data_dir={tmp_path / 'data'}"]
    assert train([f"--data={text}", f"--init_from={runs / 'tuned'}", f"--out_dir={tmp_path / 'again'}", *args]) == 0
    again = ckpt_io.load_model(tmp_path / "again")
    assert again.chat_template is not None and again.tokenizer.to_dict() == loaded.tokenizer.to_dict()
    assert again.model.config.vocab_size == loaded.model.config.vocab_size  # nothing to grow
    # Exported as a Hugging Face folder, the tokenizer beside the weights carries the markers: the same template.
    from gpt.hf import save_hf_gpt2

    save_hf_gpt2(loaded.model, tmp_path / "hf", loaded.tokenizer)
    exported = ckpt_io.load_model(tmp_path / "hf")
    assert exported.chat_template is not None and exported.chat_template.prompt(messages) == template.prompt(messages)


def test_a_pretrained_model_grows_its_vocabulary_for_the_markers(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("Reverse the word abc. cba\nWrite it backwards.\n" * 60, encoding="utf-8")
    common = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--max_iters=2",
              "--eval_interval=2", "--eval_iters=1", "--plot=false", "--progress=false", "--threads=1",
              "--arch=gpt2", "--optimizer=adamw", f"--data_dir={tmp_path / 'data'}"]
    assert train([f"--data={text}", f"--out_dir={tmp_path / 'base'}", *common]) == 0
    base = ckpt_io.load_model(tmp_path / "base")
    assert base.chat_template is None
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"prompt": f"Reverse the word {w}.", "response": w[::-1]}) + "\n"
                             for w in ["abc", "cab", "bca", "ace", "eat", "tea"] * 5), encoding="utf-8")
    capsys.readouterr()
    assert train([f"--data={chats}", f"--init_from={tmp_path / 'base'}", f"--out_dir={tmp_path / 'chat'}",
                  "--learning_rate=1e-9", "--min_lr=1e-9", "--weight_decay=0", *common]) == 0
    assert "4 new tokens" in capsys.readouterr().out
    tuned = ckpt_io.load_model(tmp_path / "chat")
    old = base.tokenizer.vocab_size
    assert tuned.model.config.vocab_size == old + 4 and tuned.chat_template is not None
    # With a learning rate of ~0 the old tokens' logits are the base model's.
    ids = torch.tensor([base.tokenizer.encode("Reverse the word")])
    before = base.model(ids, all_logits=True)[0]
    after = tuned.model(ids, all_logits=True)[0][..., :old]
    assert torch.allclose(before, after, atol=1e-5)


def test_a_hugging_face_gpt2_folder_tunes_on_conversations(tmp_path):
    import shutil

    from conftest import shared_path
    from gpt.hf import save_hf_gpt2
    from gpt.model import GPT, GPTConfig

    gpt2 = shared_path("gpt2")
    save_hf_gpt2(GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)), tmp_path / "hf")
    shutil.copy(gpt2 / "encoder.json", tmp_path / "hf" / "vocab.json")
    shutil.copy(gpt2 / "vocab.bpe", tmp_path / "hf" / "merges.txt")
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"instruction": "Say hi to", "input": name, "output": f"Hi {name}!"}) + "\n"
                             for name in ["Ann", "Bob", "Cy", "Di", "Ed"] * 4), encoding="utf-8")
    assert train([f"--data={chats}", f"--init_from={tmp_path / 'hf'}", f"--out_dir={tmp_path / 'out'}",
                  "--block_size=32", "--batch_size=2", "--max_iters=1", "--eval_interval=1", "--eval_iters=1",
                  "--plot=false", "--progress=false", "--threads=1", f"--data_dir={tmp_path / 'data'}"]) == 0
    loaded = ckpt_io.load_model(tmp_path / "out")
    assert loaded.model.config.vocab_size == 50261 and loaded.tokenizer.special_tokens["<|end|>"] == 50260
    assert loaded.chat_template.prompt([Message("user", "hi")])[-1] == 50259


def test_chat_sampling_from_the_command_line(runs, capsys):
    items = [json.loads(line) for line in (runs / "suite" / "test.jsonl").read_text().splitlines()][:3]
    capsys.readouterr()
    assert cli.main(["eval", f"--ckpt={runs / 'tuned'}", f"--data={runs / 'suite' / 'test.jsonl'}", "--limit=3",
                       "--max_new_tokens=8", "--progress=false", f"--answers={runs / 'answers.jsonl'}"]) == 0
    answers = [json.loads(line)["answer"] for line in (runs / "answers.jsonl").read_text().splitlines()]
    run = subprocess.run([sys.executable, "sample.py", f"--ckpt={runs / 'tuned'}", "--chat", "--temperature=0",
                          "--max_new_tokens=8", f"--prompt={items[0]['prompt']}"], cwd=REPO, env=ENV, text=True,
                         capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == answers[0] + "\n"  # only the answer: no prompt, no marker; stopped at the end of the turn
    # An interactive chat: one answer per message, the conversation kept (and trimmed to fit the context).
    stdin = "".join(item["prompt"] + "\n" for item in items) + "\n"
    run = subprocess.run([sys.executable, "sample.py", f"--ckpt={runs / 'tuned'}", "--chat", "--interactive",
                          "--temperature=0", "--max_new_tokens=8", "--system=be brief."], cwd=REPO, env=ENV, text=True,
                         capture_output=True, timeout=120, input=stdin)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 3 and "<|" not in run.stdout


def test_every_readme_chat_example_answers_and_stops(runs, monkeypatch, capsys):
    import io

    from gpt.generate import main as sample

    sys.path.insert(0, str(REPO / "tests"))
    from test_readme import sample_examples

    examples = [args for _, args in sample_examples() if "--chat" in args]
    assert len(examples) >= 2
    for args in examples:
        args = list(args)
        for flag in ("--ckpt", "--adapter"):  # the run tuned here instead (tests/test_lora.py runs adapters)
            if flag in args:
                del args[args.index(flag): args.index(flag) + 2]
        if "--prompt" in args:  # the tiny suite's tasks: its char tokenizer knows only their characters
            args[args.index("--prompt") + 1] = "length: abc"
        monkeypatch.setattr(sys, "stdin", io.StringIO("length: abc\ncount a in banana\n"))
        capsys.readouterr()
        assert sample([*args, f"--ckpt={runs / 'tuned'}", "--max_new_tokens=8", "--device=cpu"]) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert err == "" and "<|" not in out and len(lines) == (2 if "--interactive" in args else 1), (args, out)


def test_sampling_a_chat_model_without_chat_says_how_to_ask_it(runs, capsys):
    from gpt.generate import main as sample

    capsys.readouterr()
    assert sample([f"--ckpt={runs / 'tuned'}", "--prompt=length: abc", "--max_new_tokens=4", "--temperature=0"]) == 0
    out, err = capsys.readouterr()
    assert err == (f"note: {runs / 'tuned' / 'best.pt'} was tuned on conversations and continues plain text poorly: "
                   "add --chat to send the prompt as a user message\n")
    assert out.startswith("length: abc")  # the continuation itself is still written, as asked


def test_sample_chat_refuses_a_model_without_a_template(tmp_path, capsys):
    from gpt.generate import main as sample

    text = tmp_path / "t.txt"
    text.write_text("hello there\n" * 50, encoding="utf-8")
    assert train([f"--data={text}", f"--out_dir={tmp_path / 'base'}", "--n_layer=1", "--n_head=2", "--n_embd=16",
                  "--block_size=16", "--batch_size=2", "--max_iters=1", "--eval_interval=1", "--eval_iters=1",
                  "--plot=false", "--progress=false", f"--data_dir={tmp_path / 'data'}"]) == 0
    capsys.readouterr()
    assert sample([f"--ckpt={tmp_path / 'base'}", "--chat", "--prompt=hello"]) == 2
    err = capsys.readouterr().err
    assert "has no chat template" in err and err.count("\n") == 1
    assert sample([f"--ckpt={tmp_path / 'base'}", "--prompt=hello", "--system=be brief"]) == 2
    assert "add --chat" in capsys.readouterr().err


def test_a_conversation_run_resumes_exactly(tmp_path, runs):
    def losses(out: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]

    args = tiny(runs, "unused", "--log_interval=1", "--eval_interval=5", "--lr_decay_iters=10", "--loss_on=all")
    args = [a for a in args if not a.startswith("--out_dir")]
    assert train([*args, f"--out_dir={tmp_path / 'whole'}", "--max_iters=10"]) == 0
    assert train([*args, f"--out_dir={tmp_path / 'half'}", "--max_iters=5"]) == 0
    assert train([f"--out_dir={tmp_path / 'half'}", "--resume", "--max_iters=10"]) == 0
    assert losses(tmp_path / "half") == losses(tmp_path / "whole")
    config = (tmp_path / "half" / "config.toml").read_text()
    assert 'loss_on = "all"' in config and "val_data" in config


BAD = [
    ('{"prompt": "hi", "response": "yo"}\n{"prompt": "hi", "response": ""}\n', ":2: an empty response"),
    ('{"prompt": "hi", "response": "yo"}\nnot json\n', ":2: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', ":1: the conversation has no assistant turn"),
    ('{"prompt": "hi", "response": "yo"}\n{"instruction": "hi", "output": "yo"}\n', ":2: a 'instruction' line"),
]


@pytest.mark.parametrize("content,message", BAD)
def test_bad_conversation_data_is_a_one_line_error_and_nothing_is_written(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    code = train([f"--data={path}", f"--out_dir={tmp_path / 'out'}", f"--data_dir={tmp_path / 'data'}",
                  "--n_layer=1", "--n_embd=16", "--n_head=2", "--progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}{message}" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
