"""Validation of an OpenAI Responses API request (``POST /v1/responses``) and its chat-shaped reading.

The gateway's detectors, rate limiter and accounting read chat requests (``messages``, ``max_tokens``,
``logprobs``/``top_logprobs``). ``responses_view`` validates a Responses body (every error a 400 naming the
field) and returns the chat-shaped *view* of it they read: ``instructions`` -> a system message, ``input`` ->
user/assistant/tool messages, ``max_output_tokens`` -> ``max_tokens``, ``top_logprobs`` and
``include: ["message.output_text.logprobs"]`` -> ``logprobs``/``top_logprobs``. The body forwarded upstream is
the client's own (hardened in ``gateway/shape.py``); the view is never sent anywhere.

Refused, because they would take output around the client's watermark or around detection:

- ``background: true``: the answer is fetched later through ``GET /v1/responses/{id}``, which the gateway
  does not proxy (it would be served unwatermarked by the backend, or never at all);
- ``previous_response_id``: the backend would continue a conversation it stored itself. Detection and the
  token estimate would not see that context, and a response id is the backend's, not the client's: any
  client knowing (or guessing) another client's id would continue that client's conversation. Clients send
  the conversation in ``input`` instead (the stateless form every SDK supports);
- ``enable_response_messages`` (vLLM: the raw output messages beside the answer, unwatermarked),
  ``previous_input_messages`` (vLLM: harmony context detection does not see), ``prompt`` (a stored prompt
  template) and ``conversation`` (OpenAI's stored conversations): see ``_REFUSED``;
- input items the gateway cannot read (images, files, item references, built-in tool items): what detection
  cannot read it cannot score.
"""

from __future__ import annotations

from typing import Any

from gateway.proxy.parse import MAX_TOKENS_FIELD, _bool, _fail, _int, _is_int, _logit_bias, _num, _str

LOGPROBS_INCLUDE = "message.output_text.logprobs"
_MESSAGE_ROLES = frozenset({"user", "system", "developer", "assistant"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
_FORMATS = frozenset({"text", "json_schema", "json_object"})


# fields vLLM 0.33's ResponsesRequest (or OpenAI's API) honours that take output around the watermark or context
# around detection; refused whenever set (``enable_response_messages: false`` is the default, so it is accepted)
_REFUSED = {
    "enable_response_messages": "'enable_response_messages' is not available through this gateway (the backend "
                                "would return the model's raw output tokens beside the watermarked answer)",
    "previous_input_messages": "'previous_input_messages' is not available through this gateway (context that "
                               "detection cannot read); send the conversation in 'input'",
    "prompt": "'prompt' (a stored prompt template) is not available through this gateway (a template detection "
              "cannot read); send the text in 'instructions' and 'input'",
    "conversation": "'conversation' (a stored conversation) is not available through this gateway; send the "
                    "whole conversation in 'input'",
}


def wants_logprobs(body: dict[str, Any]) -> bool:
    """vLLM returns output logprobs only when ``include`` names them (``top_logprobs`` alone returns none)."""
    inc = body.get("include")
    return isinstance(inc, list) and LOGPROBS_INCLUDE in inc


def _text_content(c: Any, field: str) -> str:
    if isinstance(c, str):
        return c
    if not isinstance(c, list):
        raise _fail(field, "must be a string or an array of content parts")
    texts = []
    for j, part in enumerate(c):
        if not isinstance(part, dict):
            raise _fail(f"{field}[{j}]", "must be an object")
        t = part.get("type")
        if t == "refusal" and isinstance(part.get("refusal"), str):  # an earlier answer's refusal, replayed
            texts.append(part["refusal"])
            # vLLM reads a replayed part's ``text`` whatever its type (harmony: every part's; chat templates: the
            # first part's of an assistant message, kept as an extra field of ResponseOutputRefusal): a ``text``
            # beside the refusal is prompt the model reads, so the view reads it too
            if part.get("text") is not None:
                if not isinstance(part["text"], str):
                    raise _fail(f"{field}[{j}].text", "must be a string")
                texts.append(part["text"])
            continue
        if not isinstance(t, str) or t not in _TEXT_PARTS:  # a list or object is unhashable: a 400, not a 500
            raise _fail(f"{field}[{j}].type", f"{t!r} is not supported by this gateway (text parts only: "
                        "'input_text', 'output_text')")
        if not isinstance(part.get("text"), str):
            raise _fail(f"{field}[{j}].text", "must be a string")
        texts.append(part["text"])
    return "\n".join(texts)


def _input_messages(v: Any) -> list[dict[str, Any]]:
    if isinstance(v, str):
        return [{"role": "user", "content": v}]
    if not isinstance(v, list) or not v:
        raise _fail("input", "must be a string or a non-empty array of input items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(v):
        f = f"input[{i}]"
        if not isinstance(item, dict):
            raise _fail(f, "must be an object")
        t = item.get("type", "message")
        if t == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in _MESSAGE_ROLES:
                raise _fail(f"{f}.role", "must be one of 'assistant', 'developer', 'system', 'user'")
            out.append({"role": role, "content": _text_content(item.get("content"), f"{f}.content")})
        elif t == "function_call":  # the model's earlier tool call, replayed by the client
            for k in ("name", "arguments", "call_id"):
                if not isinstance(item.get(k), str):
                    raise _fail(f"{f}.{k}", "must be a string")
            out.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": item["call_id"], "type": "function",
                 "function": {"name": item["name"], "arguments": item["arguments"]}}]})
        elif t == "reasoning":  # the model's earlier thought, replayed (``input=previous.output + [...]``)
            if item.get("encrypted_content") is not None:
                raise _fail(f"{f}.encrypted_content", "is not supported by this gateway (send the text in "
                            "'content')")
            texts = [_text_content(item.get(k), f"{f}.{k}") for k in ("summary", "content")
                     if item.get(k) is not None]
            out.append({"role": "assistant", "content": "\n".join(x for x in texts if x)})
        elif t == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _fail(f"{f}.call_id", "must be a string")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": _text_content(item.get("output"), f"{f}.output")})
        else:
            raise _fail(f"{f}.type", f"{t!r} is not supported by this gateway (supported: 'message', "
                        "'function_call', 'function_call_output', 'reasoning')")
    return out


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("tools", "must be an array of tool objects")
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise _fail(f"tools[{i}]", "must be an object")
            if t.get("type") != "function":
                raise _fail(f"tools[{i}].type", f"{t.get('type')!r} is not supported by this gateway "
                            "(function tools only)")
            if not isinstance(t.get("name"), str) or not t["name"]:
                raise _fail(f"tools[{i}].name", "must be a non-empty string")
    tc = body.get("tool_choice")
    if tc is not None and not isinstance(tc, str | dict):
        raise _fail("tool_choice", "must be a string or an object")
    _bool(body, "parallel_tool_calls")


def _text_format(body: dict[str, Any]) -> None:
    text = body.get("text")
    if text is None:
        return
    if not isinstance(text, dict):
        raise _fail("text", "must be an object")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str) or fmt["type"] not in _FORMATS:
        raise _fail("text.format.type", "must be one of 'json_object', 'json_schema', 'text'")


def responses_view(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a Responses body (``model``/``stream`` are checked by the caller); return its chat view."""
    if body.get("background") is True:
        raise _fail("background", "background responses are not available through this gateway (their "
                    "result is fetched later through GET /v1/responses/{id}, which it does not serve)")
    _bool(body, "background")
    if body.get("previous_response_id") is not None:
        raise _fail("previous_response_id", "stored conversations are not available through this gateway; "
                    "send the whole conversation in 'input'")
    _bool(body, "store")
    for name, why in _REFUSED.items():
        if body.get(name) not in (None, False):
            raise _fail(name, why)
    if "input" not in body or body["input"] is None:
        raise _fail("input", "is required")
    messages = _input_messages(body["input"])
    _str(body, "instructions")
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    _int(body, "max_output_tokens", 1, MAX_TOKENS_FIELD)
    _num(body, "temperature", 0, 2)
    _num(body, "top_p", 0, 1)
    _int(body, "top_logprobs", 0, 20)
    _int(body, "seed", -(2**63), 2**63 - 1)
    # vLLM's ResponsesRequest takes logit_bias as chat does (and coerces "100" to 100): checked as on chat, or
    # a string value passed the tier's max_abs_logit_bias clamp, which clamps numbers only
    _logit_bias(body)
    inc = body.get("include")
    if inc is not None and (not isinstance(inc, list) or not all(isinstance(x, str) for x in inc)):
        raise _fail("include", "must be an array of strings")
    _text_format(body)
    _tools(body)
    r = body.get("reasoning")
    if r is not None and not isinstance(r, dict):
        raise _fail("reasoning", "must be an object")
    view: dict[str, Any] = {"messages": messages}
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                     ("seed", "seed"), ("logit_bias", "logit_bias")):
        if body.get(src) is not None:
            view[dst] = body[src]
    if body.get("tools") is not None:  # prompt text the token estimate charges (no detector reads it)
        view["tools"] = body["tools"]
    top = body.get("top_logprobs")
    if wants_logprobs(body):
        view["logprobs"] = True
        view["top_logprobs"] = top if _is_int(top) else 0
    return view
