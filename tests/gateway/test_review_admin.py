"""Security review of the admin listener: who may call what, what a browser may do with the answers, and how
bad input is answered. Everything runs against the real admin app of a real gateway (tests/support/harness)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.admin.app import SECURITY_HEADERS, build_admin_app
from gateway.auth.apikeys import format_line, generate_key, hash_key
from gateway.config import ConfigError
from tests.support.harness import gateway_config, running_gateway, sim_backend

UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics", "/admin/dashboard"}
# Values for the path parameters of the admin routes: real names where a handler would look them up.
PATH_VALUES = {"client_id": "victim", "model": "sim", "backend": "b0", "op": "pause"}


def admin_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the admin app, read from its router: a route added later is
    covered without editing this test."""
    out = []
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"cannot tell the path of {route!r}"
        path = re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: PATH_VALUES[m.group(1)], path)
        out.append((route.method, path))
    return out


async def _status(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with s.request(method, url, **kw) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
        return r.status, body, r.headers


async def test_every_admin_route_refuses_missing_wrong_ambient_and_non_admin_credentials(tmp_path: Path) -> None:
    user_key, admin_key = generate_key(), generate_key()
    keys = tmp_path / "keys.txt"
    keys.write_text(format_line(hash_key(user_key), "carol", "acme", frozenset({"operator"})) + "\n"
                    + format_line(hash_key(admin_key), "root", None, frozenset({"admin"})) + "\n")
    cfg = gateway_config("http://127.0.0.1:9")
    cfg["auth"] = {**cfg["auth"], "api_keys": {"file": str(keys)}}
    async with running_gateway(cfg) as gw:
        routes = admin_routes(build_admin_app(gw.ctx, env={"IPGATE_TEST_ADMIN_TOKEN": gw.admin_token}))
        protected = [(m, p) for m, p in routes if p not in UNAUTHENTICATED]
        assert {("PUT", "/admin/clients/victim/override"), ("POST", "/admin/routing/reload"),
                ("POST", "/admin/canary/sim/pause"), ("POST", "/admin/watermark/verify"),
                ("POST", "/admin/fingerprint/sim/b0/release"), ("GET", "/admin/alerts")} <= set(protected)
        tok = gw.admin_token
        refused = {
            "no credential": ({}, 401),
            "wrong token": ({"Authorization": "Bearer " + tok[:-1] + "x"}, 401),
            "token as basic auth": ({"Authorization": "Basic " + tok}, 401),
            "token in a cookie (ambient)": ({"Cookie": f"token={tok}; admin_token={tok}"}, 401),
            "a client's JWT": ({"Authorization": "Bearer " + gw.token("bob")}, 403),
            "a client's API key": ({"Authorization": "Bearer " + user_key}, 403),
            "a JWT with another role": ({"Authorization": "Bearer " + gw.token("ops", roles=["operator"])}, 403),
            "an admin JWT for another audience": (
                {"Authorization": "Bearer " + gw.token("ops", roles=["admin"], audience="other")}, 401),
        }
        async with aiohttp.ClientSession() as s:
            for method, path in protected:
                for what, (headers, want) in refused.items():
                    url = gw.admin_url + path + f"?token={tok}&access_token={tok}"  # a token in the URL: ignored
                    status, body, h = await _status(s, method, url, headers=headers, data=b"{}")
                    assert status == want, f"{method} {path} with {what}: {status}"
                    assert body["error"]["type"] in ("authentication_error", "permission_error"), body
                    assert tok not in str(body)
                    if want == 401:
                        assert h["WWW-Authenticate"] == 'Bearer realm="ipgate"'
            # nothing reached a handler: the victim has no override
            assert await gw.ctx.store.get_client("victim") is None
            status, _, _ = await _status(s, "GET", gw.admin_url + "/admin/alerts",
                                         headers={"Authorization": "Bearer " + admin_key})
            assert status == 200  # an API key with the admin role is an administrator
            for path in UNAUTHENTICATED:
                status, _, _ = await _status(s, "GET", gw.admin_url + path)
                assert status in (200, 503), path


async def test_cross_site_requests_get_no_cors_and_no_ambient_authority() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        evil = {"Origin": "https://evil.example"}
        async with aiohttp.ClientSession() as s:
            # the preflight a page on another origin needs for a PUT with a JSON body or an Authorization header
            status, _, h = await _status(s, "OPTIONS", gw.admin_url + "/admin/clients/victim/override", headers={
                **evil, "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "authorization, content-type"})
            assert status >= 400 and not any(k.lower().startswith("access-control-") for k in h)
            # a "simple" cross-site form POST: no preflight, no Authorization header -> refused, nothing changed
            for path in ("/admin/clients/victim/override", "/admin/routing/reload", "/admin/canary/sim/abort",
                         "/admin/fingerprint/sim/b0/release"):
                status, _, h = await _status(s, "POST", gw.admin_url + path, data={"override": "deny"},
                                             headers={**evil, "Content-Type": "application/x-www-form-urlencoded"})
                assert status in (401, 405), path
            assert await gw.ctx.store.get_client("victim") is None
            # even an authorised answer names no origin that may read it
            status, _, h = await _status(s, "GET", gw.admin_url + "/admin/alerts",
                                         headers={**evil, "Authorization": f"Bearer {gw.admin_token}"})
            assert status == 200 and not any(k.lower().startswith("access-control-") for k in h)


async def test_every_admin_answer_carries_the_security_headers() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        auth = {"Authorization": f"Bearer {gw.admin_token}"}
        cases = [("GET", "/admin/alerts", auth, 200), ("GET", "/admin/alerts", {}, 401),
                 ("GET", "/admin/alerts?limit=x", auth, 400), ("GET", "/admin/nope", auth, 404),
                 ("GET", "/metrics", {}, 200), ("GET", "/healthz", {}, 200), ("GET", "/admin/dashboard", {}, 200)]
        async with aiohttp.ClientSession() as s:
            for method, path, headers, want in cases:
                status, _, h = await _status(s, method, gw.admin_url + path, headers=headers)
                assert status == want, path
                for name, value in SECURITY_HEADERS.items():
                    if name == "Content-Security-Policy" and path == "/admin/dashboard":
                        assert "frame-ancestors 'none'" in h[name]  # the page's own policy
                    else:
                        assert h.get(name) == value, f"{path}: {name}"


async def test_dashboard_csp_allows_only_its_own_inline_code() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        async with aiohttp.ClientSession() as s:
            status, html, h = await _status(s, "GET", gw.admin_url + "/admin/dashboard")
        csp = h["Content-Security-Policy"]
        assert status == 200 and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and h["X-Frame-Options"] == "DENY"
        script = re.search(r"<script>(.*?)</script>", html, re.DOTALL)
        assert script is not None
        digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
        assert re.search(r"script-src 'sha256-[^']+';", csp) and f"'sha256-{digest}'" in csp
        # an inline event handler (onclick=...) would be blocked by this policy: the page must not use one
        assert not re.search(r"<[^>]*\son\w+\s*=", html)


async def test_deeply_nested_json_is_a_400_naming_the_body_not_a_500(tmp_path: Path) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text("review-watermark-master-secret-0123456789\n")
    cfg = gateway_config("http://127.0.0.1:9", watermark={"enabled": True, "scheme": "lexical",
                                                          "secret_file": str(secret)})
    async with running_gateway(cfg) as gw:
        auth = {"Authorization": f"Bearer {gw.admin_token}"}
        async with aiohttp.ClientSession() as s:
            for method, path in (("PUT", "/admin/clients/victim/override"), ("PUT", "/admin/client/override"
                                 "?client_id=victim"), ("POST", "/admin/watermark/verify")):
                for body in (b"[" * 100_000, b'{"a":' * 50_000):
                    status, err, _ = await _status(s, method, gw.admin_url + path, headers=auth, data=body)
                    assert status == 400, (path, status, err)
                    assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == "body"
                    assert "nested too deeply" in err["error"]["message"] and "Traceback" not in str(err)
        assert await gw.ctx.store.get_client("victim") is None


async def test_every_client_id_the_authenticator_admits_can_be_denied() -> None:
    """Ids an attacker could pick (self-registration, an IdP's username) that a path cannot carry (dot
    segments, which browsers resolve even percent-encoded) or with characters URLs must escape: each
    authenticates, so each must be deniable. (Control characters are refused by the authenticator, so no
    client can hold such an id; the admin API still takes them, for records written before that rule.)"""
    odd = ["..", ".", "m allory", "a/b", "?x#y&z=1", "ü " * 100]
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        auth = {"Authorization": f"Bearer {gw.admin_token}"}
        async with aiohttp.ClientSession() as s:
            for cid in odd:
                client = gw.openai_client(cid)
                try:
                    await client.chat.completions.create(
                        model="sim", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
                    url = gw.admin_url + "/admin/client/override"
                    status, rec, _ = await _status(s, "PUT", url, params={"client_id": cid}, headers=auth,
                                                   json={"override": "deny"})
                    assert status == 200 and rec["client_id"] == cid and rec["blocked"], (cid, rec)
                    status, rec, _ = await _status(s, "GET", gw.admin_url + "/admin/client",
                                                   params={"client_id": cid}, headers=auth)
                    assert status == 200 and rec["override"] == "deny" and rec["known"]
                    with pytest.raises(Exception, match="blocked by an administrator"):
                        await client.chat.completions.create(
                            model="sim", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
                    status, rec, _ = await _status(s, "DELETE", url, params={"client_id": cid}, headers=auth)
                    assert status == 200 and rec["override"] is None
                finally:
                    await client.close()
            # the path form takes control characters too (percent-encoded)
            status, rec, _ = await _status(s, "PUT", gw.admin_url + "/admin/clients/m%09allory/override",
                                           headers=auth, json={"override": "deny"})
            assert status == 200 and rec["client_id"] == "m\tallory"
            for params in ({}, {"client_id": ""}, {"client_id": "x" * 257}):
                status, err, _ = await _status(s, "GET", gw.admin_url + "/admin/client", params=params,
                                               headers=auth)
                assert status == 400 and err["error"]["param"] == "client_id", params


async def test_a_short_admin_token_refuses_to_start() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        with pytest.raises(ConfigError, match=r"IPGATE_TEST_ADMIN_TOKEN.*at least 16"):
            build_admin_app(gw.ctx, env={"IPGATE_TEST_ADMIN_TOKEN": "hunter2"})
        build_admin_app(gw.ctx, env={"IPGATE_TEST_ADMIN_TOKEN": "x" * 16})  # the floor itself is accepted


async def test_backend_credentials_in_urls_are_not_served_by_the_admin_api() -> None:
    async with sim_backend() as sim:
        url = sim.url.replace("http://", "http://svc:backend-pass-7f3a9@")
        async with running_gateway(gateway_config(url)) as gw, aiohttp.ClientSession() as s:
            for path in ("/admin/routing", "/admin/routing?model=sim"):
                status, body, _ = await _status(s, "GET", gw.admin_url + path,
                                                headers={"Authorization": f"Bearer {gw.admin_token}"})
                assert status == 200 and "backend-pass-7f3a9" not in str(body)
                assert body["models"]["sim"]["backends"][0]["url"].startswith("http://svc:***@127.0.0.1:")


async def test_admin_token_scheme_is_case_insensitive_and_the_token_is_not() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw, aiohttp.ClientSession() as s:
        tok = gw.admin_token
        for header, want in ((f"bearer {tok}", 200), (f"BEARER  {tok} ", 200), (f"Bearer {tok.upper()}", 401),
                             (f"Bearer {tok} x", 401), (f"Token {tok}", 401), (tok, 401)):
            status, _, _ = await _status(s, "GET", gw.admin_url + "/admin/alerts", headers={"Authorization": header})
            assert status == want, header
