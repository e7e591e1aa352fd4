"""RFC 7239 ``Forwarded`` behind trusted proxies (gateway/clientaddr.py): walked from the right through
``server.trusted_proxies`` exactly like X-Forwarded-For, and read only when ``server.client_address_header``
names it — the header the proxies do not write is the client's own text and never believed."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.clientaddr import ClientAddress, element_for, forwarded_node
from gateway.config import ConfigError
from gateway.config.loader import load_yaml, parse_config
from gateway.preflight import offline
from tests.support.harness import app_backend, gateway_config, running_gateway, settled

LB = ["10.0.0.0/8", "fd00::/8"]
PEER = "10.1.2.3"  # the load balancer the gateway sees


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 7239 §4/§7 examples
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ('For="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
        ('for="_gazonk"', PEER),  # obfuscated: the proxy hides the client, there is no address to log
        ("for=unknown", PEER),
        ("for=UNKNOWN;proto=https", PEER),
        # quoted IPv6, with and without a port (numeric or obfuscated); IPv4 with a port
        ('for="[2001:db8::5]"', "2001:db8::5"),
        ('for="[2001:db8::5]:_hidden"', "2001:db8::5"),
        ('for="198.51.100.9:4711"', "198.51.100.9"),
        ('for="198.51.100.9:_port"', "198.51.100.9"),
        ("for=[2001:db8::5]:443", "2001:db8::5"),  # unquoted (RFC-invalid, some proxies write it): taken
        # parameter names are case-insensitive, order is free, by/proto/host are not addresses
        ("proto=https;FOR=198.51.100.9;host=api.example", "198.51.100.9"),
        ("by=198.51.100.1;proto=https", PEER),  # no for=: the hop said nothing; the proxy is the answer
        # trusted hops are skipped from the right; the first untrusted one is the client
        ("for=198.51.100.9, for=10.9.9.9", "198.51.100.9"),
        ('for=198.51.100.9, for="[fd00::7]:80"', "198.51.100.9"),
        ("for=10.7.7.7, for=10.9.9.9", "10.7.7.7"),  # every hop trusted: the leftmost (an internal client)
        # a client-written prefix before what the balancer appended is never believed
        ("for=1.2.3.4, for=198.51.100.9", "198.51.100.9"),
        ('for=198.51.100.9, for="6.6.6.6', PEER),  # an unclosed quote at the right: malformed, the proxy
        # ... and one to the LEFT cannot swallow what the proxy appended after the comma (a quote-aware split
        # would read one unterminated string and log the proxy: the client hidden behind it)
        ('for="6.6.6.6, for=198.51.100.9', "198.51.100.9"),
        ('for="6.6.6.6,for=198.51.100.9', "198.51.100.9"),
        ('for=6.6.6.6"garbage, for=198.51.100.9', "198.51.100.9"),
        ('for="6.6.6.6;x=", for=198.51.100.9', "198.51.100.9"),
        # unknown / obfuscated / malformed stop the walk at the hop to their right
        ("for=198.51.100.9, for=unknown, for=10.9.9.9", "10.9.9.9"),
        ("for=198.51.100.9, for=_x, for=10.9.9.9", "10.9.9.9"),
        ("for=198.51.100.9, garbage, for=10.9.9.9", "10.9.9.9"),
        ("for=198.51.100.9;for=10.9.9.9", PEER),  # a parameter twice in one element (§4: MUST NOT)
        ("for=2001:db8::5", PEER),  # bare IPv6: "2001:db8::1:80" would be ambiguous, RFC brackets them
        ('for="[1.2.3.4]"', PEER),
        ("for=198.51.100.9:99999999", PEER),
        ('for="198.51.100.9" x', PEER),
        ("for=", PEER),
        ("for=\u0661.\u0662.\u0663.\u0664", PEER),  # non-ASCII digits are no address
        # empty list elements are ignored (RFC 9110 §5.6.1), whitespace around separators tolerated
        ("for=198.51.100.9, , for=10.9.9.9,", "198.51.100.9"),
        (" for=198.51.100.9 ; proto=https ", "198.51.100.9"),
        # quoted-pairs, zones and IPv4-mapped addresses are normalised to a plain address
        ('for="\\198.51.100.9";proto="ht\\"tp"', "198.51.100.9"),
        ('for="[fe80::1%25eth0]"', "fe80::1"),
        ('for="[::ffff:198.51.100.9]"', "198.51.100.9"),
        ("", PEER),
    ],
)
def test_forwarded(value: str, expected: str) -> None:
    assert ClientAddress(LB, "forwarded").resolve(PEER, value) == expected


@pytest.mark.parametrize(("peer", "value", "expected"), [
    ("203.0.113.7", "for=198.51.100.9", "203.0.113.7"),  # an untrusted peer's header: ignored (the spoof)
    ("::ffff:10.1.2.3", "for=198.51.100.9", "198.51.100.9"),  # a dual-stack socket's mapped peer is trusted
    ("fd00::1", 'for="[2001:db8::5]:443"', "2001:db8::5"),
    (None, "for=198.51.100.9", None),
])
def test_forwarded_only_from_a_trusted_peer(peer: str | None, value: str, expected: str | None) -> None:
    assert ClientAddress(LB, "forwarded").resolve(peer, value) == expected


@pytest.mark.parametrize("value", [
    "for=[" + ":" * 16_000, "for=[" + ":" * 16_000 + "]x", 'for="' + '\\"' * 8_000, "for=[::1]:" + "_" * 16_000 + "!",
    "for=" + "1." * 8_000 + ":", "for=" + "a" * 16_000 + '"',
])
def test_client_text_of_header_size_parses_in_linear_time(value: str) -> None:
    """A backtracking node pattern took 20 s on "[" + 2 000 colons: a client behind the balancer stalled the
    event loop with one header. Each of these (16 KB, aiohttp's default header limit) takes well under 50 ms of
    CPU time (this thread's: other processes taking the CPU on a busy host do not count)."""
    t0 = time.thread_time()
    assert ClientAddress(LB, "forwarded").resolve(PEER, value) == PEER
    assert time.thread_time() - t0 < 0.05


def test_one_header_per_setting() -> None:
    """The same request, both headers: each setting reads its own header only, never the other's."""
    xff, fwd = ClientAddress(LB), ClientAddress(LB, "forwarded")
    assert (xff.header, fwd.header) == ("X-Forwarded-For", "Forwarded")
    # under "forwarded", an X-Forwarded-For value is not RFC 7239 syntax: nothing in it is believed
    assert fwd.resolve(PEER, "198.51.100.9") == PEER
    # under the default, "for=..." is not an address: nothing in it is believed
    assert xff.resolve(PEER, "for=198.51.100.9") == PEER


@pytest.mark.parametrize(("element", "expected"), [
    ("for=192.0.2.1", ipaddress.ip_address("192.0.2.1")),
    ("  ", False),
    ("proto=https", None),
    ("for", None),
    ("=192.0.2.1", None),
    ("f r=1.2.3.4", None),
])
def test_element_for(element: str, expected: object) -> None:
    assert element_for(element) == expected


@pytest.mark.parametrize(("peer", "node"), [("192.0.2.1", "192.0.2.1"), ("2001:db8::1", '"[2001:db8::1]"'),
                                             ("::ffff:192.0.2.1", '"[::ffff:192.0.2.1]"')])
def test_the_node_the_gateway_appends_reads_back(peer: str, node: str) -> None:
    assert forwarded_node(peer) == node
    back = element_for(f"for={node}")
    assert back is not None and back is not False
    assert str(back) == peer.removeprefix("::ffff:")


_NODE = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: f'"[{a}]"'),
                  st.just("unknown"), st.text(max_size=30))
_ELEMENT = st.builds(lambda n, extra: f"for={n}{extra}", _NODE,
                     st.sampled_from(["", ";proto=https", ";by=10.0.0.1", '"', ";for=1.1.1.1"]))


@given(peer=st.one_of(st.none(), st.sampled_from(["10.0.0.1", "::1", "::ffff:10.0.0.1"]), st.text(max_size=60)),
       value=st.one_of(st.none(), st.lists(_ELEMENT, max_size=6).map(", ".join), st.text(max_size=300)))
@settings(max_examples=400, deadline=None)
def test_forwarded_never_raises_and_returns_an_address_or_the_peer(peer: str | None, value: str | None) -> None:
    """Whatever the header holds (client-written), the answer is the peer or a plain, normalised address."""
    got = ClientAddress(["0.0.0.0/0", "::/0"] if peer else [], "forwarded").resolve(peer, value)
    if got is not None and got != peer:
        assert str(ipaddress.ip_address(got)) == got and "%" not in got


def test_the_setting_is_validated_and_shown_by_ipgate_check() -> None:
    with pytest.raises(ConfigError, match="client_address_header"):
        parse_config(load_yaml("server:\n  client_address_header: x-real-ip\n"))
    cfg = parse_config(load_yaml("server:\n  trusted_proxies: [10.0.0.0/8]\n  client_address_header: forwarded\n"
                                 "models:\n  - name: m\n    backends: [{name: b, url: 'http://127.0.0.1:9'}]\n"))
    msgs = [f.message for f in offline(cfg, env={}) if "client address" in f.message]
    assert msgs and "rightmost Forwarded hop" in msgs[0], msgs


async def test_through_the_gateway(tmp_path: Path) -> None:
    """The real gateway behind a trusted proxy that writes Forwarded: the access log has the client the proxy
    named, not what the client wrote in either header; the backend gets the gateway's own hop appended."""
    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(",".join(request.headers.getall("Forwarded", [])))
        return web.json_response({"id": "c", "object": "chat.completion", "model": "sim", "created": 0,
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ips: dict[str, list[str | None]] = {}
    async with app_backend(app) as url:
        for header in ("forwarded", "x-forwarded-for"):
            log_file = tmp_path / f"{header}.log"
            cfg = gateway_config(url, telemetry={"access_log_file": str(log_file)},
                                 server={"trusted_proxies": ["127.0.0.0/8"], "client_address_header": header})
            async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
                # the client wrote one element of each header itself; the proxy appended its line to each
                headers = [("Authorization", f"Bearer {gw.token('alice')}"),
                           ("Forwarded", "for=6.6.6.6"), ("Forwarded", 'for="[2001:db8::9]:51234";proto=https'),
                           ("X-Forwarded-For", "7.7.7.7, 198.51.100.9")]
                async with s.post(gw.url + "/v1/chat/completions", json=body,
                                  headers=CIMultiDict(headers)) as r:
                    assert r.status == 200, await r.text()
                await settled(gw)
                gw.ctx.access_log.close()
            ips[header] = [json.loads(x)["ip"] for x in log_file.read_text().splitlines()]
    assert ips == {"forwarded": ["2001:db8::9"], "x-forwarded-for": ["198.51.100.9"]}
    # both settings: the client's Forwarded lines go on as one list with the gateway's own hop (its TCP peer)
    assert seen == ['for=6.6.6.6, for="[2001:db8::9]:51234";proto=https, for=127.0.0.1'] * 2, seen
