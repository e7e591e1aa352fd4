"""The chat/completions stream relay bounds the state it keeps per choice by the choices the request may be
answered with. Real parts: the in-process gateway with the lexical watermark on, a real aiohttp backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.ratelimit import choices_at_most
from tests.support.harness import lexical_gateway

_LIMIT = 20_000  # chunks the backend sends at most, then [DONE]


def _chunk(index: int, text: str, finish: str | None = None, obj: str = "chat.completion.chunk") -> bytes:
    choice: dict[str, Any] = {"index": index, "finish_reason": finish}
    if obj == "chat.completion.chunk":
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    return b"data: " + json.dumps({"id": "c", "object": obj, "created": 0, "model": "sim",
                                   "choices": [choice]}).encode() + b"\n\n"


def _backend(state: dict[str, Any]) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        state["sent"] = 0
        try:
            for n in range(0, _LIMIT, 500):  # every chunk a choice index not seen before
                await resp.write(b"".join(_chunk(i, "word ") for i in range(n, n + 500)))
                state["sent"] = n + 500
            await resp.write(b"data: [DONE]\n\n")
        except BaseException as e:
            state["gone"] = type(e).__name__
            raise
        return resp

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        k = len(body["prompt"]) * body.get("n", 1)
        for word in ("one ", "two ", "three "):  # the choices interleaved, as vLLM streams a batch
            await resp.write(b"".join(_chunk(i, word, obj="text_completion") for i in range(k)))
        await resp.write(b"".join(_chunk(i, "", "stop", obj="text_completion") for i in range(k)))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    return app


async def test_a_stream_naming_a_new_choice_in_every_chunk_is_ended(tmp_path: Path) -> None:
    """Defect: the relay keeps a watermark embedder (and reasoning channels) per choice index, and an index is
    whatever the backend writes: a broken or hostile backend that gave every chunk a new one grew the gateway
    ~1.1 KB per ~170-byte chunk (50 000 chunks: 56 MB held, 17 s of CPU), for as long as it streamed. A request
    is answered with at most n choices per prompt: a stream naming more is malformed now."""
    state: dict[str, Any] = {}
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with lexical_gateway(_backend(state), "s" * 32, tmp_path) as gw, aiohttp.ClientSession() as http, \
            http.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gw.token('a')}"},
                      json=body) as r:
        raw = await r.read()
    assert b'"code": "upstream_malformed"' in raw[-300:], raw[-300:]  # before the fix: all 20 000, then [DONE]
    assert len(raw) < 10_000  # the first chunk, then the end: nothing of the 20 000 others relayed


async def test_a_batch_streams_all_its_choices(tmp_path: Path) -> None:
    """Control: a completions batch of 3 prompts with n=2 streams its 6 interleaved choices, watermarked."""
    state: dict[str, Any] = {}
    body = {"model": "sim", "prompt": ["a", "b", "c"], "n": 2, "stream": True}
    async with lexical_gateway(_backend(state), "s" * 32, tmp_path) as gw, aiohttp.ClientSession() as http, \
            http.post(gw.url + "/v1/completions", headers={"Authorization": f"Bearer {gw.token('a')}"},
                      json=body) as r:
        raw = await r.read()
    assert raw.endswith(b"data: [DONE]\n\n") and b"upstream_malformed" not in raw
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    assert {c["index"] for e in events for c in e["choices"]} == set(range(6))


def test_choices_at_most() -> None:
    assert choices_at_most("chat", {"messages": [], "n": 3}) == 3
    assert choices_at_most("completions", {"prompt": ["a", "b"], "n": 2}) == 4
    assert choices_at_most("completions", {"prompt": "a", "best_of": 5, "n": 2}) == 5
    assert choices_at_most("completions", {"prompt": [1, 2, 3]}) == 1  # token ids: one prompt
