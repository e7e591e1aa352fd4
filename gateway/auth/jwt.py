"""JWT verification with pyjwt, strict by construction.

Checks, in the order they run (cheapest first, so junk is rejected before any crypto):
1. size: a token longer than ``max_token_bytes`` is rejected before it is decoded at all;
2. header: must parse; ``alg`` must be in the configured allowlist — this alone rejects ``alg: none`` and
   HS/RS key confusion, because config refuses to mix HS* with asymmetric algorithms, so a token can never
   pick the other family; any ``crit`` header is rejected (ipgate implements no JWS extensions, RFC 7515
   §4.1.11 says a recipient must reject what it does not understand);
3. key: a shared secret (HS), a public key loaded once from a PEM file (RS/PS/ES; the key type is checked
   against the family at start-up), or a JWKS key by ``kid``. Keys are passed to pyjwt as prepared objects,
   never as PEM strings, so pyjwt can never reinterpret a public key as an HMAC secret;
4. ``jwt.decode`` with the explicit algorithm allowlist, ``require`` = exp, iat (+ configured claims),
   audience, issuer and leeway: signature, expiry, not-before / issued-in-the-future, audience, issuer.

Every failure is a ``TokenRejected`` carrying a short, low-cardinality reason for the metric and the debug
log. The client only ever sees the authenticator's generic message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK

from gateway.auth.jwks import JwksKeys, UnknownKey
from gateway.auth.limitclass import LimitClasses
from gateway.config import ConfigError, JwtConfig, read_secret
from gateway.principal import Principal
from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_MIN_HS_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 §3.2: key ≥ hash output size
_MIN_RSA_BITS = 2048
_ES_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_MAX_CLAIM_CHARS = 256

StaticKey = bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class TokenRejected(Exception):
    """A token failed verification; ``reason`` is a metric label, ``detail`` goes to the debug log only."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    principal: Principal
    expires_at: float  # the token's exp (epoch seconds)


# pyjwt's exceptions → reasons. Order matters: subclasses before their bases.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.InvalidIssuedAtError, "invalid_claim"),
    (jwt.exceptions.InvalidSubjectError, "invalid_claim"),
    (jwt.exceptions.InvalidJTIError, "invalid_claim"),
    (jwt.InvalidKeyError, "key_error"),
    (jwt.DecodeError, "malformed"),
    (jwt.InvalidTokenError, "invalid"),
)


def _reason_for(e: Exception) -> str:
    for cls, reason in _REASONS:
        if isinstance(e, cls):
            return reason
    return "invalid"


def _read_header(token: str) -> dict[str, Any]:
    """The JOSE header, parsed here (not by pyjwt) so that its checks run first and get their own reasons."""
    head, dot, _ = token.partition(".")
    if not dot or not head:
        raise TokenRejected("malformed", "not a compact JWS")
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error) as e:
        raise TokenRejected("malformed", "header is not base64url JSON") from e
    except RecursionError as e:  # "[[[[...": anyone can send it; it is junk, not a library fault to warn about
        raise TokenRejected("malformed", "header nested too deeply") from e
    if not isinstance(header, dict):
        raise TokenRejected("malformed", "header is not a JSON object")
    return header


def _family(algorithms: Sequence[str]) -> str:
    return algorithms[0][:2]  # "HS", "RS", "PS" or "ES"; config guarantees HS is never mixed with the others


def load_static_key(cfg: JwtConfig, *, env: Mapping[str, str] | None = None) -> StaticKey | None:
    """The verification key from config, checked for type and strength; None when JWKS supplies keys."""
    algs = list(cfg.algorithms)
    if not algs:  # _family would fail with an IndexError: "internal error" from `ipgate check`, a crash at start
        raise ConfigError("auth.jwt.algorithms: the list is empty; name at least one algorithm, e.g. [HS256], "
                          "or set auth.jwt: null to accept API keys only")
    if _family(algs) == "HS":
        secret = read_secret(cfg.secret_env, cfg.secret_file, what="auth.jwt", env=env)
        if not secret:
            raise ConfigError(
                f"auth.jwt: {'/'.join(algs)} needs a shared secret: set the environment variable "
                f"{cfg.secret_env or '(auth.jwt.secret_env)'} or auth.jwt.secret_file"
            )
        need = max(_MIN_HS_SECRET_BYTES[a] for a in algs)
        if len(secret.encode()) < need:
            raise ConfigError(f"auth.jwt: the shared secret must be at least {need} bytes for {'/'.join(algs)}")
        return secret.encode()
    if cfg.jwks_url and cfg.public_key_file:
        raise ConfigError("auth.jwt: set either public_key_file or jwks_url, not both")
    if cfg.jwks_url:
        return None
    if not cfg.public_key_file:
        raise ConfigError(f"auth.jwt: {'/'.join(algs)} needs auth.jwt.public_key_file or auth.jwt.jwks_url")
    path = Path(cfg.public_key_file)
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"auth.jwt.public_key_file: cannot read {path}: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"auth.jwt.public_key_file: {path} is not a PEM public key") from e
    if _family(algs) == "ES":
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigError(f"auth.jwt.public_key_file: {path} is not an EC key, but algorithms are {algs}")
        if not any(_ES_CURVES.get(a) == key.curve.name for a in algs):
            # An ES256 verifier with a P-384 key would reject every token: say so at start-up instead.
            raise ConfigError(f"auth.jwt.public_key_file: {path} is a {key.curve.name} key, which fits none of {algs}")
        return key
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"auth.jwt.public_key_file: {path} is not an RSA key, but algorithms are {algs}")
    if key.key_size < _MIN_RSA_BITS:
        raise ConfigError(f"auth.jwt.public_key_file: RSA keys must have at least {_MIN_RSA_BITS} bits")
    return key


class JwtVerifier:
    def __init__(self, cfg: JwtConfig, *, key: StaticKey | None, jwks: JwksKeys | None,
                 classes: LimitClasses | None = None) -> None:
        if (key is None) == (jwks is None):
            raise ValueError("exactly one of key and jwks")
        self.cfg = cfg
        self._classes = classes if classes is not None else LimitClasses(())
        self.algorithms = list(cfg.algorithms)
        self._key = key
        self._jwks = jwks
        self._require = sorted({"exp", "iat", *cfg.required_claims})
        self._options: dict[str, Any] = {
            "require": self._require,
            "verify_signature": True,
            "enforce_minimum_key_length": True,
        }

    @classmethod
    def from_config(
        cls, cfg: JwtConfig, *, metrics: Metrics | None = None, env: Mapping[str, str] | None = None,
        classes: LimitClasses | None = None,
    ) -> JwtVerifier:
        key = load_static_key(cfg, env=env)
        jwks = None
        if key is None and cfg.jwks_url:  # load_static_key returns None only when a JWKS URL is set
            jwks = JwksKeys(
                cfg.jwks_url, cfg.algorithms, refetch_interval_s=cfg.jwks_refetch_interval_s,
                cache_ttl_s=cfg.jwks_cache_ttl_s, timeout_s=cfg.jwks_timeout_s, metrics=metrics,
            )
        return cls(cfg, key=key, jwks=jwks, classes=classes)

    async def start(self) -> None:
        if self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()

    async def verify(self, token: str) -> VerifiedToken:
        if len(token) > self.cfg.max_token_bytes:
            raise TokenRejected("oversized", f"{len(token)} bytes")
        header = _read_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenRejected("alg_not_allowed", f"alg {alg!r}")
        if "crit" in header:
            raise TokenRejected("crit", f"crit {header['crit']!r}")
        key: StaticKey | PyJWK
        if self._key is not None:
            key = self._key
        elif self._jwks is not None:
            kid = header.get("kid")
            try:
                key = await self._jwks.get(kid if isinstance(kid, str) else None, alg)
            except UnknownKey as e:
                raise TokenRejected("unknown_key", str(e)) from e
        else:  # unreachable: __init__ demands one of the two
            raise TokenRejected("key_error", "no key source")
        claims = self._decode(token, key)
        return VerifiedToken(self._principal(claims), float(claims["exp"]))

    def _decode(self, token: str, key: StaticKey | PyJWK) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=self.algorithms,
                options=self._options,  # type: ignore[arg-type]  # a plain dict of documented options
                audience=self.cfg.audience,
                issuer=self.cfg.issuer,
                leeway=self.cfg.leeway_s,
            )
        except (jwt.InvalidTokenError, jwt.InvalidKeyError) as e:
            raise TokenRejected(_reason_for(e), str(e)) from e
        return claims

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        client = claims.get(self.cfg.client_claim)
        if not isinstance(client, str) or not client.strip() or len(client) > _MAX_CLAIM_CHARS:
            raise TokenRejected("missing_client_claim", f"claim {self.cfg.client_claim!r}")
        # The client id keys rate limits, detector state and watermark keys and is written to logs: a blank id,
        # or one with control characters (newlines forge log lines), is refused rather than trusted.
        if not client.isprintable():
            raise TokenRejected("invalid_claim", f"claim {self.cfg.client_claim!r} has control characters")
        tenant = claims.get(self.cfg.tenant_claim)
        if tenant is not None and (not isinstance(tenant, str) or len(tenant) > _MAX_CLAIM_CHARS
                                   or not tenant.isprintable()):
            raise TokenRejected("invalid_claim", f"claim {self.cfg.tenant_claim!r}")
        tenant = tenant or None
        claimed = claims.get(self.cfg.limits_claim) if self.cfg.limits_claim else None
        return Principal(
            client_id=client, tenant=tenant, roles=_roles(claims.get(self.cfg.roles_claim)), auth_method="jwt",
            limit_class=self._classes.for_jwt(claimed, tenant),
        )


def _roles(value: Any) -> frozenset[str]:
    """Roles as a JSON list of strings, or one string separated by spaces/commas (OAuth ``scope`` style)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(r for r in value.replace(",", " ").split() if r)
    if isinstance(value, list) and all(isinstance(r, str) for r in value):
        return frozenset(value)
    raise TokenRejected("invalid_claim", "roles claim is neither a string nor a list of strings")
