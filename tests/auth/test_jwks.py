"""JWKS: keys from a real local aiohttp server, kid rotation, bounded refetching, fetches off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.auth.authenticator import Authenticator
from gateway.auth.jwks import JwksKeys
from gateway.auth.jwt import JwtVerifier
from gateway.config import AuthConfig
from gateway.errors import AuthenticationFailed


class JwksServer:
    """Serves ``self.keys`` as a JWKS and counts fetches; records which thread the handler ran for."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.url = ""
        self.delay_s = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    # The server runs on its own loop in a thread: the fetch under test is a *blocking* urllib call made from
    # a worker thread, and serving it from the test's loop would also prove nothing about blocking.
    srv = JwksServer()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/jwks.json", srv.handle)
    runner = web.AppRunner(app)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        srv.url = f"http://127.0.0.1:{port}/jwks.json"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    yield srv
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", **extra}


@pytest.fixture(scope="module")
def rsa_keys() -> dict[str, rsa.RSAPrivateKey]:
    return {k: rsa.generate_private_key(public_exponent=65537, key_size=2048) for k in ("a", "b")}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_auth(url: str, clock: Clock, jwt_cfg: Any) -> Authenticator:
    cfg = jwt_cfg(algorithms=["RS256"], jwks_url=url, jwks_refetch_interval_s=60)
    jwks = JwksKeys(url, cfg.algorithms, refetch_interval_s=60, clock=clock)
    return Authenticator(jwt=JwtVerifier(cfg, key=None, jwks=jwks), api_keys=None)


def token(claims: Any, key: Any, kid: str, alg: str = "RS256") -> str:
    return "Bearer " + jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})


async def test_rotation_and_refetch_limit(jwks_server: JwksServer, rsa_keys: Any, claims: Any, jwt_cfg: Any) -> None:
    jwks_server.keys = [rsa_jwk(rsa_keys["a"], "a")]
    clock = Clock()
    auth = make_auth(jwks_server.url, clock, jwt_cfg)
    await auth.start()
    try:
        assert jwks_server.fetches == 1
        assert (await auth.authenticate(token(claims, rsa_keys["a"], "a"))).client_id == "client-1"

        # The IdP rotates in key b. Within the interval, an unknown kid does not refetch (at most one per
        # interval, counted from the last attempt — here the start-up fetch).
        jwks_server.keys.append(rsa_jwk(rsa_keys["b"], "b"))
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(token(claims, rsa_keys["b"], "b"))
        assert jwks_server.fetches == 1

        # After the interval: exactly one refetch, and b works from then on without more fetches.
        clock.t += 61
        assert (await auth.authenticate(token(claims, rsa_keys["b"], "b"))).client_id == "client-1"
        assert jwks_server.fetches == 2
        for _ in range(3):
            await auth.authenticate(token(claims, rsa_keys["b"], "b"))
        assert jwks_server.fetches == 2

        # A flood of random kids: one refetch per interval, no matter how many.
        clock.t += 61
        for i in range(20):
            with pytest.raises(AuthenticationFailed):
                await auth.authenticate(token(claims, rsa_keys["a"], f"random-{i}"))
        assert jwks_server.fetches == 3
    finally:
        await auth.close()


async def test_concurrent_unknown_kids_share_one_fetch(
    jwks_server: JwksServer, rsa_keys: Any, claims: Any, jwt_cfg: Any
) -> None:
    clock = Clock()
    auth = make_auth(jwks_server.url, clock, jwt_cfg)
    await auth.start()  # empty key set
    try:
        jwks_server.keys = [rsa_jwk(rsa_keys["a"], "a")]
        jwks_server.delay_s = 0.1
        clock.t += 61
        tokens = [token(claims, rsa_keys["a"], "a") for _ in range(10)]
        # The fetch runs in a worker thread: the loop stays free (this ticker keeps running meanwhile).
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        results = await asyncio.gather(*(auth.authenticate(x) for x in tokens))
        t.cancel()
        assert all(p.client_id == "client-1" for p in results)
        assert jwks_server.fetches == 2  # start-up + one shared refetch
        assert ticks >= 5
    finally:
        await auth.close()


async def test_jwks_ignores_symmetric_and_foreign_keys(
    jwks_server: JwksServer, rsa_keys: Any, claims: Any, jwt_cfg: Any, hs_secret: str, forge_token: Any
) -> None:
    """An ``oct`` key in the set must never verify an HS token, even with alg HS256 in the header."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    oct_jwk = {"kty": "oct", "kid": "h", "k": jwt.utils.base64url_encode(hs_secret.encode()).decode()}
    ec_jwk = {**json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "e"}
    jwks_server.keys = [
        oct_jwk, ec_jwk, rsa_jwk(rsa_keys["a"], "a", alg="RS256"), rsa_jwk(rsa_keys["b"], "enc", use="enc"),
    ]
    auth = make_auth(jwks_server.url, Clock(), jwt_cfg)
    await auth.start()
    try:
        hs = jwt.encode(claims(), hs_secret, algorithm="HS256", headers={"kid": "h"})
        for header in ("Bearer " + hs, token(claims, ec_key, "e", alg="ES256"), token(claims, rsa_keys["b"], "enc")):
            with pytest.raises(AuthenticationFailed):
                await auth.authenticate(header)
        assert (await auth.authenticate(token(claims, rsa_keys["a"], "a"))).client_id == "client-1"
    finally:
        await auth.close()


async def test_unreachable_jwks_is_not_fatal(claims: Any, jwt_cfg: Any, rsa_keys: Any, metrics: Any) -> None:
    cfg = jwt_cfg(algorithms=["RS256"], jwks_url="http://127.0.0.1:9/jwks.json", jwks_timeout_s=1)
    auth = Authenticator.from_config(AuthConfig(jwt=cfg), metrics=metrics)
    await auth.start()
    try:
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(token(claims, rsa_keys["a"], "a"))
        assert metrics.registry.get_sample_value("ipgate_jwks_fetches_total", {"outcome": "error"}) == 1
    finally:
        await auth.close()


async def test_periodic_refresh_drops_removed_keys(
    jwks_server: JwksServer, rsa_keys: Any, claims: Any, jwt_cfg: Any
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_keys["a"], "a")]
    cfg = jwt_cfg(algorithms=["RS256"], jwks_url=jwks_server.url)
    jwks = JwksKeys(jwks_server.url, cfg.algorithms, refetch_interval_s=3600, cache_ttl_s=0.05)
    verifier = JwtVerifier(cfg, key=None, jwks=jwks)
    await verifier.start()
    try:
        await verifier.verify(jwt.encode(claims(), rsa_keys["a"], algorithm="RS256", headers={"kid": "a"}))
        jwks_server.keys = [rsa_jwk(rsa_keys["b"], "b")]
        for _ in range(100):
            if jwks_server.fetches >= 3:
                break
            await asyncio.sleep(0.02)
        from gateway.auth.jwt import TokenRejected

        with pytest.raises(TokenRejected) as info:
            await verifier.verify(jwt.encode(claims(), rsa_keys["a"], algorithm="RS256", headers={"kid": "a"}))
        assert info.value.reason == "unknown_key"
    finally:
        await verifier.close()


def test_non_http_jwks_url_is_a_config_error(jwt_cfg: Any) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="jwks_url"):
        Authenticator.from_config(AuthConfig(jwt=jwt_cfg(algorithms=["RS256"], jwks_url="file:///etc/passwd")))
