"""Review of the KGW plugin liveness probe (``gateway/kgw_probe.py``): defects found by an adversarial pass.

- a plugin's refusal that reaches the gateway in more than one read (a chunked 400, a proxy that flushes
  early) was judged on its first piece only: the plugin was reported missing;
- a reload that keeps a backend's name and URL but points the probe at another engine (``upstream_model``
  behind a router that dispatches by model name, ``kgw_probe_endpoint``, the flags) kept the old verdict, and
  the re-probe was held back for ``interval_s / 2``: the other engine got KGW directives it ignored and its
  text left unwatermarked;
- the probe's check value, which travels in every probe (and so lands in engine request logs), was an HMAC
  under the master secret whose message was also a valid client-key message: it was half of a client key.

Real aiohttp servers as engines, the real gateway, the official openai client."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import BackendConfig, ModelConfig
from gateway.kgw_probe import KgwPluginProbe
from tests.support.harness import app_backend, eventually, gateway_config, running_gateway
from tests.support.lexical import ANSWER
from watermark.keys import KeyRing, client_key, parse_master_secret, scheme_key
from watermark.kgw import directives
from watermark.kgw.params import KgwParams
from watermark.kgw.vllm_plugin import validate_extra_args
from watermark.lexical import LexicalScheme
from watermark.verify import candidate_keys, verify

SECRET = "review-probe-master-secret-0123456789abcdef"
MASTER = parse_master_secret(SECRET)
RING = KeyRing(MASTER, 1)


def _plugin_refusal() -> dict[str, Any]:
    try:
        validate_extra_args(directives.probe_xargs(MASTER), KgwParams(), MASTER)
    except ValueError as e:
        return {"error": {"message": str(e), "type": "BadRequestError", "param": None, "code": 400}}
    raise AssertionError("the plugin accepted its probe")


async def test_a_refusal_that_arrives_in_pieces_is_still_the_plugins() -> None:
    """A 400 whose body comes in two writes (chunked transfer, a proxy flushing early) is one answer."""
    body = json.dumps(_plugin_refusal()).encode()

    async def chunked(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=400, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(body[:20])
        await asyncio.sleep(0.05)  # the first piece is on the gateway's side before the rest is sent
        await resp.write(body[20:])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", chunked)
    probe = KgwPluginProbe(KgwParams(), MASTER, "derive")
    b = BackendConfig.model_validate({"name": "b0", "url": "http://127.0.0.1:9", "watermark_capable": True})
    async with app_backend(app) as url, aiohttp.ClientSession() as session:
        verdict = await probe.run(session, b.model_copy(update={"url": url}), "sim", {}, 2.0)
    assert (verdict.ok, verdict.reason) == (True, "verified"), verdict


async def test_the_probe_still_reads_at_most_64_kib() -> None:
    """The bound on what the probe reads stays: an endless 400 is cut, judged, and the probe returns."""
    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=400, headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        while True:
            await resp.write(b"x" * 8192)
            await asyncio.sleep(0)

    app = web.Application()
    app.router.add_post("/v1/completions", endless)
    probe = KgwPluginProbe(KgwParams(), MASTER, "derive")
    b = BackendConfig.model_validate({"name": "b0", "url": "http://127.0.0.1:9", "watermark_capable": True})
    async with app_backend(app) as url, aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        verdict = await probe.run(session, b.model_copy(update={"url": url}), "sim", {}, 5.0)
    assert verdict.reason == "not_the_plugin" and time.monotonic() - t0 < 2.0


def test_the_probe_check_is_no_part_of_any_client_key() -> None:
    """Domain separation under the master secret: the check value (in every probe, so in engine request logs)
    must not be derivable as a client key or a scheme key. Before: HMAC(master, "ipgate/kgw/probe/v1") was
    ``client_key(master, int("ipga"), "te/kgw/probe/v1")`` -- the first 128 bits of that client's key."""
    check = directives.probe_check(MASTER)
    domain = b"ipgate/kgw/probe/v1"
    version = int.from_bytes(domain[:4], "big")
    assert client_key(MASTER, version, domain[4:].decode())[:16].hex() != check
    assert all(scheme_key(MASTER, v, "kgw/probe/v1")[:16].hex() != check for v in (1, 2))
    # and the plugin still recognises the gateway's check (same secret) and tells another one apart
    assert "secret=match" in directives.probe_refusal(check, KgwParams(), MASTER)
    other = parse_master_secret("another-master-secret-0123456789abcdef")
    assert "secret=differs" in directives.probe_refusal(check, KgwParams(), other)


# --- a reload that points the probe at another engine -----------------------------------------------------


class ModelRouter:
    """One URL in front of two engines, dispatched by model name (a vLLM router, LiteLLM, an ingress):
    ``wm`` runs ipgate's plugin, ``plain`` does not."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        async def generate(request: web.Request) -> web.Response:
            body = await request.json()
            self.bodies.append(body)
            if body.get("model") == "wm":
                try:
                    validate_extra_args(body.get("vllm_xargs"), KgwParams(), MASTER)
                except ValueError as e:
                    return web.json_response({"error": {"message": str(e), "type": "BadRequestError",
                                                        "param": None, "code": 400}}, status=400)
            base = {"id": "x", "created": int(time.time()), "model": body["model"],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 300, "total_tokens": 305}}
            if "messages" not in body:
                return web.json_response({**base, "object": "text_completion",
                                          "choices": [{"index": 0, "text": " The", "finish_reason": "length"}]})
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}]})

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": "wm"}, {"id": "plain"}]})

        app = web.Application()
        app.router.add_post("/v1/completions", generate)
        app.router.add_post("/v1/chat/completions", generate)
        app.router.add_get("/v1/models", models)
        return app



def _model(url: str, **backend: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "sim", "backends": [
        {"name": "b0", "url": url, "watermark_capable": True, **backend}]})


def _wm_engine_config(tmp_path: Path, url: str) -> dict[str, Any]:
    """A KGW gateway whose one backend is marked capable and reaches the plugin engine "wm" behind ``url``
    (health rounds every 30 s: only start-up, reload and forced probes happen during a test)."""
    secret_file = tmp_path / "wm.secret"
    secret_file.write_text(SECRET + "\n")
    cfg = gateway_config(url, watermark={"enabled": True, "scheme": "kgw", "secret_file": str(secret_file)},
                         routing={"health": {"interval_s": 30.0, "timeout_s": 1.0}})
    cfg["models"][0]["backends"][0].update({"watermark_capable": True, "upstream_model": "wm"})
    return cfg


@pytest.mark.parametrize("change", [
    {"upstream_model": "plain"},  # the router now sends this backend's traffic to the engine without the plugin
])
async def test_a_reload_that_changes_the_engine_behind_a_url_drops_the_old_verdict(
        tmp_path: Path, change: dict[str, Any]) -> None:
    router = ModelRouter()
    async with app_backend(router.app()) as url, running_gateway(_wm_engine_config(tmp_path, url)) as gw:
        state = gw.ctx.router.pool("sim").state("b0")
        assert state.engine_watermark() is True  # the start-up probe verified the "wm" engine
        gw.ctx.router.reload([_model(url, **{"upstream_model": "wm", **change})])
        state = gw.ctx.router.pool("sim").state("b0")
        # the old verdict was about another engine: not trusted before the new one is probed
        assert state.engine_watermark() is False
        client = gw.openai_client("alice")
        r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        text = r.choices[0].message.content or ""
        # and the reload's kick probes the new engine at once (not after interval_s / 2 = 15 s)
        await eventually(lambda: state.plugin_reason == "not_loaded", 3.0)
    v = verify(text, candidate_keys(RING, ["alice", "bob"]), [LexicalScheme(MASTER)], fpr=1e-4)
    assert v.watermarked and v.client == "alice", "the response left unwatermarked"


async def test_a_reload_that_keeps_the_engine_keeps_the_verdict(tmp_path: Path) -> None:
    """Only a change of what the probe reaches drops the verdict: a new weight or concurrency keeps it."""
    router = ModelRouter()
    async with app_backend(router.app()) as url, running_gateway(_wm_engine_config(tmp_path, url)) as gw:
        gw.ctx.router.reload([_model(url, upstream_model="wm", weight=3, max_concurrency=7)])
        assert gw.ctx.router.pool("sim").state("b0").engine_watermark() is True
