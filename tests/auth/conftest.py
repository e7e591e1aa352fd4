"""Keys and token factories for the auth tests. Keys are generated here with ``cryptography``; nothing is fetched."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import CollectorRegistry

from gateway.auth.authenticator import Authenticator
from gateway.config import AuthConfig, JwtConfig
from gateway.telemetry.metrics import Metrics

HS_SECRET = "test-secret-" + "x" * 40  # ≥ 32 bytes, as load_static_key demands for HS256
AUDIENCE = "ipgate"
ISSUER = "https://idp.test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """Hand-built JWS: lets tests make tokens pyjwt refuses to produce (alg none, HS with a PEM as secret)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


@dataclass(frozen=True)
class KeyPair:
    private: Any
    public_pem: bytes
    public_path: Path


def _write_pair(private: Any, path: Path) -> KeyPair:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)
    return KeyPair(private, pem, path)


@pytest.fixture(scope="session")
def rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _write_pair(key, tmp_path_factory.mktemp("rsa") / "rsa_pub.pem")


@pytest.fixture(scope="session")
def other_rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _write_pair(key, tmp_path_factory.mktemp("rsa2") / "rsa2_pub.pem")


@pytest.fixture(scope="session")
def ec_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write_pair(key, tmp_path_factory.mktemp("ec") / "ec_pub.pem")


@pytest.fixture
def claims() -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "sub": "client-1", "tenant": "acme", "roles": ["chat"], "aud": AUDIENCE, "iss": ISSUER,
            "iat": now, "exp": now + 600,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    return make


def jwt_config(**overrides: Any) -> JwtConfig:
    base: dict[str, Any] = {"algorithms": ["HS256"], "secret_env": "TEST_JWT_SECRET", "audience": AUDIENCE,
                            "issuer": ISSUER, "leeway_s": 5}
    base.update(overrides)
    return JwtConfig(**base)


ENV = {"TEST_JWT_SECRET": HS_SECRET}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def make_auth(metrics: Metrics) -> Callable[..., Authenticator]:
    """An Authenticator from a JwtConfig (and optional API key file), built the way the gateway builds it."""

    def make(jwt_cfg: JwtConfig | None = None, api_key_file: str | None = None, **auth_kw: Any) -> Authenticator:
        cfg = AuthConfig(jwt=jwt_cfg, api_keys={"file": api_key_file, "reload_interval_s": 0}, **auth_kw)
        return Authenticator.from_config(cfg, metrics=metrics, env=ENV)

    return make


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def failures(metrics: Metrics) -> Callable[[str], float]:
    return lambda reason: sample(metrics, "ipgate_auth_failures_total", reason=reason)


@pytest.fixture
def cache_hits(metrics: Metrics) -> Callable[[], float]:
    return lambda: sample(metrics, "ipgate_auth_cache_total", result="hit")


@pytest.fixture
def jwt_cfg() -> Callable[..., JwtConfig]:
    return jwt_config


@pytest.fixture
def forge_token() -> Callable[[dict[str, Any], dict[str, Any], bytes | None], str]:
    return forge


@pytest.fixture
def hs_secret() -> str:
    return HS_SECRET


@pytest.fixture
def hs_token(claims: Callable[..., dict[str, Any]]) -> Callable[..., str]:
    def make(headers: dict[str, Any] | None = None, key: str = HS_SECRET, alg: str = "HS256", **kw: Any) -> str:
        return jwt.encode(claims(**kw), key, algorithm=alg, headers=headers)

    return make
