"""``PUT /admin/client/override``: a body over its bound is a 413 naming the limit and the body (was aiohttp's
bare "Request Entity Too Large", ``param`` null), and an override that would expire at once is refused
(``ttl_s: 1e-300`` was answered ``"blocked": true`` and blocked nothing)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway.admin.clients import MAX_BODY_BYTES
from tests.support.harness import gateway_config, running_gateway, sim_backend


async def _put(body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    async with sim_backend() as sim, \
            running_gateway(gateway_config(sim.url, telemetry={"access_log": False})) as gw, \
            aiohttp.ClientSession(headers={"Authorization": "Bearer " + gw.admin_token}) as s, \
            s.put(gw.admin_url + "/admin/client/override?client_id=mallory", data=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("size", [4 * 1024 * 1024, MAX_BODY_BYTES + 1])
async def test_an_oversized_body_is_a_413_naming_the_limit(size: int) -> None:
    body = b'{"override": "deny", "ttl_s": 60}'
    status, answer = await _put(body + b" " * (size - len(body)))
    assert status == 413, answer
    assert answer["error"]["param"] == "body" and str(MAX_BODY_BYTES) in answer["error"]["message"]


@pytest.mark.parametrize("ttl, ok", [(1e-300, False), (0.5, False), (1, True), (86400, True)])
async def test_an_override_must_outlive_a_second(ttl: float, ok: bool) -> None:
    status, answer = await _put(json.dumps({"override": "deny", "ttl_s": ttl}).encode())
    if ok:
        assert status == 200 and answer["blocked"] is True
    else:
        assert status == 400 and answer["error"]["param"] == "ttl_s", answer
