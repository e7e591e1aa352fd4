"""Positive paths (HS256, RS256, ES256), the verified-token cache, and start-up validation of keys."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.authenticator import GENERIC_MESSAGE, Authenticator
from gateway.auth.jwt import JwtVerifier
from gateway.config import AuthConfig, ConfigError
from gateway.errors import AuthenticationFailed
from gateway.principal import Principal


async def test_hs256(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg())
    p = await auth.authenticate("Bearer " + hs_token(roles=["chat", "admin"]))
    assert p == Principal("client-1", "acme", frozenset({"chat", "admin"}), "jwt")
    assert p.is_admin


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_asymmetric_from_public_key_file(
    alg: str, make_auth: Any, jwt_cfg: Any, claims: Any, rsa_pair: Any, ec_pair: Any
) -> None:
    pair = rsa_pair if alg == "RS256" else ec_pair
    auth = make_auth(jwt_cfg(algorithms=[alg], public_key_file=str(pair.public_path)))
    token = jwt.encode(claims(roles="chat embed", tenant=None), pair.private, algorithm=alg)
    p = await auth.authenticate("Bearer " + token)
    assert (p.client_id, p.tenant, p.roles) == ("client-1", None, frozenset({"chat", "embed"}))


async def test_scheme_is_case_insensitive(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg())
    assert (await auth.authenticate("bearer " + hs_token())).client_id == "client-1"


async def test_custom_claim_names(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg(client_claim="azp", tenant_claim="org", roles_claim="scope"))
    p = await auth.authenticate("Bearer " + hs_token(azp="app-7", org="globex", scope="read,write"))
    assert p == Principal("app-7", "globex", frozenset({"read", "write"}), "jwt")


async def test_cache_hit_is_served_without_reverifying(
    make_auth: Any, jwt_cfg: Any, hs_token: Any, cache_hits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = make_auth(jwt_cfg())
    header = "Bearer " + hs_token()
    first = await auth.authenticate(header)
    calls = 0
    real_decode = jwt.decode

    def counting_decode(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_decode(*a, **kw)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    for _ in range(5):
        assert await auth.authenticate(header) is first
    assert calls == 0
    assert cache_hits() == 5


async def test_cached_token_stops_working_after_exp(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg(leeway_s=0))
    now = time.time()
    exp = int(now) + 1
    header = "Bearer " + hs_token(iat=int(now), exp=exp)
    await auth.authenticate(header)
    assert auth.cache_len == 1
    await asyncio.sleep(exp - time.time() + 0.05)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(header)
    assert auth.cache_len == 0


async def test_cache_expiry_uses_the_clock(jwt_cfg: Any, hs_token: Any, hs_secret: str) -> None:
    """With the gateway's clock past exp, the cache entry is not served: the token is verified again."""
    clock = [time.time()]
    verifier = JwtVerifier.from_config(jwt_cfg(), env={"TEST_JWT_SECRET": hs_secret})
    auth = Authenticator(jwt=verifier, api_keys=None, clock=lambda: clock[0])
    header = "Bearer " + hs_token()
    await auth.authenticate(header)
    verified = 0
    real_verify = verifier.verify

    async def counting_verify(token: str) -> Any:
        nonlocal verified
        verified += 1
        return await real_verify(token)

    verifier.verify = counting_verify  # type: ignore[method-assign]
    await auth.authenticate(header)
    assert verified == 0
    clock[0] += 601  # past exp (claims() sets exp = now + 600) by the gateway's clock
    await auth.authenticate(header)  # pyjwt's real clock still accepts it: verified again, not served stale
    assert verified == 1


async def test_cache_is_bounded_lru(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg(), cache_size=3)
    tokens = [hs_token(sub=f"c{i}") for i in range(5)]
    for t in tokens:
        await auth.authenticate("Bearer " + t)
    assert auth.cache_len == 3


async def test_failures_are_not_cached(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg())
    bad = "Bearer " + hs_token(aud="other")
    for _ in range(2):
        with pytest.raises(AuthenticationFailed, match=GENERIC_MESSAGE.replace(".", r"\.")):
            await auth.authenticate(bad)
    assert auth.cache_len == 0


def test_hs_secret_missing_is_a_config_error(jwt_cfg: Any) -> None:
    with pytest.raises(ConfigError, match="TEST_JWT_SECRET"):
        Authenticator.from_config(AuthConfig(jwt=jwt_cfg()), env={})


def test_short_hs_secret_is_a_config_error(jwt_cfg: Any) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Authenticator.from_config(AuthConfig(jwt=jwt_cfg()), env={"TEST_JWT_SECRET": "short"})


def test_wrong_key_type_is_a_config_error(jwt_cfg: Any, ec_pair: Any, rsa_pair: Any) -> None:
    rs_cfg = jwt_cfg(algorithms=["RS256"], public_key_file=str(ec_pair.public_path))
    with pytest.raises(ConfigError, match="not an RSA key"):
        Authenticator.from_config(AuthConfig(jwt=rs_cfg))
    es_cfg = jwt_cfg(algorithms=["ES256"], public_key_file=str(rsa_pair.public_path))
    with pytest.raises(ConfigError, match="not an EC key"):
        Authenticator.from_config(AuthConfig(jwt=es_cfg))


def test_weak_rsa_key_is_a_config_error(jwt_cfg: Any, tmp_path: Any) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    path = tmp_path / "weak.pem"
    path.write_bytes(weak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="2048"):
        Authenticator.from_config(AuthConfig(jwt=jwt_cfg(algorithms=["RS256"], public_key_file=str(path))))


def test_mixing_hs_and_rs_is_refused_by_config() -> None:
    from pydantic import ValidationError

    from gateway.config import JwtConfig

    with pytest.raises(ValidationError, match="key-confusion"):
        JwtConfig(algorithms=["HS256", "RS256"])


async def test_no_method_configured_rejects_everything(make_auth: Any, hs_token: Any, failures: Any) -> None:
    auth = make_auth(None)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("Bearer " + hs_token())
    assert failures("jwt_disabled") == 1


def test_ec_curve_must_fit_the_algorithm(jwt_cfg: Any, ec_pair: Any) -> None:
    cfg = jwt_cfg(algorithms=["ES384"], public_key_file=str(ec_pair.public_path))
    with pytest.raises(ConfigError, match="secp256r1"):
        Authenticator.from_config(AuthConfig(jwt=cfg))
