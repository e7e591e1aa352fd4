"""One request's detection after its verdict: ``DetectionSession`` (``gateway.hooks.DetectionSession``).

``GatewayDetection.observe`` returns one per request with the outcome the pipeline acts on. Its ``account``
runs off the client's critical path once the response is done: it folds the response in (usage, finish
reasons, logprobs served) and serialises the state (once per request), links the request's prompt sketches
across accounts through the store (``gateway.detection_links``), saves the new state and tier (what every
replica's next ``hot_path`` reads: this is how decisions are shared), and raises an alert when the tier rose
to one whose policy says ``alert``, with this replica's evidence (``gateway.detection_evidence``). A session
is accounted once; an unscored one keeps the stored state as it was.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from detectors.engine import REASON_MIN_SCORE
from detectors.types import ResponseFeatures, Verdict
from gateway.alerts.model import Alert
from gateway.detection_evidence import address_peers
from gateway.detection_live import Live, SnapshotFailed
from gateway.hooks import DetectionOutcome, ResponseFacts
from gateway.principal import Principal
from gateway.store.base import Override, StateStore

if TYPE_CHECKING:
    from gateway.detection import GatewayDetection

MAX_ALERT_DETECTORS = 4


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
                shared, peer_scores = await det.links.link(store, cid, v.sketches)
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
                alert = dataclasses.replace(alert, address_peers=await address_peers(det.recent, store, alert))
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
        request_ids, examples, ips = det.recent.of(self._principal.client_id)
        return Alert(
            id=Alert.new_id(), ts=self._now, client=self._principal.client_id, tenant=self._principal.tenant,
            tier=det.policy.tier(tier).name, tier_index=tier,
            previous_tier=det.policy.tier(prior).name, score=v.score, reasons=v.reasons,
            detectors=tuple(name for name, _ in strong[:MAX_ALERT_DETECTORS]), request_ids=request_ids,
            examples=examples, cluster=cluster, cluster_score=cluster_score, unscored=v.unscored, ips=ips,
        )
