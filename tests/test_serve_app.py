"""The HTTP layer (gpt/serve/app.py) in-process, through Starlette's TestClient: what is refused before the
work of tokenizing, what stays off the event loop, and what an error tells a client. The server as a user
runs it (a subprocess, the official client) is tested in tests/test_serve.py."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from gpt.checkpoint import Loaded  # noqa: E402
from gpt.serve.app import Server, make_app  # noqa: E402
from gpt.serve.engine import Engine, Job, Settings  # noqa: E402
from gpt.serve.protocol import Limits  # noqa: E402
from test_decoding import one_thread, train_tiny_model  # noqa: E402

MODEL = "tiny"
MAX_WAITING = 4


@pytest.fixture
def served(monkeypatch):
    """A server of the tiny model (a batch of 2 rows, 4 prompts may wait) whose tokenizer counts its calls."""
    model, tokenizer = train_tiny_model()
    calls = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text: calls.append(text) or encode(text))
    with one_thread():
        engine = Engine(model, tokenizer, max_batch=2, max_waiting=MAX_WAITING)
        limits = Limits(max_prompt_tokens=32, max_tokens=100, max_n=2, max_prompts=MAX_WAITING)
        server = Server(engine, Loaded(model, tokenizer, Path(MODEL), None), MODEL, limits, None, 0)
        with TestClient(make_app(server), raise_server_exceptions=False) as client:  # one event loop for all calls
            yield client, engine, calls
        engine.close()


def complete(client: TestClient, **body):
    return client.post("/v1/completions", json={"model": MODEL, "max_tokens": 3, **body})


def fill_the_queue(engine: Engine) -> list[Job]:
    """A job that holds both rows of the batch (until cancelled), and a full queue behind it."""
    started: queue.Queue = queue.Queue()
    running = Job([1], Settings(max_tokens=10**6, temperature=0.0, n=2), started.put)
    engine.submit([running])
    started.get(timeout=30)
    waiting = [Job([1], Settings(max_tokens=3), lambda event: None) for _ in range(MAX_WAITING)]
    engine.submit(waiting)
    return [running, *waiting]


def test_a_request_that_could_never_be_queued_is_a_400_before_tokenizing(served):
    client, engine, calls = served
    response = complete(client, prompt=["the dog "] * (MAX_WAITING + 1))  # nothing is waiting: no retry would help
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "prompt", error
    assert f"at most {MAX_WAITING}" in error["message"] and "max_waiting" in error["message"]
    assert calls == []
    assert complete(client, prompt=["the dog "] * MAX_WAITING).status_code == 200  # as many as may wait: served


def test_a_full_queue_is_a_429_before_tokenizing(served):
    client, engine, calls = served
    jobs = fill_the_queue(engine)
    try:
        for prompt in ("the dog ", ["the dog ", "la"]):
            response = complete(client, prompt=prompt)
            error = response.json()["error"]
            assert response.status_code == 429 and error["type"] == "rate_limit_error", error
            assert calls == [], "the prompts were tokenized before the request was refused"
            assert f"{MAX_WAITING} prompts are waiting" in error["message"]
    finally:
        for job in jobs:
            job.cancel()


def test_tokenizing_runs_off_the_event_loop(served, monkeypatch):
    # The tokenizer blocks until /health has been answered: on the event loop, /health could not be answered
    # until the tokenizer gave up waiting.
    client, engine, calls = served
    model, tokenizer = train_tiny_model()
    entered, answered = threading.Event(), threading.Event()
    waited = []
    encode = tokenizer.encode

    def slow_encode(text: str) -> list[int]:
        entered.set()
        waited.append(answered.wait(timeout=5))
        return encode(text)

    monkeypatch.setattr(tokenizer, "encode", slow_encode)
    result = []
    request = threading.Thread(target=lambda: result.append(complete(client, prompt="the dog ")))
    request.start()
    assert entered.wait(timeout=30)
    assert client.get("/health").status_code == 200
    answered.set()
    request.join(timeout=60)
    assert waited == [True], "/health waited for the tokenizer: it runs on the event loop"
    assert result[0].status_code == 200 and result[0].json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("flag", ["--max_waiting", "--max_batch", "--max_tokens"])
def test_limits_that_would_refuse_every_request_are_refused_at_start(flag, capsys):
    from gpt.serve.app import main

    assert main(["--ckpt", "nowhere", flag, "0"]) == 2  # before the checkpoint is even looked for
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag[2:]} must be at least 1, got 0" in err, err


def test_deeply_nested_json_is_a_400_not_a_500(served):
    client, engine, calls = served
    # Around the parser's limit (about 1000 levels, less the stack in use) and far beyond it; in a parameter,
    # where an error message describes the value, and as the whole body.
    for depth in [*range(900, 1001, 10), 5_000, 100_000]:
        nested = "[" * depth + "]" * depth
        for path, body in (("/v1/completions", f'{{"model": "{MODEL}", "prompt": "a", "max_tokens": {nested}}}'),
                           ("/v1/chat/completions", f'{{"model": "{MODEL}", "messages": {nested}}}'),
                           ("/v1/completions", nested)):
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (depth, path, response.text)
    message = response.json()["error"]["message"]
    assert message == ("the JSON body nests arrays or objects too deeply to read (a request needs only a few "
                       "levels): send a flatter body")


def test_a_failed_step_gives_each_client_a_500_with_its_id_and_the_log_the_details(served, monkeypatch, caplog):
    # Two clients in one batch, one streaming; the step that decodes them both fails.
    client, engine, calls = served
    next_logits = engine.decoder.next_logits
    release = threading.Event()

    def step():
        if len(engine.rows) == 2:
            monkeypatch.setattr(engine.decoder, "next_logits", next_logits)  # once: the server keeps serving
            raise RuntimeError("secret detail: /home/someone/model.pt")
        release.wait(timeout=30)  # a first job holds the engine until both requests wait
        return next_logits()

    monkeypatch.setattr(engine.decoder, "next_logits", step)
    engine.submit([Job([1], Settings(max_tokens=1), lambda event: None)])
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(complete, client, prompt="the dog ", stream=stream) for stream in (False, True)]
        deadline = time.time() + 30
        while engine.stats()["waiting_requests"] < 2:
            assert time.time() < deadline
            time.sleep(0.01)
        release.set()
        whole, streamed = [a.result(timeout=60) for a in answers]
    assert whole.status_code == 500  # streamed: the status line went out before any token, the error is an event
    assert streamed.status_code == 200 and streamed.text.count("data: ") == 1
    ids = []
    for error in (whole.json()["error"], json.loads(streamed.text.removeprefix("data: "))["error"]):
        assert "secret" not in error["message"] and error["type"] == "server_error", error
        ids.append(re.search(r"request (cmpl-[0-9a-f]{32})", error["message"]).group(1))
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert ids[0] != ids[1] and all(i in record.getMessage() for i in ids) and "secret detail" in caplog.text
    answer = complete(client, prompt="the dog ").json()
    assert answer["usage"]["completion_tokens"] == 3 and answer["id"].startswith("cmpl-")
