"""Review session 15 of authentication (docs: /work/team/docs/review-session15-auth.md).

- A JWKS refetch started by a token with an unknown ``kid`` ran inside the request's own task. The listeners
  cancel a handler when its client disconnects (``handler_cancellation=True``), so a client that hung up
  during the fetch threw the fetched key set away while the attempt still counted against
  ``jwks_refetch_interval_s``: a key the IdP had just rotated in stayed unknown for a whole interval. Anyone
  could waste every refetch that way (a random ``kid``, then hang up), leaving new keys to the periodic refresh.
- ``auth.jwt.algorithms`` may name RSA and EC algorithms together (``[RS256, ES256]``: only HS* is kept apart),
  but the JWKS kept only the key type of the *first* algorithm: every token of the other family was refused as
  ``unknown_key`` (and asked for a refetch), silently, while an IdP rotating from RSA to EC keys publishes both.
  Keys were also stored by ``kid`` alone, so a kid naming an RSA and an EC key (RFC 7517 §4.5) kept only one.
- A key in the set that pyjwt cannot load (an ``x5c``-only RSA entry) wrote a WARNING on every request that named
  its kid; the kid is public, so anyone, without a credential, could fill the log with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.auth.authenticator import Authenticator
from gateway.auth.jwks import JwksKeys
from gateway.auth.jwt import JwtVerifier
from gateway.config import JwtConfig
from gateway.errors import AuthenticationFailed


class _Idp:
    """A JWKS endpoint in a thread: serves ``keys`` after ``delay_s``, counts the answers it sends."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.delay_s = 0.0
        self.served = 0
        self.url = ""


@pytest.fixture
def idp() -> Iterator[_Idp]:
    state = _Idp()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(state.delay_s)
            body = json.dumps({"keys": state.keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # counted before the body goes out: counted after, a loaded host let the client read the answer and
            # the test check the count before this thread ran again (seen once in a full-suite run)
            state.served += 1
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield state
    server.shutdown()
    server.server_close()
    t.join(5)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


def _bearer(key: rsa.RSAPrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {"sub": "alice", "aud": "ipgate", "iat": now, "exp": now + 600}
    return "Bearer " + jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def test_a_refetch_survives_the_client_that_started_it_hanging_up(idp: _Idp) -> None:
    a, b = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    idp.keys = [_jwk(a, "a")]
    t = [1000.0]
    jwks = JwksKeys(idp.url, ["RS256"], refetch_interval_s=60, cache_ttl_s=3600, clock=lambda: t[0])
    cfg = JwtConfig(algorithms=["RS256"], jwks_url=idp.url)
    auth = Authenticator(jwt=JwtVerifier(cfg, key=None, jwks=jwks), api_keys=None)
    await auth.start()
    try:
        assert idp.served == 1
        # The IdP rotates in key b; the refetch interval has passed, so b's first token may refetch.
        idp.keys.append(_jwk(b, "b"))
        idp.delay_s = 0.3
        t[0] += 61
        first = asyncio.create_task(auth.authenticate(_bearer(b, "b")))
        await asyncio.sleep(0.1)  # the fetch is under way
        first.cancel()  # what aiohttp does to the handler when that client disconnects
        with pytest.raises(asyncio.CancelledError):
            await first
        for _ in range(50):  # the fetch finishes in its thread
            if idp.served == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        assert idp.served == 2
        # The next client with a b token, within the interval: the fetched set must be in force. Before the
        # fix it had been discarded with the cancelled request, and b was refused until t + 60 s.
        principal = await auth.authenticate(_bearer(b, "b"))
        assert principal.client_id == "alice"
        assert idp.served == 2
    finally:
        await auth.close()


@pytest.mark.parametrize("algorithms", [["RS256", "ES256"], ["ES256", "RS256"], ["PS256", "ES256"]])
async def test_a_jwks_serves_both_rsa_and_ec_keys_when_both_families_are_allowed(
    idp: _Idp, algorithms: list[str]
) -> None:
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e, e2 = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    idp.keys = [
        _jwk(r, "r"),
        {**json.loads(ECAlgorithm.to_jwk(e.public_key())), "kid": "e", "use": "sig"},
        # RFC 7517 §4.5: one kid may name keys of different types ("equivalent alternatives")
        {**json.loads(ECAlgorithm.to_jwk(e2.public_key())), "kid": "r", "use": "sig"},
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "o"},  # never used
    ]
    jwks = JwksKeys(idp.url, algorithms, refetch_interval_s=60, cache_ttl_s=3600)
    cfg = JwtConfig(algorithms=algorithms, jwks_url=idp.url)  # the config accepts the mix
    auth = Authenticator(jwt=JwtVerifier(cfg, key=None, jwks=jwks), api_keys=None)
    await auth.start()
    try:
        now = int(time.time())
        claims = {"sub": "alice", "aud": "ipgate", "iat": now, "exp": now + 600}
        rsa_alg = algorithms[0] if algorithms[0] != "ES256" else algorithms[1]
        for key, kid, alg in ((r, "r", rsa_alg), (e, "e", "ES256"), (e2, "r", "ES256")):
            tok = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
            assert (await auth.authenticate("Bearer " + tok)).client_id == "alice", (kid, alg)
        # A key is only ever used for its own family: the EC key's kid on an RSA-signed token is refused.
        crossed = jwt.encode(claims, r, algorithm=rsa_alg, headers={"kid": "e"})
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate("Bearer " + crossed)
        assert idp.served == 1
    finally:
        await auth.close()


async def test_an_unusable_key_in_the_set_is_logged_once_not_per_request(
    idp: _Idp, caplog: pytest.LogCaptureFixture
) -> None:
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys = [_jwk(r, "r"), {"kty": "RSA", "kid": "x", "use": "sig", "x5c": ["bm90IGEgY2VydA"]}]
    jwks = JwksKeys(idp.url, ["RS256"], refetch_interval_s=60, cache_ttl_s=3600)
    cfg = JwtConfig(algorithms=["RS256"], jwks_url=idp.url)
    auth = Authenticator(jwt=JwtVerifier(cfg, key=None, jwks=jwks), api_keys=None)
    await auth.start()
    try:
        caplog.set_level(logging.WARNING, logger="gateway.auth.jwks")
        for _ in range(5):  # signed with any key: the kid alone reaches the parse
            with pytest.raises(AuthenticationFailed):
                await auth.authenticate(_bearer(r, "x"))
        unusable = [rec for rec in caplog.records if "unusable" in rec.getMessage()]
        assert len(unusable) == 1
        assert (await auth.authenticate(_bearer(r, "r"))).client_id == "alice"  # the good key still works
    finally:
        await auth.close()


async def test_through_the_gateway_a_client_hanging_up_mid_refetch_does_not_waste_it(idp: _Idp) -> None:
    """The same attack end to end: the listener's ``handler_cancellation`` is what cancelled the refetch."""
    from tests.support.harness import gateway_config, running_gateway, sim_backend

    a, b = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    idp.keys = [_jwk(a, "a")]
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url)
        cfg["auth"]["jwt"] = {"algorithms": ["RS256"], "audience": "ipgate", "jwks_url": idp.url,
                              "jwks_refetch_interval_s": 1.0}
        async with running_gateway(cfg) as gw:
            assert idp.served == 1
            await asyncio.sleep(1.1)  # a refetch is due
            idp.keys.append(_jwk(b, "b"))
            idp.delay_s = 0.4
            port = int(gw.url.rsplit(":", 1)[1])
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {_bearer(b, 'b')}\r\n\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.1)  # the refetch is under way; the attacker hangs up
            writer.close()
            await writer.wait_closed()
            # a real client with a b token, well within the interval
            async with aiohttp.ClientSession() as http, http.get(
                gw.url + "/v1/models", headers={"Authorization": _bearer(b, "b")}
            ) as r:
                assert r.status == 200, await r.text()
            assert idp.served == 2
