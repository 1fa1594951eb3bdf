"""End-to-end tests of train.py as a user runs it: subprocesses, exact resume, several processes, signals.

Tiny model and corpus in tmp_path; OMP_NUM_THREADS=1 keeps the runs fast and bitwise repeatable on a busy
2-core machine. In-process tests of the loop's pieces are in tests/test_trainer.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt_io

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture
def corpus(tmp_path) -> Path:
    rng = random.Random(0)
    vocab = "the quick brown fox jumps over a lazy dog while cats sit on warm mats".split()
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(rng.choice(vocab) for _ in range(6000)) + "\n", encoding="utf-8")
    return path


def tiny_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [f"--data={corpus}", f"--data_dir={corpus.parent / 'data'}", f"--out_dir={out}",
            "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
            "--eval_iters=2", "--log_interval=1", "--warmup_iters=3", "--lr_decay_iters=20", "--threads=1",
            "--peak_flops=1e11", *extra]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=ENV, text=True,
                          capture_output=True, timeout=timeout)


def losses(out: Path) -> list[tuple[int, float]]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "train"]


def test_train_py_end_to_end(corpus, tmp_path):
    out = tmp_path / "run"
    result = run(*tiny_args(corpus, out, "--max_iters=6", "--eval_interval=3", "--plot=true"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert {"ckpt.pt", "best.pt", "config.toml", "log.jsonl"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 7)) and [r["step"] for r in evals] == [0, 3, 6]
    for r in train:
        assert {"step", "loss", "lr", "tokens", "tok_per_s", "mfu", "elapsed"} <= set(r)
        assert r["tok_per_s"] > 0 and 0 < r["mfu"] < 1
    for r in evals:
        assert {"step", "train_loss", "val_loss", "val_bpb"} <= set(r)
    assert train[-1]["loss"] < train[0]["loss"]  # it learns
    try:
        import matplotlib  # noqa: F401
        assert (out / "loss.png").stat().st_size > 0
    except ImportError:
        pass
    assert "train loss" in result.stdout and "val loss" in result.stdout
    # The checkpoint loads (weights only), with its tokenizer and the run's settings.
    loaded = ckpt_io.load_model(out)
    assert loaded.model.config.n_embd == 32 and loaded.checkpoint["config"]["max_iters"] == 6


def test_resume_continues_exactly(corpus, tmp_path):
    # 10 steps + resume + 10 steps == 20 steps, loss for loss (dropout on: the RNG state is restored too).
    common = ("--eval_interval=7", "--dropout=0.1")
    straight, split = tmp_path / "straight", tmp_path / "split"
    first = run(*tiny_args(corpus, straight, "--max_iters=20", *common))
    assert first.returncode == 0, first.stderr
    half = run(*tiny_args(corpus, split, "--max_iters=10", *common))
    assert half.returncode == 0, half.stderr
    # The saved settings apply; flags given with --resume override them (here: extend the run).
    rest = run(f"--out_dir={split}", "--resume", "--max_iters=20")
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.splitlines()[0] == f"resuming {split} from step 10 of 20"  # said first, before the data
    assert losses(split) == losses(straight)
    assert len(losses(split)) == 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches_deal_slices_of_one_global_draw(prepared_bin: Path) -> bool:
    """gpt/data.py's promise for DDP: rank r of W gets slice r of one draw, which equals W single draws."""
    from gpt.batches import Batches

    single = Batches(prepared_bin, 16, 4, seed=1337)
    expected = [single.next()[0] for _ in range(2)]
    ranks = [Batches(prepared_bin, 16, 4, seed=1337, rank=r, world_size=2).next()[0] for r in range(2)]
    return all(torch.equal(a, b) for a, b in zip(expected, ranks))


def test_two_processes_match_one_with_the_same_global_batch(corpus, tmp_path):
    steps = ("--max_iters=4", "--eval_interval=4", "--gradient_accumulation_steps=2", "--eval_iters=3")
    one = run(*tiny_args(corpus, tmp_path / "one", *steps))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         str(REPO / "train.py"), *tiny_args(corpus, tmp_path / "two", *steps)],
        cwd=REPO, env=ENV, text=True, capture_output=True, timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    # Rank 0 alone logs and writes.
    assert two.stdout.count("done:") == 1
    assert [s for s, _ in losses(tmp_path / "two")] == [1, 2, 3, 4]
    state = ckpt_io.load_checkpoint(tmp_path / "two" / "ckpt.pt")
    assert state["step"] == 4 and state["sampler"]["world_size"] == 2 and len(state["sampler"]["train"]) == 2

    train_bin = next((corpus.parent / "data").rglob("train.bin"))
    if not _batches_deal_slices_of_one_global_draw(train_bin):
        pytest.xfail("gpt.batches.Batches does not yet give rank r slice r of one global draw, so 2 processes "
                     "see other windows than 1 process; the loss comparison needs it")
    for (s1, l1), (s2, l2) in zip(losses(tmp_path / "one"), losses(tmp_path / "two")):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-4)
    # Evaluations score the same batches on 2 processes as on 1 (3 batches: one process takes 2, the other 1).
    evals = [[r for r in map(json.loads, (tmp_path / run_dir / "log.jsonl").read_text().splitlines())
              if r["kind"] == "eval"] for run_dir in ("one", "two")]
    assert [e["step"] for e in evals[0]] == [e["step"] for e in evals[1]] == [0, 4]
    for a, b in zip(*evals):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)


def run_processes(args: list[str], count: int, folder: Path, timeout: float) -> list[int] | None:
    """train.py in `count` processes, each given what torchrun would give it (rank, world size, the rendezvous);
    their exit codes, or None when they had not all ended after `timeout` seconds (then every one is killed).
    Launched here rather than through torchrun, whose workers run in sessions of their own and would outlive it."""
    port = str(_free_port())
    processes = []
    for rank in range(count):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(count),
               "LOCAL_WORLD_SIZE": str(count), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        with open(folder / f"rank{rank}.out", "w") as out, open(folder / f"rank{rank}.err", "w") as err:
            processes.append(subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                                              stdout=out, stderr=err))
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in processes]
    except subprocess.TimeoutExpired:
        return None
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_process_that_scores_no_evaluation_batch_does_not_hang_the_others(corpus, tmp_path):
    # One evaluation batch for two processes: rank 0 scores it, rank 1 none. Evaluating through DDP's wrapper made
    # every forward a collective (it broadcasts the module's buffers, here RoPE's tables), so rank 0 waited in a
    # broadcast that rank 1, already gathering the results, never joined: both waited forever.
    args = tiny_args(corpus, tmp_path / "two", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
                     "--gradient_accumulation_steps=2", "--arch=modern", "--compile=false")
    codes = run_processes(args, 2, tmp_path, timeout=120)
    assert codes is not None, "two processes hung: one of them scored no evaluation batch"
    assert codes == [0, 0], (tmp_path / "rank0.err").read_text()[-3000:] + (tmp_path / "rank1.err").read_text()[-3000:]
    evals = [r for r in map(json.loads, (tmp_path / "two" / "log.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2] and all(math.isfinite(e["val_loss"]) for e in evals)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(corpus, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                             *tiny_args(corpus, out, "--max_iters=100000", "--eval_interval=100000")],
                            cwd=REPO, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        log = out / "log.jsonl"
        while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr, stderr
    assert "--resume" in stdout and str(out) in stdout
    step = ckpt_io.load_checkpoint(out / "ckpt.pt")["step"]
    assert step >= 3 and losses(out)[-1][0] == step  # the step it finished was logged and saved


def test_bad_input_is_one_line_on_stderr(corpus, tmp_path):
    result = run(*tiny_args(corpus, tmp_path / "x", "--learning_rat=0.1"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown setting 'learning_rat' on the command line (did you mean learning_rate?)"]
    assert not (tmp_path / "x").exists()
