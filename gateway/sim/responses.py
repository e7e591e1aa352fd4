"""The simulated backend's ``POST /v1/responses``: the OpenAI Responses API as vLLM 0.33 serves it.

Emulated from vLLM's non-Harmony path (``vllm/entrypoints/openai/responses/``: ``serving.py``
``responses_full_generator`` / ``responses_stream_generator`` / ``_process_simple_streaming_events``,
``streaming_events.py`` ``emit_simple_*``, ``utils.py`` ``build_response_output_items``, ``protocol.py``
``ResponsesResponse.from_request``); each builder below names the vLLM function it follows.

- text: the same corpus choice as the chat sim, keyed on ``instructions`` + the input messages' text;
- ``SimOptions.reasoning``: a server with a reasoning parser: a ``reasoning`` item (``reasoning_text``
  content) precedes the message, streamed as ``response.reasoning_text.delta``;
- ``tools`` + ``tool_choice`` ``"required"`` or a named function: one ``function_call`` item whose
  ``arguments`` JSON is filled deterministically from the tool's parameter schema (no message item);
- ``max_output_tokens`` caps reasoning + answer together; a cut answer is ``status: "incomplete"`` with
  ``incomplete_details.reason = "max_output_tokens"`` and the stream ends with ``response.incomplete``;
- logprobs with ``include: ["message.output_text.logprobs"]`` (+ ``top_logprobs``);
- the SSE stream has no ``data: [DONE]`` (vLLM's ``_convert_stream_to_sse_events`` writes none);
- bad input: vLLM's validation error JSON (``type: "Bad Request"``, ``param`` naming the field, ``code: 400``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.sim import SSE_HEADERS
from gateway.sim.corpus import alternatives, count_tokens, pick, tokenize
from gateway.sim.intake import intake, record_abort
from gateway.sim.responses_errors import LOGPROBS_INCLUDE, error_response, find_tool, validate_request
from gateway.sim.state import SimOptions, SimStats

log = logging.getLogger(__name__)

MAX_MODEL_LEN = 8192  # the emulated engine's context (tokens as the sim counts them)


def _rid() -> str:
    """vLLM's ``random_uuid()``: 16 hex digits (``vllm/utils/__init__.py``)."""
    return f"{uuid.uuid4().int & (2**64 - 1):016x}"


# ------------------------------------------------------------------------------------------- planning

def _prompt_text(body: Mapping[str, Any]) -> str:
    parts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    inp = body.get("input")
    if isinstance(inp, str):
        parts.append(inp)
    for item in inp if isinstance(inp, list) else []:
        content = item.get("content", item.get("output"))
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def _value(schema: Any, words: list[str], key: str) -> Any:
    """A deterministic value that fits a JSON-schema fragment (what a constrained decoder would produce)."""
    s = schema if isinstance(schema, dict) else {}
    if isinstance(s.get("enum"), list) and s["enum"]:
        return s["enum"][_h(key) % len(s["enum"])]
    kind = s.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "integer":
        return _h(key) % 100
    if kind == "number":
        return round((_h(key) % 10000) / 100, 2)
    if kind == "boolean":
        return _h(key) % 2 == 0
    if kind == "array":
        return [_value(s.get("items"), words, key + "[0]")]
    if kind == "object":
        return _arguments(s, words)
    start = _h(key) % max(len(words) - 3, 1)
    return "".join(words[start:start + 3]).strip()


def _arguments(params: Any, words: list[str]) -> dict[str, Any]:
    props = params.get("properties") if isinstance(params, dict) else None
    if not isinstance(props, dict):
        return {}
    required = params.get("required") if isinstance(params.get("required"), list) else list(props)
    return {k: _value(v, words, k) for k, v in props.items() if k in required}


@dataclass(frozen=True, slots=True)
class _Plan:
    """One request's output: the token pieces of each part, already cut to ``max_output_tokens``."""

    prompt_tokens: int
    max_tokens: int
    thought: list[str]  # reasoning pieces (empty without SimOptions.reasoning)
    text: list[str]  # the answer's pieces (empty when a tool is called)
    call_name: str | None  # the function called, if any
    call_args: list[str]  # the arguments JSON, piece by piece
    call_complete: bool  # the arguments were not cut (so the non-streamed answer can parse them)
    finish: str  # "stop" | "length"
    top_logprobs: int | None  # None: logprobs not requested
    parser: bool  # the emulated server has a response parser (reasoning or tool parser)

    @property
    def output_tokens(self) -> int:
        return len(self.thought) + len(self.text) + len(self.call_args)


def _plan(body: Mapping[str, Any], opts: SimOptions) -> _Plan:
    prompt = _prompt_text(body)
    prompt_tokens = count_tokens(prompt) + 3
    # get_max_tokens (serve/utils/api_utils.py): what the context leaves, capped by max_output_tokens. Not the
    # sim's default_max_tokens: a vLLM without --max-tokens lets a long chain of thought + answer complete.
    mt = min(MAX_MODEL_LEN - prompt_tokens, int(body.get("max_output_tokens") or MAX_MODEL_LEN))
    thought = list(pick(prompt + "\x1fthink").tokens) if opts.reasoning else []
    choice, tools = body.get("tool_choice", "auto"), body.get("tools")
    tool = (find_tool(tools, None) if choice == "required" else
            find_tool(tools, str(choice.get("name"))) if isinstance(choice, dict) else None)
    answer, args = list(pick(prompt).tokens), []
    if tool is not None:
        args = tokenize(json.dumps(_arguments(tool.get("parameters"), answer), ensure_ascii=False))
        answer = []
    wanted = len(thought) + len(answer) + len(args)
    budget = max(mt - len(thought), 0)  # what the chain of thought leaves for the answer or the call
    thought, kept_args = thought[:mt], args[:budget]
    include = body.get("include") or []
    return _Plan(
        prompt_tokens=prompt_tokens, max_tokens=mt, thought=thought, text=answer[:budget],
        call_name=str(tool["name"]) if tool is not None else None, call_args=kept_args,
        call_complete=len(kept_args) == len(args), finish="length" if wanted > mt else "stop",
        top_logprobs=int(body.get("top_logprobs") or 0) if LOGPROBS_INCLUDE in include else None,
        parser=opts.reasoning or tool is not None)


# -------------------------------------------------------------------------------------------- shapes

def _logprobs(tokens: list[str], start: int, top: int, *, stream: bool) -> list[dict[str, Any]]:
    """serving.py ``_create_response_logprobs``; streamed deltas drop ``bytes`` (``_to_stream_logprobs``)."""
    out = []
    for i, t in enumerate(tokens, start):
        alts = alternatives(t, i, max(top, 1))
        if stream:
            out.append({"token": t, "logprob": alts[0][1],
                        "top_logprobs": [{"token": a, "logprob": lp} for a, lp in alts[:top]]})
        else:
            out.append({"token": t, "bytes": list(t.encode()), "logprob": alts[0][1],
                        "top_logprobs": [{"token": a, "bytes": list(a.encode()), "logprob": lp}
                                         for a, lp in alts[:top]]})
    return out


def _usage(plan: _Plan) -> dict[str, Any]:
    """serving.py ``responses_full_generator``: vLLM's ``ResponseUsage`` (per-turn lists stay empty for a
    single-turn ``SimpleContext``; ``reasoning_tokens`` is counted by the reasoning parser)."""
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0, "input_tokens_per_turn": [],
                                 "cached_tokens_per_turn": []},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": len(plan.thought), "tool_output_tokens": 0,
                                  "output_tokens_per_turn": [], "tool_output_tokens_per_turn": []},
        "total_tokens": plan.prompt_tokens + plan.output_tokens,
    }


def _response(body: Mapping[str, Any], opts: SimOptions, plan: _Plan, rid: str, created: int, status: str,
              output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """protocol.py ``ResponsesResponse.from_request``, every field in vLLM's order (nulls included)."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    if not tools and choice in ("auto", "none"):  # check_tool_usage rewrites it
        choice = "none"
    return {
        "id": rid, "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "metadata": body.get("metadata"),
        "model": body.get("model") or opts.model, "object": "response", "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "temperature": body.get("temperature") if body.get("temperature") is not None else 1.0,
        "tool_choice": choice, "tools": tools,
        "top_p": body.get("top_p") if body.get("top_p") is not None else 1.0,
        "background": bool(body.get("background")), "max_output_tokens": plan.max_tokens,
        "max_tool_calls": body.get("max_tool_calls"), "previous_response_id": None, "prompt": None,
        "prompt_cache_options": body.get("prompt_cache_options"), "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"), "reasoning": body.get("reasoning"),
        "safety_identifier": body.get("safety_identifier"), "service_tier": body.get("service_tier", "auto"),
        "status": status, "text": body.get("text"), "top_logprobs": plan.top_logprobs,
        "truncation": body.get("truncation") or "disabled", "usage": usage, "user": body.get("user"),
        "presence_penalty": body.get("presence_penalty") or 0.0,
        "frequency_penalty": body.get("frequency_penalty") or 0.0,
        "kv_transfer_params": None, "ec_transfer_params": None, "input_messages": None, "output_messages": None,
    }


def _text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _message(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message",
            "phase": None}


def _reasoning(item_id: str, text: str | None, status: str | None) -> dict[str, Any]:
    content = None if text is None else [{"text": text, "type": "reasoning_text"}]
    return {"id": item_id, "summary": [], "type": "reasoning", "content": content, "encrypted_content": None,
            "status": status}


def _call(item_id: str, call_id: str, name: str, arguments: str, status: str, *, added: bool = False
          ) -> dict[str, Any]:
    """``ResponseFunctionToolCall``; the ``output_item.added`` one is a ``ResponseFunctionToolCallItem``."""
    item = {"arguments": arguments, "call_id": call_id, "name": name, "type": "function_call", "id": item_id,
            "async": None, "caller": None, "namespace": None, "status": status}
    return {**item, "created_by": None} if added else item


def _full_output(plan: _Plan) -> list[dict[str, Any]]:
    """The non-streamed output items. With a parser: utils.py ``build_response_output_items`` (reasoning item
    ``status: null``; no message without text; logprobs over ALL generated tokens, reasoning included, because
    vLLM computes them from ``final_output.token_ids``). Without: serving.py's fallback, one message always."""
    last = "incomplete" if plan.finish == "length" else "completed"
    text = "".join(plan.text)
    lp = (_logprobs(plan.thought + plan.text, 0, plan.top_logprobs, stream=False)
          if plan.top_logprobs is not None else None)
    if not plan.parser:
        return [_message(f"msg_{_rid()}", [_text_part(text, lp)] if text else [], last)]
    items = []
    if plan.thought:
        items.append(_reasoning(f"rs_{_rid()}", "".join(plan.thought), None))
    if text:
        items.append(_message(f"msg_{_rid()}", [_text_part(text, lp)], last))
    if plan.call_name is not None and plan.call_complete:  # a cut JSON list parses to no call at all
        items.append(_call(f"fc_{_rid()}", f"chatcmpl-tool-{_rid()}", plan.call_name, "".join(plan.call_args),
                           last))
    return items


# ----------------------------------------------------------------------------------------- handlers

async def create_response(request: web.Request) -> web.StreamResponse:
    pre = await intake(request)
    if isinstance(pre, web.Response):
        return pre
    opts, stats, body = pre
    refused = validate_request(body)
    if refused is not None:
        log.info("sim: /v1/responses refused: %s", refused.text)
        return refused
    plan = _plan(body, opts)
    if plan.prompt_tokens >= MAX_MODEL_LEN:  # serving.py _validate_generator_input
        return error_response(400, f"The engine prompt length {plan.prompt_tokens} exceeds the max_model_len "
                              f"{MAX_MODEL_LEN}. Please reduce prompt.", "invalid_request_error", "input")
    rid, created = f"resp_{_rid()}", int(time.time())
    if body.get("stream"):
        return await _stream(request, body, opts, stats, plan, rid, created)
    stats.completed += 1
    status = "incomplete" if plan.finish == "length" else "completed"
    return web.json_response(_response(body, opts, plan, rid, created, status, _full_output(plan), _usage(plan)),
                             dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def _stream(request: web.Request, body: Mapping[str, Any], opts: SimOptions, stats: SimStats, plan: _Plan,
                  rid: str, created: int) -> web.StreamResponse:
    """responses_stream_generator + _process_simple_streaming_events + the emit_simple_* helpers."""
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    seq, sent, idx = 0, 0, 0
    delay = 1.0 / opts.tokens_per_s if opts.tokens_per_s > 0 else 0.0
    items: list[dict[str, Any]] = []  # the output_item.done items: the final response's output
    last = "incomplete" if plan.finish == "length" else "completed"

    async def emit(etype: str, **fields: Any) -> None:
        nonlocal seq
        event = {"type": etype, "sequence_number": seq, **fields}
        seq += 1
        await resp.write(f"event: {etype}\ndata: {_dumps(event)}\n\n".encode())

    async def pace() -> bool:
        """Failure injection and rate, before each generated token; False when the connection was cut."""
        nonlocal sent
        if opts.cut_after is not None and sent >= opts.cut_after:
            stats.cut += 1
            if request.transport is not None:
                request.transport.abort()  # an abrupt cut: no terminal event
            return False
        if opts.stall_after is not None and sent >= opts.stall_after:
            await asyncio.sleep(3600)
        if delay:
            await asyncio.sleep(delay)
        sent += 1
        return True

    try:
        initial = _response(body, opts, plan, rid, created, "in_progress", [], None)
        await emit("response.created", response=initial)
        await emit("response.in_progress", response=initial)
        if plan.thought:  # emit_simple_reasoning_open / _delta / _done
            item_id, status = f"rs_{_rid()}", "completed" if plan.text or plan.call_args else last
            await emit("response.output_item.added", output_index=idx, item=_reasoning(item_id, None, "in_progress"))
            await emit("response.content_part.added", output_index=idx, item_id=item_id, content_index=0,
                       part={"text": "", "type": "reasoning_text"})
            for tok in plan.thought:
                if not await pace():
                    return resp
                await emit("response.reasoning_text.delta", item_id=item_id, output_index=idx, content_index=0,
                           delta=tok)
            text = "".join(plan.thought)
            await emit("response.reasoning_text.done", item_id=item_id, output_index=idx, content_index=0, text=text)
            await emit("response.content_part.done", item_id=item_id, output_index=idx, content_index=0,
                       part={"text": text, "type": "reasoning_text"})
            items.append(_reasoning(item_id, text, status))
            await emit("response.output_item.done", output_index=idx, item=items[-1])
            idx += 1
        if plan.text:  # emit_simple_content_open / _delta / _done
            item_id = f"msg_{_rid()}"
            await emit("response.output_item.added", output_index=idx, item=_message(item_id, [], "in_progress"))
            await emit("response.content_part.added", output_index=idx, item_id=item_id, content_index=0,
                       part=_text_part("", []))
            for pos, tok in enumerate(plan.text, len(plan.thought)):  # positions as in the non-streamed answer
                if not await pace():
                    return resp
                lp = _logprobs([tok], pos, plan.top_logprobs, stream=True) if plan.top_logprobs is not None else []
                await emit("response.output_text.delta", content_index=0, output_index=idx, item_id=item_id,
                           delta=tok, logprobs=lp)
            text = "".join(plan.text)
            top = plan.top_logprobs
            acc = _logprobs(plan.text, len(plan.thought), top, stream=False) if top is not None else None
            part = _text_part(text, acc)
            await emit("response.output_text.done", output_index=idx, content_index=0, text=text, logprobs=[],
                       item_id=item_id)
            await emit("response.content_part.done", item_id=item_id, output_index=idx, content_index=0, part=part)
            items.append(_message(item_id, [part], last))
            await emit("response.output_item.done", output_index=idx, item=items[-1])
            idx += 1
        if plan.call_name is not None and plan.call_args:  # emit_simple_tool_call_open / _delta / _done
            item_id, call_id = f"fc_{_rid()}", f"chatcmpl-tool-{_rid()}"
            await emit("response.output_item.added", output_index=idx,
                       item=_call(item_id, call_id, plan.call_name, "", "in_progress", added=True))
            for tok in plan.call_args:
                if not await pace():
                    return resp
                await emit("response.function_call_arguments.delta", output_index=idx, item_id=item_id, delta=tok)
            args = "".join(plan.call_args)
            await emit("response.function_call_arguments.done", output_index=idx, item_id=item_id, arguments=args,
                       name=plan.call_name)
            items.append(_call(item_id, call_id, plan.call_name, args, last))
            await emit("response.output_item.done", output_index=idx, item=items[-1])
        status = "incomplete" if plan.finish == "length" else "completed"
        await emit(f"response.{status}", response=_response(body, opts, plan, rid, created, status, items,
                                                            _usage(plan)))
        await resp.write_eof()
    except (asyncio.CancelledError, ConnectionError):
        record_abort(stats, sent)
        raise
    stats.completed += 1
    return resp
