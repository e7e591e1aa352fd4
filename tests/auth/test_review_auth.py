"""Adversarial review of authentication: inputs that crashed or were trusted, and edge cases kept as guards.

- undecodable bytes in ``Authorization`` (aiohttp passes them on as lone surrogates) were a 500 with a logged
  traceback on the API-key path; now a generic 401 (reason ``malformed``);
- a blank client claim or one with control characters (forged log lines, odd store keys) was accepted as an id;
- keys embedded in the JOSE header (``jwk``/``jku``/``x5u``) are never used; extra spaces around the token are
  tolerated, a tab is not a separator; removing a line from the key file revokes that key on reload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from gateway.auth.apikeys import format_line, generate_key, hash_key
from gateway.auth.authenticator import CHALLENGE, GENERIC_MESSAGE, Authenticator
from gateway.errors import AuthenticationFailed, GatewayError


async def _rejected(auth: Authenticator, header: str) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as info:
        await auth.authenticate(header)
    assert info.value.message == GENERIC_MESSAGE and info.value.status == 401 and info.value.param is None
    return info.value


def _key_file(tmp_path: Path, *clients: str) -> tuple[Path, list[str]]:
    keys = [generate_key() for _ in clients]
    path = tmp_path / "keys.txt"
    path.write_text("".join(format_line(hash_key(k), c) + "\n" for k, c in zip(keys, clients, strict=True)))
    return path, keys


@pytest.mark.parametrize("raw", ["sk-\udcff\udcfe", "sk-é" + "A" * 40, "eyJ\udcff.e30.sig", "tök.en.x"])
async def test_non_ascii_credentials_are_a_generic_401(tmp_path: Path, make_auth: Any, jwt_cfg: Any,
                                                       failures: Any, raw: str) -> None:
    path, _ = _key_file(tmp_path, "acme")
    auth = make_auth(jwt_cfg(), str(path))
    await _rejected(auth, "Bearer " + raw)
    assert failures("malformed") == 1


async def test_undecodable_header_bytes_over_http_get_401(tmp_path: Path, make_auth: Any, jwt_cfg: Any) -> None:
    """End to end through aiohttp's parser: the bytes a prober sends, not a Python string we chose."""
    path, keys = _key_file(tmp_path, "acme")
    auth = make_auth(jwt_cfg(), str(path))

    async def handler(request: web.Request) -> web.Response:
        try:
            p = await auth.authenticate(request.headers.get("Authorization"))
        except GatewayError as e:
            return web.Response(status=e.status, text=str(e))
        return web.Response(text=p.client_id)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def send(auth_value: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nAuthorization: " + auth_value + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data.split(b"\r\n", 1)[0]

    try:
        assert await send(b"Bearer sk-\xff\xfe" + b"A" * 40) == b"HTTP/1.1 401 Unauthorized"
        assert await send(b"Bearer " + keys[0].encode()) == b"HTTP/1.1 200 OK"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("claims_kw", "reason"), [
    ({"sub": " "}, "missing_client_claim"),
    ({"sub": "\t\n"}, "missing_client_claim"),
    ({"sub": "alice\nINFO admin granted"}, "invalid_claim"),
    ({"sub": "bob\x1b[2K"}, "invalid_claim"),
    ({"sub": "carol\u2028"}, "invalid_claim"),
    ({"tenant": "acme\r\nx"}, "invalid_claim"),
])
async def test_blank_or_control_character_ids_are_refused(make_auth: Any, jwt_cfg: Any, hs_token: Any,
                                                          failures: Any, claims_kw: dict[str, Any],
                                                          reason: str) -> None:
    auth = make_auth(jwt_cfg())
    err = await _rejected(auth, "Bearer " + hs_token(**claims_kw))
    assert err.headers == CHALLENGE
    assert failures(reason) == 1


async def test_ordinary_idp_subjects_still_pass(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg())
    for sub in ("auth0|5f7c8ec7c33c6c004bbafe82", "user@example.com", "Zoë Ω", "a b", "{tenant}:x"):
        assert (await auth.authenticate("Bearer " + hs_token(sub=sub))).client_id == sub


@pytest.mark.parametrize("header_key", ["jwk", "jku", "x5u", "x5c"])
async def test_keys_named_in_the_token_header_are_never_used(make_auth: Any, jwt_cfg: Any, rsa_pair: Any,
                                                             other_rsa_pair: Any, claims: Callable[..., Any],
                                                             failures: Any, header_key: str) -> None:
    """An attacker signs with their own key and points the header at it: the configured key still decides."""
    auth = make_auth(jwt_cfg(algorithms=["RS256"], public_key_file=str(rsa_pair.public_path), secret_env=None))
    attacker = jwt.algorithms.RSAAlgorithm.to_jwk(other_rsa_pair.private.public_key(), as_dict=True)
    value: Any = {"jwk": attacker, "jku": "https://evil.test/jwks.json", "x5u": "https://evil.test/cert.pem",
                  "x5c": ["MIIB"]}[header_key]
    token = jwt.encode(claims(), other_rsa_pair.private, algorithm="RS256", headers={header_key: value})
    await _rejected(auth, "Bearer " + token)
    assert failures("bad_signature") == 1


async def test_header_spacing(make_auth: Any, jwt_cfg: Any, hs_token: Any, failures: Any) -> None:
    auth = make_auth(jwt_cfg())
    tok = hs_token()
    for header in (f"Bearer  {tok}", f"bearer {tok} ", f"BEARER {tok}"):
        assert (await auth.authenticate(header)).client_id == "client-1"
    await _rejected(auth, f"Bearer\t{tok}")
    await _rejected(auth, f"Bearer {tok} {tok}")
    assert failures("scheme") == 1 and failures("malformed") == 1


async def test_removed_key_line_is_revoked_on_reload(tmp_path: Path, make_auth: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path, (k1, k2) = _key_file(tmp_path, "keep", "revoke")
    auth = make_auth(None, str(path))
    assert (await auth.authenticate("Bearer " + k2)).client_id == "revoke"
    path.write_text(format_line(hash_key(k1), "keep") + "\n")
    assert auth.reload_api_keys()
    await _rejected(auth, "Bearer " + k2)
    assert (await auth.authenticate("Bearer " + k1)).client_id == "keep"
    # A deleted file is an operator error, not a revocation: the last good table stays, and the log says so.
    caplog.set_level(logging.ERROR, logger="gateway.auth.apikeys")
    path.unlink()
    assert not auth.reload_api_keys()
    assert (await auth.authenticate("Bearer " + k1)).client_id == "keep"
    assert any("not reloaded" in r.getMessage() for r in caplog.records)


async def test_several_authorization_headers_are_refused_on_both_listeners() -> None:
    """A proxy in front that reads the last value would check a different credential than the gateway (which
    read the first): two values are a 401 on the public listener and on the admin listener alike."""
    import aiohttp
    from multidict import CIMultiDict

    from tests.support.harness import gateway_config, running_gateway, sim_backend

    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        good = f"Bearer {gw.token('alice')}"
        body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        async with aiohttp.ClientSession() as s:
            for url, first, second in ((gw.url + "/v1/chat/completions", good, "Bearer junk"),
                                       (gw.url + "/v1/chat/completions", good, good),
                                       (gw.admin_url + "/admin/alerts", f"Bearer {gw.admin_token}", "Bearer x")):
                headers = CIMultiDict([("Authorization", first), ("Authorization", second)])
                method = s.post if url.endswith("completions") else s.get
                async with method(url, json=body if url.endswith("completions") else None, headers=headers) as r:
                    assert r.status == 401, (url, r.status)
                    assert (await r.json())["error"]["type"] == "authentication_error"
            async with s.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": good}) as r:
                assert r.status == 200
