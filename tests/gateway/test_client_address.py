"""The client's address through the REAL gateway: the TCP peer, or, behind ``server.trusted_proxies``, the
rightmost untrusted X-Forwarded-For hop — in the access log (every request, refused and unknown paths too),
in alert evidence, and never from a header an untrusted peer sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai

from tests.support.harness import gateway_config, running_gateway, settled, sim_backend

BODY = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _requests(gw: Any, xff: str) -> None:
    async with aiohttp.ClientSession() as s:
        h = {"X-Forwarded-For": xff}
        async with s.post(gw.url + "/v1/chat/completions", json=BODY,
                          headers={**h, "Authorization": f"Bearer {gw.token('alice')}"}) as r:
            assert r.status == 200
        async with s.post(gw.url + "/v1/chat/completions", json=BODY,
                          headers={**h, "Authorization": "Bearer sk-wrong"}) as r:
            assert r.status == 401
        async with s.get(gw.url + "/v1/nope", headers=h) as r:
            assert r.status == 404


def _ips(log_file: Path) -> list[tuple[int, str | None]]:
    return [(x["status"], x["ip"]) for x in map(json.loads, log_file.read_text().splitlines())]


async def test_behind_a_trusted_proxy_the_forwarded_address_is_logged(tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, telemetry={"access_log_file": str(log_file)},
                             server={"trusted_proxies": ["127.0.0.0/8"]})
        async with running_gateway(cfg) as gw:
            # the client wrote "6.6.6.6" itself; the proxy appended the address it saw
            await _requests(gw, "6.6.6.6, 198.51.100.9")
            await settled(gw)
            gw.ctx.access_log.close()
    assert _ips(log_file) == [(200, "198.51.100.9"), (401, "198.51.100.9"), (404, "198.51.100.9")]


async def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, telemetry={"access_log_file": str(log_file)})
        async with running_gateway(cfg) as gw:
            await _requests(gw, "198.51.100.9")  # a client spoofing its address
            await settled(gw)
            gw.ctx.access_log.close()
    assert _ips(log_file) == [(200, "127.0.0.1"), (401, "127.0.0.1"), (404, "127.0.0.1")]


async def test_alert_evidence_names_the_addresses_an_account_used(tmp_path: Path) -> None:
    alerts_file = tmp_path / "alerts.jsonl"
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url, detection={"enabled": True}, server={"trusted_proxies": ["127.0.0.1"]},
            limits={"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}},
            alerts={"min_interval_s": 0, "sinks": [{"kind": "jsonl", "path": str(alerts_file)}]})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("mallory")
            await _sweep(client, ("203.0.113.5", "203.0.113.77"), 60)  # two proxies' worth of exits
            await client.close()
            await settled(gw)
            assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush(10.0)
    alerts = [json.loads(x) for x in alerts_file.read_text().splitlines()]
    assert alerts and all(a["client"] == "mallory" for a in alerts)
    assert set(alerts[-1]["evidence"]["ips"]) == {"203.0.113.5", "203.0.113.77"}, alerts[-1]["evidence"]


def test_a_bad_trusted_proxies_entry_is_a_config_error() -> None:
    from gateway.config import ConfigError
    from gateway.config.loader import load_yaml, parse_config

    try:
        parse_config(load_yaml("server:\n  trusted_proxies: [10.0.0.0/8, lb.internal]\n"))
    except ConfigError as e:
        assert "trusted_proxies[1]" in str(e) and "lb.internal" in str(e), str(e)
    else:
        raise AssertionError("accepted")


async def _sweep(client: openai.AsyncOpenAI, ip: str | tuple[str, ...], n: int = 40) -> None:
    ips = (ip,) if isinstance(ip, str) else ip
    for i in range(n):  # a logit-bias sweep (from the addresses in turn), blocked before long
        try:
            await client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": "Say hi"}], max_tokens=1, logprobs=True,
                top_logprobs=20, logit_bias={str(1000 + 50 * i + j): 100 for j in range(50)},
                extra_headers={"X-Forwarded-For": ips[i % len(ips)]})
        except openai.RateLimitError:
            await asyncio.sleep(0.03)
        except openai.PermissionDeniedError:
            break


async def test_alerts_name_other_accounts_seen_from_the_same_addresses(tmp_path: Path) -> None:
    alerts_file = tmp_path / "alerts.jsonl"
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url, detection={"enabled": True}, server={"trusted_proxies": ["127.0.0.1"]},
            limits={"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}},
            alerts={"min_interval_s": 0, "sinks": [{"kind": "jsonl", "path": str(alerts_file)}]})
        async with running_gateway(cfg) as gw:
            det = gw.ctx.detection
            assert det is not None and gw.ctx.alerts is not None
            for name, ip in (("mallory", "203.0.113.5"), ("carol", "198.51.100.20")):
                client = gw.openai_client(name)
                await _sweep(client, ip)
                await client.close()
                await settled(gw)
            # this replica's own evidence names the suspicious accounts seen from an address
            assert det.recent.local_peers("someone", ("203.0.113.5",)) == ["mallory"]  # type: ignore[attr-defined]
            assert det.recent.local_peers("mallory", ("203.0.113.5",)) == []  # type: ignore[attr-defined]
            det.recent.clear()  # type: ignore[attr-defined]  # what this replica saw: gone (as on another replica)
            client = gw.openai_client("eve")  # a second account of mallory's campaign, same exit address
            await _sweep(client, "203.0.113.5")
            await client.close()
            await settled(gw)
            assert await gw.ctx.alerts.flush(10.0)
    alerts = [json.loads(x) for x in alerts_file.read_text().splitlines()]
    peers = {a["client"]: set(a["evidence"]["address_peers"]) for a in alerts}
    assert peers["eve"] == {"mallory"}, peers  # found through the alerts every replica shares (the store)
    assert "eve" not in peers["carol"] and "mallory" not in peers["carol"], peers
