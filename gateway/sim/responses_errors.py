"""Request checks of the simulated ``POST /v1/responses``, answered in vLLM 0.33's error JSON.

vLLM validates a ``ResponsesRequest`` with pydantic (FastAPI's ``RequestValidationError`` becomes
``{"error": {"message": "1 validation error: ...", "type": "Bad Request", "param": "body.<field>", "code": 400}}``
in ``entrypoints/serve/exception_handling/handlers/validation.py``); a ``VLLMValidationError`` raised while the
request is served becomes ``type: "BadRequestError"`` with its ``parameter`` as ``param``
(``exception_handling/error_response.py``). The sim makes the checks a client can trip over, in vLLM's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

LOGPROBS_INCLUDE = "message.output_text.logprobs"
_INCLUDE_VALUES = frozenset({  # protocol.py ResponsesRequest.include: the Literal vLLM accepts
    "code_interpreter_call.outputs", "computer_call_output.output.image_url", "file_search_call.results",
    "message.input_image.image_url", LOGPROBS_INCLUDE, "reasoning.encrypted_content"})
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
_ITEM_TYPES = frozenset({  # input item types the sim reads or tolerates (vLLM validates each against the SDK)
    "message", "function_call", "function_call_output", "reasoning", "item_reference"})


def error_response(status: int, message: str, etype: str, param: str | None) -> web.Response:
    """vLLM's ``ErrorResponse``: ``{"error": {message, type, param, code}}`` with the HTTP status as code."""
    return web.json_response({"error": {"message": message, "type": etype, "param": param, "code": status}},
                             status=status)


def _validation_error(body: Mapping[str, Any], loc: str, etype: str, msg: str, param: str | None = None,
                      value: Any = ...) -> web.Response:
    """What FastAPI's ``RequestValidationError`` becomes in vLLM (exception_handling/handlers/validation.py):
    one pydantic error rendered as a dict, the input summarised, ``type`` the HTTP phrase."""
    shown = value if value is not ... else body
    summary = (f"<{type(shown).__name__} of {len(shown)} items>" if isinstance(shown, (list, dict))
               else shown if isinstance(shown, str) else str(shown))
    if len(summary) > 200:  # _summarize_error_input
        summary = summary[:200] + "...[truncated]"
    err = {"type": etype, "loc": loc, "msg": msg, "input": summary}
    return error_response(400, f"1 validation error:\n  {err}", "Bad Request", param or loc)


def _vllm_validation_error(body: Mapping[str, Any], message: str, parameter: str) -> web.Response:
    """A ``VLLMValidationError`` raised by a ``model_validator(mode="before")`` of ``ResponsesRequest``."""
    exc = f"VLLMValidationError({message!r})"
    err = {"type": "value_error", "loc": "body", "msg": f"Value error, {message} (parameter={parameter})",
           "input": f"<dict of {len(body)} items>", "ctx": {"error": exc}}
    return error_response(400, f"1 validation error:\n  {err}", "Bad Request", parameter)


def validate_request(body: Mapping[str, Any]) -> web.Response | None:
    """The request checks vLLM 0.33 makes before generating, in its order; None when the request is served."""
    if body.get("prompt") is not None:
        return _vllm_validation_error(body, "prompt template is not supported", "prompt")
    tools, choice = body.get("tools"), body.get("tool_choice", "auto")
    named = isinstance(choice, dict) and choice.get("type") in ("function", "custom")
    if not tools:
        if choice == "required":
            return _vllm_validation_error(
                body, "Tool choice 'required' must be specified with 'tools' parameter.", "tool_choice")
        if named:
            return _vllm_validation_error(body, "Tool choice 'function' not found in 'tools' parameter.",
                                          "tool_choice")
    elif named and find_tool(tools, str(choice.get("name") or "")) is None:
        return _vllm_validation_error(body, "Tool choice 'function' not found in 'tools' parameter.", "tool_choice")
    if "input" not in body:
        return _validation_error(body, "body.input", "missing", "Field required")
    inp = body["input"]
    if not isinstance(inp, (str, list)):
        return _validation_error(body, "body.input", "string_type", "Input should be a valid string", value=inp)
    if isinstance(inp, list):
        for i, item in enumerate(inp):
            if not isinstance(item, dict) or (item.get("type", "message") not in _ITEM_TYPES) or (
                    item.get("type", "message") == "message" and "role" not in item):
                return _validation_error(body, f"body.input.{i}", "model_type",
                                         "Input should be a valid dictionary or instance of a response item",
                                         value=item)
    mot = body.get("max_output_tokens")
    if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool)):
        return _validation_error(body, "body.max_output_tokens", "int_type", "Input should be a valid integer",
                                 value=mot)
    if isinstance(mot, int) and mot < 1:  # SamplingParams._verify_args: a VLLMValidationError, str() with extras
        return error_response(400, f"max_tokens must be at least 1, got {mot}. (parameter=max_tokens, "
                              f"value={mot})", "BadRequestError", "max_tokens")
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or any(v not in _INCLUDE_VALUES for v in include)):
        return _validation_error(body, "body.include", "literal_error",
                                 "Input should be " + ", ".join(f"'{v}'" for v in sorted(_INCLUDE_VALUES)),
                                 value=include)
    top = body.get("top_logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool)):
        return _validation_error(body, "body.top_logprobs", "int_type", "Input should be a valid integer", value=top)
    if top is not None and top > MAX_LOGPROBS and LOGPROBS_INCLUDE in (include or []):
        # SamplingParams._validate_logprobs (only when logprobs are actually sampled)
        return error_response(400, f"Requested sample logprobs of {top}, which is greater than max allowed: "
                              f"{MAX_LOGPROBS} (parameter=logprobs, value={top})", "BadRequestError", "logprobs")
    if body.get("background") and body.get("store", True):  # _validate_create_responses_input (no store)
        return error_response(400, "This vLLM engine does not support `store=True` and therefore does not support "
                              "the background mode. To enable these features, set the environment variable "
                              "`VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.",
                              "invalid_request_error", "background")
    if body.get("previous_response_id") is not None:  # the store is off by default, so no id is ever found
        rid = body["previous_response_id"]
        return error_response(404, f"Response with id '{rid}' not found.", "invalid_request_error", "response_id")
    return None


def find_tool(tools: Any, name: str | None) -> Mapping[str, Any] | None:
    """The function tool called ``name`` (None: the first function tool)."""
    for t in tools if isinstance(tools, list) else []:
        if isinstance(t, dict) and t.get("type") == "function" and (name is None or t.get("name") == name):
            return t
    return None
