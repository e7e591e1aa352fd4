"""Two clients naming the same X-Request-Id must not meet in the engine, which keys its request state by it
(vLLM's engine request id: before vLLM #27987 the second one failed "already running"). Real backend server."""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.support.harness import app_backend, gateway_config, running_gateway


async def test_two_clients_cannot_name_the_same_engine_request_id() -> None:
    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Request-Id"])
        await asyncio.sleep(0.2)  # both requests in flight at once
        return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "sim",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with app_backend(app) as url, running_gateway(gateway_config(url)) as gw:
        clients = [gw.openai_client(who) for who in ("victim", "attacker")]
        answers = await asyncio.gather(*(c.chat.completions.with_raw_response.create(
            model="sim", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Request-Id": "job-1"})
            for c in clients))
        for c in clients:
            await c.close()
    assert [a.headers["x-request-id"] for a in answers] == ["job-1", "job-1"]  # echoed as the caller sent it
    assert len(seen) == 2 and seen[0] != seen[1] and all(s.startswith("job-1-") for s in seen), seen
