"""A request that only an engine-watermarking backend may serve (``needs_engine_watermark``) and whose backend
refuses the gateway's KGW directive (its plugin's secret or spec changed on the engine host): the same request
goes to another backend whose engine watermarks, not to a lexical retry that the tier refuses anyway (403).
And a refused directive is not a first attempt: one request funds the retry budget once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, running_gateway

SECRET = "0123456789abcdef0123456789abcdef"


def _engine(seen: list[dict[str, Any]], *, refuses: bool) -> web.Application:
    """A backend marked watermark-capable: ``refuses`` answers the gateway's directive with the plugin's 400."""
    refusal = json.dumps({"error": {"message": "ipgate_kgw_tag: does not match the directive",
                                    "type": "BadRequestError"}}).encode()

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if refuses and "vllm_xargs" in body:
            return web.Response(status=400, body=refusal, content_type="application/json")
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": '{"laptop": "x"}'}}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def _json_mode(gw: Any, client: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.put(gw.admin_url + f"/admin/clients/{client}/override", json={"tier": "throttle"},
                         headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
            assert r.status == 200
        body = {"model": "sim", "messages": [{"role": "user", "content": "Which laptop?"}],
                "response_format": {"type": "json_object"}}
        async with s.post(gw.url + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {gw.token(client)}"}) as r:
            return r.status, await r.json()


def _config(tmp_path: Path, *urls: str, weights: tuple[float, ...]) -> dict[str, Any]:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    cfg = gateway_config(*urls, watermark={"enabled": True, "secret_file": str(secret)})
    for b, w in zip(cfg["models"][0]["backends"], weights, strict=True):
        b.update(weight=w, watermark_capable=True, kgw_probe=False)  # the flag trusted: no probe re-checks
    return cfg


async def test_a_refused_directive_moves_the_request_to_another_engine_watermarking_backend(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.route

    monkeypatch.setattr(gateway.route, "_REFUSALS_LOGGED", {})
    bad: list[dict[str, Any]] = []
    good: list[dict[str, Any]] = []
    async with app_backend(_engine(bad, refuses=True)) as b0, app_backend(_engine(good, refuses=False)) as b1, \
            running_gateway(_config(tmp_path, b0, b1, weights=(1000, 1))) as gw:
        got = [await _json_mode(gw, f"mallory-{i}") for i in range(6)]
    assert bad, "the refusing backend got none of the requests: the test proves nothing"
    assert [s for s, _ in got] == [200] * len(got), got
    assert all("vllm_xargs" in b for b in good)  # served watermarked in the engine, never without it


async def test_with_no_other_engine_backend_the_request_is_refused_as_before(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    async with app_backend(_engine(seen, refuses=True)) as b0, \
            running_gateway(_config(tmp_path, b0, weights=(1,))) as gw:
        status, body = await _json_mode(gw, "mallory")
    assert status == 403 and body["error"]["code"] == "unwatermarkable_output"
    assert ["vllm_xargs" in b for b in seen] == [True]  # no second, lexical try that is refused anyway


async def test_a_refused_directive_funds_the_retry_budget_once(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    async with app_backend(_engine(seen, refuses=True)) as b0:
        cfg = _config(tmp_path, b0, weights=(1,))
        async with running_gateway(cfg) as gw:
            budget = gw.ctx.router._budgets["sim"]
            before = budget.balance
            async with aiohttp.ClientSession() as s, s.post(
                    gw.url + "/v1/chat/completions",
                    json={"model": "sim", "messages": [{"role": "user", "content": "Hi"}]},
                    headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
                assert r.status == 200  # served again without the directive, lexically watermarked
            after = budget.balance
    assert len(seen) == 2  # the refused try and the one without the directive
    assert after == pytest.approx(before + budget.ratio)
