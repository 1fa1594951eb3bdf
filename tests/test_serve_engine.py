"""The serving engine (gpt/serve/engine.py) in-process: jobs decoded together give each job's own text,
seeds give sample.py's samples, logprobs are sample.py's probabilities, cancelling frees the rows, a full
queue refuses more, and close() stops it. The HTTP layer is tested in tests/test_serve_app.py (in-process)
and tests/test_serve.py (as a user runs it)."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from gpt.decoding import encode_prompt, generate_tokens
from gpt.sampling import next_token_probs, sample_generators
from gpt.serve.engine import Busy, Done, Engine, Failed, Finished, Job, Piece, Settings
from test_decoding import one_thread, train_tiny_model


@pytest.fixture(scope="module")
def tiny():
    return train_tiny_model()


@pytest.fixture
def engine(tiny):
    model, tokenizer = tiny
    with one_thread():
        # Prompts join 4 tokens a step (most of the prompts below take several steps to fill): every test
        # here also checks that chunked prefill gives each job its own text, as decoded alone.
        engine = Engine(model, tokenizer, max_batch=6, max_waiting=2, prefill_chunk=4)
        yield engine
        engine.close()


def run_jobs(engine: Engine, jobs_spec: list[tuple[str, Settings]], later: int = 0) -> list[dict]:
    """Submit (prompt, settings) jobs and wait for all: texts, reasons, usage, logprobs. The last `later` jobs
    are submitted once the first job has produced 5 pieces: they join a batch that is running."""
    events: queue.Queue = queue.Queue()
    jobs = []
    for index, (prompt, settings) in enumerate(jobs_spec):
        ids = encode_prompt(engine.tokenizer, prompt)
        jobs.append(Job(ids, settings, lambda event, index=index: events.put((index, event))))
    engine.submit(jobs[: len(jobs) - later])
    results = [{"texts": [""] * s.n, "reasons": [None] * s.n, "logprobs": [[] for _ in range(s.n)], "done": None,
                "pieces": 0} for _, s in jobs_spec]
    open_jobs = len(jobs)
    while open_jobs:
        index, event = events.get(timeout=60)
        result = results[index]
        if isinstance(event, Piece):
            result["texts"][event.index] += event.text
            result["logprobs"][event.index].append(event.logprob)
            result["pieces"] += 1
            if later and index == 0 and result["pieces"] == 5:
                engine.submit(jobs[len(jobs) - later:])
        elif isinstance(event, Finished):
            result["reasons"][event.index] = event.reason
        elif isinstance(event, (Done, Failed)):
            result["done"] = event
            open_jobs -= 1
    return results


def alone(tiny, prompt: str, n_tokens: int, temperature: float = 0.0, seed: int = 0, n: int = 1, top_k: int = 0,
          top_p: float = 1.0) -> list[str]:
    """What sample.py's decoding gives for the prompt by itself: n samples, one random stream each."""
    model, tokenizer = tiny
    ids = torch.tensor([encode_prompt(tokenizer, prompt)] * n)
    steps = list(generate_tokens(model, ids, n_tokens, temperature, top_k, top_p, generator=sample_generators(seed, n),
                                 vocab_size=tokenizer.vocab_size))
    return [tokenizer.decode([int(step[b]) for step in steps]) for b in range(n)]


PROMPTS = ["the dog ", "la", "and then, the bird sang: ", "the cat sat on the mat. "]


def test_jobs_arriving_together_and_apart_are_decoded_in_one_batch_each_as_if_alone(tiny, engine):
    # Two jobs start together; two more join while the first runs (window restarts included: block_size 32).
    lengths = [150, 12, 45, 20]
    spec = [(p, Settings(max_tokens=n, temperature=0.0)) for p, n in zip(PROMPTS, lengths)]
    with one_thread():
        results = run_jobs(engine, spec, later=2)
    for (prompt, n), result in zip(zip(PROMPTS, lengths), results):
        assert result["texts"] == alone(tiny, prompt, n)
        assert result["reasons"] == ["length"] and result["done"] == Done(len(engine.tokenizer.encode(prompt)), n)
    # Decoded together: the 227 tokens took about as many steps as the longest job (plus the steps of filling
    # the prompts 4 tokens at a time), not one job after another.
    assert engine.steps < 150 + 30


def test_a_seeded_job_gives_sample_py_samples(tiny, engine):
    settings = Settings(max_tokens=25, temperature=1.0, n=3, seed=7)
    with one_thread():
        [result] = run_jobs(engine, [("the dog ", settings)])
    assert result["texts"] == alone(tiny, "the dog ", 25, temperature=1.0, seed=7, n=3)
    assert len(set(result["texts"])) > 1  # each sample its own random stream


def test_jobs_with_different_settings_sample_in_one_call_as_each_alone(tiny, engine):
    # One batched sampling call for rows of different temperatures, top-k, top-p and seeds (and a greedy row):
    # each job's samples are the ones sample.py draws for it alone.
    jobs = [("the dog ", dict(temperature=0.9, top_k=5, seed=3, n=2)), ("la", dict(temperature=1.3, top_p=0.7, seed=4)),
            ("the cat ", dict(temperature=0.0)), ("and ", dict(temperature=1.0, top_k=8, top_p=0.9, seed=5, n=2))]
    spec = [(prompt, Settings(max_tokens=20, **kw)) for prompt, kw in jobs]
    with one_thread():
        results = run_jobs(engine, spec, later=2)
        for (prompt, kw), result in zip(jobs, results):
            assert result["texts"] == alone(tiny, prompt, 20, **kw)


def test_stop_strings_end_a_sample_and_are_not_returned(engine):
    with one_thread():
        [result] = run_jobs(engine, [("the dog ", Settings(max_tokens=60, temperature=0.0, stop=["!"]))])
    text = result["texts"][0]
    assert result["reasons"] == ["stop"] and "!" not in text and text.startswith("ate")


def test_logprobs_are_the_sampling_distribution(tiny, engine):
    model, tokenizer = tiny
    # After temperature and top_p, as sample.py --show_probs shows them; a token top_p rules out gets -9999.
    settings = Settings(max_tokens=1, temperature=1.5, top_p=0.8, logprobs=6)
    with one_thread(), torch.no_grad():
        [result] = run_jobs(engine, [("the dog ", settings)])
        logits, _ = model(torch.tensor([tokenizer.encode("the dog ")]))
    probs = next_token_probs(logits[:, -1], 1.5, 0, 0.8)[0]
    [entry] = result["logprobs"][0]
    assert entry.token == tokenizer.encode(result["texts"][0])[0]
    assert entry.logprob == pytest.approx(float(probs[entry.token].log()), abs=1e-5)
    top = torch.topk(probs, 6)
    expected = [float(p.log()) if p > 0 else -9999.0 for p in top.values]
    assert 0 < top.values.count_nonzero() < 6  # some kept, some ruled out
    assert [t for t, _ in entry.top] == top.indices.tolist()
    assert [v for _, v in entry.top] == pytest.approx(expected, abs=1e-5)


def test_a_cancelled_job_leaves_the_batch_and_a_full_queue_refuses_more(engine):
    long_events: queue.Queue = queue.Queue()
    short_events: queue.Queue = queue.Queue()
    long = Job(encode_prompt(engine.tokenizer, "the"), Settings(max_tokens=10**6, temperature=0.0, n=6), long_events.put)
    with one_thread():
        engine.submit([long])
        long_events.get(timeout=30)  # running: the batch (6 rows) is full
        waiting = [Job([1], Settings(max_tokens=3), short_events.put) for _ in range(2)]
        engine.submit(waiting)  # they wait: max_waiting is 2
        assert engine.stats()["waiting_requests"] == 2
        with pytest.raises(Busy):
            engine.submit([Job([1], Settings(max_tokens=3), short_events.put)])
        long.cancel()  # its rows leave before the next step, and the waiting jobs run
        done = [short_events.get(timeout=30) for _ in range(2 * 5)]  # 3 pieces, finished, done each
    assert sum(isinstance(e, Done) for e in done) == 2
    assert engine.stats()["running_samples"] == 0 and engine.stats()["waiting_requests"] == 0
    while not long_events.empty():
        assert not isinstance(long_events.get(), Done)  # cancelled: never finished


def test_more_jobs_than_may_ever_wait_are_the_callers_error_not_busy(tiny, engine):
    # Busy means "retry later" (a 429); three jobs never fit a queue of two, so no retry would help.
    jobs = [Job([1], Settings(max_tokens=3), lambda event: None) for _ in range(3)]
    for call in (engine.submit, lambda jobs: engine.check_room(len(jobs))):
        with pytest.raises(ValueError, match="max_waiting is 2"):
            call(jobs)
    assert engine.stats()["waiting_requests"] == 0
    with pytest.raises(ValueError, match="at least 1"):
        Engine(*tiny, max_waiting=0)


class OwnedRows(list):
    """An engine's rows that note every thread but the engine's own that reads or changes them (len() aside)."""

    def __init__(self, owner: threading.Thread):
        super().__init__()
        self.owner, self.strangers = owner, []

    def note(self) -> None:
        if threading.current_thread() is not self.owner:
            self.strangers.append(threading.current_thread().name)

    def __iter__(self):
        self.note()
        return super().__iter__()

    def __getitem__(self, index):
        self.note()
        return super().__getitem__(index)

    def __setitem__(self, index, value):
        self.note()
        super().__setitem__(index, value)

    def append(self, value):
        self.note()
        super().append(value)

    def pop(self, *index):
        self.note()
        return super().pop(*index)


def test_close_leaves_the_rows_to_the_engine_thread_which_cancels_everything_and_stops(tiny):
    # The engine thread changes its rows between steps without the lock: close() walking them from another
    # thread could miss one that moved, whose job would then run on after close().
    with one_thread():
        engine = Engine(*tiny, max_batch=6, max_waiting=2)
        with engine.lock:
            engine.rows = rows = OwnedRows(engine.thread)
        events: queue.Queue = queue.Queue()
        running = Job([1], Settings(max_tokens=10**6, temperature=0.0, n=4), events.put)
        waiting = Job([1], Settings(max_tokens=3, n=3), events.put)  # 3 rows: it waits for the 4 running
        engine.submit([running])
        events.get(timeout=30)
        engine.submit([waiting])
        engine.close(timeout=30)
    assert not engine.thread.is_alive() and rows.strangers == []
    assert running.cancelled and waiting.cancelled and not rows and engine.stats()["waiting_requests"] == 0
    assert not any(isinstance(events.get_nowait(), Done) for _ in range(events.qsize()))
