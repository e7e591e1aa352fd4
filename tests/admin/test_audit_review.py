"""Review findings on the audit trail (2026-11-27): each test failed before its fix.

- A line with a duplicated key verified as intact: Python keeps the last value (what was hashed) while
  first-wins readers (and grep) show the forged first one.
- NaN / Infinity / a deeply nested line crashed the verifier (a traceback instead of exit 1).
- An admin action whose caller hung up while the record was being written lost its record.
- A SIGHUP reload changed the live routing without a record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.admin.audit import AUDIT_TRAIL, audit_middleware, note
from gateway.audit.chain import Chain, canonical, verify_lines
from gateway.audit.trail import AuditTrail
from gateway.cli import main
from gateway.principal import Principal
from gateway.store.memory import MemoryStore
from tests.admin.audit_app import Audited


def _lines(n: int) -> list[str]:
    chain = Chain("w")
    return [canonical(chain.seal({"action": "client.override.set", "target": f"c{i}"})) for i in range(n)]


def test_a_duplicated_key_is_a_problem_not_an_intact_record() -> None:
    lines = _lines(3)
    # a first "target" inserted before the genuine one: Python's parser keeps the last (the hash still
    # matches), a first-wins reader or a grep for "eve" sees the forgery
    lines[1] = lines[1].replace('{"action"', '{"target":"eve","action"', 1)
    assert json.loads(lines[1])["target"] == "c1"
    report = verify_lines(lines)
    assert not report.intact
    assert report.problems[0].line == 2 and "duplicate key" in report.problems[0].reason


def test_a_nested_duplicated_key_is_found_too() -> None:
    chain = Chain("w")
    line = canonical(chain.seal({"action": "x", "before": {"override": "deny"}}))
    forged = line.replace('"before":{', '"before":{"override":"allow",', 1)
    assert not verify_lines([forged]).intact


@pytest.mark.parametrize("line", [
    '{"writer":"w","seq":0,"prev":"%s","hash":"00","x":NaN}' % ("0" * 64),
    '{"writer":"w","seq":0,"prev":"%s","hash":"00","x":-Infinity}' % ("0" * 64),
    "[" * 100_000,
])
def test_lines_that_python_cannot_reserialise_are_problems_not_crashes(line: str) -> None:
    lines = _lines(2)
    report = verify_lines([lines[0], line, lines[1]])
    assert [p.line for p in report.problems] == [2]


def test_a_boolean_seq_is_not_a_record() -> None:
    lines = _lines(1)
    forged = lines[0].replace('"seq":0', '"seq":false')
    assert "not an audit record" in verify_lines([forged]).problems[0].reason


def test_cli_reports_a_nan_line_as_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join([*_lines(2), '{"writer":"w","seq":2,"prev":"00","hash":"00","x":NaN}']) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert f"{path}:3" in capsys.readouterr().out


KEY: web.RequestKey[Principal] = web.RequestKey("review_principal", Principal)


async def test_a_caller_that_hangs_up_during_the_record_write_still_leaves_the_record() -> None:
    """The gateway runs the admin app with handler_cancellation (gateway/server.py), as the test server does:
    a caller that goes away cancels the handler's task. The action had happened; its record must survive."""
    store = MemoryStore()
    trail = AuditTrail(store, max_records=100)
    acted = asyncio.Event()

    async def act(request: web.Request) -> web.Response:
        note(request, "canary.abort", target="m")
        acted.set()
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[audit_middleware(trail, KEY)])
    app.router.add_post("/admin/act", act)
    async with TestClient(TestServer(app)) as client:
        await trail._lock.acquire()  # another record is being written (a slow fsync): this one must wait
        try:
            with pytest.raises(asyncio.TimeoutError):
                await client.post("/admin/act", timeout=aiohttp.ClientTimeout(total=0.3))
            assert acted.is_set()
            await asyncio.sleep(0.1)  # the server noticed the hang-up and cancelled the handler's task
        finally:
            trail._lock.release()
        await trail.close()
    records = [json.loads(r) for r in await store.recent_audit(10)]
    assert [(r["action"], r["target"], r["status"]) for r in records] == [("canary.abort", "m", 200)]


async def test_a_sighup_reload_is_recorded(audited: Audited, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.server import reload_models

    assert isinstance(audited.client.server, TestServer)
    trail = audited.client.server.app[AUDIT_TRAIL]
    data: dict[str, Any] = yaml.safe_load(audited.config_file.read_text())
    data["models"][0]["backends"][0]["weight"] = 80
    audited.config_file.write_text(json.dumps(data))
    assert await reload_models(audited.ctx, str(audited.config_file), trail)
    audited.config_file.write_text("models: [")  # a bad file: refused, and that is recorded too
    with caplog.at_level(logging.ERROR):
        assert not await reload_models(audited.ctx, str(audited.config_file), trail)
    await trail.flush()
    for _ in range(50):
        recs = [r for r in await audited.records() if r["action"] == "routing.reload"]
        if len(recs) == 2:
            break
        await asyncio.sleep(0.02)
    bad, good = recs
    assert good["actor"] == {"id": "signal:SIGHUP", "auth": "signal", "tenant": None}
    assert good["method"] == "SIGHUP" and good["status"] == 200 and good["error"] is None
    assert good["before"]["live_config_sha256"] != good["after"]["live_config_sha256"]
    assert bad["status"] == 400 and bad["error"] == "invalid_config" and bad["after"] is None
    assert "hunter2" not in json.dumps(recs)
    assert verify_lines(reversed([json.dumps(r, sort_keys=True, separators=(",", ":")) for r in recs]),
                        partial_start=True).intact



async def test_a_torn_last_line_does_not_swallow_the_next_writers_first_record(tmp_path: Path) -> None:
    """A crash mid-line leaves the file without its final newline; the restarted gateway's first record must
    start a line of its own, or it is glued to the torn one and its whole chain reads as broken."""
    path = tmp_path / "audit.jsonl"
    first = AuditTrail(MemoryStore(), max_records=10, file=str(path), writer="old")
    await first.write({"action": "canary.abort"})
    await first.close()
    with path.open("a") as fh:
        fh.write('{"action":"canary.pause","writer":"old","seq":1,"pr')  # the crash
    second = AuditTrail(MemoryStore(), max_records=10, file=str(path), writer="new")
    await second.write({"action": "canary.resume"})
    await second.write({"action": "canary.promote"})
    await second.close()
    report = verify_lines(path.read_text().splitlines())
    assert report.records == 3 and report.writers == 2
    assert [(p.line, p.reason) for p in report.problems] == [(2, "not a JSON record")]


async def test_sighup_rereads_the_api_key_file_as_ipgate_apikey_documents(tmp_path: Path) -> None:
    """`ipgate apikey --help`: changes to the key file are picked up "within reload_interval_s seconds (or on
    SIGHUP)". With polling off (0), a revoked key stayed valid after a SIGHUP."""
    from gateway.app import open_context
    from gateway.auth.apikeys import generate_key, hash_key
    from gateway.config import load_config
    from gateway.errors import AuthenticationFailed
    from gateway.server import reload_models

    key = generate_key()
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{hash_key(key)} mallory\n")
    config = tmp_path / "ipgate.yaml"
    config.write_text(yaml.safe_dump({
        "detection": {"enabled": False}, "watermark": {"enabled": False},
        "auth": {"jwt": None, "api_keys": {"file": str(keys), "reload_interval_s": 0}},
        "models": [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:9"}]}]}))
    async with open_context(load_config(config)) as ctx:
        assert (await ctx.auth.authenticate(f"Bearer {key}")).client_id == "mallory"
        keys.write_text(f"{hash_key(generate_key())} someone-else\n")  # mallory's key revoked
        assert await reload_models(ctx, str(config))
        with pytest.raises(AuthenticationFailed):
            await ctx.auth.authenticate(f"Bearer {key}")
