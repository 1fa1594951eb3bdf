"""The lab (gpt/lab): head scores on hand-built attention patterns, the synthetic sequences, the plain attention path
seen from outside, head ablation, the logit lens, each command through its command line on a tiny model, and a
shortened, seeded induction run whose thresholds can fail."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.lab import fewshot, induction, probes, scaling
from gpt.lab.__main__ import main as lab_main
from gpt.lab.scores import (heads_off, icl_score, icl_windows, induction_scores, previous_token_scores,
                            recording_attention)
from gpt.lab.synthetic import repeat_batch, repeated_random_tokens, synthetic_tokenizer
from gpt.model import GPT, GPTConfig
from test_decoding import one_thread, train_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A 2-layer char model of a short text (trained once per session in tests/test_decoding.py)."""
    path = tmp_path_factory.mktemp("lab_tiny") / "ckpt.pt"
    train_tiny_checkpoint(path)
    return str(path)


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------------------------------
# Scores on hand-built attention patterns


def pattern(T: int, source) -> torch.Tensor:
    """A one-hot attention pattern [1, 1, T, T]: query q attends only to key source(q)."""
    weights = torch.zeros(1, 1, T, T)
    for q in range(T):
        weights[0, 0, q, source(q)] = 1.0
    return weights


def test_an_ideal_induction_pattern_scores_one_and_a_previous_token_pattern_scores_zero():
    half = 8
    probe = repeated_random_tokens(1, half, 50, torch.Generator().manual_seed(0))
    keys = probe.induction_keys()  # [1, 2 * half]
    assert keys[0, :half].tolist() == [-1] * half
    assert keys[0, half:].tolist() == list(range(1, half + 1))  # token i of the copy -> the token after its first copy
    T = 2 * half
    ideal = pattern(T, lambda q: int(keys[0, q]) if keys[0, q] >= 0 else q)
    previous = pattern(T, lambda q: max(q - 1, 0))
    assert induction_scores(ideal, keys).item() == pytest.approx(1.0)
    assert induction_scores(previous, keys).item() == pytest.approx(0.0)
    assert previous_token_scores(previous).item() == pytest.approx(1.0)
    assert previous_token_scores(ideal).item() < 0.1
    # Uniform causal attention: the induction key gets 1 / (q + 1) of each query's attention.
    uniform = torch.tril(torch.ones(T, T))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    expected = sum(1 / (q + 1) for q in range(half, T)) / half
    assert induction_scores(uniform, keys).item() == pytest.approx(expected)


def test_scores_keep_layers_and_heads_apart():
    half = 6
    probe = repeated_random_tokens(2, half, 40, torch.Generator().manual_seed(1))
    keys, T = probe.induction_keys(), 2 * half
    ideal = pattern(T, lambda q: int(keys[0, q]) if keys[0, q] >= 0 else q)[0, 0]
    previous = pattern(T, lambda q: max(q - 1, 0))[0, 0]
    # [n_layer=2, B=2, nh=2, T, T]: layer 0 = (previous, previous), layer 1 = (previous, induction)
    weights = torch.stack([torch.stack([torch.stack([previous, previous])] * 2),
                           torch.stack([torch.stack([previous, ideal])] * 2)])
    scores = induction_scores(weights, keys)
    assert scores.shape == (2, 2)
    assert scores[1, 1] == pytest.approx(1.0) and scores[0].abs().max() < 1e-6 and scores[1, 0].abs() < 1e-6
    assert previous_token_scores(weights)[0].tolist() == pytest.approx([1.0, 1.0])


def test_icl_score_is_late_minus_early():
    losses = [5.0] * 10 + [3.0] * 80 + [1.0] * 10  # block of 100: early window 5..10, late window 90..99
    early, late = icl_windows(100)
    assert (early.start, early.stop, late.start, late.stop) == (5, 11, 90, 100)
    assert icl_score(losses) == pytest.approx(1.0 - (5 * 5.0 + 1 * 3.0) / 6)
    assert icl_score([2.0] * 64) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------------
# The synthetic sequences


def test_repeat_batches_copy_a_segment_at_varying_places():
    T, V = 64, 100
    batch = repeat_batch(512, T, V, 4, 24, torch.Generator().manual_seed(0))
    assert batch.ids.shape == (512, T + 1) and batch.x.shape == batch.y.shape == (512, T)
    assert int(batch.ids.min()) >= 0 and int(batch.ids.max()) < V
    for b in range(512):
        L, s1, s2 = int(batch.length[b]), int(batch.first_start[b]), int(batch.copy_start[b])
        assert 4 <= L <= 24 and s1 + L <= s2 and s2 + L <= T + 1
        assert torch.equal(batch.ids[b, s2:s2 + L], batch.ids[b, s1:s1 + L])
    # Targets after the copy's first token are the predictable ones; as many inside the first occurrence.
    assert torch.equal(batch.repeat_mask().sum(1), batch.length - 1)
    assert torch.equal(batch.first_mask().sum(1), batch.length - 1)
    assert not (batch.repeat_mask() & batch.first_mask()).any()
    # Each query of the copy points at the token after the same token's first occurrence.
    keys = batch.induction_keys()
    q = keys >= 0
    rows, cols = q.nonzero(as_tuple=True)
    assert torch.equal(batch.x[rows, cols], batch.x[rows, keys[rows, cols] - 1])
    # No positional shortcut: distances, lengths and starts all vary widely.
    distance = batch.copy_start - batch.first_start
    assert len(set(distance.tolist())) > 30 and len(set(batch.length.tolist())) == 21
    assert len(set(batch.copy_start.tolist())) > 30
    # Seeded: the same generator seed gives the same batch.
    again = repeat_batch(512, T, V, 4, 24, torch.Generator().manual_seed(0))
    assert torch.equal(again.ids, batch.ids) and torch.equal(again.copy_start, batch.copy_start)


def test_filler_can_follow_a_rule_while_the_segment_stays_uniform():
    T, V = 64, 50
    rule = torch.randperm(V, generator=torch.Generator().manual_seed(3))
    batch = repeat_batch(256, T, V, 4, 24, torch.Generator().manual_seed(0), rule, 1.0)
    inside = torch.zeros(256, T + 1, dtype=torch.bool)
    for b in range(256):
        L, s1, s2 = int(batch.length[b]), int(batch.first_start[b]), int(batch.copy_start[b])
        inside[b, s1:s1 + L] = inside[b, s2:s2 + L] = True
        assert torch.equal(batch.ids[b, s2:s2 + L], batch.ids[b, s1:s1 + L])
    follows = batch.ids[:, 2:] == rule[batch.ids[:, :-2]]  # [B, T - 1]: token t fixed by token t - 2
    filler = ~inside[:, 2:] & ~inside[:, :-2]
    assert follows[filler].all()  # with skip_prob 1 every filler token two after a filler token follows the rule
    segment = inside[:, 2:] & inside[:, :-2]
    assert follows[segment].float().mean() < 0.1  # the segments are uniform: about 1 in 50 by chance


def test_repeat_batch_refuses_segments_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        repeat_batch(2, 16, 10, 4, 9, torch.Generator())
    with pytest.raises(ValueError, match="min_len"):
        repeat_batch(2, 16, 10, 1, 4, torch.Generator())


def test_the_synthetic_tokenizer_spells_ids_as_characters():
    tokenizer = synthetic_tokenizer(100)
    assert tokenizer.vocab_size == 100
    assert tokenizer.encode("09AZaz") == [0, 9, 10, 35, 36, 61]
    assert tokenizer.decode(list(range(100))) == tokenizer.chars and len(set(tokenizer.chars)) == 100


# ---------------------------------------------------------------------------------------------------
# Attention, ablation and the lens, from outside the model


def small_model(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=30, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def test_recording_attention_changes_nothing_but_keeps_the_weights():
    model = small_model()
    x = torch.randint(30, (3, 16))
    with torch.no_grad():
        fused, _ = model(x, all_logits=True)
        with recording_attention(model):
            plain, _ = model(x, all_logits=True)
            weights = [block.attn.weights for block in model.transformer.h]
    torch.testing.assert_close(plain, fused, rtol=1e-4, atol=1e-5)
    for w in weights:
        assert w.shape == (3, 4, 16, 16)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 16))
        assert torch.triu(w, diagonal=1).abs().max() == 0  # causal: no weight on later tokens
    assert all(not b.attn.plain and b.attn.weights is None for b in model.transformer.h)  # restored


def test_switching_heads_off_zeroes_exactly_their_share():
    model = small_model(attention_only=True, bias=False)
    x = torch.randint(30, (2, 16))
    with torch.no_grad():
        base, _ = model(x, all_logits=True)
        with heads_off(model, []):
            same, _ = model(x, all_logits=True)
        with heads_off(model, [(1, 2)]):
            one_off, _ = model(x, all_logits=True)
        # All heads of every layer off (and no biases): the model sees only its embeddings.
        with heads_off(model, [(l, h) for l in range(2) for h in range(4)]):
            all_off, _ = model(x, all_logits=True)
        after, _ = model(x, all_logits=True)
    torch.testing.assert_close(same, base)
    assert not torch.allclose(one_off, base)
    torch.testing.assert_close(after, base)  # the hooks are gone
    embeddings = model.transformer.wte(x) + model.transformer.wpe(torch.arange(16))
    torch.testing.assert_close(all_off, model.lm_head(model.transformer.ln_f(embeddings)))


def test_the_logit_lens_ends_with_the_models_own_prediction():
    model = small_model()
    ids = torch.randint(30, (1, 12))
    names, probs = probes.logit_lens(model, ids)
    assert names == ["embedding", "block 0", "block 1"] and probs.shape == (3, 12, 30)
    with torch.no_grad():
        logits, _ = model(ids, all_logits=True)
    torch.testing.assert_close(probs[-1], logits[0].softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 12))


# ---------------------------------------------------------------------------------------------------
# The commands, through their command lines


def run_lab(capsys, *argv):
    code = lab_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_attention_command(tiny_ckpt, tmp_path, capsys):
    code, out, err = run_lab(capsys, "attention", "--ckpt", tiny_ckpt, "--prompt", "the cat sat on the mat",
                             "--out_dir", str(tmp_path), "--repeat_length", "10", "--repeat_sequences", "4")
    assert code == 0, err
    report = json.loads((tmp_path / "attention.json").read_text())
    assert "".join(report["tokens"]) == "the cat sat on the mat"
    assert len(report["heads"]) == 4 and report["repeat_length"] == 10
    for head in report["heads"]:
        assert 0 <= head["induction"] <= 1 and 0 <= head["previous_token"] <= 1
    weights = torch.tensor(report["attention"])  # [n_layer, nh, T, T]
    assert weights.shape == (2, 2, 22, 22)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 22), atol=1e-3, rtol=0)
    assert is_png(tmp_path / "attention.png")
    assert "induction heads (score > 0.2):" in out and "L1H1" in out


def test_icl_command(tiny_ckpt, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. the dog ate a log!\nand then, the bird sang: la la la.\n" * 30)
    code, out, err = run_lab(capsys, "icl", "--ckpt", tiny_ckpt, "--data", str(text), "--out_dir", str(tmp_path / "o"))
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "icl.json").read_text())
    assert report["block_size"] == 32 and len(report["loss_by_position"]) == 32
    assert report["windows"] == report["windows_available"] == len(text.read_text()) // 33
    assert all(0 < loss < 10 for loss in report["loss_by_position"])
    # The tiny model has memorised a repetitive text: with context it predicts better than without.
    assert report["icl_score"] < 0 and report["loss_by_position"][0] > report["loss_by_position"][-1]
    assert is_png(tmp_path / "o" / "icl.png") and "in-context learning score" in out


def test_icl_needs_a_text_long_enough(tiny_ckpt, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("the cat")
    code, _, err = run_lab(capsys, "icl", "--ckpt", tiny_ckpt, "--data", str(text), "--out_dir", str(tmp_path))
    assert code == 2 and "no document of the text holds 33 tokens" in err and "Traceback" not in err


def test_lens_command(tiny_ckpt, tmp_path, capsys):
    code, out, err = run_lab(capsys, "lens", "--ckpt", tiny_ckpt, "--prompt", "the dog ate a l", "--out_dir",
                             str(tmp_path), "--top_k", "3")
    assert code == 0, err
    report = json.loads((tmp_path / "lens.json").read_text())
    assert [layer["layer"] for layer in report["layers"]] == ["embedding", "block 0", "block 1"]
    last = report["layers"][-1]["top"]
    assert len(last) == len("the dog ate a l") and all(len(top) == 3 for top in last)
    probs = [p for _, p in last[-1]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert last[-1][0][0] == "o"  # "a l" -> "log": the model's own answer comes out of the last layer
    assert is_png(tmp_path / "lens.png") and "block 1" in out


def write_tasks(path: Path) -> None:
    """A small procedural task set in all three accepted shapes."""
    words = ["cat", "dog", "mat", "log", "bird", "sat", "ate", "sang", "then", "the"]
    lines = []
    for w in words:
        lines.append({"prompt": w, "response": w, "task": "copy"})
        lines.append({"instruction": w, "output": w[::-1], "task": "reverse"})
        lines.append({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": w},
                                   {"role": "assistant", "content": w[0]}], "task": "first"})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_fewshot_command(tiny_ckpt, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks)
    code, out, err = run_lab(capsys, "fewshot", "--ckpt", tiny_ckpt, "--data", str(tasks), "--template",
                             "{prompt}: {response}\\n", "--out_dir", str(tmp_path / "o"), "--max_examples", "4")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "fewshot.json").read_text())
    # block_size 32 holds up to 2 solved examples of these lengths: the curve stops where prompts stop fitting.
    assert report["shots"][:2] == [0, 1] and report["shots"] == sorted(report["shots"])
    assert any("do not fit in block_size 32" in why for why in report["stopped"].values())
    assert len(report["tasks_scored"]) == len(report["shots"]) and report["tasks_scored"][0] == 3
    assert set(report["exact_match"]["tasks"]) == {"copy", "reverse", "first"}
    for curve in [report["exact_match"]["overall"], *report["exact_match"]["tasks"].values()]:
        assert len(curve) == len(report["shots"]) and all(v is None or 0 <= v <= 1 for v in curve)
    assert report["examples"] == {"copy": 4, "reverse": 4, "first": 4}
    sample = report["samples"]["1"][0]
    assert sample["answer"] == sample["answer"].split("\n")[0]  # the answer stops at the template's end
    assert is_png(tmp_path / "o" / "fewshot.png") and "shots" in out


def test_fewshot_reads_each_shape_and_builds_prompts(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks)
    examples = fewshot.read_examples(str(tasks))
    assert (examples[0].prompt, examples[0].response, examples[0].task) == ("cat", "cat", "copy")
    assert (examples[1].prompt, examples[1].response) == ("cat", "tac")
    assert (examples[2].prompt, examples[2].response, examples[2].task) == ("cat", "c", "first")
    parts = fewshot.split_template("Q: {prompt}\nA: {response}\n")
    shots = examples[3:5]
    assert fewshot.build_prompt(shots, examples[0], parts) == "Q: dog\nA: dog\nQ: dog\nA: god\nQ: cat\nA: "
    assert fewshot.shot_counts(10) == [0, 1, 2, 4, 8]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a"}', "expected prompt/response"),
    ("not json", "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "no assistant turn"),
    ('{"prompt": 3, "response": "a"}', "prompt must be a string"),
])
def test_fewshot_bad_lines_are_one_line_errors(tiny_ckpt, tmp_path, capsys, line, message):
    tasks = tmp_path / "bad.jsonl"
    tasks.write_text('{"prompt": "cat", "response": "cat"}\n' + line + "\n")
    code, _, err = run_lab(capsys, "fewshot", "--ckpt", tiny_ckpt, "--data", str(tasks), "--out_dir", str(tmp_path))
    assert code == 2 and message in err and f"{tasks}:2" in err and len(err.strip().splitlines()) == 1


def test_fewshot_template_outside_the_vocabulary_is_a_clear_error(tiny_ckpt, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks)
    code, _, err = run_lab(capsys, "fewshot", "--ckpt", tiny_ckpt, "--data", str(tasks), "--out_dir", str(tmp_path))
    assert code == 2 and "not in this char tokenizer's vocabulary" in err  # "Input:" has letters the text lacks


def test_lab_command_line_errors(tmp_path, capsys):
    code, _, err = run_lab(capsys, "inductoin")
    assert code == 2 and "unknown command 'inductoin'" in err
    code, _, err = run_lab(capsys, "attention", "--prompt", "x")
    assert code == 2 and "--ckpt" in err
    code, _, err = run_lab(capsys, "induction", "--max_segment", "40", "--out_dir", str(tmp_path))
    assert code == 2 and "do not fit" in err
    with pytest.raises(SystemExit) as exit_:
        lab_main(["lens", "--help"])
    assert exit_.value.code == 0 and "--top_k" in capsys.readouterr().out


def test_readme_lab_commands_use_real_settings():
    from test_readme import documentation_text

    readme = documentation_text()  # README.md and every chapter in docs/
    configs = {"induction": induction.InductionConfig, "attention": probes.AttentionConfig, "icl": probes.IclConfig,
               "lens": probes.LensConfig, "fewshot": fewshot.FewshotConfig, "scaling": scaling.ScalingConfig}
    seen = set()
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("  #")[0])
            if words[:3] == ["python", "-m", "gpt.lab"] and len(words) > 3:
                seen.add(words[3])
                names = {f.name for f in configs[words[3]].__dataclass_fields__.values()}
                for word in words[4:]:
                    if word.startswith("--"):
                        assert word[2:].split("=")[0].replace("-", "_") in names, (line, word)
    assert seen == set(configs)


def test_the_lab_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "gpt.lab", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "induction" in result.stdout and "fewshot" in result.stdout


# ---------------------------------------------------------------------------------------------------
# A shortened, seeded induction run (the default run and what it shows: BENCHMARKS.md)


SHORT_RUN = dict(vocab_size=32, block_size=16, n_embd=32, n_head=2, min_segment=4, max_segment=8, batch_size=32,
                 learning_rate=3e-3, max_iters=300, eval_interval=50, eval_sequences=64, threads=1)


def test_the_lab_models_output_layer_is_its_own_and_starts_as_the_embedding():
    cfg = induction.InductionConfig(**SHORT_RUN)
    model = induction.build_model(cfg, 2, torch.device("cpu"))
    head, embedding = model.lm_head.weight, model.transformer.wte.weight
    assert head is not embedding and torch.equal(head, embedding)  # untied, equal at the start (see build_model)
    tied = induction.build_model(induction.InductionConfig(tie_embeddings=True, **SHORT_RUN), 2, torch.device("cpu"))
    assert tied.lm_head.weight is tied.transformer.wte.weight


def test_a_short_induction_run_learns_the_repeat_and_its_heads_carry_it(tmp_path):
    cfg = induction.InductionConfig(out_dir=str(tmp_path), **SHORT_RUN)
    report = induction.run(cfg, say=lambda *_: None)
    two, one = report["models"]["two_layer"], report["models"]["one_layer"]
    uniform = report["uniform_loss"]
    for run in (two, one):
        # The first occurrence stays unpredictable: about ln V, at the start and at the end.
        assert abs(run["history"][0]["first_loss"] - uniform) < 0.15 and abs(run["final"]["first_loss"] - uniform) < 0.15
        assert [h["step"] for h in run["history"]] == list(range(0, 301, 50))
    # Two layers learn to predict the repeat from its earlier copy: its loss falls well below the first occurrence's,
    # and switching off the heads that attend from the repeat to the earlier copy takes that gain away.
    assert two["final"]["repeat_loss"] < two["final"]["first_loss"] - 0.4
    assert two["best_induction_score"] > 0.15 and two["ablation"]["induction_heads"]
    assert two["ablation"]["increase"] > 0.4
    assert two["ablation"]["each_head"][two["best_induction_head"]] > two["ablation"]["baseline"]
    # The checks are the spec's thresholds, applied to these numbers.
    assert report["checks"] == {
        "repeat loss <= 1.0 nats": two["final"]["repeat_loss"] <= 1.0,
        "best induction score >= 0.5": two["best_induction_score"] >= 0.5,
        "induction heads off raise the repeat loss by >= 1 nat": two["ablation"]["increase"] >= 1.0,
        "control's repeat loss >= 3.0 nats": one["final"]["repeat_loss"] >= 3.0,
    }
    for name in ("losses.png", "head_scores.png", "attention.png", "ablation.png"):
        assert is_png(tmp_path / name)
    assert json.loads((tmp_path / "report.json").read_text())["models"]["two_layer"]["history"] == two["history"]
    # The trained model is an ordinary checkpoint that the other commands read.
    code = lab_main(["attention", "--ckpt", str(tmp_path / "two_layer"), "--prompt", "ABCDEFG0ABCDEFG0",
                     "--out_dir", str(tmp_path / "att"), "--repeat_length", "8", "--device", "cpu"])
    assert code == 0
    heads = json.loads((tmp_path / "att" / "attention.json").read_text())["heads"]
    assert len(heads) == 4 and all(0 <= h["induction"] <= 1 for h in heads)


# ---------------------------------------------------------------------------------------------------
# The scaling miniseries, shrunk to seconds (the default run and what it found: BENCHMARKS.md)


def test_a_tiny_miniseries_writes_its_report_fits_and_pictures(tmp_path, capsys):
    import random

    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(rng.choice(words) for _ in range(8000)) + "\n", encoding="utf-8")
    out = tmp_path / "scaling"
    code = lab_main(["scaling", "--data", str(corpus), "--data_dir", str(tmp_path / "data"), "--out_dir", str(out),
                     "--depths", "1,2,3", "--budgets", "1e8,3e8", "--predict", "2", "--block_size", "32",
                     "--eval_batches", "2", "--copy_sequences", "8", "--copy_length", "8", "--threads", "1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == 6 and {r["budget"] for r in report["runs"]} == {1e8, 3e8}
    for r in report["runs"]:  # each run spent its budget, within one step (at least one step, however small)
        step = r["flops_per_token"] * r["tokens"] / r["steps"]
        assert r["flops"] <= max(r["budget"], step) and r["budget"] < r["flops"] + step
        assert 0 < r["val_loss"] < 5 and 0 <= r["copy_accuracy"] <= 1
    assert len(report["optima"]) == 2 and set(report["laws"]) == {"loss", "n_opt", "d_opt"}
    prediction = report["prediction"]
    assert prediction["budget"] == 6e8 and prediction["run"]["budget"] == 6e8
    assert prediction["error"] == pytest.approx((prediction["predicted_loss"] - prediction["actual_loss"])
                                                / prediction["actual_loss"])
    assert [a["params"] for a in report["ability"]["best_by_size"]] == sorted({r["params"] for r in report["runs"]})
    pytest.importorskip("matplotlib")
    assert all(is_png(out / name) for name in ("isoflop.png", "laws.png", "ability.png"))
    assert "prediction at C 6e+08" in capsys.readouterr().out
    code = lab_main(["scaling", "--data", str(corpus), "--data_dir", str(tmp_path / "data"), "--out_dir", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err  # an earlier report is kept


def test_scaling_settings_that_cannot_work_are_one_line_errors(capsys, tmp_path):
    for args, message in ((["--depths", "2,3"], "at least 3"), (["--budgets", "1e9"], "at least 2"),
                          (["--copy_length", "40"], "do not fit")):
        code, _, err = run_lab(capsys, "scaling", "--out_dir", str(tmp_path), *args)
        assert code == 2 and message in err, err
