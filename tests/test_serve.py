"""`python -m gpt.serve` as a user runs it: a real server on a free localhost port, called with the official
`openai` client and with raw HTTP (httpx). One server for the module (a tiny char model trained in the test);
the last test stops it with SIGTERM."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from gpt.generate import main as sample_main  # noqa: E402
from test_decoding import train_tiny_checkpoint  # noqa: E402
from test_serve_engine import PROMPTS, alone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-123"
MODEL = "tiny"


class Running:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def client(self, **kwargs) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=60, **kwargs)

    def post(self, path: str, body, key: str | None = KEY, timeout: float = 60) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        content = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers={**headers, "Content-Type": "application/json"},
                          timeout=timeout)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()


def start_server(ckpt: Path, log: Path, *args: str, key: str | None = KEY) -> Running:
    env = {k: v for k, v in os.environ.items() if k != "GPT_SERVE_API_KEY"}
    env = {**env, "OMP_NUM_THREADS": "1", **({"GPT_SERVE_API_KEY": key} if key else {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt.serve", "--ckpt", str(ckpt), "--port", "0", "--model_name", MODEL,
         "--log_level", "warning", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    line = process.stdout.readline()  # the banner, once listening (or nothing, if it failed)
    match = re.search(r"at (http://\S+)/v1", line)
    if not match:
        process.kill()
        raise AssertionError(f"the server did not start: {line!r}\n{log.read_text()}")
    return Running(process, match.group(1), log)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve_run")
    train_tiny_checkpoint(out / "ckpt.pt")
    return out


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    running = start_server(ckpt, tmp_path_factory.mktemp("logs") / "server.log", "--max_batch", "8",
                           "--max_waiting", "24", "--max_tokens", "100000")
    yield running
    if running.process.poll() is None:  # the last test stops it with SIGTERM; if it did not run, stop it here
        running.process.kill()
        running.process.wait()


def sample_py(ckpt: Path, capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert sample_main(["--ckpt", str(ckpt), *args]) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# The API with the official client


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == [MODEL]
    assert server.client().models.retrieve(MODEL).id == MODEL
    health = server.health()
    assert health["status"] == "ok" and health["model"] == MODEL and health["max_batch"] == 8


def test_the_page_is_served_with_its_files_and_needs_nothing_from_the_network(server):
    # The page itself (tests/test_webpage.py drives it in a browser) needs no key: it asks for one for /v1.
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        assert f'"web/{name}"' in page.text
        response = httpx.get(f"{server.url}/web/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert not re.search(r"https?://", response.text), f"{name} names a URL: the page must work offline"
    for path in ("/web/nothing.js", "/web/..%2Fapp.py", "/web/%2E%2E", "/web/../engine.py", "/web/index"):
        assert httpx.get(server.url + path, timeout=10).status_code == 404, path
    card = server.client().models.retrieve(MODEL).model_dump()
    assert (card["chat_template"], card["max_tokens"], card["max_prompt_tokens"]) == (False, 100000, 32)


def test_greedy_completion_is_sample_py_text_with_usage(server, ckpt, capsys, monkeypatch):
    answer = server.client().completions.create(model=MODEL, prompt="the dog ", max_tokens=40, temperature=0)
    expected = sample_py(ckpt, capsys, monkeypatch, "--prompt", "the dog ", "--temperature", "0", "--max_new_tokens", "40")
    [choice] = answer.choices
    assert "the dog " + choice.text + "\n" == expected
    assert choice.finish_reason == "length" and choice.index == 0 and answer.object == "text_completion"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (8, 40, 48)


def test_a_seed_gives_sample_py_samples(server, ckpt, capsys, monkeypatch):
    answer = server.client().completions.create(model=MODEL, prompt="the cat ", max_tokens=30, temperature=1.0,
                                                n=3, seed=5)
    printed = sample_py(ckpt, capsys, monkeypatch, "--prompt", "the cat ", "--temperature", "1", "--top_k", "0",
                        "--max_new_tokens", "30", "--num_samples", "3", "--seed", "5")
    expected = [s.removeprefix("the cat ").removesuffix("\n") for s in printed.split("-" * 15 + "\n")]
    assert [c.text for c in answer.choices] == expected and len(set(expected)) == 3
    again = server.client().completions.create(model=MODEL, prompt="the cat ", max_tokens=30, n=3, seed=5)
    assert [c.text for c in again.choices] == expected
    assert answer.usage.completion_tokens == 90


def test_stop_strings_and_several_prompts(server):
    from test_decoding import train_tiny_model

    answer = server.client().completions.create(model=MODEL, prompt=["the dog ", "and then"], max_tokens=60,
                                                temperature=0, stop=["!", ","])
    for choice, prompt in zip(answer.choices, ["the dog ", "and then"]):
        expected = re.split("[!,]", alone(train_tiny_model(), prompt, 60)[0])[0]
        assert choice.text == expected and choice.finish_reason == "stop"
    assert [c.index for c in answer.choices] == [0, 1]


def test_streaming_gives_the_same_text_in_pieces(server):
    client = server.client()
    whole = client.completions.create(model=MODEL, prompt="la", max_tokens=50, temperature=0).choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt="la", max_tokens=50, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == whole and len([t for t in texts if t]) > 10  # token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 50


def test_max_tokens_0_answers_at_once_streaming_or_not(server):
    answer = server.post("/v1/completions", {"model": MODEL, "prompt": "ab", "max_tokens": 0, "n": 2}).json()
    assert [(c["text"], c["finish_reason"]) for c in answer["choices"]] == [("", "length")] * 2
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2}
    stream = server.post("/v1/completions", {"model": MODEL, "prompt": "ab", "max_tokens": 0, "stream": True})
    assert stream.headers["content-type"].startswith("text/event-stream") and stream.text.endswith("data: [DONE]\n\n")


def test_logprobs_are_the_numbers_show_probs_prints(server, ckpt, capsys, monkeypatch):
    table = sample_py(ckpt, capsys, monkeypatch, "--prompt", "the bird ", "--temperature", "0.8", "--show_probs", "5")
    rows = re.findall(r"^\s+\d+\s+'(.+?)'\s+([0-9.]+)", table, re.MULTILINE)
    answer = server.client().completions.create(model=MODEL, prompt="the bird ", max_tokens=1, temperature=0.8,
                                                logprobs=5, seed=1)
    top = answer.choices[0].logprobs.top_logprobs[0]
    assert len(rows) == 5 and [token for token, _ in rows] == list(top)
    assert [float(p) for _, p in rows] == pytest.approx([2.718281828 ** v for v in top.values()], abs=6e-5)
    assert answer.choices[0].logprobs.tokens == [answer.choices[0].text]


def test_chat_without_a_chat_template_is_a_clear_400(server):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    stream=stream)
        assert info.value.code == "no_chat_template" and "no chat template" in info.value.message


# ---------------------------------------------------------------------------------------------------
# Chat: a tiny model tuned on conversations in the test, served with its chat template

ANSWERS = {"sky?": "blue", "grass?": "green", "snow?": "white", "sun?": "yellow"}


@pytest.fixture(scope="module")
def chat_ckpt(tmp_path_factory) -> Path:
    from gpt.trainer import main as train

    root = tmp_path_factory.mktemp("chat_run")
    def conversation(question: str, answer: str, system: bool) -> dict:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"messages": [{"role": "system", "content": "one word."}] * system + messages}

    lines = [conversation(q, a, system) for system in (False, True) for q, a in ANSWERS.items()] * 6
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert train([f"--data={chats}", f"--out_dir={root / 'out'}", f"--data_dir={root / 'data'}", "--n_layer=1",
                  "--n_head=2", "--n_embd=32", "--block_size=48", "--batch_size=8", "--max_iters=100",
                  "--learning_rate=1e-2", "--warmup_iters=10", "--lr_decay_iters=100", "--eval_interval=100",
                  "--eval_iters=1", "--plot=false", "--progress=false", "--threads=1"]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def chat_server(chat_ckpt, tmp_path_factory):
    running = start_server(chat_ckpt, tmp_path_factory.mktemp("chat_logs") / "server.log")
    yield running
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=60) == 0


def test_chat_answers_as_sample_py_chat_and_stops_at_the_end_of_the_turn(chat_server, chat_ckpt, capsys, monkeypatch):
    from gpt.checkpoint import load_model

    template = load_model(chat_ckpt).chat_template
    assert chat_server.client().models.retrieve(MODEL).model_dump()["chat_template"] is True  # the page offers chat
    answer = chat_server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "grass?"}], temperature=0, max_tokens=30)
    expected = sample_py(chat_ckpt, capsys, monkeypatch, "--chat", "--prompt", "grass?", "--temperature", "0",
                         "--max_new_tokens", "30")
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content + "\n" == expected
    # The tuned model ends its turn: the answer stops there, without the marker, long before max_tokens.
    assert choice.finish_reason == "stop" and "<|" not in choice.message.content
    assert answer.usage.prompt_tokens == len(template.prompt([{"role": "user", "content": "grass?"}]))
    assert answer.usage.completion_tokens == len(choice.message.content) + 1  # a char model; + the <|end|> token
    # The same conversation as a raw prompt on /v1/completions stops at the end of the turn too (as sample.py).
    raw = chat_server.post("/v1/completions", {"model": MODEL, "prompt": template.prompt(
        [{"role": "user", "content": "grass?"}]), "max_tokens": 30, "temperature": 0}).json()
    assert (raw["choices"][0]["text"], raw["choices"][0]["finish_reason"]) == (choice.message.content, "stop")


def test_a_seeded_chat_gives_sample_py_chat_samples_and_streams_the_same(chat_server, chat_ckpt, capsys, monkeypatch):
    messages = [{"role": "developer", "content": "one word."}, {"role": "user", "content": "sky?"}]
    answer = chat_server.client().chat.completions.create(model=MODEL, messages=messages, temperature=1.0, n=2,
                                                          seed=3, max_tokens=20)
    printed = sample_py(chat_ckpt, capsys, monkeypatch, "--chat", "--system", "one word.", "--prompt", "sky?",
                        "--temperature", "1", "--top_k", "0", "--max_new_tokens", "20", "--num_samples", "2",
                        "--seed", "3")
    assert [c.message.content for c in answer.choices] == [s.removesuffix("\n") for s in printed.split("-" * 15 + "\n")]
    chunks = list(chat_server.client().chat.completions.create(model=MODEL, messages=messages, temperature=1.0,
                                                               seed=3, max_tokens=20, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason


@pytest.mark.parametrize("messages, says", [
    ([{"role": "assistant", "content": "blue"}], "roles out of order"),
    ([{"role": "user", "content": "sky?"}, {"role": "user", "content": "sun?"}], "roles out of order"),
    ([{"role": "user", "content": "sky?"}, {"role": "system", "content": "one word."}], "system message may only come first"),
    ([{"role": "user", "content": "Ω?"}], "Ω"),  # a character the model's tokenizer never saw
    ([{"role": "user", "content": "sky? sun? " * 5}], "tokens long"),  # longer than the model's 48 positions
])
def test_a_conversation_the_template_cannot_take_is_a_400(chat_server, messages, says):
    response = chat_server.post("/v1/chat/completions", {"model": MODEL, "messages": messages})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "messages" and says in error["message"], error


# ---------------------------------------------------------------------------------------------------
# Bad requests over raw HTTP


@pytest.mark.parametrize("body, status, param", [
    ("{not json", 400, None),
    ({"model": "gpt-4", "prompt": "a"}, 404, "model"),
    ({"model": MODEL, "prompt": "a", "max_tokens": -3}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "a", "temperature": 5}, 400, "temperature"),
    ({"model": MODEL, "prompt": "the cat " * 5}, 400, "prompt"),  # 40 tokens; the model reads 32
    ({"model": MODEL, "prompt": "a", "n": 9}, 400, "n"),
    ({"model": MODEL, "prompt": "a", "frequency_penalty": 1}, 400, "frequency_penalty"),
    ({"model": MODEL, "prompt": "Ω"}, 400, "prompt"),  # a character the char tokenizer never saw
    ({"model": MODEL, "prompt": ["a"] * 25}, 400, "prompt"),  # more prompts than may wait (24): never, not 429
    ("[" * 100_000 + "]" * 100_000, 400, None),  # nested too deeply for the JSON parser
])
def test_bad_requests_get_openai_shaped_errors(server, body, status, param):
    response = server.post("/v1/completions", body)
    error = response.json()["error"]
    assert response.status_code == status and error["param"] == param, error
    assert error["message"] and error["type"] == "invalid_request_error" and "code" in error


def test_the_api_key_is_required_on_v1_only(server):
    for key in (None, "wrong-key", KEY + "x"):
        response = server.post("/v1/completions", {"model": MODEL, "prompt": "a"}, key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200
    response = httpx.get(server.url + "/v2/nothing")
    assert response.status_code == 404 and "no such endpoint" in response.json()["error"]["message"]


def test_listening_beyond_this_machine_without_a_key_says_so_in_one_line(ckpt, tmp_path):
    from gpt.serve.app import loopback

    running = start_server(ckpt, tmp_path / "server.log", "--host", "0.0.0.0", key=None)
    try:
        port = running.url.rsplit(":", 1)[1]
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                            json={"model": MODEL, "prompt": "a", "max_tokens": 2})
        assert answer.status_code == 200  # no key asked for
    finally:
        running.process.kill()
        running.process.wait()
    lines = [line for line in running.log.read_text().splitlines() if "API key" in line]
    assert lines == [f"warning: listening on 0.0.0.0 without an API key: anyone who can reach port {port} can use "
                     "this server; set GPT_SERVE_API_KEY=KEY (or --api_key) to require one"]
    # Said for any address but this machine's own (where nobody else can reach the port).
    assert [loopback(a) for a in ("127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "::", "192.168.1.7", "fe80::1%eth0")] \
        == [True, True, True, False, False, False, False]


# ---------------------------------------------------------------------------------------------------
# Load, disconnects, a full queue


def test_16_clients_x_10_requests_lose_nothing_and_match_each_alone(server):
    from test_decoding import train_tiny_model

    tiny = train_tiny_model()
    lengths = [4, 7, 10, 5]
    expected = {(p, n): alone(tiny, p, n)[0] for p in PROMPTS for n in lengths}
    before = server.health()

    def client(c: int) -> list[tuple[str, int, str, int]]:
        out = []
        with httpx.Client(timeout=120) as http:
            for r in range(10):
                prompt, n = PROMPTS[(c + r) % 4], lengths[(c * 3 + r) % 4]
                body = {"model": MODEL, "prompt": prompt, "max_tokens": n, "temperature": 0}
                response = http.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
                assert response.status_code == 200, response.text
                answer = response.json()
                out.append((prompt, n, answer["choices"][0]["text"], answer["usage"]["completion_tokens"]))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [r for rs in pool.map(client, range(16)) for r in rs]
    assert len(results) == 160
    assert all(text == expected[(prompt, n)] and tokens == n for prompt, n, text, tokens in results)
    after = server.health()
    generated = after["generated_tokens"] - before["generated_tokens"]
    assert generated == sum(n for _, n, _, _ in results)
    assert after["decode_steps"] - before["decode_steps"] < generated / 2  # several rows per step


def running_samples_drop_to_zero(server, within: float = 15.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        if server.health()["running_samples"] == 0:
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_disconnects_frees_its_rows_at_once(server):
    body = {"model": MODEL, "prompt": "the", "max_tokens": 90000, "n": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert server.health()["running_samples"] == 4
    assert running_samples_drop_to_zero(server)
    # Not streaming: the client gives up waiting.
    with pytest.raises(httpx.ReadTimeout):
        server.post("/v1/completions", {"model": MODEL, "prompt": "the", "max_tokens": 90000}, timeout=1.0)
    assert running_samples_drop_to_zero(server)
    assert server.client().completions.create(model=MODEL, prompt="a", max_tokens=3).usage.completion_tokens == 3


def test_a_full_queue_answers_429_and_the_queue_drains(server):
    # A stream takes all 8 rows; of 25 more requests, 24 wait (max_waiting) and one is refused. When the
    # stream's client goes away, the 24 run.
    body = {"model": MODEL, "prompt": "the", "max_tokens": 90000, "n": 8, "stream": True}
    pool = ThreadPoolExecutor(25)
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as response:
        lines = response.iter_lines()  # (kept: a dropped iterator would close the stream)
        next(line for line in lines if line.startswith("data:"))  # the batch is full now
        futures = [pool.submit(server.post, "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 2})
                   for _ in range(25)]
        deadline = time.time() + 60
        while not any(f.done() for f in futures):
            assert time.time() < deadline
            time.sleep(0.01)
        busy = next(f for f in futures if f.done()).result()
        assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error", busy.text
        assert server.health()["waiting_requests"] == 24
    statuses = sorted(f.result().status_code for f in futures)
    pool.shutdown()
    assert statuses == [200] * 24 + [429]


# ---------------------------------------------------------------------------------------------------
# SIGTERM


def test_sigterm_during_a_stream_finishes_it_and_exits_cleanly(server):
    # The last test of the module: it stops the module's server (one server start is a few seconds).
    body = {"model": MODEL, "prompt": "the", "max_tokens": 300, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        first = next(lines)
        server.process.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    pieces = [json.loads(line[5:])["choices"][0]["text"] for line in [first, *rest[:-1]]]
    assert json.loads(rest[-2][5:])["choices"][0]["finish_reason"] == "length" and len("".join(pieces)) == 300
    assert server.process.wait(timeout=60) == 0, server.log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)
