"""Fingerprint probes replay the X-Forwarded-For of recent proxied requests, but never text a client wrote there:
a backend that is also a client could tag its own requests and recognise the probes carrying its tag."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import pytest

from gateway.clientaddr import replayable_forwarded_for
from gateway.fingerprint_client import probe_backend
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import gateway_config, running_gateway


@pytest.mark.parametrize(("upstream", "client", "replayed"), [
    ("127.0.0.1", "127.0.0.1", "127.0.0.1"),  # no header from the client: the peer alone
    ("evil-tag, 127.0.0.1", "127.0.0.1", "127.0.0.1"),  # a direct client's own text is dropped
    ("evil-tag, 203.0.113.7, 10.0.0.2", "203.0.113.7", "203.0.113.7, 10.0.0.2"),  # behind a trusted proxy
    ("1.2.3.4, 203.0.113.7, 10.0.0.2", "203.0.113.7", "203.0.113.7, 10.0.0.2"),  # a forged address too
    ("203.0.113.7, 203.0.113.7, 10.0.0.2", "203.0.113.7", "203.0.113.7, 10.0.0.2"),  # the rightmost copy
    ("evil, 10.0.0.2", None, "10.0.0.2"),
])
def test_replayable_forwarded_for(upstream: str, client: str | None, replayed: str) -> None:
    assert replayable_forwarded_for(upstream, client) == replayed


async def test_a_probe_never_replays_text_a_client_wrote(tmp_path: Path) -> None:
    srv = ModelServer()
    await srv.start()
    try:
        ref = tmp_path / "ref.json"
        ref.write_text((await probe_backend(srv.url, "sim")).dumps(), encoding="utf-8")
        cfg = gateway_config(srv.url)
        cfg["models"][0]["backends"][0]["fingerprint_reference"] = str(ref)
        async with running_gateway(cfg) as gw:
            marker = f"198.51.100.{uuid.uuid4().int % 250}-{uuid.uuid4().hex}"
            async with aiohttp.ClientSession() as s, s.post(
                    gw.url + "/v1/chat/completions", json={"model": "sim", "max_tokens": 4,
                                                           "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {gw.token('mallory')}", "X-Forwarded-For": marker}) as r:
                assert r.status == 200
            assert gw.ctx.fingerprint is not None
            await gw.ctx.fingerprint.check_now()
    finally:
        await srv.close()
    tagged = [h for h, b in srv.requests if marker in h.get("X-Forwarded-For", "")]
    assert len(tagged) == 1, f"{len(tagged) - 1} probes replayed the client's marker"
    probes = [h for h, b in srv.requests if b.get("temperature") == 0]
    # the start-up round, before any proxied request, sends none; the on-demand round the peer's hop alone
    assert {h.get("X-Forwarded-For") for h in probes} == {None, "127.0.0.1"}
