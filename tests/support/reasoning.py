"""A fake reasoning model (an aiohttp app): the chain of thought in ``reasoning`` before the answer, streamed in
fixed-size pieces or returned whole, as vLLM serves a model with a reasoning parser."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web


def reasoning_app(thought: str, answer: str, *, piece: int = 6, usage: dict[str, int] | None = None,
                  choice_extra: dict[str, Any] | None = None) -> web.Application:
    """``choice_extra``: fields added to every choice (e.g. ``logprobs`` or vLLM's ``token_ids``); ``usage``: sent
    in the body, and after the finish chunk of a stream."""
    extra = choice_extra or {}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base: dict[str, Any] = {"id": "x", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            out: dict[str, Any] = {**base, "object": "chat.completion", "choices": [{
                "index": 0, "finish_reason": "stop", **extra,
                "message": {"role": "assistant", "content": answer, "reasoning": thought}}]}
            if usage is not None:
                out["usage"] = usage
            return web.json_response(out)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        deltas = [{"reasoning": thought[i : i + piece]} for i in range(0, len(thought), piece)]
        deltas += [{"content": answer[i : i + piece]} for i in range(0, len(answer), piece)]
        for d in deltas:
            c = {"index": 0, "delta": d, "finish_reason": None, **extra}
            await resp.write(f"data: {json.dumps({**chunk, 'choices': [c]})}\n\n".encode())
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await resp.write(f"data: {json.dumps({**chunk, 'choices': [end]})}\n\n".encode())
        if usage is not None:
            await resp.write(f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app
