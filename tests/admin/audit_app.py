"""The audited admin app for the audit-trail tests: the real admin app over a real context built from a config
file (a canary rollout, lexical watermarking, an audit file). The fixture is registered in conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.app import build_admin_app
from gateway.app import open_context
from gateway.config import load_config
from gateway.context import AppContext

ADMIN_TOKEN = "audit-admin-token-0123456789"
JWT_SECRET = "audit-jwt-secret-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def config_data(audit_file: Path, secret_file: Path) -> dict[str, Any]:
    return {
        "detection": {"enabled": False},
        "watermark": {"enabled": True, "scheme": "lexical", "secret_file": str(secret_file)},
        "routing": {"health": {"interval_s": 60}},
        "admin": {"audit_file": str(audit_file), "audit_max_records": 500},
        "models": [
            {"name": "sim", "backends": [
                {"name": "stable", "url": "http://127.0.0.1:9", "weight": 90},
                {"name": "canary", "url": "http://user:hunter2@127.0.0.1:10", "weight": 10},
            ], "canary": {"backend": "canary", "steps": [{"weight": 10, "hold_s": 60}, {"weight": 100}]}},
        ],
    }


@dataclass
class Audited:
    client: TestClient[Any, Any]
    ctx: AppContext
    audit_file: Path
    config_file: Path

    async def records(self, query: str = "limit=1000") -> list[dict[str, Any]]:
        resp = await self.client.get(f"/admin/audit?{query}", headers=AUTH)
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["records"])


@pytest.fixture
async def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Audited]:
    monkeypatch.setenv("IPGATE_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("IPGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    secret_file = tmp_path / "wm.secret"
    secret_file.write_text("audit-test-watermark-master-0123456789")
    config_file = tmp_path / "ipgate.yaml"
    config_file.write_text(yaml.safe_dump(config_data(tmp_path / "audit.jsonl", secret_file)))
    async with open_context(load_config(config_file)) as ctx:
        setattr(ctx, "config_path", str(config_file))  # noqa: B010 - as `ipgate serve` records it
        async with TestClient(TestServer(build_admin_app(ctx))) as client:
            yield Audited(client, ctx, tmp_path / "audit.jsonl", config_file)
