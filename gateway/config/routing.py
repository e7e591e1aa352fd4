"""Where requests go: backends and their model pools, canary rollouts, health checks, retries, and the
fingerprint checks that a backend still serves the genuine model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.config.base import _Model

if TYPE_CHECKING:
    pass


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
    # Non-streamed calls: the WHOLE response (vLLM, TGI and SGLang send nothing until a non-streamed generation
    # is finished), so it bounds the longest answer. 600 s is the openai SDKs' own default: the gateway never
    # gives up on a long generation before its client does. A timeout here is not retried elsewhere (the
    # generation may still be running; another try doubles the GPU work and would time out too).
    first_byte_timeout_s: float = Field(600.0, gt=0)
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
    # vLLM (V1 engine) prefix-cache isolation: the gateway sets `cache_salt` to a hash of the client (or its
    # tenant), so a request reuses only cache blocks computed for the same client or tenant and the time to its
    # first token tells nothing about other clients' prompts; a client's own cache_salt is replaced. none: as sent
    cache_salt: Literal["none", "client", "tenant"] = "none"
    # https backends: a private CA to verify the engine with (default: the system trust store), and a client
    # certificate + key the gateway presents (mutual TLS: an engine that requires it serves the gateway only)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

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

    @model_validator(mode="after")
    def _tls(self) -> BackendConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together (set both, or neither)")
        if (self.tls_ca_file or self.tls_cert_file) and not self.url.startswith("https://"):
            raise ValueError("tls_ca_file / tls_cert_file need an https:// url")
        return self

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
    # A periodic burst of temperature-0 requests is a shape a dishonest backend could learn to serve the genuine
    # model to. Rounds come at interval_s x uniform(1 - jitter, 1 + jitter), and within a periodic round each
    # probe waits its own uniform delay in [0, spread_s] (at most half the interval), all from the OS CSPRNG.
    jitter: float = Field(0.5, ge=0, lt=1, description="periodic rounds at interval_s x U(1 - jitter, 1 + jitter)")
    spread_s: float = Field(30.0, ge=0, description="a periodic round's probes spread over up to this many seconds")
    # A quarantined backend receives only probes: it could answer them with the genuine model, be put back, and
    # serve a cheaper one again. After this many automatic releases within auto_release_window_s, the next
    # quarantine holds until an operator releases it (0: every quarantine waits for an operator).
    auto_release_limit: int = Field(1, ge=0, le=1_000_000, description="automatic releases per window")
    auto_release_window_s: float = Field(7 * 86400.0, gt=0, description="the window of auto_release_limit")

    @model_validator(mode="after")
    def _thresholds(self) -> FingerprintConfig:
        if self.mismatch_threshold > self.match_threshold:
            raise ValueError("mismatch_threshold must not be above match_threshold")
        if self.min_probes > self.probes_per_check:
            raise ValueError(f"min_probes ({self.min_probes}) must not be above probes_per_check "
                             f"({self.probes_per_check}): every check would be inconclusive")
        return self
