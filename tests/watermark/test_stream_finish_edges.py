"""The lexical watermark at the edges of a stream's end.

- ``"finish_reason": ""`` on every chunk (SGLang <= 0.4.3, sgl-project/sglang#3912; Ollama, ollama/ollama#4357)
  was read as the end of the choice: the watermark stopped after the first delta and the rest went out as
  the backend wrote it.
- Text a backend sends after a choice's finish chunk was relayed as written.
- An error event mid-stream dropped the phrase the embedder was holding back (generated, and charged).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web

from gateway.proxy.relay import StreamRelay
from tests.support.harness import app_backend, gateway_config, running_gateway
from tests.support.lexical import ANSWER
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme

SECRET = "stream-edges-master-secret-0123456789"
RING = KeyRing(SECRET.encode())


def _backend(mode: str) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = ANSWER.split(" ")

        async def send(content: str | None, fr: str | None) -> None:
            delta = {} if content is None else {"role": "assistant", "content": content}
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                     "choices": [{"index": 0, "delta": delta, "finish_reason": fr}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

        if mode == "empty":
            for i, w in enumerate(words):
                await send(w + (" " if i < len(words) - 1 else ""), "")
            await send(None, "stop")
        else:
            half = len(words) // 2
            await send(" ".join(words[:half]) + " ", None)
            await send(None, "stop")
            await send(" ".join(words[half:]), None)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("mode", ["empty", "late"])
async def test_stream_text_is_watermarked_whatever_the_backend_says_about_finishing(tmp_path: Path,
                                                                                     mode: str) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    wm = {"enabled": True, "scheme": "lexical", "secret_file": str(secret)}
    async with app_backend(_backend(mode)) as url, running_gateway(gateway_config(url, watermark=wm)) as gw:
        client = gw.openai_client("alice")
        try:
            s = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                                     stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
        finally:
            await client.close()
    if mode == "empty":  # "" is no finish: the stream is watermarked as a whole
        assert text == LexicalScheme(RING.master).embed(ANSWER, RING.key("alice"))
    else:  # text after the finish chunk is watermarked too (a fresh embedder), never relayed as written
        late = " ".join(ANSWER.split(" ")[len(ANSWER.split(" ")) // 2:])
        assert not text.endswith(late)


def test_an_upstream_error_event_comes_after_the_held_back_words() -> None:
    scheme = LexicalScheme(RING.master)
    relay = StreamRelay("chat", False, lambda: scheme.embedder(RING.key("alice")))
    part = ANSWER[:779]
    chunk = {"choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}]}
    out = relay.feed(f"data: {json.dumps(chunk)}\n\n".encode())
    out += relay.feed(b'data: {"error": {"message": "engine died", "code": 500}}\n\n') + relay.finish()
    events = [line for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    sent = "".join(c["delta"].get("content") or "" for line in events
                   for c in json.loads(line[6:]).get("choices", []))
    assert sent == scheme.embed(part, RING.key("alice"))  # every generated word, watermarked
    assert b'"error"' in events[-1], "the error event still ends the stream"
