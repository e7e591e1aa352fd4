"""A config reload that removes a model while one of its requests is in flight: the request finishes on the pool
and retry budget it was first routed with. Its repeat without the watermark directive (the engine refused it)
and its retries draw on that pool, so the client never gets a 404 ``model_not_found`` for a model it was being
served by, nor loses a retry it was owed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.admin.routing import reload_from_config
from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway

SECRET = "0123456789abcdef0123456789abcdef"
REFUSAL = json.dumps({"error": {"message": "ipgate_kgw_tag: does not match the directive",
                                "type": "BadRequestError"}}).encode()


def _answer(model: str) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "The answer is four."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}


class Gate:
    """Holds the first request a backend gets until the test has reloaded the config."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.reloaded = asyncio.Event()
        self.seen: list[dict[str, Any]] = []

    async def hold(self, body: dict[str, Any]) -> None:
        self.seen.append(body)
        if len(self.seen) == 1:
            self.arrived.set()
            await self.reloaded.wait()


def _refusing_engine(gate: Gate) -> web.Application:
    """A watermark-capable engine whose plugin refuses the gateway's directive (a 400 before generating)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await gate.hold(body)
        if "vllm_xargs" in body:
            return web.Response(status=400, body=REFUSAL, content_type="application/json")
        if not body.get("stream"):
            return web.json_response(_answer(body["model"]))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "The answer is four."},
                              "finish_reason": "stop"}]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


def _failing_backend(gate: Gate) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await gate.hold(await request.json())
        return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


def _plain_backend(seen: list[dict[str, Any]]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response(_answer(body["model"]))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def _post(gw: GatewayHandle, stream: bool = False) -> tuple[int, bytes]:
    body = {"model": "sim", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "stream": stream}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
        return r.status, await r.read()


async def _remove_sim_while_held(gw: GatewayHandle, gate: Gate, stream: bool = False) -> tuple[int, bytes]:
    """Send one request to "sim", and while its backend holds it, reload a config without "sim"."""
    request = asyncio.create_task(_post(gw, stream))
    await asyncio.wait_for(gate.arrived.wait(), 5)
    new = gw.ctx.config.model_copy(update={"models": [m for m in gw.ctx.config.models if m.name != "sim"]})
    reload_from_config(gw.ctx, new)
    assert "sim" not in gw.ctx.models and "sim" not in gw.ctx.router.models()
    gate.reloaded.set()
    return await asyncio.wait_for(request, 10)


def _two_models(tmp_path: Path, sim_urls: list[str], other_url: str) -> dict[str, Any]:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    cfg = gateway_config(*sim_urls, watermark={"enabled": True, "secret_file": str(secret)},
                         routing={"health": {"interval_s": 30}, "retries": 1})
    cfg["models"].append({"name": "other", "backends": [{"name": "o0", "url": other_url}]})
    return cfg


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_refused_directive_after_the_model_is_reloaded_away_is_served_not_404(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    import gateway.route

    monkeypatch.setattr(gateway.route, "_REFUSALS_LOGGED", {})
    gate = Gate()
    async with app_backend(_refusing_engine(gate)) as engine, app_backend(_plain_backend([])) as other:
        cfg = _two_models(tmp_path, [engine], other)
        cfg["models"][0]["backends"][0].update(watermark_capable=True, kgw_probe=False)  # trusted: directives
        async with running_gateway(cfg) as gw:
            status, body = await _remove_sim_while_held(gw, gate, stream)
    assert status == 200, body  # not 404 model_not_found: the model was there when the request was routed
    assert b"model_not_found" not in body
    assert ["vllm_xargs" in b for b in gate.seen] == [True, False]  # refused, then served without the directive
    assert b"answer" in body  # (the lexical watermark may have rewritten a word of it)


async def test_a_retry_after_the_model_is_reloaded_away_goes_to_another_backend_of_its_pool(
        tmp_path: Path) -> None:
    gate = Gate()
    served: list[dict[str, Any]] = []
    async with app_backend(_failing_backend(gate)) as bad, app_backend(_plain_backend(served)) as good, \
            app_backend(_plain_backend([])) as other:
        cfg = _two_models(tmp_path, [bad, good], other)
        cfg["models"][0]["backends"][0]["weight"] = 1000  # the first try goes to the failing backend
        async with running_gateway(cfg) as gw:
            status, body = await _remove_sim_while_held(gw, gate)
            retries = gw.ctx.metrics.registry.get_sample_value("ipgate_upstream_retries_total", {"model": "sim"})
    assert status == 200, body  # the retry it was owed, on the pool it was routed with
    assert len(gate.seen) == 1 and len(served) == 1
    assert retries == 1
