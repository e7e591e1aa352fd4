"""The fingerprint admin API through the real admin app and a real gateway context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.app import build_admin_app
from gateway.app import open_context
from gateway.config import parse_config
from gateway.context import AppContext
from gateway.fingerprint_client import probe_backend
from gateway.fingerprinting import FingerprintChecker
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import eventually

AUTH = {"Authorization": "Bearer admin-test-token"}


@pytest.fixture
async def admin(servers: tuple[ModelServer, ModelServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[tuple[TestClient[Any, Any], AppContext, FingerprintChecker]]:
    a, b = servers
    ref = tmp_path / "ref.json"
    ref.write_text((await probe_backend(a.url, "m")).dumps())
    monkeypatch.setenv("IPGATE_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("IPGATE_ADMIN_TOKEN", "admin-test-token")
    cfg = parse_config({
        "detection": {"enabled": False}, "watermark": {"enabled": False},
        "routing": {"health": {"interval_s": 60}},
        "fingerprint": {"timeout_s": 2},
        "models": [{"name": "m", "backends": [
            {"name": "a", "url": a.url, "fingerprint_reference": str(ref)},
            {"name": "b", "url": b.url, "fingerprint_reference": str(ref)},
            {"name": "plain", "url": a.url},
        ]}],
    }, env={})
    b.weights = "swapped"  # already when the gateway starts: the start-up round must catch it
    async with open_context(cfg) as ctx:
        assert isinstance(ctx.fingerprint, FingerprintChecker)
        async with TestClient(TestServer(build_admin_app(ctx))) as client:
            yield client, ctx, ctx.fingerprint


async def test_check_now_status_and_release(
    admin: tuple[TestClient[Any, Any], AppContext, FingerprintChecker],
) -> None:
    client, ctx, checker = admin
    # the start-up round runs in the background as the gateway starts
    await eventually(lambda: checker.last_round_at is not None, 10, "the start-up round")
    before = await (await client.get("/admin/fingerprint", headers=AUTH)).json()
    assert [(b["backend"], b["verdict"]) for b in before["backends"]] == [("a", "match"), ("b", "mismatch")]
    assert before["action"] == "eject" and before["interval_s"] == 3600
    assert ctx.router.quarantined("m", "b") is not None

    resp = await client.post("/admin/fingerprint/check", headers=AUTH)
    assert resp.status == 200
    results = {r["backend"]: r for r in (await resp.json())["results"]}
    assert results["a"]["verdict"] == "match" and results["b"]["verdict"] == "mismatch"
    assert results["b"]["quarantined"] and results["b"]["reasons"]

    snap = await (await client.get("/admin/fingerprint?model=m", headers=AUTH)).json()
    b = next(x for x in snap["backends"] if x["backend"] == "b")
    assert b["verdict"] == "mismatch" and b["quarantine"].startswith("fingerprint mismatch")
    assert b["checked_at"] > 0 and b["similarity"] < 0.5 and snap["last_round_at"] is not None

    rel = await (await client.post("/admin/fingerprint/m/b/release", headers=AUTH)).json()
    assert rel == {"model": "m", "backend": "b", "released": True, "quarantine": None}
    assert ctx.router.quarantined("m", "b") is None

    one = await (await client.post("/admin/fingerprint/check?model=m&backend=b", headers=AUTH)).json()
    assert [r["backend"] for r in one["results"]] == ["b"] and one["results"][0]["quarantined"]


async def test_bad_requests_name_the_field(
    admin: tuple[TestClient[Any, Any], AppContext, FingerprintChecker]
) -> None:
    client, _, _ = admin
    cases = [
        ("get", "/admin/fingerprint?model=nope", 404, "model"),
        ("post", "/admin/fingerprint/check?backend=b", 400, "model"),
        ("post", "/admin/fingerprint/check?model=m&backend=plain", 404, "backend"),  # no reference
        ("post", "/admin/fingerprint/m/zzz/release", 404, "backend"),
    ]
    for method, path, status, param in cases:
        resp = await client.request(method, path, headers=AUTH)
        assert resp.status == status, path
        assert (await resp.json())["error"]["param"] == param, path
    assert (await client.get("/admin/fingerprint")).status == 401  # the admin API needs a credential


async def test_without_a_checker_the_api_says_so(
    admin: tuple[TestClient[Any, Any], AppContext, FingerprintChecker]
) -> None:
    client, ctx, _ = admin
    setattr(ctx, "fingerprint", None)  # noqa: B010
    resp = await client.get("/admin/fingerprint", headers=AUTH)
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "fingerprint_off"
