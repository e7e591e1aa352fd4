"""The gateway's side of detection: adapt requests and the store to the sans-IO engine (``detectors/``).

``GatewayDetection.observe`` runs on the request path and is pure CPU: features from the *original* body
(before hardening, so the client's intent is what gets scored), the engine folds them into the state bytes
the store's ``hot_path`` returned (``Engine.observe_pending``: the new state stays decoded, nothing is
serialised on the client's critical path), and the outcome is the tier for this request — the stored tier,
raised by this request's evidence, never lowered within the request (a client cools down through the
engine's hysteresis, from its next request on).

``DetectionSession.account`` runs off the client's critical path once the response is done: it folds the
response in (usage, finish reasons, logprobs served) and serialises the state (once per request), links the
request's prompt sketches across accounts through the store, saves the new state and tier (what every
replica's next ``hot_path`` reads: this is how decisions are shared), and raises an alert when the tier
rose to one whose policy says ``alert``.

Failure isolation (STYLE rule 7): a detector that raises is logged once by the engine and reported in
``Verdict.errors``; a failure of feature extraction or of the engine itself is caught here, logged once per
name. Both are counted in ``detector_errors_total{detector}`` and the request goes on ``unscored`` under
``detection.fail_policy``: ``allow`` keeps the tier the remaining evidence gives, ``block`` sends the
request to the first blocking tier. An ``allow`` override pins the client: its tier never rises and it
raises no alert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import REASON_MIN_SCORE, DetectorSettings, Engine
from detectors.features import extract, prompt_of
from detectors.state import header_tier
from detectors.state_codec import declared_state_bytes
from detectors.types import ResponseFeatures, Verdict
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.model import Alert
from gateway.config import ConfigError, DetectionConfig, GatewayConfig
from gateway.detection_live import Live, LiveStates, SnapshotFailed
from gateway.hooks import DetectionOutcome, ResponseFacts
from gateway.policy import Policy
from gateway.principal import Principal
from gateway.store.base import Override, StateStore
from gateway.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from gateway.embedding import EmbeddingWorker

log = logging.getLogger(__name__)

EVIDENCE_PER_CLIENT = 5  # recent suspicious requests kept per client for alert evidence
EVIDENCE_CLIENTS = 4096  # clients tracked (LRU); bounds the memory of evidence to a few MB
EVIDENCE_CHARS = 400  # raw prompt characters kept per example (redacted again on output)
MAX_ADDRESS_PEERS = 20  # accounts named as seen from an alert's addresses
ADDRESS_PEER_ALERTS = 200  # recent shared alerts searched for them (when an alert is built)
EVIDENCE_MIN_SCORE = 0.2  # only requests this suspicious are kept as evidence: benign traffic costs nothing
MAX_PEERS_SCORED = 16  # linked peers whose stored score is read to score a cluster
MAX_ALERT_DETECTORS = 4


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
        self._link_failing = False
        self._evidence: OrderedDict[str, deque[tuple[str, str, str]]] = OrderedDict()
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
            self._remember(principal.client_id, request_id, endpoint, body, ip, pending.text)
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

    async def _link(self, store: StateStore, client_id: str, sketches: tuple[int, ...]
                    ) -> tuple[dict[str, int], dict[str, float]]:
        """Cross-account linking through the store; a store fault skips linking for this request (the state
        is still saved) and is logged once per change of state."""
        try:
            shared = await store.link_sketches(client_id, sketches, self.cfg.state_ttl_s)
            peer_scores = await _peer_scores(store, shared) if shared else {}
        except Exception as e:  # the store's own metrics count the fault; detection goes on without links
            if not self._link_failing:
                self._link_failing = True
                log.warning("cross-account linking unavailable (%s: %s); scoring without it", type(e).__name__, e)
            return {}, {}
        if self._link_failing:
            self._link_failing = False
            log.info("cross-account linking available again")
        return shared, peer_scores

    def _remember(self, client_id: str, request_id: str | None, endpoint: str, body: Mapping[str, Any],
                  ip: str | None = None, scored: str | None = None) -> None:
        # ``scored``: the history turn the engine read instead of the last one (the last turn of a made-up
        # conversation is its cover, "Go ahead."): the example an analyst needs is what was scored
        text = scored if scored is not None else prompt_of(endpoint, body)[0]
        ring = self._evidence.get(client_id)
        if ring is None:
            ring = self._evidence[client_id] = deque(maxlen=EVIDENCE_PER_CLIENT)
            if len(self._evidence) > EVIDENCE_CLIENTS:
                self._evidence.popitem(last=False)
        else:
            self._evidence.move_to_end(client_id)
        ring.append((request_id or "", text[:EVIDENCE_CHARS], ip or ""))

    def address_peers(self, client_id: str, ips: tuple[str, ...]) -> list[str]:
        """Other clients whose recent suspicious requests on this replica came from one of ``ips`` (at most
        ``MAX_ADDRESS_PEERS``, most recently active first). Run when an alert is built, never per request."""
        if not ips:
            return []
        wanted = set(ips)
        out: list[str] = []
        for other, ring in reversed(self._evidence.items()):
            if other != client_id and any(a in wanted for _, _, a in ring):
                out.append(other)
                if len(out) >= MAX_ADDRESS_PEERS:
                    break
        return out

    def evidence(self, client_id: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(request ids, example prompts, distinct client addresses) of this client's recent suspicious
        requests on this replica."""
        ring = self._evidence.get(client_id, ())
        return (tuple(r for r, _, _ in ring if r), tuple(dict.fromkeys(t for _, t, _ in ring if t)),
                tuple(dict.fromkeys(a for _, _, a in ring if a)))


class DetectionSession:
    """One request's detection: its outcome now, its accounting later (``gateway.hooks.DetectionSession``)."""

    __slots__ = (
        "_det", "_engine_tier", "_max_tokens", "_now", "_override", "_principal", "_state", "_stored_tier",
        "_verdict", "outcome",
    )

    def __init__(
        self, det: GatewayDetection, principal: Principal, outcome: DetectionOutcome, verdict: Verdict | None,
        state: Live | None, stored_tier: int, engine_tier: int, override: Override | None, now: float,
        max_tokens: int | None,
    ) -> None:
        self._det = det
        self._principal = principal
        self.outcome = outcome
        self._verdict = verdict
        self._state = state
        self._stored_tier = stored_tier
        self._engine_tier = engine_tier
        self._override = override
        self._now = now
        self._max_tokens = max_tokens

    async def account(self, store: StateStore, facts: ResponseFacts) -> None:
        v, live = self._verdict, self._state
        if v is None or live is None:
            return  # unscored by an engine failure (or accounted already): keep the stored state as it was
        self._state = None  # accounted once
        det, lives, cid = self._det, self._det.live, self._principal.client_id
        resp = ResponseFeatures(
            status=facts.status, prompt_tokens=facts.prompt_tokens, completion_tokens=facts.completion_tokens,
            finish_reasons=tuple(facts.finish_reasons), logprobs_returned=facts.logprobs_returned,
            max_tokens=self._max_tokens,
        )
        cluster: tuple[str, ...] = ()
        cluster_score = v.cluster_score
        try:
            lives.fold_response(live, resp, self._now)  # the engine isolates the detectors' own faults
            if v.sketches:
                shared, peer_scores = await det._link(store, cid, v.sketches)
                if shared:
                    cluster, cluster_score = lives.fold_links(live, shared, self._now, peer_scores)
        except BaseException:
            lives.abandon(live)
            raise
        try:
            # the copy's save (serialised once; merged with another replica's save when one came first)
            rise = await lives.done(store, live, det._max_tier, self._now)
        except SnapshotFailed as e:  # the engine itself (serialisation): counted like its other faults
            det._failed("engine", e.__cause__ if isinstance(e.__cause__, Exception) else e)
            return
        finally:
            det._count_merges()
        if det.alerts is None or self._override == "allow":
            return
        tier, prior, judged = self._engine_tier, self._stored_tier, v
        if rise is not None and rise.tier > tier and rise.tier > prior:
            # the tier rose when this save merged another replica's state: no request's verdict showed that
            # rise (the next requests read it from the store), so this saver raises its alert (one alert, from
            # this request's stored tier when the request itself rose too)
            if tier <= prior:
                prior = max(prior, min(rise.prior, det._max_tier))
            tier, judged = rise.tier, rise.verdict or v
        if tier > prior and det.policy.tier(tier).alert:
            alert = self._alert(judged, cluster, cluster_score, tier, prior)
            if alert.ips:
                alert = dataclasses.replace(alert, address_peers=await _address_peers(det, store, alert))
            await det.alerts.submit(alert)

    def _alert(self, v: Verdict, cluster: tuple[str, ...], cluster_score: float, tier: int, prior: int
               ) -> Alert:
        det = self._det
        # the detectors behind the verdict: scoring high and weighing in the profile the client was judged with
        # (the strictest of its plans': a detector they all mute still scores, its evidence kept, but is none of
        # them; the reasons agree)
        weights = v.weights if v.weights is not None else det.engine.weights
        strong = sorted(
            (kv for kv in v.detector_scores.items() if kv[1] >= REASON_MIN_SCORE and weights.get(kv[0], 0.0) > 0),
            key=lambda kv: -kv[1],
        )
        request_ids, examples, ips = det.evidence(self._principal.client_id)
        return Alert(
            id=Alert.new_id(), ts=self._now, client=self._principal.client_id, tenant=self._principal.tenant,
            tier=det.policy.tier(tier).name, tier_index=tier,
            previous_tier=det.policy.tier(prior).name, score=v.score, reasons=v.reasons,
            detectors=tuple(name for name, _ in strong[:MAX_ALERT_DETECTORS]), request_ids=request_ids,
            examples=examples, cluster=cluster, cluster_score=cluster_score, unscored=v.unscored, ips=ips,
        )


async def _address_peers(det: GatewayDetection, store: StateStore, alert: Alert) -> tuple[str, ...]:
    """Accounts seen from the alert's client addresses: suspicious ones in this replica's evidence, and any
    account of the recent alerts every replica shares through the store (a hydra campaign's accounts often
    share exits). A lead for the security team, not a score: nothing here changes a tier."""
    found = det.address_peers(alert.client, alert.ips)
    wanted = set(alert.ips)
    try:
        recent = await store.recent_alerts(ADDRESS_PEER_ALERTS)
    except Exception as e:  # a lead is not worth failing the alert for; the store logs and counts its faults
        log.debug("recent alerts not read for address peers: %s", e)
        recent = []
    for raw in recent:
        if not any(a in raw for a in wanted):  # an address in its evidence is in its text: most need no parse
            continue
        try:
            d = json.loads(raw)
            ev = d.get("evidence") or {}
            other, seen = d.get("client"), ev.get("ips") or ()
        except (ValueError, AttributeError):
            continue
        if isinstance(other, str) and other != alert.client and other not in found and \
                any(isinstance(a, str) and a in wanted for a in seen):
            found.append(other)
    return tuple(found[:MAX_ADDRESS_PEERS])


async def _peer_scores(store: StateStore, shared: Mapping[str, int]) -> dict[str, float]:
    """The stored scores of the peers sharing the most sketches (bounded; unknown peers score 0)."""
    peers = sorted(shared, key=lambda p: -shared[p])[:MAX_PEERS_SCORED]
    records = await asyncio.gather(*(store.get_client(p) for p in peers))
    return {p: (r.score if r is not None else 0.0) for p, r in zip(peers, records, strict=True)}
