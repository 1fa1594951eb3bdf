"""The HTTP side: OpenAI-compatible endpoints over the engine, and the `python -m gpt.serve` command line.

    GET  /                       a web page for talking to the model and seeing its predictions (gpt/serve/web/)
    GET  /health                 liveness and load (no API key needed)
    GET  /v1/models              the one model served (and GET /v1/models/{id}), with whether it has a chat template
    POST /v1/completions         text completion; "stream": true sends server-sent events
    POST /v1/chat/completions    chat, through the checkpoint's chat template (400 for a model without one)

A request is checked (gpt/serve/protocol.py), tokenized in a worker thread (a large one would stall every
other client if tokenized on the event loop), becomes one job per prompt, and waits on its events from the
engine thread (gpt/serve/engine.py). What can be refused is refused before tokenizing: a request that could
never be accepted (400), a full queue (429). A client that disconnects cancels its jobs at once, streaming
or not, which frees their rows in the batch for the next step. SIGTERM (or Ctrl-C) stops accepting connections,
lets requests in flight finish for up to shutdown_timeout seconds, cancels what is left, and exits with 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import anyio
import uvicorn
import uvicorn.config
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpt.post.chat import ChatTemplate
from gpt.checkpoint import Loaded
from gpt.config import parse_args, setting
from gpt.errors import UserError, exit_on_user_error
from gpt.decoding import encode_prompt
from gpt.inference import CKPT_HELP, ModelSettings, open_model
from gpt.serve import protocol
from gpt.serve.engine import Busy, Done, Engine, Failed, Finished, Job, Piece, ShuttingDown, warm_up
from gpt.serve.protocol import APIError, Limits

API_KEY_ENV = "GPT_SERVE_API_KEY"
MAX_BODY_BYTES = 8 * 2**20
WEB = Path(__file__).parent / "web"  # the page: plain HTML, CSS and JavaScript, no build step, nothing fetched
WEB_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
             ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


@dataclass
class ServeConfig(ModelSettings):
    ckpt: str = setting("out/default", "the model: " + CKPT_HELP)
    host: str = setting("127.0.0.1", "address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 opens it to the network (set an api_key)")
    port: int = setting(8000, "port to listen on (0: any free port, printed at start)")
    api_key: str | None = setting(None, f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set; the variable keeps it out of `ps`)")
    model_name: str | None = setting(None, "the model id clients name in requests (default: the checkpoint's folder name)")
    max_batch: int = setting(16, "samples decoded together, one batched step for all (KV-cache rows held in memory)")
    prefill_chunk: int = setting(64, "while answers are streaming, a new prompt enters the batch at most this many tokens "
                                     "per step, so they are not stalled by a long prompt (0: the whole prompt in one step)")
    max_waiting: int = setting(64, "prompts that may wait for room in the batch (each prompt of a request counts; "
                                   "a request may list at most this many); beyond that, 429")
    max_prompt_tokens: int = setting(0, "longest prompt accepted, in tokens; longer ones get 400 (0 = the model's block_size; "
                                        "above it, a prompt is cut to its last block_size tokens as sample.py does)")
    max_tokens: int = setting(1024, "most tokens one request may ask to generate (max_tokens above it: 400)")
    shutdown_timeout: float = setting(30.0, "on SIGTERM or Ctrl-C: seconds requests in flight may take to finish before they are cancelled")
    log_level: str = setting("info", "uvicorn's log level: critical, error, warning, info (one line per request) or debug")


DESCRIPTION = f"""Serve a checkpoint over the OpenAI API (completions, chat completions, models), with the requests
in flight decoded together in one batch, and a web page at / to talk to the model and see its predictions.

Examples:
  python -m gpt.serve --ckpt out/default                   # what `python train.py` makes
  {API_KEY_ENV}=secret python -m gpt.serve --ckpt out/default --host 0.0.0.0 --port 8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "default", "prompt": "def ", "max_tokens": 50}}'
  python -m gpt.serve --ckpt out/sft_tasks                 # a chat model (docs/assistant.md): /v1/chat/completions"""


# ---------------------------------------------------------------------------------------------------
# Chat: the checkpoint's template, as sample.py --chat uses it


def chat_prompt(template: ChatTemplate, messages: list[dict]) -> list[int]:
    """The ids that ask the model for the assistant's next turn (`ChatTemplate.prompt`, gpt/post/chat.py), with the
    API's "developer" role read as "system" (OpenAI's newer name for it). A conversation the template cannot
    take (roles out of order, an empty turn) is a 400 that says what is wrong."""
    renamed = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
    try:
        return template.prompt(renamed)
    except UserError as e:
        raise APIError(400, str(e), "messages") from None


# ---------------------------------------------------------------------------------------------------
# The application


@dataclass
class Server:
    """What the endpoints need: the engine, the tokenizer, the limits, the key, the model's id."""

    engine: Engine
    loaded: Loaded
    model_id: str
    limits: Limits
    api_key: str | None
    created: int

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end every sample besides <|endoftext|>: for a chat model, the end of a turn (any marker
        of its template), whichever endpoint is called, as in sample.py."""
        template = self.loaded.chat_template
        return frozenset() if template is None else frozenset(template.stop_ids)

    def encode(self, text: str) -> list[int]:
        try:
            return encode_prompt(self.loaded.tokenizer, text)
        except UserError as e:  # e.g. a character a char tokenizer never saw
            raise APIError(400, f"the prompt cannot be tokenized: {e}", "prompt") from None


def make_app(server: Server) -> Starlette:
    async def page(request: HTTPRequest) -> Response:
        return web_file("index.html")

    async def page_file(request: HTTPRequest) -> Response:
        return web_file(request.path_params["name"])

    async def health(request: HTTPRequest) -> Response:
        return JSONResponse({"status": "ok", "model": server.model_id, **server.engine.stats()})

    async def models(request: HTTPRequest) -> Response:
        check_key(server, request)
        return JSONResponse({"object": "list", "data": [model_card(server)]})

    async def model(request: HTTPRequest) -> Response:
        check_key(server, request)
        if request.path_params["model"] != server.model_id:
            raise APIError(404, f"The model `{request.path_params['model']}` does not exist", "model", "model_not_found")
        return JSONResponse(model_card(server))

    async def completions(request: HTTPRequest) -> Response:
        check_key(server, request)
        body = await read_json(request)
        req = protocol.parse_completion(body, server.model_id, server.limits)
        check_room(server, req, len(req.given))  # before tokenizing: a full queue costs no work
        req.prompts = await anyio.to_thread.run_sync(protocol.encode_prompts, req.given, server.loaded.tokenizer,
                                                     server.encode, server.limits)
        req.settings.stop_ids = server.stop_ids
        return await answer(server, request, req)

    async def chat_completions(request: HTTPRequest) -> Response:
        check_key(server, request)
        body = await read_json(request)
        req = protocol.parse_chat(body, server.model_id, server.limits)
        template = server.loaded.chat_template
        if template is None:
            raise APIError(400, f"the model `{server.model_id}` has no chat template (it was not tuned on "
                           "conversations): use /v1/completions with a plain prompt, or serve a checkpoint tuned "
                           "with python train.py --data=conversations.jsonl", "messages", "no_chat_template")
        check_room(server, req, 1)
        prompt = await anyio.to_thread.run_sync(chat_prompt, template, req.messages)
        if len(prompt) > server.limits.max_prompt_tokens:
            raise APIError(400, f"the conversation is {len(prompt)} tokens long; this server takes at most "
                           f"{server.limits.max_prompt_tokens}", "messages", "context_length_exceeded")
        req.prompts = [prompt]
        req.settings.stop_ids = server.stop_ids
        return await answer(server, request, req)

    async def api_error(request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def http_error(request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no such endpoint: {request.method} {request.url.path} (see /v1/models, /v1/completions, "
                        "/v1/chat/completions)", 405: f"{request.method} is not allowed on {request.url.path}"}
        error = APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)))
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: HTTPRequest, exc: Exception) -> Response:
        error = APIError(500, f"internal error ({type(exc).__name__}); the server log has the details")
        return JSONResponse(error.body(), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        server.engine.close()  # after uvicorn let the requests in flight finish (or cancelled them)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/web/{name}", page_file, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {APIError: api_error, HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def model_card(server: Server) -> dict:
    """OpenAI's model object, with what a client (the page) needs to know besides: whether chat works (the
    checkpoint has a chat template) and the most tokens a request may ask for."""
    return {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "gpt",
            "chat_template": server.loaded.chat_template is not None, "max_tokens": server.limits.max_tokens,
            "max_prompt_tokens": server.limits.max_prompt_tokens}


def web_file(name: str) -> Response:
    """A file of the page, by its bare name: only the files in gpt/serve/web/, nothing above or below it.
    No API key is needed for the page itself; it asks for the key and sends it on its /v1 requests."""
    path = WEB / name
    if "/" in name or "\\" in name or path.suffix not in WEB_TYPES or not path.is_file():
        raise HTTPException(404)
    return FileResponse(path, media_type=WEB_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


def check_key(server: Server, request: HTTPRequest) -> None:
    """Require the bearer token when the server has a key. Both sides are hashed first, so the comparison
    takes the same time whatever the token's length and however much of it is right."""
    if server.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "You didn't provide an API key: send 'Authorization: Bearer YOUR_KEY'", None,
                       "missing_api_key", "invalid_request_error")
    given = hashlib.sha256(token.strip().encode()).digest()
    expected = hashlib.sha256(server.api_key.encode()).digest()
    if not hmac.compare_digest(given, expected):
        raise APIError(401, "Incorrect API key provided", None, "invalid_api_key", "invalid_request_error")


async def read_json(request: HTTPRequest) -> object:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "We could not parse the JSON body of your request: send valid JSON with "
                       "'Content-Type: application/json'") from None
    except RecursionError:  # the parser recurses once per level of arrays and objects; a request needs a few
        raise APIError(400, "the JSON body nests arrays or objects too deeply to read (a request needs only a "
                       "few levels): send a flatter body") from None


# ---------------------------------------------------------------------------------------------------
# Running a request


def check_room(server: Server, req: protocol.Request, prompts: int) -> None:
    """Refuse the request now (429 or 503) if the engine's queue has no room for its prompts: this is checked
    again when the jobs are submitted, but asking first spares the work of tokenizing a request that is refused."""
    if req.settings.max_tokens > 0:  # max_tokens 0 is answered without queueing
        with engine_refusals():
            server.engine.check_room(prompts)


@contextlib.contextmanager
def engine_refusals():
    """The engine's refusals as API errors: a full queue is a 429 (clients retry it), shutting down a 503."""
    try:
        yield
    except Busy as e:
        raise APIError(429, f"the server is busy: {e.waiting} prompts are waiting for room in the batch (at most "
                       f"{e.max_waiting} may wait); retry later", None, "rate_limit_exceeded") from None
    except ShuttingDown:
        raise APIError(503, "the server is shutting down", None, "shutting_down") from None


async def answer(server: Server, request: HTTPRequest, req: protocol.Request) -> Response:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    jobs = []
    for index, prompt in enumerate(req.prompts):
        def listener(event, index=index):
            loop.call_soon_threadsafe(events.put_nowait, (index, event))
        jobs.append(Job(prompt, req.settings, listener, req.id))
    if req.settings.max_tokens == 0:  # nothing to generate: the answer without queueing
        for index, job in enumerate(jobs):
            for sample in range(req.settings.n):
                events.put_nowait((index, Finished(sample, "length", 0)))
            events.put_nowait((index, Done(len(job.prompt_ids), 0)))
    else:
        with engine_refusals():
            server.engine.submit(jobs)
    if req.stream:
        return EventStream(stream_events(server, req, jobs, events))
    return await run_until_disconnect(request, collect(server, req, jobs, events), jobs)


async def job_events(jobs: list[Job], events: asyncio.Queue) -> AsyncIterator[tuple[int, object]]:
    """The jobs' events as they come, until every job is done; cancels them if the consumer stops early."""
    open_jobs = len(jobs)
    try:
        while open_jobs:
            index, event = await events.get()
            if isinstance(event, (Done, Failed)):
                open_jobs -= 1
            yield index, event
    finally:
        for job in jobs:
            job.cancel()


async def collect(server: Server, req: protocol.Request, jobs: list[Job], events: asyncio.Queue) -> Response:
    n = req.settings.n
    results = [{"text": "", "finish_reason": None, "logprobs": []} for _ in range(len(jobs) * n)]
    offsets = [protocol.CompletionLogprobs(server.loaded.tokenizer) for _ in results]
    prompt_tokens = completion_tokens = 0
    async for job_index, event in job_events(jobs, events):
        if isinstance(event, Piece):
            choice = job_index * n + event.index
            results[choice]["text"] += event.text
            if event.logprob is not None:
                results[choice]["logprobs"].append(
                    protocol.chat_logprob_entry(server.loaded.tokenizer, event.logprob) if req.chat
                    else offsets[choice].entry(event.logprob))
        elif isinstance(event, Finished):
            results[job_index * n + event.index]["finish_reason"] = event.reason
        elif isinstance(event, Done):
            prompt_tokens += event.prompt_tokens
            completion_tokens += event.completion_tokens
        elif isinstance(event, Failed):
            raise failure(req)
    return JSONResponse(whole_answer(server, req, results, prompt_tokens, completion_tokens))


def failure(req: protocol.Request) -> APIError:
    """The answer when generating failed: the engine logged what went wrong under the request's id, which the
    client gets to quote; the error itself is not the client's to see (and it is the same for the whole batch)."""
    return APIError(500, f"generating the answer failed on the server (request {req.id}); the server log has "
                    "the details under that id", None, "generation_failed")


def whole_answer(server: Server, req: protocol.Request, results: list[dict], prompt_tokens: int,
                 completion_tokens: int) -> dict:
    want_logprobs = req.settings.logprobs is not None
    usage = protocol.usage(prompt_tokens, completion_tokens)
    if req.chat:
        choices = [protocol.chat_choice(i, r["text"], r["finish_reason"], r["logprobs"] if want_logprobs else None)
                   for i, r in enumerate(results)]
        return protocol.chat_body(req.id, protocol.now(), server.model_id, choices, usage)
    choices = [protocol.completion_choice(i, r["text"], r["finish_reason"],
                                          protocol.CompletionLogprobs.merge(r["logprobs"]) if want_logprobs else None)
               for i, r in enumerate(results)]
    return protocol.completion_body(req.id, protocol.now(), server.model_id, choices, usage)


async def stream_events(server: Server, req: protocol.Request, jobs: list[Job],
                        events: asyncio.Queue) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of text, one with each choice's finish_reason, [DONE] last."""
    n, tok = req.settings.n, server.loaded.tokenizer
    created = protocol.now()
    offsets = [protocol.CompletionLogprobs(tok) for _ in range(len(jobs) * n)]
    want_logprobs = req.settings.logprobs is not None
    prompt_tokens = completion_tokens = 0

    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        build = protocol.chat_body if req.chat else protocol.completion_body
        return "data: " + json.dumps(build(req.id, created, server.model_id, choices, usage, chunk=True)) + "\n\n"

    if req.chat:  # OpenAI's first chat chunk carries the role
        yield chunk([protocol.chat_chunk_choice(i, {"role": "assistant", "content": ""}, None, None)
                     for i in range(len(jobs) * n)])
    async for job_index, event in job_events(jobs, events):
        if isinstance(event, Piece):
            choice = job_index * n + event.index
            if not event.text and not (want_logprobs and event.logprob is not None):
                continue  # text held back (a possible stop string, a split character): nothing to send yet
            logprob = None
            if want_logprobs and event.logprob is not None:
                logprob = protocol.chat_logprob_entry(tok, event.logprob) if req.chat else offsets[choice].entry(event.logprob)
            if req.chat:
                yield chunk([protocol.chat_chunk_choice(choice, {"content": event.text}, None,
                                                        [logprob] if logprob else ([] if want_logprobs else None))])
            else:
                yield chunk([protocol.completion_choice(choice, event.text, None, logprob)])
        elif isinstance(event, Finished):
            choice = job_index * n + event.index
            if req.chat:
                yield chunk([protocol.chat_chunk_choice(choice, {}, event.reason, None)])
            else:
                yield chunk([protocol.completion_choice(choice, "", event.reason, None)])
        elif isinstance(event, Done):
            prompt_tokens += event.prompt_tokens
            completion_tokens += event.completion_tokens
        elif isinstance(event, Failed):
            yield "data: " + json.dumps(failure(req).body()) + "\n\n"
            return
    if req.include_usage:
        yield chunk([], protocol.usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """Server-sent events that notice a client going away at once, not only at the next write: the stream
    is cancelled, and with it the jobs, whose rows leave the batch before the next step."""

    media_type = "text/event-stream"

    def __init__(self, content):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:
            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the client went away mid-write
                    pass
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


async def run_until_disconnect(request: HTTPRequest, work, jobs: list[Job]) -> Response:
    """Await `work`, unless the client disconnects first: then cancel the jobs and answer nobody."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    for job in jobs:
        job.cancel()
    return Response(status_code=499)  # nginx's "client closed request": never seen by the client


# ---------------------------------------------------------------------------------------------------
# The command line


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, banner: str):
        super().__init__(config)
        self.banner = banner

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.banner, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def loopback(address: str) -> bool:
    """Whether a bound address is reachable from this machine only (127.0.0.1, ::1), not from the network."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_config(cfg: ServeConfig) -> None:
    for name in ("max_batch", "max_waiting", "max_tokens"):  # below 1, every request would be refused
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.prefill_chunk < 0:
        raise UserError(f"prefill_chunk must be 0 (the whole prompt at once) or more, got {cfg.prefill_chunk}")
    if cfg.max_prompt_tokens < 0:
        raise UserError(f"max_prompt_tokens must be 0 (the model's block_size) or more, got {cfg.max_prompt_tokens}")
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"port must be between 0 and 65535, got {cfg.port}")
    if cfg.shutdown_timeout < 0:
        raise UserError(f"shutdown_timeout must not be negative, got {cfg.shutdown_timeout}")
    if cfg.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise UserError(f"unknown log_level {cfg.log_level!r}: use critical, error, warning, info or debug")
    if cfg.api_key == "":
        raise UserError("api_key must not be empty: give a key, or leave it out to serve without one")


def log_config(level: str) -> dict:
    """uvicorn's logging, with the server's own log (gpt.serve: e.g. a failed decode step, under the ids of the
    requests it failed) beside uvicorn's errors, in the same form and at the same level."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["gpt.serve"] = {"handlers": ["default"], "level": uvicorn.config.LOG_LEVELS[level],
                                      "propagate": False}
    return config


def model_name(loaded: Loaded) -> str:
    path = loaded.path
    return path.parent.name if path.is_file() else path.name


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(ServeConfig, argv, prog="python -m gpt.serve", description=DESCRIPTION)
    check_config(cfg)
    api_key = cfg.api_key if cfg.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    sock = bind(cfg.host, cfg.port)  # before loading: a taken port fails fast
    if api_key is None and not loopback(sock.getsockname()[0]):
        print(f"warning: listening on {cfg.host} without an API key: anyone who can reach port "
              f"{sock.getsockname()[1]} can use this server; set {API_KEY_ENV}=KEY (or --api_key) to require one",
              file=sys.stderr, flush=True)
    opened = open_model(cfg)
    model, loaded, device, dtype = opened.model, opened.loaded, opened.device, opened.dtype
    engine = Engine(model, loaded.tokenizer, max_batch=cfg.max_batch, max_waiting=cfg.max_waiting, dtype=dtype,
                    prefill_chunk=cfg.prefill_chunk)
    if cfg.compile:
        print("compiling the model (once, before listening)...", file=sys.stderr, flush=True)
        seconds = warm_up(engine, encode_prompt(loaded.tokenizer, ""))
        print(f"compiled in {seconds:.0f} s", file=sys.stderr, flush=True)
    block_size = loaded.model.config.block_size
    limits = Limits(max_prompt_tokens=cfg.max_prompt_tokens or block_size, max_tokens=cfg.max_tokens,
                    max_n=cfg.max_batch, max_prompts=cfg.max_waiting)
    server = Server(engine, loaded, cfg.model_name or model_name(loaded), limits, api_key, protocol.now())
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    banner = (f"serving {server.model_id} ({cfg.weights}{', compiled' if cfg.compile else ''}, {device.type}) at "
              f"http://{shown_host}:{port}/v1" + (" (API key required)" if api_key else "") +
              f"; the page: http://{shown_host}:{port}/")
    config = uvicorn.Config(make_app(server), log_level=cfg.log_level, log_config=log_config(cfg.log_level),
                            timeout_graceful_shutdown=cfg.shutdown_timeout, lifespan="on")
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with this handler in place
    # that re-raise does nothing, and the process exits with 0 after its orderly shutdown.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    _Uvicorn(config, banner).run(sockets=[sock])
    engine.close()
    return 0
