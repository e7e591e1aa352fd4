"""Prefix-cache isolation (``cache_salt`` on a backend): through the REAL gateway to a simulated vLLM that records
what reaches it. A client can reuse only its own (or its tenant's) cache blocks, and cannot choose the salt."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.principal import Principal
from gateway.shape import cache_salt
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, sim_backend

MSG = [{"role": "user", "content": "What is a prefix cache?"}]


def _cfg(url: str, scope: str) -> dict[str, Any]:
    cfg = gateway_config(url)
    cfg["models"][0]["backends"][0]["cache_salt"] = scope
    return cfg


async def _send(gw: GatewayHandle, client: str, path: str, body: dict[str, Any], **claims: Any) -> int:
    async with aiohttp.ClientSession() as s, s.post(
        gw.url + path, json=body, headers={"Authorization": "Bearer " + gw.token(client, **claims)}
    ) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize(("scope", "who", "same"), [
    ("client", ("alice", "alice"), True),
    ("client", ("alice", "bob"), False),
    ("tenant", ("alice", "bob"), True),  # both of tenant acme (below)
])
async def test_salt_per_client_or_tenant_replaces_the_clients_own(scope: str, who: tuple[str, str], same: bool
                                                                  ) -> None:
    async with sim_backend() as sim, running_gateway(_cfg(sim.url, scope)) as gw:
        salts: list[str] = []
        for i, client in enumerate(who):
            body = {"model": "sim", "messages": MSG, "max_tokens": 4}
            if i == 1:
                body["cache_salt"] = salts[0] if not same else "chosen-by-the-client"  # never honoured
            assert await _send(gw, client, "/v1/chat/completions", body, tenant="acme") == 200
            salts.append(sim.stats.last_body["cache_salt"])
        assert all(len(s) == 43 for s in salts)  # 256 bits, base64url (vLLM's recommendation)
        assert (salts[0] == salts[1]) is same
        assert salts[0] == cache_salt(Principal(who[0], "acme"), scope)  # stable: the same on every replica


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"model": "sim", "prompt": "Hello", "max_tokens": 3, "stream": True}),
    ("/v1/embeddings", {"model": "sim", "input": "Hello"}),
    ("/v1/responses", {"model": "sim", "input": "Hello", "max_output_tokens": 8}),
])
async def test_every_endpoint_and_streams_are_salted(path: str, body: dict[str, Any]) -> None:
    async with sim_backend() as sim, running_gateway(_cfg(sim.url, "client")) as gw:
        assert await _send(gw, "alice", path, body) == 200
        assert sim.stats.last_body["cache_salt"] == cache_salt(Principal("alice"), "client")


async def test_none_leaves_the_body_as_the_client_sent_it() -> None:
    async with sim_backend() as sim, running_gateway(_cfg(sim.url, "none")) as gw:
        assert await _send(gw, "alice", "/v1/chat/completions", {"model": "sim", "messages": MSG}) == 200
        assert "cache_salt" not in sim.stats.last_body
        body = {"model": "sim", "messages": MSG, "cache_salt": "my-own-salt"}
        assert await _send(gw, "alice", "/v1/chat/completions", body) == 200
        assert sim.stats.last_body["cache_salt"] == "my-own-salt"


def test_tenantless_client_is_its_own_tenant() -> None:
    assert cache_salt(Principal("carol"), "tenant") == cache_salt(Principal("carol"), "client")
    assert cache_salt(Principal("carol", "acme"), "tenant") != cache_salt(Principal("carol"), "tenant")
    # a tenant named like a client cannot collide with that client's salt
    assert cache_salt(Principal("x", "acme"), "tenant") != cache_salt(Principal("acme"), "client")
