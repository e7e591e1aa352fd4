"""The gateway's side of detection: adapt requests and the store to the sans-IO engine (``detectors/``).

``GatewayDetection.observe`` runs on the request path and is pure CPU: features from the *original* body
(before hardening, so the client's intent is what gets scored), the engine folds them into the state bytes
the store's ``hot_path`` returned (``Engine.observe_pending``: the new state stays decoded, nothing is
serialised on the client's critical path), and the outcome is the tier for this request — the stored tier,
raised by this request's evidence, never lowered within the request (a client cools down through the
engine's hysteresis, from its next request on).

``DetectionSession.account`` (``gateway.detection_session``) runs off the client's critical path once the
response is done: it folds the response in (usage, finish reasons, logprobs served) and serialises the state
(once per request), links the request's prompt sketches across accounts through the store
(``gateway.detection_links``), saves the new state and tier (what every replica's next ``hot_path`` reads: this
is how decisions are shared), and raises an alert when the tier rose to one whose policy says ``alert``, with
the evidence this replica kept of the client's suspicious requests (``gateway.detection_evidence``).

Failure isolation (STYLE rule 7): a detector that raises is logged once by the engine and reported in
``Verdict.errors``; a failure of feature extraction or of the engine itself is caught here, logged once per
name. Both are counted in ``detector_errors_total{detector}`` and the request goes on ``unscored`` under
``detection.fail_policy``: ``allow`` keeps the tier the remaining evidence gives, ``block`` sends the
request to the first blocking tier. An ``allow`` override pins the client: its tier never rises and it
raises no alert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import DetectorSettings, Engine
from detectors.features import extract
from detectors.state import header_tier
from detectors.state_codec import declared_state_bytes
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.config import ConfigError, DetectionConfig, GatewayConfig
from gateway.detection_evidence import EVIDENCE_MIN_SCORE, RecentEvidence
from gateway.detection_links import Links
from gateway.detection_live import Live, LiveStates
from gateway.detection_session import DetectionSession
from gateway.hooks import DetectionOutcome
from gateway.policy import Policy
from gateway.principal import Principal
from gateway.store.base import Override
from gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from gateway.embedding import EmbeddingWorker

log = logging.getLogger(__name__)


class GatewayDetection:
    """Implements ``gateway.hooks.Detection`` on top of ``detectors.engine.Engine``."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        cfg: DetectionConfig,
        *,
        metrics: Metrics | None = None,
        alerts: AlertDispatcher | None = None,
        embedding: EmbeddingWorker | None = None,
        class_weights: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        self.engine = engine
        # detection profiles: limit class -> the combiner weights its clients are judged with (others: the
        # engine's own); built and checked at start-up (``Engine.weights_for``). Installed on the engine: each
        # request records its credential's plan in the client's state, and the client is judged by the
        # strictest profile of every plan recorded there (``detectors.profiles``), on every replica
        self.class_weights = dict(class_weights or {})
        if self.class_weights:
            engine.set_profiles(self.class_weights)
        self.embedding = embedding  # detection.embedder: minilm (gateway/app.py starts and closes it)
        self.policy = policy
        self.cfg = cfg
        self.metrics = metrics
        self.alerts = alerts
        self._max_tier = len(policy.tiers) - 1
        self._block_tier = next((i for i, t in enumerate(policy.tiers) if t.block), self._max_tier)
        self._logged: set[str] = set()
        self._state_errors_seen = 0  # engine.state_errors already exported
        self.links = Links(cfg)  # cross-account linking at accounting (gateway/detection_links.py)
        self.recent = RecentEvidence()  # alert evidence: this replica's recent suspicious requests per client
        # Counter children resolved once: labels() costs a dict lookup and a lock per call on the hot path.
        self._tier_counters = (
            [metrics.detection_tier_total.labels(tier=t.name) for t in policy.tiers] if metrics else []
        )
        # each client's overlapping requests fold into one working copy, merged into the store by
        # compare-and-swap (gateway/detection_live.py): concurrency must not erase evidence
        self.live = LiveStates(engine, cfg.state_ttl_s)
        self._merges_seen = self._dropped_seen = 0

    @classmethod
    def from_config(
        cls, cfg: GatewayConfig, policy: Policy, *, metrics: Metrics | None = None,
        alerts: AlertDispatcher | None = None,
    ) -> GatewayDetection:
        """Build from config; every problem is a ``ConfigError`` at start-up, never a per-request failure."""
        d = cfg.detection
        if d.fail_policy == "block" and not any(t.block for t in policy.tiers):
            # unscored requests would be served at the last tier: fail_policy block would fail open, silently
            raise ConfigError("detection.fail_policy: block needs a policy tier with block: true (none of "
                              f"policy.tiers {list(policy.names)} blocks)")
        path = Path(d.combiner_file) if d.combiner_file else default_combiner_path()
        try:
            params = CombinerParams.from_json(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"detection.combiner_file: cannot read {path}: {e.strerror}") from e
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"detection.combiner_file: {path}: invalid combiner parameters: {e}") from e
        settings = {
            name: DetectorSettings(enabled=t.enabled, weight=t.weight, params=dict(t.params))
            for name, t in d.detectors.items()
        }
        embedding = None
        if d.embedder == "minilm":  # imported here: the MiniLM path loads torch, the default never does
            from gateway.embedding import EmbeddingWorker, load_semantic_reference, semantic_settings

            settings["semantic"] = semantic_settings(d, load_semantic_reference())
            if settings["semantic"].enabled:
                embedding = EmbeddingWorker.from_config(d, metrics)
            else:
                log.warning("detection.embedder is minilm but detection.detectors.semantic is disabled: nothing "
                            "would use the vectors, so the MiniLM encoder is not started")
        elif "semantic" in d.detectors and d.detectors["semantic"].enabled:
            raise ConfigError("detection.detectors.semantic needs detection.embedder: minilm (its MiniLM vectors)")
        try:
            engine = Engine.from_params(params, detectors=settings)
        except ValueError as e:
            raise ConfigError(f"detection.detectors: {e}") from e
        class_weights: dict[str, dict[str, float]] = {}
        for name, overrides in d.class_weights.items():
            try:
                class_weights[name] = engine.weights_for(overrides)
            except ValueError as e:
                raise ConfigError(f"detection.class_weights.{name}: {e}") from e
        need = declared_state_bytes(engine.detectors)
        if cfg.store.max_state_bytes < need:
            # the store refuses a larger state (ValueError): every client whose state grows past it would stop
            # being saved - its tier never rises across requests and its alerts are lost - one request at a time
            raise ConfigError(
                f"store.max_state_bytes: {cfg.store.max_state_bytes} is below the {need} bytes the enabled "
                "detectors' state can reach; raise it (or disable detectors)")
        return cls(engine, policy, d, metrics=metrics, alerts=alerts, embedding=embedding,
                   class_weights=class_weights)

    def profile_view(self, stored_state: bytes | None) -> dict[str, Any]:
        """The admin API's view of a client's detection profile: the plans its stored state records (every
        replica's requests), whether that record overflowed, and the weights it is judged with (the strictest)."""
        plans, overflow, weights = self.engine.judged_by(stored_state)
        return {"plans": list(plans), "plans_overflow": overflow, "weights": weights}

    # --- the request path ---------------------------------------------------------------------------------

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
        try:
            return self._observe(principal, endpoint, body, stored_state, stored_tier, now, override, request_id,
                                 ip)
        except Exception as e:
            # Any other bug of this adapter (evidence, counters): the same isolation as a detector's, here
            # rather than in the pipeline, so that it is logged once and an ``allow``-listed client is not
            # refused by ``fail_policy: block``.
            return self._unscored(principal, "adapter", e, stored_tier, override, now)

    def _observe(
        self, principal: Principal, endpoint: str, body: Mapping[str, Any], stored_state: bytes | None,
        stored_tier: int, now: float, override: Override | None, request_id: str | None, ip: str | None = None,
    ) -> DetectionSession:
        try:
            feats = extract(endpoint, body, now)
        except Exception as e:  # isolation: a feature bug must not fail the request
            return self._unscored(principal, "features", e, stored_tier, override, now)
        if self.embedding is not None:  # O(1): earlier prompts' vectors in, this prompt queued (never raises)
            feats = self.embedding.attach(principal.client_id, endpoint, body, feats)
        # The client's working copy (the one its other requests in flight on this replica fold into, else the
        # stored state decoded): it stays decoded until ``account`` serialises it once, after the response, so
        # nothing is encoded on the client's critical path.
        try:
            live = self.live.begin(principal.client_id, stored_state)
        except Exception as e:  # the engine could not even open the stored state: go on from a fresh one
            try:
                live = self.live.begin(principal.client_id, None)
            except Exception:
                return self._unscored(principal, "engine", e, stored_tier, override, now)
            self._failed("engine", e)
        try:
            return self._scored(principal, endpoint, body, stored_state, stored_tier, now, override, request_id,
                                ip, live, feats)
        except BaseException:
            self.live.abandon(live)  # no session: this request will not be accounted
            raise

    def _scored(
        self, principal: Principal, endpoint: str, body: Mapping[str, Any], stored_state: bytes | None,
        stored_tier: int, now: float, override: Override | None, request_id: str | None, ip: str | None,
        live: Live, feats: Any,
    ) -> DetectionSession:
        plan = principal.limit_class
        try:
            # under an allow override the evidence counts but the tier is held: when the allow ends, the next
            # request is judged on everything observed, and a rise raises its alert then. The request's plan is
            # recorded in the state; the client is judged by the strictest profile of all the plans recorded
            v = self.live.fold_request(live, feats, now, override == "allow", plan=plan)
        except Exception as e:  # the engine isolates detectors; this catches the engine itself
            # a state the engine cannot fold into must not leave the client unscored for good: score
            # this request (and from now on the client) from a fresh state; counted once either way
            try:
                v = self.live.restart(live, feats, now, override == "allow", plan=plan)
            except Exception:
                self.live.abandon(live)
                return self._unscored(principal, "engine", e, stored_tier, override, now)
            self._failed("engine", e)
        pending = live.pending
        self._count_state_errors()
        if v.errors and self.metrics is not None:
            for name in v.errors:
                self.metrics.detector_errors_total.labels(detector=name).inc()
        engine_tier = v.tier if v.tier <= self._max_tier else self._max_tier
        if override == "allow":
            tier = stored_tier
        else:
            tier = engine_tier if engine_tier > stored_tier else stored_tier
            if v.unscored and self.cfg.fail_policy == "block" and tier < self._block_tier:
                tier = self._block_tier
        if v.score >= EVIDENCE_MIN_SCORE or engine_tier > 0:
            self.recent.remember(principal.client_id, request_id, endpoint, body, ip, pending.text)
        if self._tier_counters:  # last: nothing below can fail (a failure above is counted once, unscored)
            self._tier_counters[min(max(tier, 0), self._max_tier)].inc()
        outcome = DetectionOutcome(tier, v.score, v.reasons, v.unscored)  # positional: cheaper per request
        if engine_tier > stored_tier and stored_state:
            # An alert says the tier rose: above the stored tier and above the detector's own, which an
            # administrator's pin (a floor, it replaces the stored tier) can hide below (read only here, rarely)
            prior = min(header_tier(stored_state), self._max_tier)
            stored_tier = prior if prior > stored_tier else stored_tier
        return DetectionSession(
            self, principal, outcome, v, live, stored_tier, engine_tier, override, now, feats.max_tokens
        )

    def _unscored(
        self, principal: Principal, name: str, e: Exception, stored_tier: int, override: Override | None,
        now: float,
    ) -> DetectionSession:
        self._failed(name, e)
        tier = stored_tier
        if override != "allow" and self.cfg.fail_policy == "block":
            tier = max(tier, self._block_tier)
        if self._tier_counters:
            self._tier_counters[min(max(tier, 0), self._max_tier)].inc()
        outcome = DetectionOutcome(tier=tier, score=0.0, reasons=(f"unscored: {name} failed",), unscored=True)
        return DetectionSession(self, principal, outcome, None, None, stored_tier, stored_tier, override, now, None)

    def _count_merges(self) -> None:
        """Export the working copies' merges with other replicas' saves, steps dropped unsaved, and the
        detectors' exceptions after the verdict (response, links), which no verdict reports."""
        late = self.engine.late_errors
        if late:
            for name, n in late.items():
                if self.metrics is not None:
                    self.metrics.detector_errors_total.labels(detector=name).inc(n)
            late.clear()
        lv = self.live
        if self.metrics is not None and (lv.merges != self._merges_seen or lv.dropped != self._dropped_seen):
            if lv.merges != self._merges_seen:
                self.metrics.detection_state_merges_total.labels(outcome="merged").inc(lv.merges - self._merges_seen)
            if lv.dropped != self._dropped_seen:
                self.metrics.detection_state_merges_total.labels(outcome="dropped").inc(
                    lv.dropped - self._dropped_seen)
        self._merges_seen, self._dropped_seen = lv.merges, lv.dropped

    def _count_state_errors(self) -> None:
        """Export the engine's count of stored states it could not read (each client restarted fresh)."""
        n = self.engine.state_errors
        if n != self._state_errors_seen:
            if self.metrics is not None:
                self.metrics.detector_state_errors_total.inc(n - self._state_errors_seen)
            self._state_errors_seen = n

    def _failed(self, name: str, e: Exception) -> None:
        if name not in self._logged:
            self._logged.add(name)
            log.error("detection %s failed; requests go on unscored under fail_policy=%s (logged once): %r",
                      name, self.cfg.fail_policy, e, exc_info=e)
        if self.metrics is not None:
            self.metrics.detector_errors_total.labels(detector=name).inc()
