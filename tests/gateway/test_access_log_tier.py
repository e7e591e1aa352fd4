"""A request refused at admission (429 over the limit, 403 blocked) is logged with the tier it was refused at:
for a security team reading the access log, which tier's limits or block applied is the point of the line."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.support.harness import gateway_config, running_gateway, settled, sim_backend


async def test_refused_requests_carry_their_tier_in_the_access_log(tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, telemetry={"access_log_file": str(log_file)},
                             limits={"default": {"requests_per_minute": 1, "tokens_per_minute": 100_000,
                                                 "burst_requests": 1}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            headers = {"Authorization": f"Bearer {gw.token('alice')}"}
            statuses = []
            for _ in range(2):
                async with s.post(gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
                    statuses.append(r.status)
            async with s.put(gw.admin_url + "/admin/clients/bob/override", json={"override": "deny"},
                             headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 200, await r.text()
            async with s.post(gw.url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {gw.token('bob')}"}) as r:
                statuses.append(r.status)
            await settled(gw)
            gw.ctx.access_log.close()  # flush the writer thread
    assert statuses == [200, 429, 403]
    lines = [json.loads(x) for x in log_file.read_text().splitlines()]
    got = [(x["client_id"], x["status"], x["tier"], x["error_type"]) for x in lines]
    assert got[0][:3] == ("alice", 200, "normal")
    assert got[1][:3] == ("alice", 429, "normal")
    assert got[2][:3] == ("bob", 403, "normal"), got
