"""Review of session 13's gateway changes (client address, field allowlist, token-id prompts, Azure's
api-version): defects found, each with the test that failed before its fix, and the edge cases checked. The REAL
gateway, the simulated backend, the official ``openai`` client and raw aiohttp requests."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pydantic
import pytest
from multidict import CIMultiDict
from pydantic import BaseModel

from gateway.admin.routing import reload_from_config
from gateway.clientaddr import ClientAddress
from gateway.config import ServerConfig
from gateway.config.loader import parse_config
from gateway.preflight import offline
from tests.support.harness import gateway_config, running_gateway, settled, sim_backend

MSGS: list[Any] = [{"role": "user", "content": "hi"}]
BODY = {"model": "sim", "messages": MSGS, "max_tokens": 4}


# --- client address ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("xff", "expected"), [
    ("fe80::1%<img src=x onerror=alert(1)>", "fe80::1"),  # any text after "%" parses as a zone id
    ("2001:db8::1%eth0", "2001:db8::1"),
    ("[2001:db8::1%25eth0]:443", "2001:db8::1"),
    ("fe80::1%" + "x" * 6000, "fe80::1"),
    ("6.6.6.6\t,\t 198.51.100.9 ", "198.51.100.9"),
    ("6.6.6.6, , 198.51.100.9", "198.51.100.9"),
    (" , ,", "10.1.1.1"),  # nothing well-formed: the proxy itself
    ("198.51.100.9, \u0661.\u0662.\u0663.\u0664", "10.1.1.1"),  # non-ASCII digits are no address
    ("198.51.100.9, 10.2.2.2", "198.51.100.9"),  # trusted hops skipped from the right
    ("::ffff:198.51.100.9", "198.51.100.9"),
])
def test_forwarded_hops(xff: str, expected: str) -> None:
    """The client's address is a plain IP address whatever a hop holds: a zone id ("%eth0", or any text: the
    stdlib takes everything after the "%") was kept, so the access log, alert evidence and dashboard showed a
    client-written string of up to the header's size."""
    got = ClientAddress(["10.0.0.0/8"]).resolve("10.1.1.1", xff)
    assert got == expected
    assert got is not None and len(got) <= 39 and "%" not in got


async def test_the_logged_address_behind_a_proxy(tmp_path: Path) -> None:
    """Through the real gateway: several X-Forwarded-For lines read in order as one list; a zone id dropped."""
    log_file = tmp_path / "access.log"
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, telemetry={"access_log_file": str(log_file)},
                             server={"trusted_proxies": ["127.0.0.0/8"]})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            auth = {"Authorization": f"Bearer {gw.token('alice')}"}
            for lines in (["6.6.6.6", "198.51.100.9"],  # a client line, then the proxy's own line
                          ["6.6.6.6, fe80::2%<img src=x onerror=alert(1)>"],
                          [", ,"]):
                headers = CIMultiDict(auth)
                for v in lines:
                    headers.add("X-Forwarded-For", v)
                async with s.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers) as r:
                    assert r.status == 200
            await settled(gw)
            gw.ctx.access_log.close()
    ips = [json.loads(x)["ip"] for x in log_file.read_text().splitlines()]
    assert ips == ["198.51.100.9", "fe80::2", "127.0.0.1"]


async def test_the_backend_sees_the_peer_appended_to_x_forwarded_for() -> None:
    """The client's X-Forwarded-For reached the backend as the client wrote it: a backend trusting the gateway
    (uvicorn's proxy headers trust 127.0.0.1 by default) took the client's own text as its address. The gateway
    appends the address it received the request from, as every reverse proxy does."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw, aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {gw.token('alice')}"}
        seen = []
        for lines in ([], ["10.9.9.9"], ["10.9.9.9", "10.8.8.8, 10.7.7.7"]):
            headers = CIMultiDict(auth)
            for v in lines:
                headers.add("X-Forwarded-For", v)
            async with s.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers) as r:
                assert r.status == 200
            seen.append(sim.stats.last_headers.getall("X-Forwarded-For"))
    assert seen == [["127.0.0.1"], ["10.9.9.9, 127.0.0.1"], ["10.9.9.9, 10.8.8.8, 10.7.7.7, 127.0.0.1"]]


def test_ipgate_check_shows_where_the_client_address_comes_from() -> None:
    """``ipgate check`` said nothing about server.trusted_proxies: neither that X-Forwarded-For is ignored (a
    gateway behind a balancer logging the balancer's address) nor that a /0 entry lets every client choose the
    address it is logged under."""
    def server(cfg: dict[str, Any]) -> list[tuple[str, str]]:
        return [(f.level, f.message) for f in offline(parse_config(cfg)) if "client address" in f.message
                or "trusted_proxies" in f.message]

    assert server(gateway_config("http://127.0.0.1:9")) == [
        ("ok", "client address: the TCP peer (X-Forwarded-For is not read; behind a load balancer list it in "
               "server.trusted_proxies)")]
    found = server(gateway_config("http://127.0.0.1:9", server={"trusted_proxies": ["10.0.0.0/8", "::/0"]}))
    assert found[0][0] == "ok" and "10.0.0.0/8, ::/0" in found[0][1]
    assert [lv for lv, _ in found[1:]] == ["warning"] and "::/0" in found[1][1], found


async def test_reload_names_server_for_trusted_proxies() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        new = gw.ctx.config.model_copy(update={"server": ServerConfig(trusted_proxies=["10.0.0.0/8"])})
        assert reload_from_config(gw.ctx, new)["restart_required"] == ["server"]
        assert not gw.ctx.client_address.enabled


# --- token-id prompts: the 400's accounting ----------------------------------------------------------------------

async def test_a_refused_token_id_prompt_gives_its_reservation_back(tmp_path: Path) -> None:
    """The refusal comes after the store took the request's token reservation: it is given back (the next request
    needing the whole bucket passes), counted once, and access-logged with the tier and address."""
    log_file = tmp_path / "access.log"
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True}, telemetry={"access_log_file": str(log_file)},
                             limits={"default": {"requests_per_minute": 600, "tokens_per_minute": 1000}})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("tok")
            try:
                for prompt in ([[1, 2], [3]], [7] * 5):
                    with pytest.raises(openai.BadRequestError, match="token-id prompts"):
                        await client.completions.create(model="sim", prompt=prompt, max_tokens=900)
                    await settled(gw)
                await client.completions.create(model="sim", prompt="Say hi", max_tokens=900)
            finally:
                await client.close()
            await settled(gw)
            refused = gw.ctx.metrics.registry.get_sample_value("ipgate_request_fields_refused_total",
                                                               {"field": "prompt"})
            gw.ctx.access_log.close()
    assert refused == 2 and sim.stats.requests == 1
    lines = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert [(x["status"], x["tier"], x["ip"]) for x in lines] == [(400, "normal", "127.0.0.1")] * 2 + [
        (200, "normal", "127.0.0.1")]


# --- Azure api-version ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "refused"), [
    ("api-version=2024-10-21", None),
    ("api-version=a&api-version=b", None),
    ("api-version", None),
    ("api%2Dversion=1", None),  # the same name percent-encoded: decoded, dropped
    ("api-version=1&foo=2", "foo"),
    ("foo=2&api-version=1", "foo"),
    ("=x", "query"),
    ("&", "query"),
    ("API-VERSION=1", "API-VERSION"),
    ("api-version=1&%0d%0aX=1", "\r\nX"),
])
async def test_query_strings(query: str, refused: str | None) -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw, aiohttp.ClientSession() as s:
        url = gw.url + "/v1/chat/completions?" + query
        async with s.post(url, json=BODY, headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
            body = await r.json()
            if refused is None:
                assert r.status == 200, body
            else:
                assert r.status == 400 and body["error"]["param"] == refused, body


# --- field allowlist: the SDK's helpers, and what a 400 echoes ---------------------------------------------------

class Answer(BaseModel):
    text: str


async def test_sdk_helpers_pass_in_refuse_mode() -> None:
    """``parse`` and ``stream`` helpers build their bodies beyond ``create``'s keywords (response_format from a
    pydantic model, Responses ``text`` from ``text_format``): nothing they send is unknown."""
    cfg = gateway_config(proxy={"unknown_fields": "refuse"})
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, proxy=cfg["proxy"])) as gw:
        client = gw.openai_client("alice")
        try:
            for call in (
                lambda: client.chat.completions.parse(model="sim", messages=MSGS, response_format=Answer),
                lambda: client.responses.parse(model="sim", input="hi", text_format=Answer),
            ):
                with contextlib.suppress(pydantic.ValidationError, openai.LengthFinishReasonError):  # sim text
                    await call()
            async with client.chat.completions.stream(model="sim", messages=MSGS, max_tokens=4) as st:
                async for _ in st:
                    pass
            async with client.responses.stream(model="sim", input="hi", max_output_tokens=8) as rs:
                types = [ev.type async for ev in rs]
            assert types[-1] in ("response.completed", "response.incomplete"), types
        finally:
            await client.close()
        assert sim.stats.requests == 4


@pytest.mark.parametrize("name", ["x\u0000y\r\n", "\u202egnp.exe", "k" * 5000, "Temperature", "temperature "])
async def test_an_unknown_name_is_echoed_bounded_and_escaped(name: str) -> None:
    cfg = gateway_config(proxy={"unknown_fields": "refuse"})
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, proxy=cfg["proxy"])) as gw, \
            aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/chat/completions", data=json.dumps({**BODY, name: 1}),
                          headers={"Authorization": f"Bearer {gw.token('alice')}",
                                   "Content-Type": "application/json"}) as r:
            raw = await r.read()
        assert r.status == 400 and sim.stats.requests == 0
        err = json.loads(raw)["error"]
        assert err["param"] == (name if len(name) <= 64 else name[:64] + "...")
        assert b"\r" not in raw and b"\n" not in raw and len(raw) < 600
        labels = {s.labels.get("field") for m in gw.ctx.metrics.registry.collect() for s in m.samples
                  if m.name == "ipgate_request_fields_refused"}
        assert labels == {"(unknown)"}
