"""Review session 14 of the admin API (docs: /work/team/docs/review-session14-auth-admin.md).

- Undecodable bytes in the admin listener's ``Authorization`` header (aiohttp passes them on as lone
  surrogates) crashed the admin-token comparison: any unauthenticated caller got a 500 and logged a traceback,
  instead of the 401 the public listener gives.
- Client override changes were logged as made by "unknown": the handler looked the admin principal up by its
  name string, but the auth middleware stores it under a ``web.RequestKey``.
- An admin token whose environment value ends in a newline (a secret mounted from a file) never matched:
  headers cannot carry the newline, so the admin token silently never worked.
- A stored alert that is valid JSON but not an object made ``GET /admin/alerts?client=`` a 500 and blanked
  the dashboard.
- ``POST /admin/watermark/verify`` derived the candidate keys (up to 1 000 000 ids x key versions of HMACs,
  seconds of CPU) on the event loop the admin listener shares with the public API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.app import admin_token, build_admin_app
from gateway.config import AdminConfig, ConfigError
from tests.admin.audit_app import AUTH, JWT_SECRET, Audited
from tests.support.harness import mint_token
from watermark.verify import candidate_keys


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


@pytest.mark.parametrize("value", [b"Bearer \xff\xfeabc", b"bearer sk-\xc3\x28" + b"A" * 40, b"Bearer \xed\xa0\x80"])
async def test_undecodable_admin_authorization_is_a_401_not_a_500(audited: Audited, value: bytes,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    port = audited.client.server.port
    assert port is not None
    caplog.set_level(logging.WARNING)
    data = await _raw(port, b"GET /admin/alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value +
                      b"\r\nConnection: close\r\n\r\n")
    status, _, rest = data.partition(b"\r\n")
    assert status == b"HTTP/1.1 401 Unauthorized", data
    assert b'"type": "authentication_error"' in rest and b'WWW-Authenticate: Bearer realm="ipgate"' in rest
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # the admin token itself still works on that listener
    resp = await audited.client.get("/admin/alerts", headers=AUTH)
    assert resp.status == 200


async def test_override_changes_are_logged_with_the_administrators_identity(
        audited: Audited, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.admin.clients")
    resp = await audited.client.put("/admin/clients/bob/override", json={"override": "deny"}, headers=AUTH)
    assert resp.status == 200
    token = mint_token(JWT_SECRET, "ops-alice", roles=["admin"])
    resp = await audited.client.delete("/admin/client/override?client_id=bob",
                                       headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.admin.clients"]
    assert lines == ["admin admin-token set client 'bob' override=deny tier=None ttl_s=7776000",
                     "admin ops-alice cleared the override of client 'bob'"], lines


async def test_watermark_verify_derives_candidate_keys_off_the_event_loop(
        audited: Audited, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[bool] = []

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return candidate_keys(*args)

    monkeypatch.setattr("gateway.admin.watermark.candidate_keys", spy)
    text = "The quarterly roadmap moves the launch to March; keep this between us, said the memo."
    resp = await audited.client.post("/admin/watermark/verify", json={"text": text, "clients": ["alice", "bob"]},
                                     headers=AUTH)
    assert resp.status == 200, await resp.text()
    await audited.ctx.store.add_recipient("carol", 1, 3600)  # without "clients": the recorded recipients
    resp = await audited.client.post("/admin/watermark/verify", json={"text": text}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert threads == [False, False]  # never on the loop's (main) thread


async def test_an_admin_token_with_a_trailing_newline_in_the_environment_works(audited: Audited) -> None:
    """A secret mounted from a file (kubectl create secret --from-file) keeps the file's newline; no header can
    carry it, so the token could never be presented: every admin call was a 401."""
    token = "k8s-mounted-admin-token-0123456789"
    env = {"IPGATE_ADMIN_TOKEN": token + "\n"}
    assert admin_token(AdminConfig(), env) == token
    with pytest.raises(ConfigError, match="holds 5 characters"):
        admin_token(AdminConfig(), {"IPGATE_ADMIN_TOKEN": " short\n"})  # the floor applies to the real token
    async with TestClient(TestServer(build_admin_app(audited.ctx, env=env))) as client:
        resp = await client.get("/admin/alerts", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        resp = await client.get("/admin/alerts", headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert resp.status == 401


async def test_an_alert_entry_that_is_not_an_object_is_skipped_not_a_500(audited: Audited) -> None:
    """One foreign entry in the shared list (another version's writer, a hand-pushed value) made every
    ``GET /admin/alerts?client=`` a 500, and without the filter it was served as an alert, on which the
    dashboard's script failed (blank list), until a thousand newer alerts pushed it out."""
    good = {"id": "a1", "client": "mallory", "ts": 1.0, "tier": "watch", "score": 0.5}
    await audited.ctx.store.append_alert(json.dumps(good), 100)
    for foreign in ("[1, 2]", '"text"', "42", "null"):
        await audited.ctx.store.append_alert(foreign, 100)
    for query in ("", "?client=mallory"):
        resp = await audited.client.get(f"/admin/alerts{query}", headers=AUTH)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["alerts"] == [good]
