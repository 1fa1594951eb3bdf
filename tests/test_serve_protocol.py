"""The OpenAI request checks (gpt/serve/protocol.py): what is accepted, refused or defaulted, and how."""

from __future__ import annotations

import pytest

from gpt.serve.protocol import APIError, Limits, encode_prompts, parse_chat, parse_completion
from gpt.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer("abc \n")
LIMITS = Limits(max_prompt_tokens=8, max_tokens=100, max_n=4, max_prompts=3)


def completion(**body):
    req = parse_completion({"model": "m", "prompt": "ab", **body}, "m", LIMITS)
    req.prompts = encode_prompts(req.given, TOKENIZER, TOKENIZER.encode, LIMITS)
    return req


def chat(**body):
    return parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}, "m", LIMITS)


def refused(call, status=400, param=None, code=None, match=""):
    with pytest.raises(APIError) as info:
        call()
    error = info.value
    assert error.status == status and error.param == param and (code is None or error.code == code), error.body()
    assert match in error.message
    return error


def test_defaults_follow_openai():
    req = completion()
    s = req.settings
    assert req.prompts == [TOKENIZER.encode("ab")] and not req.stream
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.n, s.stop, s.seed, s.logprobs) == (16, 1.0, 1.0, 0, 1, [], None, None)
    assert chat().settings.max_tokens == 100  # chat: up to the server's limit


def test_every_prompt_form():
    assert completion(prompt=["ab", "c"]).prompts == [TOKENIZER.encode("ab"), TOKENIZER.encode("c")]
    assert completion(prompt=[1, 2, 0]).prompts == [[1, 2, 0]]
    assert completion(prompt=[[1], [2, 3]]).prompts == [[1], [2, 3]]
    refused(lambda: completion(prompt=[9]), param="prompt", match="out of range")
    refused(lambda: completion(prompt=[]), param="prompt")
    refused(lambda: completion(prompt=7), param="prompt")
    refused(lambda: completion(prompt="abcabcabc"), param="prompt", code="context_length_exceeded")


def test_more_prompts_than_may_wait_is_a_400_naming_the_limit_found_before_tokenizing():
    assert len(completion(prompt=["a", "b", "c"]).prompts) == 3
    assert len(completion(prompt=[1, 2, 0, 1]).prompts) == 1  # token ids: one prompt, however long
    for prompt in (["a", "b", "c", "a"], [[1]] * 4, ["a"] * 120_000):
        error = refused(lambda: parse_completion({"model": "m", "prompt": prompt}, "m", LIMITS), param="prompt",
                        code="too_many_prompts", match="at most 3 in one request")
        assert "max_waiting" in error.message


def test_settings_are_read_and_checked():
    s = completion(max_tokens=5, temperature=0, top_p=0.5, top_k=3, n=4, stop="\n", seed=9, logprobs=2).settings
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.n, s.stop, s.seed, s.logprobs) == (5, 0.0, 0.5, 3, 4, ["\n"], 9, 2)
    assert completion(stop=["a", "b"]).settings.stop == ["a", "b"]
    assert chat(max_completion_tokens=7).settings.max_tokens == 7
    assert chat(logprobs=True, top_logprobs=3).settings.logprobs == 3
    assert chat(logprobs=True).settings.logprobs == 0
    assert chat(logprobs=False).settings.logprobs is None


@pytest.mark.parametrize("body, param, code", [
    ({"max_tokens": -1}, "max_tokens", None),
    ({"max_tokens": 101}, "max_tokens", "max_tokens_too_large"),
    ({"max_tokens": "5"}, "max_tokens", None),
    ({"temperature": 2.5}, "temperature", None),
    ({"temperature": -0.1}, "temperature", None),
    ({"temperature": True}, "temperature", None),
    ({"top_p": 1.5}, "top_p", None),
    ({"top_k": -1}, "top_k", None),
    ({"n": 0}, "n", None),
    ({"n": 5}, "n", None),
    ({"seed": -1}, "seed", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"stop": [""]}, "stop", None),
    ({"stop": 3}, "stop", None),
    ({"logprobs": 21}, "logprobs", None),
    ({"stream": "yes"}, "stream", None),
    ({"stream_options": {"include_usage": True}}, "stream_options", None),
    ({"echo": True}, "echo", "unsupported_parameter"),
    ({"suffix": "x"}, "suffix", "unsupported_parameter"),
    ({"best_of": 3}, "best_of", "unsupported_parameter"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ({"logit_bias": {"1": 5}}, "logit_bias", "unsupported_parameter"),
    ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
])
def test_bad_completion_parameters_are_400s_naming_the_parameter(body, param, code):
    refused(lambda: completion(**body), param=param, code=code)


def test_an_error_quotes_a_huge_bad_value_cut_short():
    error = refused(lambda: completion(max_tokens="9" * 1_000_000), param="max_tokens", match="1,000,002 characters")
    assert len(error.message) < 200


def test_neutral_values_of_unsupported_parameters_are_accepted():
    completion(echo=False, best_of=1, presence_penalty=0, frequency_penalty=0.0, logit_bias={}, user="me")
    chat(tools=[], tool_choice="none", response_format={"type": "text"})


def test_model_is_required_and_must_be_the_served_one():
    refused(lambda: parse_completion({"prompt": "a"}, "m", LIMITS), param="model",
            code="missing_required_parameter")
    refused(lambda: completion(model="gpt-4"), status=404, param="model", code="model_not_found")


@pytest.mark.parametrize("messages, param", [
    (None, "messages"),
    ([], "messages"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content"),
])
def test_bad_messages(messages, param):
    refused(lambda: parse_chat({"model": "m", "messages": messages}, "m", LIMITS), param=param)


def test_chat_refuses_tools_and_json_mode_and_top_logprobs_alone():
    refused(lambda: chat(tools=[{"type": "function"}]), param="tools", code="unsupported_parameter")
    refused(lambda: chat(response_format={"type": "json_object"}), param="response_format")
    refused(lambda: chat(top_logprobs=2), param="top_logprobs")


def test_text_parts_are_joined():
    req = parse_chat({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                             {"type": "text", "text": "b"}]}]}, "m", LIMITS)
    assert req.messages == [{"role": "user", "content": "ab"}]


def test_error_body_has_openai_shape():
    error = refused(lambda: completion(temperature=9), param="temperature")
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error",
                                      "param": "temperature", "code": None}}
