"""The Responses relay's bound on what a stream keeps for its done copies counts everything kept, not only text
characters. Real parts: the in-process gateway and a real aiohttp backend streaming without end; the relay
itself (sans-IO) for the piece count."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from gateway.proxy.responses_relay import ResponsesRelay
from tests.support.harness import app_backend, eventually, gateway_config, running_gateway
from tests.support.responses_events import sse, stream_events

_LIMIT = 200_000  # events the backend sends at most (before the fix: all of them, ~500 B of gateway memory each)


def _new_part_each_event(state: dict[str, Any]) -> web.Application:
    """A stream that opens a message and then sends empty text deltas, each for a part index not seen before."""

    async def responses(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = [e for e in stream_events("sim", "hello there") if e["type"] in (
            "response.created", "response.in_progress", "response.output_item.added")]
        await resp.write(sse(head))
        state["sent"] = 0
        try:
            for n in range(0, _LIMIT, 1000):
                await resp.write(sse([{"type": "response.output_text.delta", "output_index": 0, "item_id": "msg_1",
                                       "content_index": i, "delta": "", "logprobs": [], "sequence_number": i}
                                      for i in range(n, n + 1000)]))
                state["sent"] = n + 1000
        except BaseException as e:
            state["gone"] = type(e).__name__
            raise
        return resp  # ends without a terminal event: the client gets stream_interrupted

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


async def test_a_stream_that_opens_a_part_per_event_is_ended_at_the_bound() -> None:
    """Defect: the bound on what a Responses stream keeps (twice ``MAX_EVENT_BYTES``, past which the backend's
    own response.completed is refused) counted text characters and logprob entries only. A delta for a part
    index not seen before creates a part (record, embedder, dict entry: ~500 B) and counted 0, so an endless
    stream of them grew the gateway ~5x as fast as the backend wrote (200 000 events of ~100 B held 103 MB, no
    end). Every part now counts what it keeps: the stream ends as malformed after ~32 000 of them."""
    state: dict[str, Any] = {}
    async with app_backend(_new_part_each_event(state)) as url, running_gateway(gateway_config(url)) as gw:
        got = bytearray()

        async def read() -> None:
            async with aiohttp.ClientSession() as s, s.post(
                    gw.url + "/v1/responses", headers={"Authorization": f"Bearer {gw.token('a')}"},
                    json={"model": "sim", "input": "hi", "stream": True}) as r:
                async for chunk in r.content.iter_any():
                    got.extend(chunk)

        await asyncio.wait_for(read(), 60)
        tail = bytes(got[-400:])
        assert b'"code": "upstream_malformed"' in tail, tail  # before the fix: stream_interrupted, at the end
        await eventually(lambda: "gone" in state, what="the backend saw the close")
        assert state["sent"] < _LIMIT // 2


def _event(**ev: Any) -> bytes:
    return b"data: " + json.dumps(ev).encode() + b"\n\n"


def test_empty_deltas_keep_nothing() -> None:
    """Defect: each delta's text was appended to its part's pieces even when empty, and counted as its length
    (0): an endless run of empty deltas grew the list for ever without reaching the bound. Empty pieces are not
    kept now, and every delta counts toward the bound."""
    relay = ResponsesRelay(None)
    relay.feed(_event(type="response.output_item.added", output_index=0,
                      item={"id": "m", "type": "message", "role": "assistant", "content": []}))
    delta = _event(type="response.output_text.delta", output_index=0, content_index=0, item_id="m", delta="")
    relay.feed(delta * 10_000)
    part = relay._parts[(0, "content", 0)]
    assert part.sent == []  # before the fix: 10 000 empty strings
    assert relay._kept >= 10_000 * 16
