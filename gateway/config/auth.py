"""Who may call: JWT and API-key authentication, and the limit classes (GCRA rates) clients are admitted at."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import (
    Field,
    model_validator,
)

from gateway.config.base import _Model

if TYPE_CHECKING:
    pass


class JwtConfig(_Model):
    algorithms: list[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]] = [
        "HS256"
    ]
    secret_env: str | None = "IPGATE_JWT_SECRET"
    secret_file: str | None = None
    public_key_file: str | None = None
    jwks_url: str | None = None
    jwks_refetch_interval_s: float = Field(60.0, ge=0)
    jwks_cache_ttl_s: float = Field(300.0, gt=0, description="re-read the whole JWKS this often (key removal)")
    jwks_timeout_s: float = Field(5.0, gt=0)
    audience: str | None = "ipgate"
    issuer: str | None = None
    client_claim: str = "sub"
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    # claim naming the client's limit class (a key of `limits`); None: JWTs never name one. An unknown name
    # gets `default` (logged once per name, counted in ipgate_limit_class_unknown_total)
    limits_claim: str | None = None
    leeway_s: float = Field(30.0, ge=0, le=300)
    max_token_bytes: int = Field(8192, gt=0)
    required_claims: list[str] = ["exp", "iat"]

    @model_validator(mode="after")
    def _families_do_not_mix(self) -> JwtConfig:
        hs = any(a.startswith("HS") for a in self.algorithms)
        asym = any(not a.startswith("HS") for a in self.algorithms)
        if hs and asym:
            raise ValueError("algorithms must not mix HS* with RS*/ES*/PS* (key-confusion risk)")
        return self


class ApiKeysConfig(_Model):
    # lines of "sha256-hex client_id [tenant] [roles,comma,separated] [limits=CLASS]" (CLASS: a key of `limits`)
    file: str | None = None
    reload_interval_s: float = Field(5.0, ge=0, description="poll the file for changes; 0 disables")


class AuthConfig(_Model):
    jwt: JwtConfig | None = JwtConfig()
    api_keys: ApiKeysConfig = ApiKeysConfig()
    cache_size: int = Field(10_000, gt=0)


DEFAULT_MAX_IN_FLIGHT = 64  # a limits entry's max_in_flight when it names none
SUSPICIOUS_MAX_IN_FLIGHT = 4  # the built-in `suspicious` entry's (the throttle and block tiers')


class TierLimitsConfig(_Model):
    # finite: `.inf` (YAML's "unlimited") made the emission interval 0 (a 500 on every request of the class)
    requests_per_minute: float = Field(gt=0, allow_inf_nan=False)
    tokens_per_minute: float = Field(gt=0, allow_inf_nan=False)
    burst_requests: int | None = Field(None, ge=1, description="default: requests_per_minute / 6 (10 s)")
    burst_tokens: int | None = Field(None, ge=1, description="default: tokens_per_minute / 6 (10 s)")
    # requests of one client in flight at once, across every replica (a stream counts until it ends); null: no
    # limit. Without it a client under its request rate could hold every backend slot with long streams.
    max_in_flight: int | None = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, description="null: unlimited")
