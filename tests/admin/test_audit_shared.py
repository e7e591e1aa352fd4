"""The audit trail is shared: across two gateways on one real Redis, and across two admin listeners (two
writers) on one memory store. A store outage: the action is still done, the failure counted and logged once,
the record kept and written once the store is back."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.app import build_admin_app
from gateway.app import open_context
from gateway.audit.chain import verify_lines
from gateway.cli import main
from gateway.config import ConfigError, parse_config
from tests.conftest import RedisProcess
from tests.support.harness import ADMIN_TOKEN, GatewayHandle, eventually, gateway_config, running_gateway

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BACKEND = "http://127.0.0.1:9"  # never called: these tests use only the admin API


async def call(s: ClientSession, gw: GatewayHandle, method: str, path: str, body: Any = None) -> int:
    async with s.request(method, gw.admin_url + path, headers=AUTH,
                         data=None if body is None else json.dumps(body)) as r:
        return r.status


async def audit(s: ClientSession, gw: GatewayHandle, query: str = "limit=1000") -> dict[str, Any]:
    async with s.get(f"{gw.admin_url}/admin/audit?{query}", headers=AUTH) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def test_two_gateways_on_one_redis_share_one_trail(redis_url: str) -> None:
    cfg = gateway_config(BACKEND, store={"kind": "redis", "url": redis_url, "timeout_ms": 1000})
    async with running_gateway(cfg) as a, running_gateway(cfg) as b, ClientSession() as s:
        assert await call(s, a, "PUT", "/admin/clients/mallory/override", {"override": "deny"}) == 200
        assert await call(s, b, "PUT", "/admin/clients/mallory/override", {"override": "allow"}) == 200
        assert await call(s, a, "DELETE", "/admin/clients/mallory/override") == 200
        seen_a, seen_b = await audit(s, a), await audit(s, b)
        assert seen_a == seen_b and seen_a["count"] == 3
        recs = seen_a["records"]
        assert [r["action"] for r in recs] == ["client.override.clear", "client.override.set",
                                               "client.override.set"]
        # b saw a's denylisting as its "before": one store, one truth
        assert recs[1]["before"]["override"] == "deny" and recs[1]["after"]["override"] == "allow"
        assert len({r["writer"] for r in recs}) == 2 and recs[0]["writer"] == recs[2]["writer"]
        async with s.get(a.admin_url + "/admin/audit/verify", headers=AUTH) as r:
            assert await r.json() == {"intact": True, "records": 3, "writers": 2, "problems": []}


async def test_two_writers_on_one_memory_store(tmp_path: Path) -> None:
    async with running_gateway(gateway_config(BACKEND)) as gw, ClientSession() as s:
        second = build_admin_app(gw.ctx, env={"IPGATE_TEST_ADMIN_TOKEN": ADMIN_TOKEN})
        async with TestClient(TestServer(second)) as other:
            assert await call(s, gw, "PUT", "/admin/clients/x/override", {"tier": "watch"}) == 200
            resp = await other.delete("/admin/clients/x/override", headers=AUTH)
            assert resp.status == 200
            resp = await other.get("/admin/audit", headers=AUTH)
            from_other = (await resp.json())["records"]
        from_first = (await audit(s, gw))["records"]
        assert from_first == from_other and [r["action"] for r in from_first] == [
            "client.override.clear", "client.override.set"]
        assert from_first[0]["before"]["pinned_tier_name"] == "watch"
        assert verify_lines(json.dumps(r) for r in reversed(from_first)).writers == 2


async def test_store_outage_counts_logs_once_and_keeps_the_records(
        redis_process: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audit_file = tmp_path / "audit.jsonl"
    cfg = gateway_config(BACKEND, store={"kind": "redis", "url": redis_process.url, "failure_mode": "open",
                                         "timeout_ms": 200, "health_interval_s": 0.05},
                         admin={"audit_file": str(audit_file)})
    async with running_gateway(cfg) as gw, ClientSession() as s:
        failures = gw.ctx.metrics.audit_write_failures_total.labels("store")
        assert await call(s, gw, "POST", "/admin/fingerprint/sim/b0/release") == 200  # stored normally
        redis_process.kill()
        caplog.set_level(logging.WARNING, logger="gateway.audit.trail")
        # the action does not need the store, so it is performed and answered; its record waits
        for _ in range(2):
            assert await call(s, gw, "POST", "/admin/fingerprint/sim/b0/release") == 200
        assert failures._value.get() == 2
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "the action itself was performed" in errors[0].getMessage()
        # an override needs the store: refused with 503, and that refusal is itself recorded (pending)
        assert await call(s, gw, "PUT", "/admin/clients/m/override", {"override": "deny"}) == 503
        assert failures._value.get() == 3
        async with s.get(gw.admin_url + "/admin/audit", headers=AUTH) as r:
            assert r.status == 503
        assert len(audit_file.read_text().splitlines()) == 4  # the file got every record meanwhile

        redis_process.start()
        await eventually(lambda: not getattr(gw.ctx.store, "degraded", True), what="store recovery")
        body = await audit(s, gw)
        assert body["pending"] == 0 and body["count"] == 3  # the first record went with the old Redis
        assert [r["status"] for r in body["records"]] == [503, 200, 200]
        assert [r["seq"] for r in body["records"]] == [3, 2, 1]
        assert verify_lines((json.dumps(r) for r in reversed(body["records"])), partial_start=True).intact
        assert failures._value.get() == 3  # counted once per record, not per retry
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        assert any("works again" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert main(["audit", "verify", str(audit_file)]) == 0


async def test_a_caller_that_hangs_up_mid_action_is_still_recorded() -> None:
    """The admin client goes away while the handler waits (here: for the rest of the body): status 499."""
    async with running_gateway(gateway_config(BACKEND)) as gw, ClientSession() as s:
        host, port = gw.admin_url.removeprefix("http://").split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"PUT /admin/clients/x/override HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
                     f"{ADMIN_TOKEN}\r\nContent-Length: 100\r\n\r\n{{".encode())
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await writer.wait_closed()

        async def recorded() -> list[dict[str, Any]]:
            return list((await audit(s, gw))["records"])

        for _ in range(200):
            recs = await recorded()
            if recs:
                break
            await asyncio.sleep(0.01)
        assert [(r["action"], r["target"], r["status"], r["error"]) for r in recs] == [
            ("client.override.set", "x", 499, "client_closed")]
        assert await gw.ctx.store.get_client("x") is None


async def test_start_up_refuses_a_bad_audit_file_or_key(tmp_path: Path) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_text("audit-jwt-secret-0123456789abcdef0123456789")
    jwt = {"algorithms": ["HS256"], "secret_env": None, "secret_file": str(secret)}

    def config(**admin: str) -> Any:
        return parse_config(gateway_config(BACKEND, auth={"jwt": jwt}, admin=admin), env={})

    async with open_context(config(audit_file=str(tmp_path / "no-such-dir" / "a.jsonl"))) as ctx:
        with pytest.raises(ConfigError, match=r"admin\.audit_file"):
            build_admin_app(ctx, env={})
    cfg = config(audit_key_env="AUDIT_KEY")
    async with open_context(cfg) as ctx:
        for env in ({}, {"AUDIT_KEY": "short"}):
            with pytest.raises(ConfigError, match=r"admin\.audit_key_env: AUDIT_KEY"):
                build_admin_app(ctx, env=env)
        app = build_admin_app(ctx, env={"AUDIT_KEY": "audit-chain-key-0123456789",
                                        "IPGATE_ADMIN_TOKEN": ADMIN_TOKEN})
        async with TestClient(TestServer(app)) as client:
            assert (await client.post("/admin/canary/sim/abort", headers=AUTH)).status == 404
            recs = (await (await client.get("/admin/audit", headers=AUTH)).json())["records"]
            assert [r["alg"] for r in recs] == ["hmac-sha256"]
            assert (await (await client.get("/admin/audit/verify", headers=AUTH)).json())["intact"] is True
