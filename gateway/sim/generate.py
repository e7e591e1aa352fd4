"""The sim's chat and legacy completions endpoints: a planned generation (gateway/sim/plan.py) answered as one
JSON body or streamed as SSE chunks, with the failure injection of ``cut_after`` and ``stall_after``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.sim import SSE_HEADERS, checks, extensions, structured
from gateway.sim.intake import intake, record_abort
from gateway.sim.logprobs import chat_logprobs, completion_logprobs, echoed_logprobs
from gateway.sim.plan import Generation, logprob_request, plan
from gateway.sim.state import SimOptions, SimStats

log = logging.getLogger(__name__)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def _generate(request: web.Request, endpoint: str) -> web.StreamResponse:
    pre = await intake(request)
    if isinstance(pre, web.Response):
        return pre
    opts, stats, body = pre
    refused = checks.check_request(endpoint, body)
    if refused is not None:
        log.info("sim: %s refused: %s", endpoint, refused.text)
        return refused
    gen = plan(endpoint, body, opts)
    if body.get("stream"):
        return await _stream(request, endpoint, body, gen, opts, stats)
    top = logprob_request(endpoint, body)
    choices, completion_tokens = [], 0
    for i in range(len(gen.entries)):
        toks = gen.tokens(i)
        thought = gen.thought(i)
        completion_tokens += len(toks) + len(thought)
        text = "".join(toks)
        if endpoint == "chat":
            call = gen.call(i)
            message: dict[str, Any] = (structured.tool_message(call, text) if call
                                       else {"role": "assistant", "content": text})
            if thought:
                message["reasoning"] = "".join(thought)
                if not toks and not call:  # the budget ended inside the thought: no end marker, no content
                    message["content"] = None
            c: dict[str, Any] = {"index": i, "message": message, "finish_reason": gen.finish(i),
                                 # vLLM: over every generated token, the chain of thought's included
                                 "logprobs": chat_logprobs(thought + toks, 0, top) if top is not None else None}
        else:  # with echo, the prompt comes first (vLLM: prompt text + output, offsets from the prompt's start)
            echo = gen.echo(i)
            lp = completion_logprobs(toks, 0, top, len(echo or "")) if top is not None else None
            if lp is not None and echo is not None:
                lp = echoed_logprobs(echo, top or 0, lp)
            c = {"index": i, "text": (echo or "") + text, "finish_reason": gen.finish(i), "logprobs": lp}
        c.update(extensions.choice_fields(body, len(toks) + len(thought), weight_version=opts.weight_version,
                                          routed_experts=opts.routed_experts, streamed=False, index=i))
        choices.append(c)
    stats.completed += 1
    return web.json_response({
        "id": ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24],
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": int(time.time()), "model": body.get("model", opts.model), "system_fingerprint": "sim",
        "choices": choices,
        "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": gen.prompt_tokens + completion_tokens},
        **extensions.top_fields(endpoint, body),
    })


async def _stream(request: web.Request, endpoint: str, body: dict[str, Any], gen: Generation, opts: SimOptions,
                  stats: SimStats) -> web.StreamResponse:
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    chat_ = endpoint == "chat"
    base = {"id": ("chatcmpl-" if chat_ else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk" if chat_ else "text_completion",
            "created": int(time.time()), "model": body.get("model", opts.model), "system_fingerprint": "sim"}
    usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
    top = logprob_request(endpoint, body)
    delay = 1.0 / opts.tokens_per_s if opts.tokens_per_s > 0 else 0.0

    async def send(choices: list[dict[str, Any]], usage: Any = None, top: Mapping[str, Any] | None = None) -> None:
        chunk = dict(base, choices=choices, **(top or {}))
        if usage_wanted:
            chunk["usage"] = usage
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    sent = 0
    try:
        if chat_:
            await send([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None} for i in range(len(gen.entries))],
                       top=extensions.top_fields(endpoint, body))
        completion_tokens = 0
        for i in range(len(gen.entries)):
            thinking = len(gen.thought(i))
            echo = None if chat_ else gen.echo(i)  # sent with the choice's first token (as vLLM's has_echoed)
            offset = len(echo or "")
            for pos, tok in enumerate(gen.thought(i) + gen.tokens(i)):
                if opts.cut_after is not None and sent >= opts.cut_after:
                    stats.cut += 1
                    if request.transport is not None:
                        request.transport.abort()  # an abrupt cut: no terminating chunk, no [DONE]
                    return resp
                if opts.stall_after is not None and sent >= opts.stall_after:
                    await asyncio.sleep(3600)
                if delay:
                    await asyncio.sleep(delay)
                if chat_ and pos < thinking:  # the chain of thought first, as vLLM's reasoning parser sends it
                    lp = chat_logprobs([tok], pos, top) if top is not None else None  # vLLM: every token's
                    c: dict[str, Any] = {"index": i, "delta": {"reasoning": tok}, "logprobs": lp,
                                         "finish_reason": None}
                elif chat_:
                    lp = chat_logprobs([tok], pos, top) if top is not None else None
                    pos -= thinking
                    call = gen.call(i)
                    delta = structured.tool_delta(call, tok, pos == 0) if call else {"content": tok}
                    c = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": None}
                else:  # text_offset continues from the choice's text so far (vLLM's next_text_offsets)
                    lp = completion_logprobs([tok], pos, top, offset) if top is not None else None
                    if pos == 0 and echo is not None:
                        lp = echoed_logprobs(echo, top, lp) if top is not None and lp is not None else None
                        c = {"index": i, "text": echo + tok, "logprobs": lp, "finish_reason": None}
                    else:
                        c = {"index": i, "text": tok, "logprobs": lp, "finish_reason": None}
                    offset += len(tok)
                await send([c])
                sent += 1
                completion_tokens += 1
            last = ({"index": i, "delta": {}, "logprobs": None, "finish_reason": gen.finish(i)} if chat_
                    else {"index": i, "text": "", "logprobs": None, "finish_reason": gen.finish(i)})
            last.update(extensions.choice_fields(body, thinking + len(gen.tokens(i)),
                                                 weight_version=opts.weight_version,
                                                 routed_experts=opts.routed_experts, streamed=True, index=i))
            await send([last])
        if usage_wanted:
            await send([], {"prompt_tokens": gen.prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": gen.prompt_tokens + completion_tokens})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (asyncio.CancelledError, ConnectionError):
        record_abort(stats, sent)
        raise
    stats.completed += 1
    return resp
