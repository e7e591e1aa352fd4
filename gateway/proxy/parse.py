"""Typed parsing and validation of OpenAI request bodies (chat, legacy completions, embeddings, responses).

Validation is deliberately shallow but strict on the fields the gateway and the backends act on: types,
ranges, enums. Unknown fields pass through untouched (OpenAI-compatible servers accept extensions). Every
error is an ``InvalidRequest`` whose message and ``param`` name the field, e.g.
``messages[2].role: must be one of 'assistant', 'developer', ...``. An unknown model is a 404.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import InvalidRequest, NotFound

Endpoint = Literal["chat", "completions", "embeddings", "responses"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ROLES_TEXT = ", ".join(repr(r) for r in sorted(ROLES))


@dataclass(slots=True)
class ParsedRequest:
    endpoint: Endpoint
    model: str
    body: dict[str, Any]  # the decoded body; the pipeline copies before changing it
    raw: bytes  # the bytes as received, forwarded as is when nothing changes
    stream: bool
    client_usage: bool  # the client itself asked for stream_options.include_usage
    # Responses API: the chat-shaped reading of the body that detection, the token estimate and accounting use
    # (``gateway/proxy/responses_request.py``); a completions body without the chat fields its server ignores
    # (``_completions_view``); None otherwise: the body is read as it is
    view: dict[str, Any] | None = None

    @property
    def seen(self) -> dict[str, Any]:
        """What detection and the rate limiter read: the chat view of a Responses body, a completions body
        without chat fields, else the body."""
        return self.body if self.view is None else self.view


class _Rejected(ValueError):
    """Raised from inside the JSON decoder for input that is valid to Python's parser but not to RFC 8259."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys are refused, not resolved: the gateway would validate the last value while the raw
    # bytes (forwarded as is when nothing changes) let a first-wins backend parser act on another one.
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Rejected(f"duplicate key {k!r}")
            seen.add(k)
    return d


def _no_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _decode(raw: bytes) -> Any:
    """Strict RFC 8259: UTF-8 only (``json.loads(bytes)`` would also take UTF-16/32, which then went
    upstream as is), no NaN/Infinity, no duplicate keys, no unpaired surrogate escapes (they decode to a str
    that cannot be encoded again, so any re-encoding of the body failed). Every refusal is a 400."""
    try:
        body = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidRequest("body: is not valid UTF-8", param="body") from e
    except _Rejected as e:
        raise InvalidRequest(f"body: is not valid JSON ({e})", param="body") from e
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"body: is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                             param="body") from e
    except RecursionError as e:
        raise InvalidRequest("body: is nested too deeply", param="body") from e
    except ValueError as e:  # int() refuses literals over sys.get_int_max_str_digits() digits
        raise InvalidRequest("body: contains a number with too many digits", param="body") from e
    if _SURROGATE_ESCAPE.search(raw) is not None:  # rare: checked only when such an escape is present
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError as e:
            raise InvalidRequest("body: contains an unpaired UTF-16 surrogate escape", param="body") from e
        except RecursionError as e:
            raise InvalidRequest("body: is nested too deeply", param="body") from e
    return body


# No model generates 2**31 tokens; larger values only overflow counters downstream (detection's token rates,
# the rate limiter's reservation) and lock a client's token bucket for years.
MAX_TOKENS_FIELD = 2**31 - 1


def _fail(field: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {problem}", param=field)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id(v: Any) -> bool:
    """A token id: a non-negative integer (not checked against the vocabulary: the gateway has none)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _int(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> None:
    v = body.get(key)
    if v is None:
        return
    if not _is_int(v):
        raise _fail(key, "must be an integer")
    if v < lo or (hi is not None and v > hi):
        raise _fail(key, f"must be between {lo} and {hi}" if hi is not None else f"must be at least {lo}")


def _num(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    v = body.get(key)
    if v is None:
        return
    if not _is_num(v):
        raise _fail(key, "must be a number")
    if not lo <= v <= hi:
        raise _fail(key, f"must be between {lo:g} and {hi:g}")


def _bool(body: dict[str, Any], key: str) -> None:
    v = body.get(key)
    if v is not None and not isinstance(v, bool):
        raise _fail(key, "must be a boolean")


def _stop(body: dict[str, Any]) -> None:
    v = body.get("stop")
    if v is None or isinstance(v, str):
        return
    if not isinstance(v, list) or len(v) > 4 or not all(isinstance(s, str) for s in v):
        raise _fail("stop", "must be a string or a list of up to 4 strings")


def _logit_bias(body: dict[str, Any]) -> None:
    v = body.get("logit_bias")
    if v is None:
        return
    if not isinstance(v, dict):
        raise _fail("logit_bias", "must be an object mapping token ids to numbers")
    for k, b in v.items():
        # Token ids: canonical decimal strings ("7", not "07", "-7" or "seven"), which also keeps one
        # token from hiding under several spellings past the hardening caps on bias entries.
        if not (k.isascii() and k.isdigit() and len(k) <= 10 and (k == "0" or k[0] != "0")):
            raise _fail("logit_bias", f"key {k!r} must be a token id (a non-negative integer)")
        if not _is_num(b) or not -100 <= b <= 100:
            raise _fail(f"logit_bias[{k!r}]", "must be a number between -100 and 100")


#: vLLM's own bound on ``logprob_token_ids`` (``vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS``).
MAX_LOGPROB_TOKEN_IDS = 128
MAX_TOKEN_ID_LIST = 100_000  # allowed_token_ids / bad_words: far above any real use, bounds the work


def _token_targeting(body: dict[str, Any]) -> None:
    """vLLM's token-id extensions, which the hardening acts on (``gateway/hardening.py``): checked here because
    vLLM's pydantic models coerce ``"7"``/``7.0`` to ids and a value of another type would slip past the caps.
    Not checked against the vocabulary (the gateway does not know the backend's tokenizer)."""
    for key, hi in (("logprob_token_ids", MAX_LOGPROB_TOKEN_IDS), ("allowed_token_ids", MAX_TOKEN_ID_LIST)):
        v = body.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not all(_is_int(t) and t >= 0 for t in v):
            raise _fail(key, "must be an array of token ids (non-negative integers)")
        if len(v) > hi:
            raise _fail(key, f"must have at most {hi} entries")
    v = body.get("bad_words")
    if v is not None:
        if not isinstance(v, list) or not all(isinstance(w, str) for w in v):
            raise _fail("bad_words", "must be an array of strings")
        if len(v) > MAX_TOKEN_ID_LIST:
            raise _fail("bad_words", f"must have at most {MAX_TOKEN_ID_LIST} entries")


def _stream_fields(body: dict[str, Any]) -> tuple[bool, bool]:
    _bool(body, "stream")
    stream = body.get("stream") is True
    so = body.get("stream_options")
    if so is None:
        return stream, False
    if not isinstance(so, dict):
        raise _fail("stream_options", "must be an object")
    if not stream:
        raise _fail("stream_options", "is only allowed when stream is true")
    iu = so.get("include_usage")
    if iu is not None and not isinstance(iu, bool):
        raise _fail("stream_options.include_usage", "must be a boolean")
    return stream, iu is True


def _sampling(body: dict[str, Any]) -> None:
    _int(body, "max_tokens", 1, MAX_TOKENS_FIELD)
    _int(body, "max_completion_tokens", 1, MAX_TOKENS_FIELD)
    _int(body, "n", 1, 128)
    _num(body, "temperature", 0, 2)
    _num(body, "top_p", 0, 1)
    _num(body, "presence_penalty", -2, 2)
    _num(body, "frequency_penalty", -2, 2)
    _int(body, "seed", -(2**63), 2**63 - 1)
    _stop(body)
    _logit_bias(body)
    if "logprob_token_ids" in body or "allowed_token_ids" in body or "bad_words" in body:
        _token_targeting(body)
    v = body.get("stop_token_ids")  # vLLM: used as logits indices on the device (vLLM #54195: a bad one killed it)
    if v is not None and not (isinstance(v, list) and all(_is_id(t) for t in v)):
        raise _fail("stop_token_ids", "must be an array of token ids (non-negative integers)")


def _messages(body: dict[str, Any]) -> None:
    msgs = body.get("messages")
    if msgs is None:
        raise _fail("messages", "is required")
    if not isinstance(msgs, list) or not msgs:
        raise _fail("messages", "must be a non-empty array")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _fail(f"messages[{i}]", "must be an object")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object is unhashable: a 400, not a 500
            raise _fail(f"messages[{i}].role", f"must be one of {_ROLES_TEXT}")
        c = m.get("content")
        if c is None:
            if role not in ("assistant", "function") and "tool_calls" not in m:
                raise _fail(f"messages[{i}].content", "is required")
        elif isinstance(c, list):
            for j, part in enumerate(c):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _fail(f"messages[{i}].content[{j}]", "must be an object with a string 'type'")
        elif not isinstance(c, str):
            raise _fail(f"messages[{i}].content", "must be a string, an array of content parts or null")


def _text_or_tokens(body: dict[str, Any], key: str) -> None:
    v = body.get(key)
    if v is None:
        raise _fail(key, "is required")
    if isinstance(v, str):
        return
    # Token ids index the model's embedding rows: a negative one passed vLLM's vocabulary check (an upper
    # bound, until vLLM #51795) into the engine, where it is used as an index
    if isinstance(v, list) and v:
        if all(isinstance(x, str) for x in v) or all(_is_id(x) for x in v):
            return
        if all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in v):
            return
    raise _fail(key, "must be a string, an array of strings, or an array of token ids (non-negative integers) "
                     "or of arrays of them")


def _str(body: dict[str, Any], key: str) -> None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise _fail(key, "must be a string")


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("tools", "must be an array of tool objects")
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise _fail(f"tools[{i}]", "must be an object")
            if not isinstance(t.get("type"), str):
                raise _fail(f"tools[{i}].type", "must be a string")
            if t["type"] == "function":
                fn = t.get("function")
                if not isinstance(fn, dict):
                    raise _fail(f"tools[{i}].function", "must be an object")
                if not isinstance(fn.get("name"), str) or not fn["name"]:
                    raise _fail(f"tools[{i}].function.name", "must be a non-empty string")
    tc = body.get("tool_choice")
    if tc is not None and not isinstance(tc, str | dict):
        raise _fail("tool_choice", "must be a string or an object")
    _bool(body, "parallel_tool_calls")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict):
            raise _fail("response_format", "must be an object")
        if not isinstance(rf.get("type"), str):
            raise _fail("response_format.type", "must be a string")


def _chat(body: dict[str, Any]) -> None:
    _messages(body)
    _sampling(body)
    _tools(body)
    _bool(body, "logprobs")
    _int(body, "top_logprobs", 0, 20)
    # as vLLM's check_logprobs: 0 asks for nothing and is accepted without logprobs (clients send it as a default)
    if body.get("top_logprobs") and body.get("logprobs") is not True:
        raise _fail("top_logprobs", "requires logprobs to be true")
    _int(body, "best_of", 1, 128)  # vLLM's extension: checked here too, so it can never pass the n cap as "4"
    _int(body, "prompt_logprobs", 0, 20)


def _completions(body: dict[str, Any]) -> None:
    _text_or_tokens(body, "prompt")
    _sampling(body)
    _int(body, "logprobs", 0, 20)
    _bool(body, "echo")
    _int(body, "best_of", 1, 128)
    _int(body, "prompt_logprobs", 0, 20)  # vLLM's extension: logprobs of the prompt tokens


def _embeddings(body: dict[str, Any]) -> None:
    _text_or_tokens(body, "input")
    # As OpenAI's API: an input "cannot be an empty string". An empty one is still at least a token or two to the
    # backend (its special tokens) but nothing to the reservation (characters / 4): a 4 MB body of 1.4 M of them
    # reserved 1 token, so a client's burst of requests queued millions of embeddings before any was charged.
    v = body["input"]
    if v == "":
        raise _fail("input", "must not be an empty string")
    if type(v) is list and "" in v:
        raise _fail(f"input[{v.index('')}]", "must not be an empty string")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _fail("encoding_format", "must be one of 'float', 'base64'")
    _int(body, "dimensions", 1)
    if body.get("stream"):
        raise _fail("stream", "is not supported for embeddings")


_VALIDATORS = {"chat": _chat, "completions": _completions, "embeddings": _embeddings}

# Chat fields a completions server ignores (vLLM logs and drops unknown fields) but detection reads: a chat body
# is recognised by its ``messages``, whose last user turn is then scored instead of the prompt, and whose
# ``max_completion_tokens`` wins over ``max_tokens``.
_CHAT_ONLY = ("messages", "max_completion_tokens")


def _completions_view(body: dict[str, Any]) -> dict[str, Any]:
    """What detection reads of a legacy completions body that carries chat fields: the body without them. Read
    as it came, a stray ``messages: []`` (or one harmless user turn) beside the prompt hid the prompt, and
    legacy ``logprobs: k`` with it, from every detector, while the backend answered the prompt: a harvester
    blocked after 83 requests went unflagged. The body itself goes upstream unchanged."""
    return {k: v for k, v in body.items() if k not in _CHAT_ONLY}


def parse_request(endpoint: Endpoint, raw: bytes, models: Container[str]) -> ParsedRequest:
    """Decode and validate one request body; ``models`` is the set of model names the gateway serves."""
    if not raw:
        raise InvalidRequest("body: is empty; expected a JSON object", param="body")
    body = _decode(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("body: must be a JSON object", param="body")
    model = body.get("model")
    if model is None:
        raise _fail("model", "is required")
    if not isinstance(model, str) or not model:
        raise _fail("model", "must be a non-empty string")
    view = None
    if endpoint == "responses":
        from gateway.proxy.responses_request import responses_view  # it builds on this module's helpers

        _bool(body, "stream")
        stream = body.get("stream") is True
        client_usage = True  # a Responses stream always ends with its usage (response.completed): nothing to ask
        view = responses_view(body)
    else:
        stream, client_usage = _stream_fields(body)
        _VALIDATORS[endpoint](body)
        if endpoint == "completions" and ("messages" in body or "max_completion_tokens" in body):
            view = _completions_view(body)
    _str(body, "user")
    if model not in models:
        raise NotFound(f"model: {model!r} does not exist or you do not have access to it", param="model",
                       code="model_not_found")
    return ParsedRequest(endpoint, model, body, raw, stream, client_usage, view)
