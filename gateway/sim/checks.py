"""Request checks of the simulated chat and legacy completions endpoints, answered in vLLM 0.33's error JSON.

The sim used to read these fields with ``int(...)`` / ``.get`` and no checks: a string ``n`` or ``max_tokens``
was an aiohttp ``500 Internal Server Error`` page (not JSON), a non-object ``stream_options`` broke the stream
after its headers, and ``n: 0`` / ``max_tokens: -3`` were served as something else (one choice; the answer
minus its last three words). vLLM answers all of them 400 before generating. The checks below are the ones a
client (or a gateway that forwards a field unchecked) can trip over, in the two shapes vLLM uses: pydantic's
(``type: "Bad Request"``, ``param: "body.<field>"``) for a field of the wrong type, and
``VLLMValidationError``'s (``type: "BadRequestError"``, ``param`` the sampling parameter) for a value that
``SamplingParams`` refuses (``vllm/sampling_params.py``). Messages follow vLLM's in form, not byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.sim.responses_errors import MAX_LOGPROBS, _validation_error, _vllm_validation_error, error_response


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _prompt_ok(p: Any) -> bool:
    """str | list[str] | list[int] | list[list[int]], non-empty (vLLM's CompletionRequest.prompt)."""
    if isinstance(p, str):
        return True
    if not isinstance(p, list) or not p:
        return False
    if all(isinstance(x, str) for x in p) or all(_is_int(x) for x in p):
        return True
    return all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in p)


def _bad_request(message: str, param: str, value: Any = None) -> web.Response:
    """A ``VLLMValidationError`` from ``SamplingParams``: its str() carries the parameter and value."""
    extras = f"parameter={param}" + (f", value={value}" if value is not None else "")
    return error_response(400, f"{message} ({extras})", "BadRequestError", param)


def check_xargs(body: Mapping[str, Any]) -> web.Response | None:
    """``vllm_xargs`` is an object (vLLM: ``dict[str, str | int | float | list[...]]``); anything else is a 400,
    not a crash of the emulated KGW plugin, which reads it as a mapping."""
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        return _validation_error(body, "body.vllm_xargs", "dict_type", "Input should be a valid dictionary",
                                 value=xargs)
    return None


def check_request(endpoint: str, body: Mapping[str, Any]) -> web.Response | None:
    """vLLM's 400 for a chat (``endpoint == "chat"``) or completions body it would refuse; None to serve it."""
    bad_xargs = check_xargs(body)
    if bad_xargs is not None:
        return bad_xargs
    if endpoint == "chat":
        msgs = body.get("messages")
        if "messages" not in body:
            return _validation_error(body, "body.messages", "missing", "Field required")
        if not isinstance(msgs, list):
            return _validation_error(body, "body.messages", "list_type", "Input should be a valid list", value=msgs)
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                return _validation_error(body, f"body.messages.{i}", "model_type",
                                         "Input should be a valid dictionary or object", value=m)
            c = m.get("content")
            if c is not None and not isinstance(c, str | list):
                return _validation_error(body, f"body.messages.{i}.content", "string_type",
                                         "Input should be a valid string", value=c)
            for j, part in enumerate(c if isinstance(c, list) else []):
                if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                    return _validation_error(body, f"body.messages.{i}.content.{j}", "model_type",
                                             "Input should be a valid content part", value=part)
    elif not _prompt_ok(body.get("prompt")):
        return _validation_error(body, "body.prompt", "union_tag_invalid",
                                 "Input should be a string, a list of strings, a list of token ids or a list "
                                 "of lists of token ids", value=body.get("prompt"))
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        return _validation_error(body, "body.stream_options", "model_type",
                                 "Input should be a valid dictionary or instance of StreamOptions", value=so)
    if so and not body.get("stream"):  # validate_stream_options, a model_validator(mode="before")
        return _vllm_validation_error(body, "Stream options can only be defined when `stream=True`.",
                                      "stream_options")
    top = body.get("top_logprobs")
    if endpoint == "chat" and top is not None:  # check_logprobs, a model_validator(mode="before")
        if not isinstance(top, int | float):
            return _vllm_validation_error(body, "`top_logprobs` must be an integer.", "top_logprobs")
        if top < 0 and top != -1:
            return _vllm_validation_error(body, "`top_logprobs` must be a positive value or -1.", "top_logprobs")
        if (top == -1 or top > 0) and not body.get("logprobs"):
            return _vllm_validation_error(body, "when using `top_logprobs`, `logprobs` must be set to true.",
                                          "top_logprobs")
    ints = ("n", "max_tokens", "max_completion_tokens", "top_logprobs") if endpoint == "chat" else (
        "n", "max_tokens", "logprobs")
    for name in ints:
        v = body.get(name)
        if v is not None and not _is_int(v):
            return _validation_error(body, f"body.{name}", "int_type", "Input should be a valid integer", value=v)
    n = body.get("n")
    if n is not None and n < 1:
        return error_response(400, f"n must be at least 1, got {n}.", "BadRequestError", "n")
    for name in ("max_completion_tokens", "max_tokens"):
        mt = body.get(name)
        if mt is not None and mt < 1:  # both land in SamplingParams.max_tokens
            return _bad_request(f"max_tokens must be at least 1, got {mt}.", "max_tokens", mt)
    top = (top if body.get("logprobs") else None) if endpoint == "chat" else body.get("logprobs")
    if top is not None and (top > MAX_LOGPROBS or top < 0):  # -1 asks for the whole vocabulary: over the cap too
        return _bad_request(f"Requested sample logprobs of {top}, which is greater than max allowed: {MAX_LOGPROBS}",
                            "logprobs", top)
    return None


def check_embeddings(body: Mapping[str, Any]) -> web.Response | None:
    """vLLM's 400 for an embeddings body it would refuse (the sim pretends to be a Matryoshka model, so any
    ``dimensions`` from 1 up is served); None to serve it."""
    if not _prompt_ok(body.get("input")):
        return _validation_error(body, "body.input", "union_tag_invalid",
                                 "Input should be a string, a list of strings, a list of token ids or a list "
                                 "of lists of token ids", value=body.get("input"))
    dim = body.get("dimensions")
    if dim is not None and not _is_int(dim):
        return _validation_error(body, "body.dimensions", "int_type", "Input should be a valid integer", value=dim)
    if dim is not None and dim < 1:  # PoolingParams: 1 <= dimensions <= the model's embedding size
        return _bad_request(f"dimensions must be at least 1, got {dim}.", "dimensions", dim)
    return None
