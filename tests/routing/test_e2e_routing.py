"""Routing through the real gateway: real aiohttp backends, JWT-authenticated clients, the admin API."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, running_gateway


def chat_backend(name: str, seen: dict[str, str], status: int = 200) -> web.Application:
    """A minimal OpenAI-compatible backend that records which client (named in the prompt) it served."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        client = body["messages"][0]["content"]
        if status != 200:
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=status)
        seen[client] = name
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


async def _send(session: aiohttp.ClientSession, url: str, token: str, client: str) -> int:
    body = {"model": "sim", "messages": [{"role": "user", "content": client}], "max_tokens": 1}
    async with session.post(url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()
        return resp.status


async def _round(gw: Any, clients: list[str], tokens: dict[str, str]) -> list[int]:
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:
        async def one(c: str) -> int:
            async with sem:
                return await _send(session, gw.url, tokens[c], c)
        return list(await asyncio.gather(*(one(c) for c in clients)))


async def test_canary_split_and_stickiness_over_1000_clients() -> None:
    seen: dict[str, str] = {}
    async with (
        app_backend(chat_backend("stable", seen)) as stable,
        app_backend(chat_backend("canary", seen)) as canary,
    ):
        cfg = gateway_config(models=[{"name": "sim", "backends": [
            {"name": "stable", "url": stable, "weight": 90},
            {"name": "canary", "url": canary, "weight": 10},
        ]}])
        async with running_gateway(cfg) as gw:
            clients = [f"client-{i}" for i in range(1000)]
            tokens = {c: gw.token(c) for c in clients}
            assert set(await _round(gw, clients, tokens)) == {200}
            first = dict(seen)
            share = Counter(first.values())["canary"] / len(clients)
            assert abs(share - 0.10) <= 0.02, share
            seen.clear()
            again = clients[::4]
            assert set(await _round(gw, again, tokens)) == {200}
            assert all(seen[c] == first[c] for c in again)  # sticky: nobody switched sides


async def test_failing_backend_is_ejected_and_visible_on_the_admin_api() -> None:
    seen: dict[str, str] = {}
    async with (
        app_backend(chat_backend("good", seen)) as good,
        app_backend(chat_backend("bad", seen, status=500)) as bad,
    ):
        cfg = gateway_config(
            models=[{"name": "sim", "backends": [{"name": "good", "url": good}, {"name": "bad", "url": bad}]}],
            routing={"retries": 1, "retry_budget_ratio": 1.0,
                     "health": {"interval_s": 30, "consecutive_failures": 2, "ejection_base_s": 30}},
        )
        async with running_gateway(cfg) as gw:
            clients = [f"c{i}" for i in range(40)]
            tokens = {c: gw.token(c) for c in clients}
            statuses = []
            for c in clients:  # one at a time, so the ejection happens at a known point
                async with aiohttp.ClientSession() as session:
                    statuses.append(await _send(session, gw.url, tokens[c], c))
            # every request succeeded: failures before the first byte were retried on the good backend
            assert statuses == [200] * len(clients)
            assert set(seen.values()) == {"good"}
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": f"Bearer {gw.admin_token}"}
                async with session.get(gw.admin_url + "/admin/routing", headers=headers) as resp:
                    snap = await resp.json()
                async with session.get(gw.admin_url + "/metrics") as resp:
                    metrics = await resp.text()
            backends = {b["name"]: b for b in snap["models"]["sim"]["backends"]}
            assert backends["bad"]["status"] == "ejected" and backends["bad"]["ejections_total"] == 1
            assert backends["bad"]["last_error"] and backends["good"]["status"] == "healthy"
            assert 'ipgate_backend_ejections_total{backend="bad",model="sim"} 1.0' in metrics
            assert 'ipgate_backend_healthy{backend="bad",model="sim"} 0.0' in metrics
            # two requests hit the bad backend before it was ejected; each was retried once, counted once
            assert 'ipgate_upstream_retries_total{model="sim"} 2.0' in metrics
