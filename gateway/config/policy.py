"""What suspicion does: the detection tiers and their hardening, the detectors, and where alerts go."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from gateway.config.base import MAX_REDIS_LEN, MAX_TTL_S, _Model
from gateway.config.service import check_cluster_node_url

if TYPE_CHECKING:
    pass


class HardeningConfig(_Model):
    max_top_logprobs: int | None = None  # None: leave as is
    logprobs_xor_logit_bias: bool = False
    # Bounded: NaN compared with nothing (no bias was ever clamped: the cap failed open), a negative bound
    # flipped every bias's sign, max_n 0 rewrote n to a value every backend refuses, entries -1 kept all but one
    max_logit_bias_entries: int | None = Field(None, ge=0)
    max_abs_logit_bias: float | None = Field(None, ge=0)
    max_n: int | None = Field(None, ge=1)
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
    # at this tier a client holds at most this many requests in flight (the tighter of this and its limits'
    # max_in_flight); None: its limits' alone
    max_in_flight: int | None = Field(None, ge=1)
    hardening: HardeningConfig = HardeningConfig()
    watermark_strength: Literal["normal", "strong"] = "normal"
    block: bool = False
    alert: bool = False


def _default_tiers() -> list[TierPolicyConfig]:
    return [
        TierPolicyConfig(name="normal"),
        TierPolicyConfig(
            name="watch",
            max_in_flight=16,
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


ClassWeight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class DetectorToggle(_Model):
    enabled: bool = True
    weight: float | None = Field(None, ge=0, allow_inf_nan=False)  # None: the fitted combiner's weight
    params: dict[str, Any] = {}


class DetectionConfig(_Model):
    enabled: bool = True
    detectors: dict[str, DetectorToggle] = {}
    fail_policy: Literal["allow", "block"] = "allow"
    combiner_file: str | None = None  # default: detectors/data/combiner.json (shipped)
    # bounded: the stores keep TTLs as integer micro/milliseconds, and Redis refuses an expiry past 64 bits
    state_ttl_s: float = Field(7 * 24 * 3600.0, gt=0, le=MAX_TTL_S)
    embedder: Literal["hashed", "minilm"] = "hashed"
    # A completions prompt sent as token ids is unreadable to every content detector (templates, coverage,
    # reasoning, linking): ``refuse`` answers it 400 (clients on the admin allowlist excepted); ``allow`` lets
    # it through, scored by its parameters, volume and timing only.
    token_id_prompts: Literal["refuse", "allow"] = "refuse"
    # A system or developer message after the last user message: the model answers it, but the detectors read
    # the user turn before it (reading such messages as the turn flagged most applications that append a fixed
    # reminder). ``refuse`` answers such requests 400 (allowlisted clients excepted), closing the evasion for
    # deployments whose applications never send them; ``allow`` (default) passes them.
    trailing_instructions: Literal["refuse", "allow"] = "allow"
    # Detection profiles per plan: limit class -> {detector: combiner weight} for the clients of that class
    # (e.g. {apps: {templates: 0}} for integrations known to fill one fixed template). Only the weights change:
    # every detector still folds in its evidence, so the state is the same under every profile.
    class_weights: dict[str, dict[str, ClassWeight]] = {}
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
    # redis_stream: url names a Redis Cluster node (route by slot); None: the store's cluster mode when url is
    # unset (the store's seeds); with a url of its own, asked of that node at the sink's first use
    # (gateway/alerts/sinks/redis_stream.py)
    cluster: bool | None = None
    # Redis takes a 64-bit MAXLEN/LTRIM bound: a larger one failed every write (a LTRIM after the LPUSH: no trim)
    max_len: int = Field(10_000, ge=1, le=MAX_REDIS_LEN, description="redis_stream: approximate MAXLEN")
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
        if self.cluster is not None and self.kind != "redis_stream":
            raise ValueError("cluster is a redis_stream sink's field")
        if self.cluster and self.url is not None:
            check_cluster_node_url("url", self.url)
        return self


class AlertsConfig(_Model):
    sinks: list[AlertSinkConfig] = []
    # store leases across replicas: bounded like every store TTL
    min_interval_s: float = Field(300.0, ge=0, le=MAX_TTL_S, description="per-client alert rate limit (per tier)")
    dedup_window_s: float = Field(3600.0, ge=0, le=MAX_TTL_S,
                                  description="same client+tier+detectors suppressed this long")
    store_max_len: int = Field(1000, ge=1, le=MAX_REDIS_LEN,
                               description="recent alerts kept in the store for the admin API")
