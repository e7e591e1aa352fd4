"""The JWT negative matrix: every bad credential → AuthenticationFailed, one generic message, the right reason.

Each row names the configuration the gateway runs with (HS256 or RS256), how the Authorization header is
built, and the reason the failure metric must record — so a row cannot pass by failing for the wrong cause
(e.g. a "wrong audience" token that was really rejected for a bad signature).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from gateway.auth.authenticator import GENERIC_MESSAGE
from gateway.errors import AuthenticationFailed


@dataclass
class Ctx:
    claims: Callable[..., dict[str, Any]]
    hs: Callable[..., str]
    forge: Callable[[dict[str, Any], dict[str, Any], bytes | None], str]
    rsa: Any
    other_rsa: Any
    ec: Any
    secret: str


Build = Callable[[Ctx], str | None]
NOW = int(time.time())


def _bearer(token: str) -> str:
    return "Bearer " + token


CASES: list[tuple[str, str, Build, str]] = [
    # (id, gateway config, Authorization header, expected failure reason)
    ("alg_none", "hs", lambda c: _bearer(c.forge({"alg": "none", "typ": "JWT"}, c.claims(), None)),
     "alg_not_allowed"),
    ("alg_none_capitalised", "hs", lambda c: _bearer(c.forge({"alg": "None"}, c.claims(), None)), "alg_not_allowed"),
    # Classic confusion: the attacker HMACs with the server's *public* RSA key as the shared secret.
    ("hs256_signed_with_rsa_public_key", "rs",
     lambda c: _bearer(c.forge({"alg": "HS256", "typ": "JWT"}, c.claims(), c.rsa.public_pem)), "alg_not_allowed"),
    # …and the other way round: an RS256 token presented to an HS256 gateway.
    ("rs256_on_hs_gateway", "hs",
     lambda c: _bearer(jwt.encode(c.claims(), c.rsa.private, algorithm="RS256")), "alg_not_allowed"),
    ("es256_on_rs_gateway", "rs",
     lambda c: _bearer(jwt.encode(c.claims(), c.ec.private, algorithm="ES256")), "alg_not_allowed"),
    ("hs512_not_in_allowlist", "hs", lambda c: _bearer(c.hs(alg="HS512", key=c.secret * 2)), "alg_not_allowed"),
    ("wrong_audience", "hs", lambda c: _bearer(c.hs(aud="someone-else")), "audience"),
    ("missing_audience", "hs", lambda c: _bearer(c.hs(aud=None)), "missing_claim"),
    ("wrong_issuer", "hs", lambda c: _bearer(c.hs(iss="https://evil.test")), "issuer"),
    ("expired", "hs", lambda c: _bearer(c.hs(iat=NOW - 4000, exp=NOW - 60)), "expired"),
    ("rs_expired", "rs",
     lambda c: _bearer(jwt.encode(c.claims(iat=NOW - 4000, exp=NOW - 60), c.rsa.private, algorithm="RS256")),
     "expired"),
    ("not_yet_valid_nbf", "hs", lambda c: _bearer(c.hs(nbf=NOW + 3600)), "not_yet_valid"),
    ("issued_in_the_future", "hs", lambda c: _bearer(c.hs(iat=NOW + 3600, exp=NOW + 7200)), "not_yet_valid"),
    ("unknown_crit", "hs", lambda c: _bearer(c.hs(headers={"crit": ["urn:example:ext"], "urn:example:ext": 1})),
     "crit"),
    ("bad_signature_hs", "hs", lambda c: _bearer(c.hs(key="another-secret-" + "y" * 40)), "bad_signature"),
    ("bad_signature_rs", "rs",
     lambda c: _bearer(jwt.encode(c.claims(), c.other_rsa.private, algorithm="RS256")), "bad_signature"),
    ("tampered_payload", "hs",
     lambda c: _bearer(_swap_payload(c.hs(), c.forge({"alg": "HS256"}, c.claims(sub="admin"), None))),
     "bad_signature"),
    ("oversized", "hs", lambda c: _bearer(c.hs(pad="x" * 9000)), "oversized"),
    ("missing_exp", "hs", lambda c: _bearer(c.hs(exp=None)), "missing_claim"),
    ("missing_iat", "hs", lambda c: _bearer(c.hs(iat=None)), "missing_claim"),
    ("missing_sub", "hs", lambda c: _bearer(c.hs(sub=None)), "missing_client_claim"),
    ("non_string_sub", "hs", lambda c: _bearer(c.hs(sub=12345)), "invalid_claim"),
    ("header_not_json", "hs", lambda c: _bearer("bm90IGpzb24." + c.hs().split(".", 1)[1]), "malformed"),
    ("header_not_object", "hs", lambda c: _bearer("WzFd." + c.hs().split(".", 1)[1]), "malformed"),
    ("garbage", "hs", lambda c: _bearer("not-a-jwt"), "malformed"),
    ("garbage_three_parts", "hs", lambda c: _bearer("a.b.c"), "malformed"),
    ("empty_header", "hs", lambda c: "", "missing"),
    ("no_header", "hs", lambda c: None, "missing"),
    ("bearer_without_token", "hs", lambda c: "Bearer ", "scheme"),
    ("wrong_scheme_basic", "hs", lambda c: "Basic dXNlcjpwYXNz", "scheme"),
    ("wrong_scheme_token", "hs", lambda c: "Token " + c.hs(), "scheme"),
    ("unknown_api_key", "hs", lambda c: _bearer("sk-" + "A" * 43), "unknown_api_key"),
]


def _swap_payload(good: str, forged: str) -> str:
    """Keep the good header and signature, replace the payload: a signature that no longer matches."""
    h, _, s = good.split(".")
    return f"{h}.{forged.split('.')[1]}.{s}"


@pytest.mark.parametrize(("config", "build", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_rejected_with_generic_message(
    config: str, build: Build, reason: str, make_auth: Any, jwt_cfg: Any, failures: Any, claims: Any,
    hs_token: Any, forge_token: Any, rsa_pair: Any, other_rsa_pair: Any, ec_pair: Any, hs_secret: str,
) -> None:
    cfg = jwt_cfg() if config == "hs" else jwt_cfg(algorithms=["RS256"], public_key_file=str(rsa_pair.public_path))
    auth = make_auth(cfg)
    ctx = Ctx(claims, hs_token, forge_token, rsa_pair, other_rsa_pair, ec_pair, hs_secret)
    header = build(ctx)
    with pytest.raises(AuthenticationFailed) as info:
        await auth.authenticate(header)
    assert info.value.message == GENERIC_MESSAGE
    assert info.value.status == 401
    assert info.value.headers == {"WWW-Authenticate": 'Bearer realm="ipgate"'}
    assert info.value.body()["error"]["message"] == GENERIC_MESSAGE
    assert failures(reason) == 1, f"expected reason {reason!r}"


async def test_matrix_tokens_are_otherwise_valid(make_auth: Any, jwt_cfg: Any, hs_token: Any, rsa_pair: Any,
                                                 claims: Any) -> None:
    """Guards the matrix: the unmodified tokens it mutates are accepted by the same configurations."""
    hs = make_auth(jwt_cfg())
    assert (await hs.authenticate("Bearer " + hs_token())).client_id == "client-1"
    rs = make_auth(jwt_cfg(algorithms=["RS256"], public_key_file=str(rsa_pair.public_path)))
    token = jwt.encode(claims(), rsa_pair.private, algorithm="RS256")
    assert (await rs.authenticate("Bearer " + token)).client_id == "client-1"


async def test_leeway_accepts_small_clock_skew(make_auth: Any, jwt_cfg: Any, hs_token: Any) -> None:
    auth = make_auth(jwt_cfg(leeway_s=30))
    principal = await auth.authenticate("Bearer " + hs_token(iat=NOW + 10, exp=NOW - 10 + 600))
    assert principal.client_id == "client-1"
