"""Typed configuration: one YAML file plus ``IPGATE_*`` environment overrides, validated once at start-up.

Overrides use ``__`` between path segments: ``IPGATE_STORE__KIND=redis``, ``IPGATE_LISTEN=0.0.0.0:8080``.
Only variables whose first segment names a top-level field are overrides; the rest (``IPGATE_JWT_SECRET``,
``IPGATE_WATERMARK_SECRET``) are secrets that config fields point at by name. Values are parsed as YAML
scalars, so ``IPGATE_ROUTING__RETRIES=3`` is an int.

Secrets never live in the YAML: fields ending in ``_env`` name an environment variable, fields ending in
``_file`` name a file. ``ConfigError`` names the file and the dotted field path of every problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from watermark.kgw.params import KgwParams


class ConfigError(Exception):
    """Raised at start-up when the configuration cannot be used; the message names file and field."""


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a valid header name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _env_names(cls, v: Any, info: ValidationInfo) -> Any:
        # Fields ending in _env name a variable that holds a secret. A value that is not a variable name is
        # most likely the secret itself pasted into the YAML: refuse it, and never echo it (error messages
        # and start-up errors would otherwise print it).
        if info.field_name and info.field_name.endswith("_env") and isinstance(v, str) and v \
                and not _ENV_NAME.fullmatch(v):
            raise ValueError("must be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), "
                             "not a secret value; secrets never go in the YAML")
        return v


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if int(port) > 65535:
        raise ValueError(f"port {int(port)} is out of range (0-65535)")
    return host.strip("[]"), int(port)


class ServerConfig(_Model):
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # bounded: a huge value overflows aiohttp's C parser limits and every connection is dropped
    max_header_bytes: int = Field(16 * 1024, gt=0, le=1024 * 1024)
    drain_timeout_s: float = Field(20.0, ge=0)
    workers: int = Field(1, ge=1, le=1024)  # a typo'd 100000 would fork that many processes
    overhead_header: str = "x-ipgate-overhead-ms"

    @field_validator("overhead_header")
    @classmethod
    def _header_name(cls, v: str) -> str:
        if not _HTTP_TOKEN.fullmatch(v):
            raise ValueError("must be a valid HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
        return v


class StoreConfig(_Model):
    kind: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    failure_mode: Literal["open", "closed", "local"] = "local"
    timeout_ms: float = Field(50.0, gt=0)
    key_prefix: str = "ipgate:"
    local_replicas: int = Field(1, ge=1, description="replica count that 'local' failure mode divides limits by")
    health_interval_s: float = Field(1.0, gt=0)
    max_state_bytes: int = Field(32 * 1024, gt=0, description="largest per-client detector state accepted")
    cluster: bool = Field(False, description="url (plus cluster_seeds) names Redis Cluster nodes; route by slot")
    cluster_seeds: list[str] = Field(default_factory=list, description="more seed node URLs for cluster mode")

    @model_validator(mode="after")
    def _cluster_urls(self) -> StoreConfig:
        if not self.cluster:
            if self.cluster_seeds:
                raise ValueError("cluster_seeds is set but cluster is false")
            return self
        if self.kind != "redis":
            raise ValueError("cluster: true needs kind: redis")
        fields = ["store.url", *(f"store.cluster_seeds[{i}]" for i in range(len(self.cluster_seeds)))]
        for field, u in zip(fields, [self.url, *self.cluster_seeds], strict=True):
            parsed = urlparse(u)
            if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
                # the URL itself may hold a password: name the host, never echo the URL
                raise ValueError(f"{field}: cluster node URLs are redis://host:port or rediss://host:port "
                                 f"(got scheme {parsed.scheme!r}, host {parsed.hostname!r})")
            try:
                port = parsed.port
            except ValueError:  # urllib's message is safe, but say which field and what is expected
                raise ValueError(f"{field}: the port of node {parsed.hostname} is not a number in 0-65535") from None
            if parsed.path.strip("/") not in ("", "0"):
                raise ValueError(f"{field}: Redis Cluster has only database 0 (node {parsed.hostname}:{port})")
        return self

    @field_validator("key_prefix")
    @classmethod
    def _no_braces(cls, v: str) -> str:
        if "{" in v or "}" in v:
            raise ValueError("must not contain '{' or '}' (they would become the Redis Cluster hash tag)")
        return v


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


class TierLimitsConfig(_Model):
    requests_per_minute: float = Field(gt=0)
    tokens_per_minute: float = Field(gt=0)
    burst_requests: int | None = Field(None, ge=1, description="default: requests_per_minute / 6 (10 s)")
    burst_tokens: int | None = Field(None, ge=1, description="default: tokens_per_minute / 6 (10 s)")


def api_root(url: str) -> str:
    """The root an OpenAI-compatible server's ``/v1/...`` paths hang off: ``url`` without a trailing ``/`` or
    ``/v1``. Applied once to every backend url, so that forwarding, ``health_path``, the KGW probe and the
    fingerprint probes all append their ``/v1/...`` to the same root, whichever way the operator wrote it."""
    url = url.rstrip("/")
    # a path segment only: "http://v1" (a host named v1, e.g. a compose service) is not "http:/" + "/v1"
    return url[: -len("/v1")] if urlparse(url).path.endswith("/v1") else url


class BackendConfig(_Model):
    name: str
    url: str
    weight: float = Field(1.0, ge=0, allow_inf_nan=False)  # inf would break the split
    api_key_env: str | None = None
    api_key_file: str | None = None
    max_concurrency: int = Field(256, ge=1)
    connect_timeout_s: float = Field(5.0, gt=0)
    first_byte_timeout_s: float = Field(60.0, gt=0)
    idle_timeout_s: float = Field(60.0, gt=0, description="per-chunk idle timeout for streams")
    watermark_capable: bool = False
    # watermark_capable only: check that the engine really runs ipgate's KGW plugin (at start-up, then with
    # every health check) and watermark post hoc (lexical) while it does not; false trusts the flag unchecked
    kgw_probe: bool = True
    kgw_probe_endpoint: Literal["completions", "chat"] = "completions"  # the probe's API (max_tokens 1)
    upstream_model: str | None = None  # model name the backend knows; default: the gateway model name
    health_path: str = "/v1/models"
    # a reasoning model served without a reasoning parser whose chat template opens "<think>" in the prompt
    # (DeepSeek-R1 style): its answers begin inside the chain of thought, which ends at the first "</think>"
    think_prefilled: bool = False
    fingerprint_reference: str | None = None  # signature file from `ipgate fingerprint record`; None: unchecked

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        parts = urlparse(v)
        if not parts.hostname:
            raise ValueError("has no host (expected http(s)://host[:port][/v1])")
        if parts.query or parts.fragment or v.endswith(("?", "#")):
            # the /v1/... paths are appended to the url: they would land inside the query or fragment
            raise ValueError("must not have a query or fragment (expected http(s)://host[:port][/path][/v1])")
        return api_root(v)

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, v: str) -> str:
        # appended to the url as is: "health" would probe http://host:8000health
        if not v.startswith("/") or any(c.isspace() for c in v) or "#" in v:
            raise ValueError("must be a path starting with / (e.g. /v1/models, or /health for TGI), no spaces")
        return v


class CanaryStep(_Model):
    weight: float = Field(ge=0, le=100)
    hold_s: float = Field(60.0, ge=0)


class CanaryAnalysisConfig(_Model):
    interval_s: float = Field(30.0, gt=0)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_ms: float = Field(500.0, gt=0)
    min_requests: int = Field(20, ge=1, description="fewer requests in an interval counts as a failed analysis")
    failure_limit: int = Field(2, ge=0)


class CanaryConfig(_Model):
    backend: str  # the canary backend's name
    steps: list[CanaryStep] = Field(min_length=1)
    analysis: CanaryAnalysisConfig = CanaryAnalysisConfig()


class ModelConfig(_Model):
    name: str
    backends: list[BackendConfig] = Field(min_length=1)
    sticky: bool = True
    canary: CanaryConfig | None = None
    watermark_scheme: Literal["none", "lexical", "kgw"] | None = None  # None: the watermark section decides

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique, got {names}")
        if sum(b.weight for b in self.backends) <= 0:
            raise ValueError("at least one backend needs a weight above 0")
        if self.canary and self.canary.backend not in names:
            raise ValueError(f"canary.backend {self.canary.backend!r} is not one of {names}")
        if self.canary and not any(b.weight > 0 for b in self.backends if b.name != self.canary.backend):
            raise ValueError("with a canary, at least one other (stable) backend needs a weight above 0")
        return self


class HealthConfig(_Model):
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)
    consecutive_failures: int = Field(5, ge=1, description="passive: failed requests in a row that eject")
    ejection_base_s: float = Field(5.0, gt=0)
    ejection_max_s: float = Field(300.0, gt=0)


class RoutingConfig(_Model):
    retries: int = Field(2, ge=0, le=5)
    retry_budget_ratio: float = Field(0.2, ge=0, le=1, description="retries allowed as a share of requests")
    health: HealthConfig = HealthConfig()


class FingerprintConfig(_Model):
    """Periodic checks that each backend with a ``fingerprint_reference`` still serves that model."""

    enabled: bool = True  # false: no checker runs (only backends with a fingerprint_reference are ever probed)
    interval_s: float = Field(3600.0, gt=0)
    timeout_s: float = Field(30.0, gt=0, description="per probe request")
    action: Literal["alert", "eject"] = "eject"  # eject: quarantine a mismatching backend until it matches
    match_threshold: float = Field(0.8, ge=0, le=1)
    mismatch_threshold: float = Field(0.5, ge=0, le=1)
    min_probes: int = Field(4, ge=1, description="fewer probes answered is inconclusive (<= probes_per_check)")
    # Each round asks a fresh random sample (secrets.SystemRandom) of the reference's probes: a backend never
    # sees a private set whole in one round. With the bundled 8-probe set, 8 sends every probe, as always.
    probes_per_check: int = Field(8, ge=1, le=1000, description="probes sent per round, drawn from the reference")
    max_logprob_distance: float = Field(
        0.35, ge=0, le=1, description="first-token logprob distance above which the same text is another model")
    logprobs: bool = True  # ask for first-token top logprobs (sharper); off for backends that refuse them
    confirm_mismatch: bool = True  # probe a mismatching backend a second time; act only if it mismatches again
    concurrency: int = Field(4, ge=1, description="backends probed at the same time")

    @model_validator(mode="after")
    def _thresholds(self) -> FingerprintConfig:
        if self.mismatch_threshold > self.match_threshold:
            raise ValueError("mismatch_threshold must not be above match_threshold")
        if self.min_probes > self.probes_per_check:
            raise ValueError(f"min_probes ({self.min_probes}) must not be above probes_per_check "
                             f"({self.probes_per_check}): every check would be inconclusive")
        return self


class TelemetryConfig(_Model):
    service_name: str = "ipgate"
    otlp_endpoint: str | None = None
    sample_ratio: float = Field(0.1, ge=0, le=1)
    access_log: bool = True
    access_log_file: str | None = None  # default: stderr

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith(("http://", "https://")) and urlparse(v).hostname):
            raise ValueError("must be an http(s):// URL of an OTLP/HTTP collector, e.g. http://otel-collector:4318")
        return v


class HardeningConfig(_Model):
    max_top_logprobs: int | None = None  # None: leave as is
    logprobs_xor_logit_bias: bool = False
    max_logit_bias_entries: int | None = None
    max_abs_logit_bias: float | None = None
    max_n: int | None = None
    strip_seed: bool = False
    logprob_noise: float = Field(0.0, ge=0)
    strip_reasoning: bool = False  # answers lose a reasoning model's chain of thought (reasoning fields)
    # 403 for a request whose answer could not be watermarked (structured output, tools the model may call: their
    # arguments are never watermarked) unless the backend watermarks in its engine: otherwise JSON mode or a
    # "write_answer(text)" tool is a way around the lexical watermark
    refuse_unwatermarkable: bool = False


class TierPolicyConfig(_Model):
    name: str
    # a key of `limits`: at this tier a client gets, field by field, the tighter of these and its own class's
    # limits; None: the client's class's limits (`default` for clients without a class)
    limits: str | None = None
    hardening: HardeningConfig = HardeningConfig()
    watermark_strength: Literal["normal", "strong"] = "normal"
    block: bool = False
    alert: bool = False


def _default_tiers() -> list[TierPolicyConfig]:
    return [
        TierPolicyConfig(name="normal"),
        TierPolicyConfig(
            name="watch",
            hardening=HardeningConfig(max_top_logprobs=5, logprobs_xor_logit_bias=True, max_n=4),
            alert=True,
        ),
        TierPolicyConfig(
            name="throttle",
            limits="suspicious",
            hardening=HardeningConfig(
                max_top_logprobs=1, logprobs_xor_logit_bias=True, max_logit_bias_entries=10,
                max_abs_logit_bias=10, max_n=1, strip_seed=True, logprob_noise=0.05, strip_reasoning=True,
                refuse_unwatermarkable=True,
            ),
            watermark_strength="strong",
            alert=True,
        ),
        TierPolicyConfig(name="block", limits="suspicious", block=True, alert=True),
    ]


class PolicyConfig(_Model):
    tiers: list[TierPolicyConfig] = Field(default_factory=_default_tiers, min_length=1)
    flag_tier: str = "throttle"  # the tier at which a client counts as flagged (replay's `flagged`)

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        if self.flag_tier not in names:
            raise ValueError(f"flag_tier {self.flag_tier!r} is not one of {names}")
        return self


class DetectorToggle(_Model):
    enabled: bool = True
    weight: float | None = Field(None, ge=0, allow_inf_nan=False)  # None: the fitted combiner's weight
    params: dict[str, Any] = {}


class DetectionConfig(_Model):
    enabled: bool = True
    detectors: dict[str, DetectorToggle] = {}
    fail_policy: Literal["allow", "block"] = "allow"
    combiner_file: str | None = None  # default: detectors/data/combiner.json (shipped)
    state_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)
    embedder: Literal["hashed", "minilm"] = "hashed"
    # minilm only (gateway/embedding.py): the MiniLM encoder runs off the request path in a background thread.
    embedder_threads: int = Field(1, ge=1, le=64, description="torch threads the background encoder may use")
    embedder_batch: int = Field(8, ge=1, le=256, description="prompts encoded per forward pass at most")
    embedder_queue: int = Field(1024, ge=1, description="prompts waiting to be encoded; overflow is dropped+counted")


class AlertSinkConfig(_Model):
    kind: Literal["jsonl", "redis_stream", "webhook"]
    name: str | None = None  # label in metrics/logs; default: the kind
    path: str | None = None  # jsonl: the file to append to
    stream: str = "ipgate:alerts"  # redis_stream: the stream key
    url: str | None = None  # redis_stream: redis URL (default: store.url); webhook: the endpoint
    max_len: int = Field(10_000, ge=1, description="redis_stream: approximate MAXLEN")
    max_retries: int = Field(5, ge=0)
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    secret_env: str | None = None  # webhook: HMAC-SHA256 signing secret (X-Ipgate-Signature header)
    queue_size: int = Field(1000, ge=1, description="alerts waiting for this sink; overflow is dropped+counted")
    redact: bool = True

    @model_validator(mode="after")
    def _check(self) -> AlertSinkConfig:
        if self.kind == "jsonl" and not self.path:
            raise ValueError("a jsonl sink needs path")
        if self.kind == "webhook" and not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError("a webhook sink needs an http(s) url")
        return self


class AlertsConfig(_Model):
    sinks: list[AlertSinkConfig] = []
    min_interval_s: float = Field(300.0, ge=0, description="per-client alert rate limit (per tier)")
    dedup_window_s: float = Field(3600.0, ge=0, description="same client+tier+detectors suppressed this long")
    store_max_len: int = Field(1000, ge=1, description="recent alerts kept in the store for the admin API")


class WatermarkConfig(_Model):
    enabled: bool = True
    scheme: Literal["none", "lexical", "kgw"] = "lexical"
    secret_env: str = "IPGATE_WATERMARK_SECRET"
    secret_file: str | None = None
    key_version: int = Field(1, ge=1)
    retained_versions: list[int] = []
    recipients_file: str | None = None
    recipient_ttl_s: float = Field(400 * 86400.0, gt=0, description="how long a recipient record is kept")
    # kgw green lists: "g<gamma>-h<context width>-<lefthash|minhash|selfhash>"; the engine plugin (IPGATE_KGW_PARAMS)
    # and `ipgate verify --kgw-params` must use the same spec (the plugin refuses a directive naming another)
    kgw_params: str = "g0.25-h4-selfhash"
    kgw_delta: float = Field(2.0, ge=0, le=50, description="kgw bias for every tier but the 'strong' ones")
    kgw_strong_delta: float = Field(4.0, ge=0, le=50, description="kgw bias for 'strong' (suspicious) tiers")
    kgw_directive_mode: Literal["derive", "key"] = "derive"  # see watermark/kgw/directives.py
    kgw_tokenizer_file: str | None = None  # tokenizer.json for kgw verification on the admin API
    # lexical: markdown list markers ("-"/"*", "1."/"1)") are choice points too, one per list (renders the same)
    lexical_markdown: bool = True

    @field_validator("kgw_params")
    @classmethod
    def _kgw_spec(cls, v: str) -> str:
        from watermark.kgw.directives import parse_spec  # no torch: params and the PRF spec only

        try:
            parse_spec(v)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("ipgate_kgw_spec: ")) from None
        return v

    def kgw(self) -> KgwParams:
        """The KGW parameters this config names (γ, context width, seeding from ``kgw_params``; δ)."""
        from watermark.kgw.directives import parse_spec
        from watermark.kgw.params import KgwParams

        p = parse_spec(self.kgw_params)
        return KgwParams(p.gamma, self.kgw_delta, p.context_width, p.seeding)


class AdminConfig(_Model):
    token_env: str | None = "IPGATE_ADMIN_TOKEN"  # bearer token for the admin API; unset: admin role JWTs only
    # audit trail of admin actions (gateway/audit): the shared store keeps the newest audit_max_records;
    # audit_file (optional) gets every record as an append-only, hash-chained JSONL line
    audit_max_records: int = Field(10_000, ge=1, le=1_000_000)
    audit_file: str | None = None
    audit_key_env: str | None = None  # names a variable holding a key (>= 16 chars): the chain becomes HMAC-keyed


class GatewayConfig(_Model):
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:9090"
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    auth: AuthConfig = AuthConfig()
    limits: dict[str, TierLimitsConfig] = Field(
        default_factory=lambda: {
            "default": TierLimitsConfig(requests_per_minute=600, tokens_per_minute=200_000),
            "suspicious": TierLimitsConfig(requests_per_minute=30, tokens_per_minute=10_000),
        }
    )
    models: list[ModelConfig] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    policy: PolicyConfig = PolicyConfig()
    detection: DetectionConfig = DetectionConfig()
    alerts: AlertsConfig = AlertsConfig()
    watermark: WatermarkConfig = WatermarkConfig()
    admin: AdminConfig = AdminConfig()
    fingerprint: FingerprintConfig = FingerprintConfig()
    # tenant → limit class (a key of `limits`) for clients whose API key or JWT names no class
    limits_by_tenant: dict[str, str] = {}

    @field_validator("limits", mode="before")
    @classmethod
    def _limits_keep_defaults(cls, v: Any) -> Any:
        # A YAML that sets only `limits.default` (issue 2's example) must still satisfy the default policy
        # tiers, which use `suspicious`: entries given in the file override the built-in ones, not replace all.
        if isinstance(v, dict):
            return {"suspicious": {"requests_per_minute": 30, "tokens_per_minute": 10_000}, **v}
        return v

    @field_validator("listen", "admin_listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        _parse_hostport(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        if "default" not in self.limits:
            raise ValueError("limits must define 'default' (the limit class of clients that name none)")
        for t in self.policy.tiers:
            if t.limits is not None and t.limits not in self.limits:
                raise ValueError(f"policy tier {t.name!r} uses limits {t.limits!r}, not defined in limits")
        for tenant, name in self.limits_by_tenant.items():
            if name not in self.limits:
                raise ValueError(f"limits_by_tenant: tenant {tenant!r} names limit class {name!r}, not defined in "
                                 f"limits (defined: {', '.join(sorted(self.limits))})")
        return self

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return v

    @property
    def listen_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.listen)

    @property
    def admin_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.admin_listen)

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Apply ``IPGATE_<SECTION>__<FIELD>`` overrides to ``data`` in place; returns path -> variable name, so
    that an error in an overridden value names the variable (it is not in the file). A numeric segment
    indexes a list (``IPGATE_MODELS__0__BACKENDS__1__WEIGHT=0``)."""
    top = set(GatewayConfig.model_fields)
    origins: dict[tuple[str, ...], str] = {}
    for key, raw in sorted(env.items()):
        if not key.startswith("IPGATE_"):
            continue
        path = [p.lower() for p in key[len("IPGATE_"):].split("__")]
        if path[0] not in top:
            if len(path) > 1:  # IPGATE_X__Y has the override shape: a typo in the section must not pass silently
                raise ConfigError(f"{key}: {path[0]!r} is not a configuration section "
                                  f"(overrides are IPGATE_<SECTION>__<FIELD>, sections: {', '.join(sorted(top))})")
            continue  # a secret the config names (IPGATE_JWT_SECRET, ...)
        node: Any = data
        for i, seg in enumerate(path[:-1]):
            if isinstance(node, list):
                if not (seg.isdigit() and int(seg) < len(node)):
                    raise ConfigError(f"{key}: {'.'.join(path[:i]) or path[0]} is a list of {len(node)}; "
                                      f"{seg!r} is not an index in it")
                node = node[int(seg)]
                continue
            child = node.get(seg)
            if not isinstance(child, (dict, list)):
                child = {}
                node[seg] = child
            node = child
        value = yaml.safe_load(raw) if raw != "" else None
        last = path[-1]
        if isinstance(node, list):
            if not (last.isdigit() and int(last) < len(node)):
                raise ConfigError(f"{key}: {'.'.join(path[:-1])} is a list of {len(node)}; "
                                  f"{last!r} is not an index in it")
            node[int(last)] = value
        else:
            node[last] = value
        origins[tuple(path)] = key
    return origins


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _origin(loc: tuple[str | int, ...], origins: Mapping[tuple[str, ...], str]) -> str:
    path = tuple(str(p) for p in loc)
    for opath, var in origins.items():
        n = min(len(opath), len(path))
        if n and opath[:n] == path[:n]:
            return f" (set by {var})"
    return ""


def parse_config(
    data: Mapping[str, Any], *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    merged = _deep_copy(data)  # overrides must not write into the caller's (or a reused) mapping
    origins = _apply_env(merged, os.environ if env is None else env)
    try:
        return GatewayConfig.model_validate(merged)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
            problems.append(f"{source}: {loc}: {msg}{_origin(err['loc'], origins)}")
        if len(problems) == 1:  # the common case fits one line (log-friendly)
            raise ConfigError(f"invalid configuration: {problems[0]}") from e
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from e


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys without a word: a second ``store:`` section (or a
    key repeated in a flow mapping) would silently replace the first. Refuse duplicates; keys brought in by a
    merge key (``<<: *anchor``) may still be overridden, which is what merge keys are for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse configuration YAML: safe types only, duplicate keys refused."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe types only


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (invalid byte at offset {e.start})") from None
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as e:  # one line: file:line:column and what is wrong there
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got a {type(data).__name__}")
    return parse_config(data, source=str(p), env=env)


def read_secret(
    env_name: str | None, file_name: str | None, *, what: str, env: Mapping[str, str] | None = None
) -> str | None:
    """Return a secret from a file (preferred) or an environment variable; None when neither is set."""
    if file_name:
        try:
            raw = Path(file_name).read_bytes()
        except OSError as e:
            raise ConfigError(f"{what}: cannot read secret file {file_name}: {e.strerror}") from e
        try:
            # utf-8-sig: a BOM (Windows editors) is not part of the secret; neither is the trailing newline
            # (CRLF included) that editors and `echo` add: the file and the env var give the same secret.
            return raw.decode("utf-8-sig").strip()
        except UnicodeDecodeError:
            # never echo the bytes: they are the secret
            raise ConfigError(f"{what}: secret file {file_name} is not UTF-8 text (binary secrets: "
                              "store them base64- or hex-encoded)") from None
    source = os.environ if env is None else env
    if env_name and source.get(env_name):
        return source[env_name]
    return None
