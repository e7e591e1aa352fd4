"""Limit classes (plans) end to end: the real gateway, real backends on loopback, the official openai client.

A `free` key is refused (429) after its small burst while an `enterprise` key, at the same moment, is still
served; JWT claims and the tenant map pick classes the same way; the access log and the admin API show the
class; reconciliation refunds at the class's rate; `ipgate check` reports unknown classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp import web

from gateway.auth.apikeys import format_line, hash_key
from gateway.cli import main as cli_main
from gateway.config import parse_config
from gateway.preflight import offline
from tests.support.harness import app_backend, gateway_config, running_gateway, settled, sim_backend

MSG = [{"role": "user", "content": "Say hello."}]
LIMITS = {
    "default": {"requests_per_minute": 600, "tokens_per_minute": 200_000},
    "free": {"requests_per_minute": 6, "tokens_per_minute": 20_000, "burst_requests": 2},
    "enterprise": {"requests_per_minute": 6000, "tokens_per_minute": 2_000_000},
}
KEYS = {"free": "sk-free-key-0001", "enterprise": "sk-enterprise-key-0001", "plain": "sk-plain-key-0001"}


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("\n".join([
        format_line(hash_key(KEYS["free"]), "trial-1", None, frozenset(), "free"),
        format_line(hash_key(KEYS["enterprise"]), "bigco-batch", "bigco", frozenset({"chat"}), "enterprise"),
        format_line(hash_key(KEYS["plain"]), "acme-app", "acme"),  # old format: the tenant map decides
    ]) + "\n")
    return path


def config(url: str, tmp_path: Path, **over: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "limits": LIMITS, "limits_by_tenant": {"acme": "free"},
        "auth": {"jwt": {"algorithms": ["HS256"], "audience": "ipgate", "limits_claim": "plan"},
                 "api_keys": {"file": str(key_file(tmp_path)), "reload_interval_s": 0}},
        "telemetry": {"access_log_file": str(tmp_path / "access.log")},
    }
    return gateway_config(url, **{**settings, **over})


async def outcomes(client: openai.AsyncOpenAI, n: int) -> list[int]:
    got = []
    for _ in range(n):
        try:
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)  # type: ignore[arg-type]
            got.append(200)
        except openai.RateLimitError as e:
            assert e.response.headers["x-ratelimit-limit-requests"] == "2" and "Retry-After" in e.response.headers
            got.append(429)
    return got


async def test_free_key_is_refused_after_its_burst_while_enterprise_is_served(tmp_path: Path) -> None:
    async with sim_backend() as sim, running_gateway(config(sim.url, tmp_path)) as gw:
        def client(credential: str) -> openai.AsyncOpenAI:
            return gw.openai_client(api_key=credential)

        free, ent = client(KEYS["free"]), client(KEYS["enterprise"])
        got_free, got_ent = [], []
        for _ in range(4):  # interleaved: the same moment for both
            got_free += await outcomes(free, 1)
            r = await ent.chat.completions.with_raw_response.create(model="sim", messages=MSG,  # type: ignore[arg-type]
                                                                    max_tokens=4)
            got_ent.append(r.status_code)
            assert int(r.headers["x-ratelimit-remaining-requests"]) >= 990  # enterprise: burst 6000 / 6
        assert got_free == [200, 200, 429, 429] and got_ent == [200] * 4
        # the old-format key of tenant acme gets `free` from the tenant map: its own bucket, same burst
        assert await outcomes(client(KEYS["plain"]), 3) == [200, 200, 429]
        # JWTs: the claim names the class; an unknown one gets `default` (counted), the tenant map applies
        assert await outcomes(client(gw.token("jwt-free", plan="free")), 3) == [200, 200, 429]
        assert await outcomes(client(gw.token("jwt-gold", plan="gold")), 3) == [200, 200, 200]
        assert gw.ctx.metrics.limit_class_unknown_total._value.get() == 1
        assert await outcomes(client(gw.token("jwt-acme", tenant="acme")), 3) == [200, 200, 429]
        for c in (free, ent):
            await c.close()
        async with aiohttp.ClientSession() as s:
            admin = {"Authorization": f"Bearer {gw.admin_token}"}
            async with s.get(gw.admin_url + "/admin/clients/trial-1", headers=admin) as resp:
                view = await resp.json()
            async with s.get(gw.admin_url + "/admin/clients/jwt-free", headers=admin) as resp:
                jwt_view = await resp.json()
        assert view["limit_classes"] == ["free"] and view["limits"]["burst_requests"] == 2
        assert view["limits_by_class"]["enterprise"]["burst_requests"] == 1000
        assert jwt_view["limit_classes"] == ["free"], "from the verified-token cache"
        await settled(gw)
        gw.ctx.access_log.close()  # flush the writer thread
    lines = [json.loads(x) for x in (tmp_path / "access.log").read_text().splitlines()]
    seen = {(x["client_id"], x["status"], x["limit_class"]) for x in lines}
    assert {("trial-1", 200, "free"), ("trial-1", 429, "free"), ("bigco-batch", 200, "enterprise"),
            ("acme-app", 429, "free"), ("jwt-gold", 200, "default")} <= seen


def usage_backend() -> web.Application:
    """A backend that answers every chat request with 2 tokens of usage, whatever max_tokens asked for."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({
            "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


async def test_reconciliation_refunds_at_the_class_rate(tmp_path: Path) -> None:
    """`free` tokens: 600 a minute, burst 600. Each request reserves ~550 tokens and uses 2. Refunded at free's
    rate the next one fits at once; refunded at `default`'s (200 000/min) it would wait about a minute."""
    limits = {**LIMITS, "free": {"requests_per_minute": 600, "tokens_per_minute": 600, "burst_tokens": 600}}
    async with app_backend(usage_backend()) as url, running_gateway(config(url, tmp_path, limits=limits)) as gw:
        client = gw.openai_client(api_key=KEYS["free"])
        for _ in range(4):
            r = await client.chat.completions.with_raw_response.create(model="sim", messages=MSG,  # type: ignore[arg-type]
                                                                       max_tokens=540)
            assert r.status_code == 200 and int(r.headers["x-ratelimit-remaining-tokens"]) < 100
            await settled(gw)  # the reconciliation ran
        await client.close()


def test_check_reports_unknown_classes_and_a_capping_trusted_tier(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    keys = key_file(tmp_path)
    keys.write_text(keys.read_text() + f"{hash_key('sk-x')} someone limits=platinum\n")
    cfg = {"models": [{"name": "sim", "backends": [{"name": "b0", "url": "http://127.0.0.1:1"}]}],
           "limits": LIMITS, "auth": {"jwt": None, "api_keys": {"file": str(keys)}},
           "policy": {"tiers": [{"name": "normal", "limits": "default"}, {"name": "throttle", "limits": "suspicious"}],
                      "flag_tier": "throttle"}}
    findings = offline(parse_config(cfg, env={}), env={})
    errors = [f.message for f in findings if f.level == "error" and f.area == "auth"]
    assert errors == [f"{keys}:4: limits=platinum is not a limit class of the configuration "
                      "(classes: default, enterprise, free, suspicious)"]
    warnings = [f.message for f in findings if f.level == "warning" and f.area == "limits"]
    assert len(warnings) == 1 and "plans looser than it (enterprise) are capped" in warnings[0]
    assert any(f.area == "limits" and f.level == "ok" and "free" in f.message for f in findings)
    # the config itself: an unknown class in limits_by_tenant stops `ipgate check` with the field named
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump({**cfg, "limits_by_tenant": {"acme": "gold"}}))
    assert cli_main(["check", "--config", str(path)]) == 2
    assert "limits_by_tenant: tenant 'acme' names limit class 'gold'" in capsys.readouterr().out
