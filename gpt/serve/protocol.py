"""The OpenAI API's shapes: request bodies checked and turned into engine Settings, and answers built back.

Nothing here does I/O: gpt/serve/app.py reads the HTTP request, calls `parse_completion` / `parse_chat`
(which raise `APIError` with OpenAI's error shape and status) and then, off its event loop, `encode_prompts`
(tokenizing, the one costly step), runs the jobs, and sends what `completion_body`, `chat_body` and the chunk
builders return.

Parameters (the same in both endpoints unless noted):

  supported   model, max_tokens (chat: also max_completion_tokens), temperature (0..2), top_p (0..1), n,
              stop (a string or up to 4), seed, stream, stream_options.include_usage, user (ignored);
              completions: prompt (a string, a list of strings, a list of token ids, or a list of those;
              at most max_waiting prompts), logprobs (0..20); chat: messages, logprobs (true/false), top_logprobs (0..20)
  extension   top_k (0 = off), as vLLM and llama.cpp's server accept it
  refused     (400, when set to anything but their neutral value) echo, suffix, best_of != n, logit_bias,
              presence_penalty, frequency_penalty, tools, tool_choice, functions, function_call,
              response_format other than text: these change what is generated and are not implemented
  unknown     any other field is refused with 400, as OpenAI does ("Unrecognized request argument")
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gpt.serve.engine import Settings, TokenLogprob
from gpt.tokenizer import Tokenizer

MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_LOGPROBS = 20


class APIError(Exception):
    """An error answer: the status code and OpenAI's {"error": {message, type, param, code}} body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error",
                             503: "server_error", 500: "server_error"}.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """The server's limits on what one request may ask for (its command-line settings)."""

    max_prompt_tokens: int
    max_tokens: int  # the most tokens a request may ask to generate
    max_n: int  # the most samples a request may ask for: they must fit in the batch together
    max_prompts: int  # the most prompts one completion may list: each waits in the queue (--max_waiting)


@dataclass
class Request:
    """A checked request: its prompts (token ids) and how to sample each, plus how to answer."""

    model: str
    prompts: list[list[int]]
    settings: Settings
    stream: bool = False
    include_usage: bool = False
    chat: bool = False
    messages: list[dict] = field(default_factory=list)
    given: list[str | list[int]] = field(default_factory=list)  # a completion's prompts before tokenizing
    id: str = ""  # the answer's id ("cmpl-...", "chatcmpl-..."), which also names the request in the server log


COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options",
          "user", "logit_bias", "presence_penalty", "frequency_penalty"}
COMPLETION_FIELDS = COMMON | {"prompt", "logprobs", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
                        "functions", "function_call", "response_format", "parallel_tool_calls"}


# ---------------------------------------------------------------------------------------------------
# Reading requests


def parse_completion(body: Any, model_id: str, limits: Limits) -> Request:
    """A /v1/completions body -> Request, every check but the prompts' lengths in tokens: the prompts are kept
    as given (`Request.given`), and `encode_prompts` tokenizes them. Tokenizing is the costly part of a large
    request, so the caller can refuse one (too many prompts: 400 here; a full queue: 429) before doing it."""
    body = _object(body)
    _known_fields(body, COMPLETION_FIELDS)
    _check_model(body, model_id)
    _refuse(body, "echo", False, "echo (returning the prompt with the completion)")
    _refuse(body, "suffix", None, "suffix (text after the insertion point)")
    given = _prompt_list(body.get("prompt"), limits)
    settings = _settings(body, limits, default_max_tokens=min(16, limits.max_tokens))  # OpenAI's default: 16
    best_of = body.get("best_of")
    if best_of is not None and best_of != settings.n:
        raise APIError(400, "best_of is not supported by this server (only best_of = n, which is what n gives)",
                       "best_of", "unsupported_parameter")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        settings.logprobs = _int(logprobs, "logprobs", 0, MAX_LOGPROBS)
    stream, include_usage = _stream(body)
    return Request(body["model"], [], settings, stream, include_usage, given=given, id=new_id("cmpl"))


def encode_prompts(given: list[str | list[int]], tokenizer: Tokenizer, encode, limits: Limits) -> list[list[int]]:
    """The token ids of a completion's prompts, each checked against the vocabulary and max_prompt_tokens.
    `encode(text) -> ids` is sample.py's prompt encoding."""
    return [_prompt_ids(p, tokenizer, encode, limits) for p in given]


def parse_chat(body: Any, model_id: str, limits: Limits) -> Request:
    """A /v1/chat/completions body -> Request with its messages checked; the prompt comes from the chat
    template (gpt/serve/app.py: `chat_prompt`), which is applied after this check."""
    body = _object(body)
    _known_fields(body, CHAT_FIELDS)
    _check_model(body, model_id)
    for name in ("tools", "functions"):
        if body.get(name):
            raise APIError(400, f"{name} (function calling) is not supported by this server", name, "unsupported_parameter")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise APIError(400, f"{name} is not supported by this server", name, "unsupported_parameter")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise APIError(400, "response_format other than text (JSON mode, schemas) is not supported by this server",
                       "response_format", "unsupported_parameter")
    messages = _messages(body.get("messages"))
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    settings = _settings(body, limits, default_max_tokens=limits.max_tokens)
    if _bool(body.get("logprobs", False), "logprobs"):
        settings.logprobs = _int(body.get("top_logprobs") or 0, "top_logprobs", 0, MAX_LOGPROBS)
    elif body.get("top_logprobs") is not None:
        raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    stream, include_usage = _stream(body)
    return Request(body["model"], [], settings, stream, include_usage, chat=True, messages=messages,
                   id=new_id("chatcmpl"))


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _known_fields(body: dict, known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")


def _check_model(body: dict, model_id: str) -> None:
    model = body.get("model")
    if model is None:
        raise APIError(400, "you must provide a model parameter", "model", "missing_required_parameter")
    if model != model_id:
        raise APIError(404, f"The model `{model}` does not exist: this server serves `{model_id}` (GET /v1/models)",
                       "model", "model_not_found")


def _refuse(body: dict, name: str, neutral: Any, what: str) -> None:
    if body.get(name, neutral) not in (neutral, None):
        raise APIError(400, f"{what} is not supported by this server", name, "unsupported_parameter")


def _settings(body: dict, limits: Limits, default_max_tokens: int) -> Settings:
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise APIError(400, f"{name} is not supported by this server (only 0)", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise APIError(400, "logit_bias is not supported by this server", "logit_bias", "unsupported_parameter")
    max_tokens = body.get("max_tokens")
    max_tokens = default_max_tokens if max_tokens is None else _int(max_tokens, "max_tokens", 0, None)
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit of {limits.max_tokens}",
                       "max_tokens", "max_tokens_too_large")
    temperature = _number(body.get("temperature", 1.0), "temperature", 0.0, 2.0)
    top_p = _number(body.get("top_p", 1.0), "top_p", 0.0, 1.0)
    top_k = _int(body.get("top_k", 0), "top_k", 0, None)
    n = _int(body.get("n", 1), "n", 1, None)
    if n > limits.max_n:
        raise APIError(400, f"n is {n}, more than this server decodes together ({limits.max_n})", "n")
    seed = body.get("seed")
    if seed is not None:
        seed = _int(seed, "seed", 0, 2**63 - 1)
    return Settings(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, n=n,
                    stop=_stop(body.get("stop")), seed=seed)


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise APIError(400, "stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise APIError(400, f"stop may hold at most {MAX_STOP} strings, got {len(stops)}", "stop")
    if any(s == "" for s in stops):
        raise APIError(400, "a stop string must not be empty", "stop")
    return stops


def _stream(body: dict) -> tuple[bool, bool]:
    stream = _bool(body.get("stream", False), "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise APIError(400, "stream_options supports only include_usage", "stream_options")
    return stream, _bool(options.get("include_usage", False), "stream_options.include_usage")


def _prompt_list(prompt: Any, limits: Limits) -> list[str | list[int]]:
    """OpenAI's prompt forms: a string, a list of strings, a list of token ids, or a list of lists of ids. More
    prompts than may wait in the queue could never be accepted: a 400 that names the limit (not a 429, which
    clients retry)."""
    if prompt is None:
        raise APIError(400, "you must provide a prompt", "prompt", "missing_required_parameter")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return [prompt]
    if isinstance(prompt, list) and len(prompt) > limits.max_prompts:
        raise APIError(400, f"the request lists {len(prompt)} prompts; this server takes at most {limits.max_prompts} "
                       "in one request (its max_waiting): send them in several requests", "prompt", "too_many_prompts")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or (isinstance(p, list) and all(_is_int(t) for t in p))
                                                   for p in prompt):
        return prompt
    raise APIError(400, "prompt must be a string, a list of strings, a list of token ids, or a list of such lists",
                   "prompt")


def _prompt_ids(prompt: str | list[int], tokenizer: Tokenizer, encode, limits: Limits) -> list[int]:
    if isinstance(prompt, str):
        ids = encode(prompt)
    else:
        ids = list(prompt)
        if not ids:
            raise APIError(400, "a prompt of token ids must not be empty", "prompt")
        bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is out of range: this model's vocabulary has {tokenizer.vocab_size} "
                           "tokens", "prompt")
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt is {len(ids)} tokens long; this server takes at most "
                       f"{limits.max_prompt_tokens} (the model reads {limits.max_prompt_tokens} at a time)",
                       "prompt", "context_length_exceeded")
    return ids


def _messages(messages: Any) -> list[dict]:
    if messages is None:
        raise APIError(400, "you must provide messages", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}] must be an object with a role of system, developer, user or assistant",
                           f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
        checked.append({"role": message["role"], "content": content})
    return checked


def _shown(value: Any, limit: int = 60) -> str:
    """A value quoted in an error, cut short: a bad field may hold megabytes the client already has."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, name: str, low: int, high: int | None) -> int:
    if not _is_int(value):
        raise APIError(400, f"{name} must be an integer, got {_shown(value)}", name)
    if value < low or (high is not None and value > high):
        where = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise APIError(400, f"{name} must be {where}, got {value}", name)
    return value


def _number(value: Any, name: str, low: float, high: float) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value):
        raise APIError(400, f"{name} must be a number, got {_shown(value)}", name)
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low:g} and {high:g}, got {value}", name)
    return float(value)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise APIError(400, f"{name} must be true or false, got {_shown(value)}", name)
    return value


# ---------------------------------------------------------------------------------------------------
# Writing answers


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_text(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.decode_bytes([token]).decode("utf-8", errors="replace")


class CompletionLogprobs:
    """The legacy completions logprobs object, built token by token: tokens, token_logprobs, top_logprobs
    (a {token: logprob} dict per position) and text_offset (where each token starts in the text)."""

    def __init__(self, tokenizer: Tokenizer, offset: int = 0):
        self.tokenizer = tokenizer
        self.offset = offset

    def entry(self, lp: TokenLogprob) -> dict:
        text = token_text(self.tokenizer, lp.token)
        top: dict[str, float] = {}
        for token, value in lp.top:
            top.setdefault(token_text(self.tokenizer, token), value)  # two tokens may print alike: keep the likelier
        out = {"tokens": [text], "token_logprobs": [lp.logprob], "top_logprobs": [top], "text_offset": [self.offset]}
        self.offset += len(text)
        return out

    @staticmethod
    def merge(entries: list[dict]) -> dict:
        merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in entries:
            for key in merged:
                merged[key].extend(entry[key])
        return merged


def chat_logprob_entry(tokenizer: Tokenizer, lp: TokenLogprob) -> dict:
    """One token of a chat answer's logprobs.content: its text, bytes, log-probability and top alternatives."""

    def one(token: int, logprob: float) -> dict:
        raw = tokenizer.decode_bytes([token])
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {**one(lp.token, lp.logprob), "top_logprobs": [one(t, v) for t, v in lp.top]}


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_body(id_: str, created: int, model: str, choices: list[dict], usage_: dict | None,
                    chunk: bool = False) -> dict:
    body = {"id": id_, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body


def chat_choice(index: int, text: str, finish_reason: str | None, logprobs: list[dict] | None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text},
            "logprobs": None if logprobs is None else {"content": logprobs}, "finish_reason": finish_reason}


def chat_chunk_choice(index: int, delta: dict, finish_reason: str | None, logprobs: list[dict] | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None if logprobs is None else {"content": logprobs},
            "finish_reason": finish_reason}


def chat_body(id_: str, created: int, model: str, choices: list[dict], usage_: dict | None, chunk: bool = False) -> dict:
    body = {"id": id_, "object": "chat.completion.chunk" if chunk else "chat.completion", "created": created,
            "model": model, "choices": choices}
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body

