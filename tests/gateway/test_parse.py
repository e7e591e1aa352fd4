"""Request validation: every rejection names the field; unknown model is 404; valid bodies pass through."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest, NotFound
from gateway.proxy.parse import Endpoint, parse_request

MODELS = frozenset({"sim"})
MSG = [{"role": "user", "content": "hi"}]


def _raw(body: Any) -> bytes:
    return json.dumps(body).encode()


BAD: list[tuple[Endpoint, bytes, str]] = [
    ("chat", b"", "body: is empty"),
    ("chat", b"{not json", "body: is not valid JSON"),
    ("chat", b"\xff\xfe", "body: is not valid"),
    ("chat", b"[1, 2]", "body: must be a JSON object"),
    ("chat", _raw({"messages": MSG}), "model: is required"),
    ("chat", _raw({"model": 3, "messages": MSG}), "model: must be a non-empty string"),
    ("chat", _raw({"model": "sim"}), "messages: is required"),
    ("chat", _raw({"model": "sim", "messages": []}), "messages: must be a non-empty array"),
    ("chat", _raw({"model": "sim", "messages": ["hi"]}), "messages[0]: must be an object"),
    ("chat", _raw({"model": "sim", "messages": [*MSG, MSG[0], {"role": "wizard", "content": "x"}]}),
     "messages[2].role: must be one of 'assistant', 'developer', 'function', 'system', 'tool', 'user'"),
    ("chat", _raw({"model": "sim", "messages": [{"role": "user"}]}), "messages[0].content: is required"),
    ("chat", _raw({"model": "sim", "messages": [{"role": "user", "content": 5}]}), "messages[0].content: must be"),
    ("chat", _raw({"model": "sim", "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
     "messages[0].content[0]: must be an object with a string 'type'"),
    ("chat", _raw({"model": "sim", "messages": MSG, "max_tokens": 0}), "max_tokens: must be between 1 and"),
    ("chat", _raw({"model": "sim", "messages": MSG, "max_tokens": 2**31}), "max_tokens: must be between 1 and"),
    ("chat", _raw({"model": "sim", "messages": MSG, "max_tokens": "10"}), "max_tokens: must be an integer"),
    ("chat", _raw({"model": "sim", "messages": MSG, "max_tokens": True}), "max_tokens: must be an integer"),
    ("chat", _raw({"model": "sim", "messages": MSG, "n": 500}), "n: must be between 1 and 128"),
    ("chat", _raw({"model": "sim", "messages": MSG, "temperature": 3}), "temperature: must be between 0 and 2"),
    ("chat", _raw({"model": "sim", "messages": MSG, "stream": "yes"}), "stream: must be a boolean"),
    ("chat", _raw({"model": "sim", "messages": MSG, "stream_options": {"include_usage": True}}),
     "stream_options: is only allowed when stream is true"),
    ("chat", _raw({"model": "sim", "messages": MSG, "stream": True, "stream_options": {"include_usage": 1}}),
     "stream_options.include_usage: must be a boolean"),
    ("chat", _raw({"model": "sim", "messages": MSG, "top_logprobs": 3}), "top_logprobs: requires logprobs"),
    ("chat", _raw({"model": "sim", "messages": MSG, "logprobs": True, "top_logprobs": 21}),
     "top_logprobs: must be between 0 and 20"),
    ("chat", _raw({"model": "sim", "messages": MSG, "logit_bias": {"50256": 150}}),
     "logit_bias['50256']: must be a number between -100 and 100"),
    ("chat", _raw({"model": "sim", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}), "stop: must be"),
    ("chat", _raw({"model": "sim", "messages": MSG, "logprobs": True, "logprob_token_ids": ["7"]}),
     "logprob_token_ids: must be an array of token ids"),
    ("chat", _raw({"model": "sim", "messages": MSG, "logprobs": True, "logprob_token_ids": list(range(129))}),
     "logprob_token_ids: must have at most 128 entries"),
    ("chat", _raw({"model": "sim", "messages": MSG, "allowed_token_ids": [1, -2]}),
     "allowed_token_ids: must be an array of token ids"),
    ("completions", _raw({"model": "sim", "prompt": "x", "allowed_token_ids": 5}),
     "allowed_token_ids: must be an array of token ids"),
    ("completions", _raw({"model": "sim", "prompt": "x", "bad_words": "word"}), "bad_words: must be an array"),
    ("completions", _raw({"model": "sim", "prompt": "x", "logprobs": 1, "logprob_token_ids": [1.0]}),
     "logprob_token_ids: must be an array of token ids"),
    ("completions", _raw({"model": "sim"}), "prompt: is required"),
    ("completions", _raw({"model": "sim", "prompt": [1, "a"]}), "prompt: must be"),
    ("completions", _raw({"model": "sim", "prompt": "x", "logprobs": 50}), "logprobs: must be between 0 and 20"),
    ("embeddings", _raw({"model": "sim"}), "input: is required"),
    ("embeddings", _raw({"model": "sim", "input": []}), "input: must be"),
    ("embeddings", _raw({"model": "sim", "input": "x", "encoding_format": "hex"}), "encoding_format: must be"),
]


@pytest.mark.parametrize(("endpoint", "raw", "message"), BAD, ids=[m for _, _, m in BAD])
def test_rejections_name_the_field(endpoint: Endpoint, raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(endpoint, raw, MODELS)
    assert info.value.message.startswith(message), info.value.message
    assert info.value.status == 400
    assert info.value.param == message.split(":")[0]


def test_unknown_model_is_404() -> None:
    with pytest.raises(NotFound) as info:
        parse_request("chat", _raw({"model": "gpt-9", "messages": MSG}), MODELS)
    assert info.value.status == 404 and info.value.code == "model_not_found" and info.value.param == "model"


@pytest.mark.parametrize(("endpoint", "body"), [
    ("chat", {"model": "sim", "messages": [{"role": "system", "content": "s"}, {"role": "assistant",
              "content": None, "tool_calls": []}, {"role": "user", "content": [{"type": "text", "text": "x"}]}],
              "stream": True, "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 5,
              "vendor_extension": {"kept": True}}),
    ("completions", {"model": "sim", "prompt": [[1, 2], [3]], "logprobs": 0, "echo": False}),
    ("completions", {"model": "sim", "prompt": "x", "logprobs": 1, "logprob_token_ids": [0, 5],
                     "allowed_token_ids": [5, 6], "bad_words": ["a b"]}),
    ("embeddings", {"model": "sim", "input": ["a", "b"], "dimensions": 8}),
])
def test_valid_bodies(endpoint: Endpoint, body: dict[str, Any]) -> None:
    raw = _raw(body)
    p = parse_request(endpoint, raw, MODELS)
    assert p.body == body and p.raw is raw and p.model == "sim"
    assert p.stream is bool(body.get("stream"))
    assert p.client_usage is bool(body.get("stream_options"))
