"""Fingerprint probes travel over the connections proxied requests keep alive. With a session of their own they
opened fresh connections every round (and closed them after it), which a backend could use to tell probes from
proxied traffic and serve the genuine model to them only. Real gateway, real backend server that records the
client port of each request's connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from gateway.fingerprint_client import probe_backend
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import eventually, gateway_config, running_gateway


async def test_probes_reuse_the_proxy_connections(servers: tuple[ModelServer, ModelServer], tmp_path: Path) -> None:
    a, _ = servers
    ref = tmp_path / "ref.json"
    ref.write_text((await probe_backend(a.url, "sim")).dumps())  # the CLI's own session: not the gateway's
    cfg = gateway_config(a.url, fingerprint={"timeout_s": 5})
    cfg["models"][0]["backends"][0]["fingerprint_reference"] = str(ref)
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        checker = gw.ctx.fingerprint
        assert checker is not None
        # the start-up round runs in the background
        await eventually(lambda: checker.last_round_at is not None, 10, "the start-up round")
        a.requests.clear()
        a.peers.clear()
        client = gw.openai_client()

        async def ask() -> None:
            await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hello"}])

        await asyncio.gather(*(ask() for _ in range(8)))  # eight pooled connections, kept alive
        proxied = set(a.peers)
        n = len(a.peers)
        async with s.post(gw.admin_url + "/admin/fingerprint/check",
                          headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
            assert r.status == 200
            assert [x["verdict"] for x in (await r.json())["results"]] == ["match"]
        probes = set(a.peers[n:])
        assert len(a.peers) - n == 8  # the round's eight probes
        assert probes & proxied, (probes, proxied)  # before: never, a new session per round
        await client.close()
