"""DNS-rebinding protection of the admin listener: every route answers only a ``Host`` that names it
(gateway/admin/hosts.py). Real admin apps on real sockets, requests with the ``Host`` header set explicitly
(aiohttp keeps a caller's Host), raw HTTP/1.0 without one, and a real browser whose resolver maps an
attacker's name to 127.0.0.1 (what a rebinding attack achieves)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.admin.app import SECURITY_HEADERS, build_admin_app
from gateway.admin.hosts import MAX_LOGGED_HOSTS, HostAllowlist, MisdirectedRequest, host_check, host_of
from gateway.app import open_context
from gateway.config import ConfigError, parse_config
from gateway.context import AppContext
from tests.support.harness import ADMIN_TOKEN, gateway_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EVERY_ROUTE = ["/healthz", "/readyz", "/metrics", "/admin/dashboard", "/admin/alerts", "/no/such/route"]
K8S = ["ipgate-admin.monitoring.svc", "*.svc.cluster.local"]


@contextlib.asynccontextmanager
async def admin_listener(admin_listen: str, bind: str = "127.0.0.1",
                         allowed_hosts: list[str] | None = None) -> AsyncIterator[tuple[str, AppContext]]:
    """The real admin app for a config with this ``admin_listen``, served on ``bind`` (a free port): the
    allowlist follows the configured address, so a wildcard or a name is tested without binding to it."""
    data = gateway_config("http://127.0.0.1:9", admin_listen=admin_listen,
                          admin={"token_env": "T", "allowed_hosts": allowed_hosts or []},
                          auth={"jwt": None})
    cfg = parse_config(data, source="<test>", env={})
    async with open_context(cfg) as ctx:
        runner = web.AppRunner(build_admin_app(ctx, env={"T": ADMIN_TOKEN}), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, bind, 0).start()
        port = runner.addresses[0][1]
        try:
            yield (f"http://[{bind}]:{port}" if ":" in bind else f"http://{bind}:{port}"), ctx
        finally:
            await runner.cleanup()


async def _get(s: aiohttp.ClientSession, url: str, host: str, path: str = "/metrics") -> tuple[int, Any]:
    async with s.get(url + path, headers={"Host": host, **AUTH}) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        if r.status == 421:
            for name, value in SECURITY_HEADERS.items():  # the refusal is an admin answer like any other
                assert r.headers[name] == value
        return r.status, body


def _refusals(ctx: AppContext) -> float:
    v = ctx.metrics.registry.get_sample_value("ipgate_auth_failures_total", {"reason": "admin_host"})
    return v or 0.0


async def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


# --- the allowlist itself ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("listen", "allowed", "host", "ok"), [
    # loopback: its own address, the loopback names, any port or none; nothing else
    ("127.0.0.1", [], "127.0.0.1:9090", True),
    ("127.0.0.1", [], "LocalHost:1234", True),
    ("127.0.0.1", [], "localhost.", True),
    ("127.0.0.1", [], "[::1]:9090", True),
    ("127.0.0.1", [], "[0:0::1]", True),
    ("127.0.0.1", [], "[::ffff:127.0.0.1]:9090", True),
    ("127.0.0.1", [], "evil.example:9090", False),
    ("127.0.0.1", [], "localhost.evil.example", False),
    ("127.0.0.1", [], "127.0.0.1.evil.example", False),
    ("127.0.0.1", [], "10.0.0.5:9090", False),  # a literal, but not this listener's (no wildcard)
    ("127.0.0.1", [], "", False),
    ("127.0.0.1", [], "::1", False),  # an IPv6 address travels in brackets
    ("127.0.0.1", [], "localhost:90:90", False),
    ("127.0.0.1", [], "localhost:port", False),
    ("127.0.0.1", [], "[localhost]", False),
    ("::1", [], "[::1]:9090", True),
    ("::1", [], "localhost:9090", True),
    ("localhost", [], "127.0.0.1:9090", True),
    # wildcard: any literal IP (rebinding needs a name), the loopback names, the listed names
    ("0.0.0.0", [], "10.244.1.7:9090", True),  # a pod IP: kubelet probes, Prometheus pod discovery
    ("0.0.0.0", [], "[fd00::7]:9090", True),
    ("::", [], "192.0.2.1", True),
    ("0.0.0.0", [], "localhost:9090", True),
    ("0.0.0.0", [], "ipgate-admin.monitoring.svc:9090", False),  # a name must be listed
    ("0.0.0.0", K8S, "ipgate-admin.monitoring.svc:9090", True),
    ("0.0.0.0", K8S, "IPGATE-ADMIN.monitoring.svc", True),
    ("0.0.0.0", K8S, "ipgate.monitoring.svc.cluster.local:9090", True),
    ("0.0.0.0", K8S, "svc.cluster.local", False),  # "*.x" is the names under x, not x itself
    ("0.0.0.0", K8S, "evilsvc.cluster.local", False),
    ("0.0.0.0", K8S, "ipgate-admin.monitoring.svc.evil.example", False),
    ("0.0.0.0", K8S, "evil.example", False),
    # a specific address or a name: that host (plus the list), not the loopback names
    ("10.0.0.5", [], "10.0.0.5:9090", True),
    ("10.0.0.5", [], "localhost:9090", False),
    ("10.0.0.5", [], "10.0.0.6:9090", False),
    ("10.0.0.5", ["10.0.0.6"], "10.0.0.6:9090", True),
    ("admin.internal", [], "Admin.Internal:9090", True),
    ("admin.internal", [], "localhost", False),
])
def test_allowlist(listen: str, allowed: list[str], host: str, ok: bool) -> None:
    assert HostAllowlist(listen, allowed).allows(host) is ok


def test_host_of_parses_uri_host_and_port() -> None:
    assert host_of("[::1]:9090") == "::1" and host_of("Example.COM.:80") == "example.com"
    assert host_of("example.com:") == "example.com"  # RFC 3986 allows an empty port
    assert host_of("example.com:123456") is None and host_of("[::1]x") is None and host_of("[127.0.0.1]") is None


@pytest.mark.parametrize(("entry", "problem"), [
    ("*.com", "at least two labels"),
    ("*", "'*' is allowed only as a whole first label"),
    ("admin*.example.com", "'*' is allowed only"),
    ("http://admin.example.com", "not a URL"),
    ("admin.example.com:9090", "without a port"),
    ("10.0.0.300", "not a DNS name"),
    ("bad name.example", "not a DNS name"),
    ("", "not a DNS name"),
])
def test_bad_allowed_hosts_fail_at_load_naming_the_entry(entry: str, problem: str) -> None:
    data = gateway_config("http://127.0.0.1:9", admin={"allowed_hosts": ["ok.example.com", entry]})
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="f.yaml", env={})
    msg = str(e.value)
    assert f"f.yaml: admin.allowed_hosts: entry 1 ({entry!r})" in msg and problem in msg, msg


def test_allowed_hosts_are_normalized_and_default_to_none() -> None:
    base = gateway_config("http://127.0.0.1:9")
    assert parse_config(base, source="x", env={}).admin.allowed_hosts == []
    cfg = parse_config({**base, "admin": {"allowed_hosts": ["Admin.Example.", "[::1]", "*.Svc.Cluster.Local"]}},
                       source="x", env={})
    assert cfg.admin.allowed_hosts == ["admin.example", "::1", "*.svc.cluster.local"]
    env = parse_config(base, source="x", env={"IPGATE_ADMIN__ALLOWED_HOSTS": "[a.example.com, b.example.com]"})
    assert env.admin.allowed_hosts == ["a.example.com", "b.example.com"]


# --- the listener -----------------------------------------------------------------------------------------

async def test_every_route_refuses_a_foreign_host_with_421_and_answers_its_own(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.admin.hosts")
    async with admin_listener("127.0.0.1:9090") as (url, ctx), aiohttp.ClientSession() as s:
        port = url.rsplit(":", 1)[1]
        for path in EVERY_ROUTE:
            status, body = await _get(s, url, f"evil.example:{port}", path)
            assert status == 421, (path, body)
            assert body["error"]["type"] == "invalid_request_error"
            assert body["error"]["code"] == "misdirected_request" and body["error"]["param"] == "Host"
            assert f"'evil.example:{port}'" in body["error"]["message"]
            assert "admin.allowed_hosts" in body["error"]["message"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            assert (await _get(s, url, host, "/metrics"))[0] == 200, host
            assert (await _get(s, url, host, "/admin/alerts"))[0] == 200, host  # admin auth still applies
            assert (await _get(s, url, host, "/no/such/route"))[0] == 404, host
        async with s.get(url + "/admin/alerts", headers={"Host": "localhost"}) as r:
            assert r.status == 401  # a good Host is no credential
        assert _refusals(ctx) == len(EVERY_ROUTE)
        # logged once per distinct value, with the value and the peer
        refused = [r.getMessage() for r in caplog.records if r.name == "gateway.admin.hosts"]
        assert len(refused) == 1 and f"'evil.example:{port}'" in refused[0] and "127.0.0.1" in refused[0]
        assert (await _get(s, url, "other.example"))[0] == 421
        assert len([r for r in caplog.records if r.name == "gateway.admin.hosts"]) == 2
        assert _refusals(ctx) == len(EVERY_ROUTE) + 1


async def test_the_refusal_log_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.admin.hosts")
    async with admin_listener("127.0.0.1:9090") as (url, ctx), aiohttp.ClientSession() as s:
        n = MAX_LOGGED_HOSTS + 10
        for i in range(n):
            assert (await _get(s, url, f"h{i}.evil.example"))[0] == 421
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.admin.hosts"]
        assert len(lines) == MAX_LOGGED_HOSTS + 1 and "further ones are only counted" in lines[-1]
        assert _refusals(ctx) == n  # every refusal counted


async def test_a_long_or_odd_host_is_shown_truncated_and_escaped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.admin.hosts")
    async with admin_listener("127.0.0.1:9090") as (url, _), aiohttp.ClientSession() as s:
        status, body = await _get(s, url, "a" * 300 + ".example")
        assert status == 421 and "a" * 100 + "...'" in body["error"]["message"]
        assert "a" * 101 not in body["error"]["message"] and "a" * 101 not in caplog.text
        data = await _raw(url, b"GET /healthz HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\nConnection: close\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 421 ") and b"caf\\\\xe9.example" in data  # ascii(), in JSON


async def test_missing_or_several_host_headers_are_refused() -> None:
    async with admin_listener("127.0.0.1:9090") as (url, ctx):
        host = url.removeprefix("http://")
        data = await _raw(url, b"GET /metrics HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host: refused anyway
        assert data.startswith(b"HTTP/1.0 421 ") or data.startswith(b"HTTP/1.1 421 "), data[:200]
        assert b"The Host header is missing" in data and b"ipgate_requests_total" not in data
        # HTTP/1.1 without Host never reaches the app: aiohttp's parser answers 400 itself (RFC 9112 §3.2)
        data = await _raw(url, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert b" 400 " in data.split(b"\r\n", 1)[0] and b'"ok"' not in data, data[:200]
        # aiohttp's parser refuses a second Host itself (400); the middleware refuses it too (below)
        data = await _raw(url, b"GET /healthz HTTP/1.1\r\nHost: " + host.encode() + b"\r\nHost: evil.example\r\n"
                          b"Connection: close\r\n\r\n")
        assert b" 400 " in data.split(b"\r\n", 1)[0] and b'"ok"' not in data, data[:300]
        data = await _raw(url, b"GET /healthz HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
        assert b" 200 " in data.split(b"\r\n", 1)[0], data[:200]  # HTTP/1.0 with a good Host is fine
        assert _refusals(ctx) == 1


async def test_the_middleware_refuses_several_host_headers_whatever_the_parser_lets_through() -> None:
    counted: list[int] = []
    check = host_check(HostAllowlist("127.0.0.1"), lambda: counted.append(1))

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="reached")

    two = CIMultiDict([("Host", "127.0.0.1:9090"), ("Host", "evil.example")])
    with pytest.raises(MisdirectedRequest, match="Several Host headers"):
        await check(make_mocked_request("GET", "/metrics", headers=two), handler)
    one = CIMultiDict([("Host", "127.0.0.1:9090")])
    assert isinstance(await check(make_mocked_request("GET", "/metrics", headers=one), handler), web.Response)
    assert counted == [1]


async def test_kubernetes_scrape_by_service_name_and_pod_ip() -> None:
    """admin_listen 0.0.0.0 in a pod: kubelet probes and pod-discovery scrapes send the pod IP (a literal:
    allowed); a scrape through a Service sends its DNS name, which the operator lists in allowed_hosts."""
    async with admin_listener("0.0.0.0:9090", allowed_hosts=K8S) as (url, _), aiohttp.ClientSession() as s:
        for host in ("10.244.1.7:9090", "[fd00:10:244::7]:9090", "ipgate-admin.monitoring.svc:9090",
                     "ipgate-admin.monitoring.svc.cluster.local:9090", "localhost:9090"):
            status, body = await _get(s, url, host)
            assert status == 200 and "ipgate_requests_total" in body, host
        for host in ("ipgate-admin:9090", "evil.example:9090", "ipgate-admin.monitoring.svc.evil.example"):
            assert (await _get(s, url, host))[0] == 421, host
    async with admin_listener("0.0.0.0:9090") as (url, _), aiohttp.ClientSession() as s:
        status, body = await _get(s, url, "ipgate-admin.monitoring.svc:9090")  # not listed: refused, with the fix
        assert status == 421 and "admin.allowed_hosts" in body["error"]["message"]


async def test_ipv6_loopback_listener() -> None:
    async with admin_listener("[::1]:9090", bind="::1") as (url, _), aiohttp.ClientSession() as s:
        port = url.rsplit(":", 1)[1]
        async with s.get(url + "/healthz") as r:  # aiohttp's own Host: "[::1]:port"
            assert r.status == 200
        for host in (f"[::1]:{port}", "[::1]", f"localhost:{port}", f"127.0.0.1:{port}"):
            assert (await _get(s, url, host, "/healthz"))[0] == 200, host
        for host in ("[::2]:9090", "[fe80::1]", "evil.example", "::1"):
            assert (await _get(s, url, host, "/healthz"))[0] == 421, host


def _chromium_dump(url: str, *, resolve: str) -> str:
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--host-resolver-rules=MAP {resolve} 127.0.0.1", "--virtual-time-budget=3000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
async def test_a_browser_whose_resolver_points_an_attackers_name_at_the_listener_gets_421() -> None:
    """What rebinding achieves, done with Chromium's resolver rules: the browser reaches 127.0.0.1 under the
    attacker's name and sends that name as Host. The answer is the 421, not the metrics; a listed name works."""
    async with admin_listener("127.0.0.1:9090", allowed_hosts=["admin.example.com"]) as (url, _):
        port = url.rsplit(":", 1)[1]
        dom = await asyncio.to_thread(_chromium_dump, f"http://rebind.evil.example:{port}/metrics",
                                      resolve="rebind.evil.example")
        assert "misdirected_request" in dom and "ipgate_requests_total" not in dom
        dom = await asyncio.to_thread(_chromium_dump, f"http://admin.example.com:{port}/metrics",
                                      resolve="admin.example.com")
        assert "ipgate_requests_total" in dom and "misdirected_request" not in dom
