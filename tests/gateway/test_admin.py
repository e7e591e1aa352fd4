"""The admin listener: health, readiness, metrics, and admin-API authentication."""

from __future__ import annotations

import aiohttp

from tests.support.harness import gateway_config, running_gateway, sim_backend


async def test_health_ready_metrics_and_admin_auth() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=2)
        await client.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.admin_url + "/healthz") as r:
                assert r.status == 200
            async with s.get(gw.admin_url + "/readyz") as r:
                assert r.status == 200 and (await r.json())["models"] == ["sim"]
            async with s.get(gw.admin_url + "/metrics") as r:
                text = await r.text()
                assert r.status == 200
                assert 'route="/v1/chat/completions"' in text and 'status="200"' in text
                assert "alice" not in text  # no per-client labels
            # admin API: no credential, a client JWT, the admin token, an admin-role JWT
            path = gw.admin_url + "/admin/routing"
            async with s.get(path) as r:
                assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
            async with s.get(path, headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
                assert r.status == 403 and (await r.json())["error"]["code"] == "not_admin"
            async with s.get(path, headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 200
            async with s.get(path, headers={"Authorization": f"Bearer {gw.token('ops', roles=['admin'])}"}) as r:
                assert r.status == 200
            async with s.get(gw.admin_url + "/admin/nothing",
                             headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"
            # the admin API is not reachable on the public listener
            async with s.get(gw.url + "/admin/routing", headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 404
        gw.ctx.draining = True
        async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/readyz") as r:
            assert r.status == 503


async def test_rate_limit_429_shape_and_decision_metrics() -> None:
    limits = {"default": {"requests_per_minute": 60, "tokens_per_minute": 1_000_000, "burst_requests": 2}}
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, limits=limits)) as gw:
        async with aiohttp.ClientSession() as s:
            statuses, last = [], None
            for _ in range(3):
                async with s.post(gw.url + "/v1/chat/completions",
                                  headers={"Authorization": f"Bearer {gw.token('busy')}"},
                                  json={"model": "sim", "messages": [{"role": "user", "content": "x"}],
                                        "max_tokens": 1}) as r:
                    statuses.append(r.status)
                    last = (dict(r.headers), await r.json())
            assert statuses == [200, 200, 429]
            headers, body = last
            assert body["error"]["type"] == "rate_limit_error"
            assert int(headers["Retry-After"]) >= 1 and headers["RateLimit-Remaining"] == "0"
            async with s.get(gw.admin_url + "/metrics") as r:
                text = await r.text()
        assert 'ipgate_rate_limit_decisions_total{decision="reject",kind="requests"} 1.0' in text
        assert 'ipgate_rate_limit_decisions_total{decision="allow",kind="requests"} 2.0' in text
        assert sim.stats.requests == 2
