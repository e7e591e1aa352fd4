"""A chat answer's ``refusal`` (OpenAI's field beside ``content``) is generated prose: it carries the client's
watermark like the answer, streamed or not, and its tokens are withheld. Relayed as written, a backend that
writes its answers there served them unwatermarked."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.harness import lexical_gateway
from tests.support.lexical import ANSWER
from watermark.keys import KeyRing, parse_master_secret
from watermark.lexical import LexicalScheme

SECRET = "refusal-test-secret-0123456789-0123456789"


def _backend() -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(0, len(ANSWER), 20):
                ch = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "sim",
                      "choices": [{"index": 0, "delta": {"refusal": ANSWER[i:i + 20]}, "finish_reason": None,
                                   "logprobs": {"content": [{"token": ANSWER[i:i + 20], "logprob": -0.1}]}}]}
                await resp.write(f"data: {json.dumps(ch)}\n\n".encode())
            end = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "sim",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await resp.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            return resp
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "sim",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": None, "refusal": ANSWER},
                                               "logprobs": {"content": [{"token": "x", "logprob": -0.1}]}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 300, "total_tokens": 301}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _refusal(g: object, stream: bool) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http, http.post(
            g.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {g.token('alice')}"},  # type: ignore[attr-defined]
            json={"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": stream}) as r:
        assert r.status == 200
        raw = await r.text()
    if not stream:
        return json.loads(raw)["choices"][0]["message"]["refusal"], raw
    text = ""
    for line in raw.splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:]).get("choices") or []:
                text += c["delta"].get("refusal") or ""
    return text, raw


async def test_a_refusal_carries_the_watermark_streamed_and_not(tmp_path: Path) -> None:
    async with lexical_gateway(_backend(), SECRET, tmp_path) as g:
        whole, raw_whole = await _refusal(g, False)
        streamed, raw_stream = await _refusal(g, True)
    assert whole == streamed  # the same text, watermarked the same way, whole or in pieces
    ring = KeyRing(parse_master_secret(SECRET), 1)
    emb = LexicalScheme(ring.master).embedder(ring.key("alice"))
    assert whole == emb.feed(ANSWER) + emb.finish() != ANSWER  # alice's watermark
    assert '"logprob"' not in raw_whole and '"logprob"' not in raw_stream  # the tokens would spell the original
