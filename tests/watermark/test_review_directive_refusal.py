"""Review of the KGW directive refusal retry (``gateway/route.py``) from a client's side: an engine that echoes
the request in its 400 (vLLM's validation errors quote the offending input) lets any client make a refusal
that looks like the plugin's. What that buys the client must stay small: one more cheap upstream try (both are
refused at validation, nothing is generated), no change to the probe's verdict, no ejection — and no control
over the gateway's log: neither as many ERROR lines as it sends requests, nor silence for the operator's
later, real refusals (a set of messages seen, capped, could be filled by the client for the process's life)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import gateway.route
from tests.support.harness import app_backend, running_gateway
from tests.watermark.test_kgw_plugin_probe import MASTER, SECRET, Engine, _config


def _echoing_engine(engine: Engine) -> web.Application:
    """A plugin-loaded engine whose validation quotes the input it rejects, as FastAPI/pydantic errors do."""
    app = engine.app()
    generate = next(r.handler for r in app.router.routes() if r.resource is not None
                    and r.resource.canonical == "/v1/chat/completions")

    async def validating(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if "min_p" in body and not isinstance(body["min_p"], int | float):
            engine.bodies.append(body)
            return web.json_response({"object": "error", "type": "BadRequestError", "code": 400, "message":
                                      f"[{{'loc': ('body', 'min_p'), 'msg': 'Input should be a valid number', "
                                      f"'input': {body['min_p']!r}}}]"}, status=400)
        return await generate(request)

    out = web.Application()
    for route in app.router.routes():
        if route.resource is not None and route.resource.canonical != "/v1/chat/completions":
            out.router.add_route(route.method, route.resource.canonical, route.handler)
    out.router.add_post("/v1/chat/completions", validating)
    return out


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "wm.secret"
    p.write_text(SECRET + "\n")
    return p


async def test_a_client_made_refusal_costs_one_cheap_try_and_changes_nothing(
        secret_file: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.route, "_REFUSALS_LOGGED", {})
    engine = Engine(plugin=True, master=MASTER)
    async with app_backend(_echoing_engine(engine)) as url, running_gateway(_config(url, secret_file)) as gw:
        state = gw.ctx.router.pool("sim").state("b0")
        assert state.engine_watermark() is True
        before = len(engine.generations())
        with caplog.at_level(logging.ERROR, logger="gateway.route"):
            async with aiohttp.ClientSession() as s:
                for i in range(20):
                    async with s.post(gw.url + "/v1/chat/completions", headers={
                            "Authorization": f"Bearer {gw.token('mallory')}"}, json={
                            "model": "sim", "messages": [{"role": "user", "content": "hi"}],
                            "min_p": f"ipgate_kgw_\nERROR forged line {i}"}) as r:
                        assert r.status == 400
                        assert "ipgate_kgw_spec" not in await r.text()  # the directive is never shown
        tries = len(engine.generations()) - before
        (backend,) = gw.ctx.router.snapshot()["models"]["sim"]["backends"]
        verified = state.engine_watermark()
    assert tries == 40  # each forged refusal: one more try, refused at validation like the first
    assert verified is True and backend["consecutive_failures"] == 0
    lines = [r.getMessage() for r in caplog.records if "refused the watermark directive" in r.getMessage()]
    assert len(lines) == 1, lines  # not one per distinct (client-chosen) message
    assert "\nERROR forged" not in lines[0]  # the echoed text cannot start a log line of its own


async def test_a_flood_of_distinct_refusals_does_not_silence_a_later_real_one(
        secret_file: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.route, "_REFUSALS_LOGGED", {})
    engine = Engine(plugin=True, master=MASTER)
    async with app_backend(engine.app()) as url, running_gateway(_config(url, secret_file)) as gw:
        with caplog.at_level(logging.ERROR, logger="gateway.route"):
            for i in range(1500):  # what a client could provoke through an echoing engine, each one distinct
                gateway.route._refused(gw.ctx, "sim", "b0", f"echo ipgate_kgw_ {i}".encode())
            flood = len(caplog.records)
            monkeypatch.setattr(gateway.route, "REFUSAL_LOG_EVERY_S", 0.0)  # the interval has passed
            real: Any = b"ipgate-kgw-plugin: the directive's tag does not verify under this host's secret"
            gateway.route._refused(gw.ctx, "sim", "b0", real)
    assert flood == 1
    last = caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.ERROR and "tag does not verify" in last
    assert "1499 more refusal(s)" in last


async def test_a_throttled_structured_request_refused_on_its_second_try_hands_both_leases_back(
        secret_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified engine, throttled client, JSON mode: allowed (the engine watermarks it). The engine's plugin
    has since changed secret and refuses the directive; the second try, without it, could not be watermarked,
    so the throttle tier's ``refuse_unwatermarkable`` answers 403 — and neither try keeps a slot."""
    monkeypatch.setattr(gateway.route, "_REFUSALS_LOGGED", {})
    engine = Engine(plugin=True, master=MASTER)
    async with app_backend(engine.app()) as url, running_gateway(_config(url, secret_file)) as gw:
        async with aiohttp.ClientSession() as s:
            async with s.put(gw.admin_url + "/admin/clients/mallory/override", json={"tier": "throttle"},
                             headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 200
            engine.master = b"another master secret, 32 bytes!"
            async with s.post(gw.url + "/v1/chat/completions", headers={
                    "Authorization": f"Bearer {gw.token('mallory')}"}, json={
                    "model": "sim", "messages": [{"role": "user", "content": "hi"}],
                    "response_format": {"type": "json_object"}}) as r:
                status, err = r.status, await r.json()
        (backend,) = gw.ctx.router.snapshot()["models"]["sim"]["backends"]
    assert status == 403 and err["error"]["code"] == "unwatermarkable_output"
    assert len(engine.generations()) == 1 and "vllm_xargs" in engine.generations()[0]  # only the refused try
    assert backend["in_flight"] == 0 and backend["consecutive_failures"] == 0
