"""The seams between the request pipeline and the protection features (detection, watermarking, alerts).

The pipeline (``gateway/pipeline.py``) calls these in order; each feature implements its side in its own
module and is optional (``None`` turns it off). Everything here is synchronous and CPU-only except the
``account`` / ``record_recipient`` steps, which the pipeline runs off the client's critical path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.principal import Principal
from gateway.store.base import Override, StateStore


@dataclass(frozen=True, slots=True)
class DetectionOutcome:
    tier: int  # tier to apply to this request (the stored tier, raised by this request's evidence)
    score: float  # calibrated suspicion in [0, 1]
    reasons: tuple[str, ...] = ()
    unscored: bool = False  # a detector failed; the fail policy decided


@dataclass(slots=True)
class ResponseFacts:
    """What the pipeline learnt from the upstream response, for accounting and detection."""

    status: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reasons: list[str] = field(default_factory=list)
    logprobs_returned: int = 0  # number of token positions that carried logprobs
    aborted: bool = False  # the client went away or the upstream cut the stream


class DetectionSession(Protocol):
    outcome: DetectionOutcome

    async def account(self, store: StateStore, facts: ResponseFacts) -> None:
        """Fold the response in, write the client's new state and tier, link sketches, raise alerts."""


class Detection(Protocol):
    def observe(
        self,
        principal: Principal,
        endpoint: str,
        body: Mapping[str, Any],
        stored_state: bytes | None,
        stored_tier: int,
        now: float,
        *,
        override: Override | None = None,
        request_id: str | None = None,
        ip: str | None = None,
    ) -> DetectionSession:
        """Score this request against the client's stored state (pure CPU, no I/O).

        Pass ``AdmitResult.override``: with ``"allow"`` the outcome's tier never rises above ``stored_tier``
        and no alert is raised. ``request_id`` is kept as alert evidence."""

    def profile_view(self, stored_state: bytes | None) -> dict[str, Any]:
        """The plans a stored state records and the detector weights its client is judged with (admin API)."""


class StreamEmbedder(Protocol):
    def feed(self, text: str) -> str:
        """Take the next piece of response text; return the watermarked text that is safe to emit now."""

    def finish(self) -> str:
        """Return whatever was held back."""


class Watermarking(Protocol):
    def embedder_for(
        self, principal: Principal, model: str, tier_name: str, body: Mapping[str, Any]
    ) -> StreamEmbedder | None:
        """A fresh embedder for one choice of one response, or None when this response must not be
        watermarked post hoc (JSON output, tool calls, scheme off, or the backend watermarks itself)."""

    def upstream_directives(
        self, principal: Principal, model: str, backend_watermark_capable: bool, tier_name: str
    ) -> dict[str, Any] | None:
        """Extra body fields for a watermark-capable backend (``vllm_xargs``), or None."""

    def in_engine(self, model: str, backend_watermark_capable: bool) -> bool:
        """Whether this backend watermarks this model's responses itself (it got ``upstream_directives``)."""

    def watermarks(self, model: str) -> bool:
        """Whether this model's responses are watermarked at all (watermarking on, its scheme not none)."""

    async def record_recipient(self, store: StateStore, principal: Principal) -> None: ...
