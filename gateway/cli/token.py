"""``ipgate token``: mint a development JWT (HS*) from the configured shared secret and print it.

    export IPGATE_JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(48))')
    ipgate token --client acme-app --tenant acme --roles chat,embed --ttl 1h [--config ipgate.yaml]

Audience, issuer and claim names come from ``auth.jwt`` in the config (or its defaults). Production tokens
come from your identity provider; RS/ES deployments cannot mint here because the gateway holds only the
public key.
"""

from __future__ import annotations

import argparse
import math
import re
import secrets
import sys
import time
from typing import Any

import jwt

from gateway.auth.jwt import load_static_key
from gateway.cli.findconfig import config_arg
from gateway.config import ConfigError, JwtConfig, load_config

_TTL = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_S = 366 * 86400  # the longest lifetime ``ipgate token`` mints


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` → seconds (> 0)."""
    m = _TTL.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f"--ttl: expected a duration like 90s, 15m, 1h or 7d, got {text!r}")
    value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(value):  # a number too long for a float: int() would raise OverflowError
        raise ValueError(f"--ttl: not a usable duration: {text!r}")
    seconds = int(value)
    if seconds <= 0:
        raise ValueError("--ttl must be positive")
    if seconds > MAX_TTL_S:
        # a token is a bearer credential that cannot be revoked before its exp (only by a deny override or a
        # new secret): a lifetime of millennia was minted without a word
        raise ValueError(f"--ttl: at most {MAX_TTL_S // 86400}d, got {text!r} (a long-lived service credential "
                         "is an API key: ipgate apikey create)")
    return seconds


def mint(
    cfg: JwtConfig,
    *,
    client: str,
    tenant: str | None = None,
    roles: list[str] | None = None,
    ttl_s: int = 3600,
    now: float | None = None,
    limit_class: str | None = None,
) -> str:
    """A signed token the gateway configured with ``cfg`` accepts. Raises ``ConfigError`` for RS/ES/no secret."""
    alg = cfg.algorithms[0]
    if limit_class is not None and not cfg.limits_claim:
        raise ConfigError("--limits: auth.jwt.limits_claim is not set, so the gateway would ignore the class")
    if not alg.startswith("HS"):
        raise ConfigError(f"auth.jwt: cannot mint {alg} tokens here (only the public key is configured); "
                          "use your identity provider")
    key = load_static_key(cfg)
    if not isinstance(key, bytes):  # HS always yields the secret; keep mypy and the reader sure of it
        raise ConfigError("auth.jwt: no shared secret configured")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        cfg.client_claim: client,
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": secrets.token_urlsafe(12),
    }
    if cfg.audience:
        claims["aud"] = cfg.audience
    if cfg.issuer:
        claims["iss"] = cfg.issuer
    if tenant:
        claims[cfg.tenant_claim] = tenant
    if roles:
        claims[cfg.roles_claim] = roles
    if limit_class is not None and cfg.limits_claim:
        claims[cfg.limits_claim] = limit_class
    return jwt.encode(claims, key, algorithm=alg)


def run(args: argparse.Namespace) -> int:
    try:
        ttl = parse_ttl(args.ttl)
        cfg = load_config(args.config) if args.config else None
        jwt_cfg = cfg.auth.jwt if cfg is not None else JwtConfig()
        if jwt_cfg is None:
            raise ConfigError(f"{args.config}: auth.jwt is not configured (JWT auth is off)")
        if args.limits is not None and cfg is not None and args.limits not in cfg.limits:
            raise ConfigError(f"--limits: {args.limits!r} is not a limit class of {args.config} "
                              f"(classes: {', '.join(sorted(cfg.limits))})")
        # the gateway refuses a blank client id or one with control characters (gateway/auth/jwt.py): a token
        # it would answer with 401 is refused here, when it is made
        if not args.client.strip() or not args.client.isprintable():
            raise ValueError(f"--client: not a client id the gateway accepts: {args.client!r}")
        if args.tenant is not None and not args.tenant.isprintable():
            raise ValueError(f"--tenant: not a tenant the gateway accepts: {args.tenant!r}")
        # "chat, embed" is a natural way to type it: the role is "embed", not " embed" (never granted)
        roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles else None
        token = mint(jwt_cfg, client=args.client, tenant=args.tenant, roles=roles, ttl_s=ttl,
                     limit_class=args.limits)
    except (ConfigError, ValueError) as e:
        print(f"ipgate token: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="mint a development JWT from the configured HS secret",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--client", required=True, help="client id (the configured client claim, default 'sub')")
    p.add_argument("--tenant", help="tenant claim")
    p.add_argument("--roles", help="comma-separated roles, e.g. chat,admin")
    p.add_argument("--limits", metavar="CLASS",
                   help="limit class claim (auth.jwt.limits_claim must be set; a key of the config's limits)")
    p.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d, at most 366d (default 1h)")
    p.add_argument("--config", type=config_arg, help="gateway YAML (audience, issuer, claim names, secret source)")
    p.set_defaults(func=run)
