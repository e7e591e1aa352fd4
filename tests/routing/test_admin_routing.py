"""The routing admin API through the real admin app: snapshot, canary commands, reload from the file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.app import build_admin_app
from gateway.admin.routing import reload_from_config
from gateway.app import open_context
from gateway.config import load_config, parse_config
from gateway.context import AppContext
from gateway.routing.pool import Outcome

AUTH = {"Authorization": "Bearer admin-test-token"}


def config_data(stable: float = 90, canary: float = 10, rpm: int = 600) -> dict[str, Any]:
    return {
        "limits": {"default": {"requests_per_minute": rpm, "tokens_per_minute": 200000},
                   "suspicious": {"requests_per_minute": 30, "tokens_per_minute": 10000}},
        "detection": {"enabled": False},
        "watermark": {"enabled": False},
        "routing": {"health": {"interval_s": 60}},
        "models": [
            {"name": "sim", "backends": [
                {"name": "stable", "url": "http://127.0.0.1:9", "weight": stable},
                {"name": "canary", "url": "http://127.0.0.1:10", "weight": canary},
            ], "canary": {"backend": "canary", "steps": [{"weight": canary, "hold_s": 60}, {"weight": 100}]}},
            {"name": "plain", "backends": [{"name": "only", "url": "http://127.0.0.1:11"}]},
        ],
    }


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IPGATE_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("IPGATE_ADMIN_TOKEN", "admin-test-token")
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(config_data()))
    return path


@pytest.fixture
async def admin(config_file: Path) -> AsyncIterator[tuple[TestClient[Any, Any], AppContext]]:
    async with open_context(load_config(config_file)) as ctx:
        # `ipgate serve` records the file it started from; until AppContext declares it, set it here
        setattr(ctx, "config_path", str(config_file))  # noqa: B010
        async with TestClient(TestServer(build_admin_app(ctx))) as client:
            yield client, ctx


async def test_snapshot(admin: tuple[TestClient[Any, Any], AppContext]) -> None:
    client, _ = admin
    resp = await client.get("/admin/routing", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    sim = body["models"]["sim"]
    assert [(b["name"], b["share_percent"], b["status"]) for b in sim["backends"]] == [
        ("stable", 90.0, "healthy"), ("canary", 10.0, "healthy")]
    assert sim["canary"]["phase"] == "progressing" and sim["canary"]["history"][0]["kind"] == "started"
    assert body["models"]["plain"]["canary"] is None
    only = await (await client.get("/admin/routing?model=plain", headers=AUTH)).json()
    assert list(only["models"]) == ["plain"]
    missing = await client.get("/admin/routing?model=nope", headers=AUTH)
    assert missing.status == 404 and (await missing.json())["error"]["param"] == "model"
    assert (await client.get("/admin/routing")).status == 401  # the admin API needs a credential


async def test_canary_commands(admin: tuple[TestClient[Any, Any], AppContext]) -> None:
    client, ctx = admin
    resp = await client.post("/admin/canary/sim/pause", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["phase"] == "paused"
    resp = await client.post("/admin/canary/sim/abort", headers=AUTH)
    body = await resp.json()
    assert body["phase"] == "aborted" and body["weight"] == 0
    assert body["history"][-1]["detail"] == "aborted by admin-token"
    assert ctx.router.pool("sim").shares() == {"stable": 1.0, "canary": 0.0}
    resp = await client.post("/admin/canary/sim/promote", headers=AUTH)
    assert (await resp.json())["weight"] == 100
    assert ctx.router.pool("sim").shares() == {"stable": 0.0, "canary": 1.0}
    resp = await client.post("/admin/canary/sim/restart", headers=AUTH)
    body = await resp.json()
    assert (body["phase"], body["step"], body["weight"]) == ("progressing", 0, 10)
    assert [e["kind"] for e in body["history"]] == ["started", "paused", "aborted", "promoted", "started"]
    assert ctx.router.pool("sim").shares() == pytest.approx({"stable": 0.9, "canary": 0.1})
    for path, status in [("/admin/canary/plain/abort", 404), ("/admin/canary/nope/abort", 404),
                         ("/admin/canary/sim/explode", 404)]:
        resp = await client.post(path, headers=AUTH)
        assert resp.status == status and "error" in await resp.json()


async def test_reload_from_the_file_keeps_in_flight_requests(
    admin: tuple[TestClient[Any, Any], AppContext], config_file: Path
) -> None:
    client, ctx = admin
    held = [ctx.router.acquire("plain", f"c{i}") for i in range(3)]
    config_file.write_text(yaml.safe_dump(config_data(stable=50, canary=50, rpm=100)))
    resp = await client.post("/admin/routing/reload", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["restart_required"] == ["limits"] and body["models"] == ["plain", "sim"]
    # a changed rollout (new first step) restarts at its first step: 50 %
    assert ctx.router.pool("sim").shares() == {"stable": 0.5, "canary": 0.5}
    assert ctx.config.models[0].backends[0].weight == 50
    assert ctx.config.limits["default"].requests_per_minute == 600  # needs a restart: unchanged
    assert ctx.router.pool("plain").backends[0].in_flight == 3  # the same backend, still counting
    for lease in held:
        lease.release(Outcome(True, 200, 0.01))
    assert ctx.router.pool("plain").backends[0].in_flight == 0


async def test_a_bad_file_is_rejected_and_the_old_config_kept(
    admin: tuple[TestClient[Any, Any], AppContext], config_file: Path
) -> None:
    client, ctx = admin
    bad = config_data()
    bad["models"][0]["backends"][0]["weight"] = -5
    config_file.write_text(yaml.safe_dump(bad))
    resp = await client.post("/admin/routing/reload", headers=AUTH)
    assert resp.status == 400
    message = (await resp.json())["error"]["message"]
    assert str(config_file) in message and "models.0.backends.0.weight" in message
    assert ctx.router.pool("sim").shares()["stable"] == pytest.approx(0.9)


async def test_reload_without_a_config_file_is_503(config_file: Path) -> None:
    async with open_context(load_config(config_file)) as ctx:
        async with TestClient(TestServer(build_admin_app(ctx))) as client:
            resp = await client.post("/admin/routing/reload", headers=AUTH)
            assert resp.status == 503 and (await resp.json())["error"]["code"] == "no_config_file"
        # the function the SIGHUP handler calls works on a config object all the same
        result = reload_from_config(ctx, parse_config(config_data(stable=70, canary=30)))
        assert result["restart_required"] == []
        assert ctx.router.pool("sim").shares()["canary"] == pytest.approx(0.3)
