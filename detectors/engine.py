"""The detection engine: one object the gateway (and ``ipgate replay``) drives, request by request.

Public API (stable; the gateway codes against exactly this)::

    from detectors.engine import Engine, DetectorSettings
    from detectors.combiner import CombinerParams, TierThresholds, default_combiner_path
    from detectors.features import extract
    from detectors.types import RequestFeatures, ResponseFeatures, Verdict, Observation, LinkResult

    params = CombinerParams.from_json(default_combiner_path().read_text())      # the caller does the I/O
    engine = Engine.from_params(params, detectors={"timing": DetectorSettings(enabled=False)})
    feats = extract("/v1/chat/completions", body, ts=now)                        # cheap, pure
    obs = engine.observe(stored_state_or_None, feats, now)                       # Observation
    obs.verdict.score / .tier / .reasons / .detector_scores / .sketches / .errors / .unscored / .own_score / .weights
    state = engine.observe_response(obs.state, ResponseFeatures(...), now)       # bytes
    shared = await store.link_sketches(client_id, obs.verdict.sketches, ttl)      # gateway side
    link = engine.apply_links(state, shared, now, peer_scores={peer: score})      # LinkResult
    engine.peek(state, now)                                                       # Verdict, no request
    app = engine.weights_for({"templates": 0.0})    # a detection profile: other combiner weights, same state
    engine.observe(state, feats, now, weights=app)  # (fold_request, replay_request and peek take it too)
    engine.set_profiles({"apps": {"templates": 0.0}})  # profiles per plan (limit class)
    engine.observe(state, feats, now, plan="apps")  # the plan is recorded in the state; the client is judged by
                                                    # the strictest of every plan recorded (detectors.profiles)

    # the same, with serialisation moved off the request path (what the gateway does):
    verdict, pending = engine.observe_pending(stored_state_or_None, feats, now)  # Verdict, Pending
    state = engine.observe_response(pending, ResponseFeatures(...), now)         # bytes (pending used up)
    state = engine.encode(pending)                                               # ... or bytes, no response

    # one decoded working copy folded in place across a client's overlapping requests (gateway/detection_live.py)
    pending = engine.open(stored_state_or_None)                                  # Pending
    verdict = engine.fold_request(pending, feats, now)                           # pending.read: feats as read
    engine.fold_response(pending, ResponseFeatures(...), now)                    # in place
    linked, cluster_score = engine.fold_links(pending, shared, now, peer_scores)
    state = engine.snapshot(pending)                                             # bytes; pending stays usable
    engine.replay_request(other_pending, pending.read, now)                      # the same evidence elsewhere
    engine.retire(pending, state)                                                # done: cached for ``state``

``peer_scores`` should be the peers' *own* scores (``Verdict.own_score``) where the caller has them; stored
scores that already include inheritance also work (inheritance shrinks by 0.9 per hop, so it cannot
ratchet up), they only let a cluster's score travel one hop further.

Rules: every method is pure CPU and never raises on bad state bytes (garbage or a newer format starts the
client fresh, logged once). A detector that raises is logged once per detector name, reported in
``Verdict.errors`` and left out of the score (``Verdict.unscored`` is then True); the caller's fail policy
decides what an unscored request means. State bytes stay under ``STATE_BUDGET_BYTES`` (32 KiB); each
detector declares its own bound and ``from_params`` refuses a set whose bounds exceed the budget.

``observe_pending`` returns the client's state still decoded (a ``Pending``) instead of bytes; handing it to
``observe_response`` (or ``encode``) serialises it once, after the response. The results are identical to
``observe`` followed by ``observe_response`` on its bytes: ``observe`` keeps exactly these decoded objects in
its cache and the next step finds them there. A ``Pending`` is used once (a second use raises ValueError).

Unknown detector names in ``detectors`` (and unknown keys in a detector's ``params``) raise ValueError at
construction, i.e. at start-up, never per request.

Layout: ``Engine`` (this module) builds the detector set and folds each request into a verdict; its bases hold
the rest: ``detectors.state_codec.StateCodec`` (state bytes <-> decoded objects, the decoded-state cache, the
``Pending`` working copy) and ``detectors.late_fold.LateFold`` (the response and the links, after the verdict).
``detectors.turns`` decides which user turn of a chat request the detectors read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors import state as envelope
from detectors.base import AnyDetector
from detectors.combiner import CombinerParams, TierState, TierThresholds, next_tier
from detectors.decoded_cache import DecodedCache
from detectors.late_fold import LateFold
from detectors.linking import CrossAccountLinking
from detectors.profiles import PLANS, Profiles, decode_plans, record_plan
from detectors.registry import DEFAULT_ENABLED, REGISTRY
from detectors.state_codec import DECODED_CACHE, Pending, declared_state_bytes
from detectors.turns import read_turn
from detectors.types import (
    STATE_BUDGET_BYTES,
    DetectorScore,
    Observation,
    RequestFeatures,
    Verdict,
)

log = logging.getLogger(__name__)

#: Detector scores below this do not produce reasons (they are noise, not evidence).
REASON_MIN_SCORE = 0.3
MAX_REASONS = 6
INHERIT_FLOOR = 0.1  # own score a linked client needs before it inherits its cluster's score


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Per-detector configuration (mirrors ``gateway.config.DetectorToggle``)."""

    enabled: bool = True
    weight: float | None = None  # None: the fitted combiner weight
    params: Mapping[str, Any] = field(default_factory=dict)


class Engine(LateFold):
    """Scores a client's request stream; holds no per-client data itself (that lives in the state bytes)."""

    def __init__(
        self, params: CombinerParams, detectors: list[AnyDetector], weights: Mapping[str, float],
        tiers: TierThresholds, inherit: float,
    ) -> None:
        self.params = params
        self.detectors = detectors
        self.weights = dict(weights)
        self.tiers = tiers
        self.inherit = inherit
        self.inherit_floor = INHERIT_FLOOR
        #: detection profiles per plan (``set_profiles``); None: every plan is judged with ``weights``
        self.profiles: Profiles | None = None
        self._linker = next((d for d in detectors if isinstance(d, CrossAccountLinking)), None)
        self._link_only = frozenset({self._linker.name}) if self._linker else frozenset()
        self._response_only = frozenset(d.name for d in detectors if getattr(d, "wants_response", False))
        self._loaders = [(d.name, d.load, d.new_state) for d in detectors]
        self._sidecars = [(d.name, d.sidecar, d.load_sidecar, d.dump_sidecar)  # type: ignore[attr-defined]
                          for d in detectors if getattr(d, "sidecar", None)]
        self._logged_errors: set[str] = set()
        self._logged_bad_state = False
        #: States (envelopes or detector blobs) found unreadable and started fresh; for a metric.
        self.state_errors = 0
        #: Per detector: exceptions raised after the verdict (folding a response, linking), which no
        #: ``Verdict.errors`` carries; for a metric (the caller exports the increase).
        self.late_errors: dict[str, int] = {}
        # Decoded states of recently seen clients, keyed by the exact bytes they serialise to. When the
        # store hands back the bytes this engine wrote last, decoding is skipped (about a third of the
        # per-request cost). An entry is popped when used, so two requests never share mutable state, and
        # bytes written by another replica simply miss. Looked up through a short fingerprint, so a miss (and
        # a hit on bytes Redis handed back as a new object) hashes no 7 KB (``detectors.decoded_cache``).
        # Not thread-safe: one engine per event loop.
        self._decoded: DecodedCache[tuple[envelope.Envelope, dict[str, Any]]] = DecodedCache()
        self.cache_size = DECODED_CACHE

    @classmethod
    def from_params(
        cls,
        params: CombinerParams,
        detectors: Mapping[str, DetectorSettings] | None = None,
        tiers: TierThresholds | None = None,
        inherit: float = 0.9,
    ) -> Engine:
        """Build the engine; ``detectors`` enables/weights/parameterises detectors by registry name.

        ``inherit`` is the share of its cluster's score a linked client inherits (see ``apply_links``).
        """
        settings = dict(detectors or {})
        unknown = sorted(set(settings) - set(REGISTRY))
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; known: {sorted(REGISTRY)}")
        built: list[AnyDetector] = []
        weights: dict[str, float] = {}
        for name, factory in REGISTRY.items():
            s = settings.get(name, DetectorSettings(enabled=name in DEFAULT_ENABLED))
            if not s.enabled:
                continue
            kwargs = dict(s.params)
            if getattr(factory, "uses_reference", False):
                kwargs.setdefault("reference", params.reference)
            try:
                built.append(factory(**kwargs))
            except TypeError as e:
                raise ValueError(f"detector {name!r}: bad params {dict(s.params)}: {e}") from e
            weights[name] = params.weights.get(name, 0.0) if s.weight is None else float(s.weight)
            if not math.isfinite(weights[name]):  # inf x a score of 0 is NaN: the combiner would read 0
                raise ValueError(f"detector {name!r}: weight must be a finite number, got {weights[name]}")
        if not 0.0 <= inherit <= 1.0:  # the stored score must stay in [0, 1] (``state.decode`` checks it)
            raise ValueError(f"inherit must lie in [0, 1], got {inherit}")
        budget = declared_state_bytes(built)
        if budget > STATE_BUDGET_BYTES:
            raise ValueError(f"detector state bounds sum to {budget} bytes > {STATE_BUDGET_BYTES}")
        return cls(params, built, weights, tiers or params.tiers, inherit)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.detectors)
    def _fail(self, name: str, e: BaseException) -> None:
        if name not in self._logged_errors:
            self._logged_errors.add(name)
            log.error("detector %s raised; its score is left out (logged once): %r", name, e, exc_info=e)

    # -- scoring ---------------------------------------------------------------------------------------
    def _verdict(
        self, env: envelope.Envelope, results: list[DetectorScore], errors: list[str], now: float, seen: int,
        hold: bool = False, weights: Mapping[str, float] | None = None,
    ) -> Verdict:
        if weights is None:
            # the strictest profile of the plans the state records (``detectors.profiles``)
            weights = self.weights if self.profiles is None else self.profiles.weights(env.blobs.get(PLANS))
        scores = {r.name: r.score for r in results}
        own = self.params.combine(scores, weights)
        # Linking escalates, it never convicts on its own: only a client whose own traffic already carries
        # some evidence (own score >= INHERIT_FLOOR, ten times an ordinary client's ~0.01) inherits its
        # cluster's score, so no account is flagged purely by association.
        inherited = self.inherit * env.cluster_score if own >= self.inherit_floor else 0.0
        score = max(own, inherited)
        ts = TierState(env.tier, env.below_since)
        next_tier(ts, score, now, env.last_ts, seen, self.tiers)
        if not hold:  # ``hold``: the evidence counts, the client's tier stays where it was (an allow override)
            env.tier, env.below_since = ts.tier, ts.below_since
        env.last_score = score
        env.max_score = max(env.max_score, score)
        # Only strong, weighted detectors give reasons: filtered first, then ranked (a stable sort of the
        # filtered list is the filtered stable sort, so the order is the same; usually nothing is left to sort).
        strong = [r for r in results if r.score >= REASON_MIN_SCORE and weights.get(r.name, 0.0) > 0]
        if len(strong) > 1:
            strong.sort(key=lambda r: weights.get(r.name, 0.0) * r.score, reverse=True)
        reasons: list[str] = []
        for r in strong:
            reasons.extend(r.reasons)
        if inherited > own:
            reasons.insert(0, f"linked to an account cluster scoring {env.cluster_score:.2f}")
        sketches: tuple[int, ...] = ()
        for r in results:
            if r.sketches:  # only the templates detector contributes, and only for hot templates
                sketches += r.sketches
        # positional (the field order of ``Verdict``): keyword passing costs a third more per frozen instance
        return Verdict(
            score, ts.tier, tuple(reasons[:MAX_REASONS]), scores, sketches, tuple(errors), bool(errors), seen,
            env.cluster_score, own, weights,
        )

    def observe(self, state: bytes | None, feats: RequestFeatures, now: float,
                weights: Mapping[str, float] | None = None, plan: str | None = None) -> Observation:
        """Fold one request into the client's state and judge the client (``weights``, ``plan``: see
        ``fold_request``)."""
        verdict, pending = self.observe_pending(state, feats, now, weights, plan)
        return Observation(verdict, self.encode(pending))

    def observe_pending(self, state: bytes | None, feats: RequestFeatures, now: float,
                        weights: Mapping[str, float] | None = None, plan: str | None = None
                        ) -> tuple[Verdict, Pending]:
        """``observe`` without serialising: the verdict now, the state as a ``Pending`` to finish later."""
        pending = self.open(state)
        return self.fold_request(pending, feats, now, weights=weights, plan=plan), pending

    def weights_for(self, overrides: Mapping[str, float]) -> dict[str, float]:
        """The combiner weights with ``overrides`` (detector name -> weight) applied: a *detection profile*,
        e.g. a plan whose clients are known template applications (``{"templates": 0}``). Only the weights
        change, so every profile reads and writes the same state. Raises ValueError for a detector that is
        not enabled (or unknown) and for a weight that is not a finite number."""
        out = dict(self.weights)
        for name, w in overrides.items():
            if name not in out:
                raise ValueError(f"detector {name!r} is not enabled here; enabled: {sorted(out)}")
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
                raise ValueError(f"detector {name!r}: weight must be a finite number, got {w!r}")
            out[name] = float(w)
        return out

    def set_profiles(self, by_plan: Mapping[str, Mapping[str, float]]) -> None:
        """Install the detection profiles per plan (plan -> ``weights_for`` overrides, or full weights): a
        request folded with its ``plan`` is recorded under it, and every verdict without explicit ``weights``
        judges the client by the strictest profile of the plans its state records (``detectors.profiles``).
        Raises ValueError naming the plan, as ``weights_for`` does; no profiles: every plan gets ``weights``."""
        built: dict[str, dict[str, float]] = {}
        for plan, overrides in by_plan.items():
            try:
                built[plan] = self.weights_for(overrides)
            except ValueError as e:
                raise ValueError(f"{plan}: {e}") from e
        self.profiles = Profiles(self.weights, built) if built else None

    def judged_by(self, state: bytes | None) -> tuple[tuple[str, ...], bool, dict[str, float]]:
        """(the plans ``state`` records, whether the record overflowed, the weights the client is judged with):
        the admin API's view of a stored state (decoded apart: the request path's cache is left alone)."""
        try:
            record = envelope.decode(state).blobs.get(PLANS) if state else None
        except ValueError:  # unreadable: the engine starts such a client afresh, with no plans recorded
            record = None
        plans, overflow = decode_plans(record)
        return plans, overflow, dict(self.weights if self.profiles is None else self.profiles.weights(record))

    # -- a state kept decoded across overlapping requests (the gateway's working copy) ---------------------
    # A client's requests overlap (a harvester runs many at once): each must be folded into the *same* state,
    # or all but one of the overlapping requests' evidence is lost when their states are saved. The gateway
    # keeps one decoded ``Pending`` per client while its requests are in flight and folds each step into it in
    # place; ``snapshot`` serialises it without giving it up. Every step is the one ``observe_pending`` /
    # ``observe_response`` / ``apply_links`` take, so a client whose requests do not overlap is scored exactly
    # as before. ``replay_request`` folds a request again into another state (the store's newer copy written
    # by another replica) with the evidence it gave the first time: the turn drawn then, no new draw.

    def fold_request(self, pending: Pending, feats: RequestFeatures, now: float, hold: bool = False,
                     weights: Mapping[str, float] | None = None, plan: str | None = None) -> Verdict:
        """Fold one request into ``pending`` in place; the verdict on the client with it. ``hold``: the
        request's evidence is folded in but the client's tier is left where it was (the verdict still says
        the tier the evidence gives): an administrator's ``allow`` is in force. ``weights``: the combiner
        weights this request is judged with (``weights_for``; None: the strictest profile of the plans the state
        records, see ``set_profiles``, else the engine's own); every detector still folds its evidence in, so a
        client judged under another profile later finds all of it. ``plan``: the plan (limit class) of the
        credential the request came with, recorded in the state first (``detectors.profiles``)."""
        env, states = pending._live()
        text = None
        if feats.turn_crc or feats.history:  # history with an empty last turn ("" or an image only) is read too
            feats, text = read_turn(env, feats)
        pending.text, pending.read = text, feats
        return self._fold(env, states, feats, now, hold, weights, plan)

    def replay_request(self, pending: Pending, read: RequestFeatures, now: float, hold: bool = False,
                       weights: Mapping[str, float] | None = None, plan: str | None = None) -> None:
        """Fold a request already folded elsewhere into ``pending``: ``read`` is that fold's ``Pending.read``
        (the turn it drew stays drawn; the memory of last turns learns the same turn), ``plan`` its plan."""
        env, states = pending._live()
        if read.turn_crc or read.history:
            read_turn(env, dataclasses.replace(read, history=()) if read.history else read)
        self._fold(env, states, read, now, hold, weights, plan)

    def _fold(self, env: envelope.Envelope, states: dict[str, Any], feats: RequestFeatures, now: float,
              hold: bool = False, weights: Mapping[str, float] | None = None, plan: str | None = None) -> Verdict:
        if plan is not None:  # recorded before the verdict: this request is judged with its own plan too
            blobs = env.blobs
            old = blobs.get(PLANS)
            new = record_plan(old, plan)
            if new is not old:
                blobs[PLANS] = new
        results: list[DetectorScore] = []
        errors: list[str] = []
        for d in self.detectors:
            try:
                results.append(_checked(d.observe(states[d.name], feats, now)))
            except Exception as e:
                self._fail(d.name, e)
                errors.append(d.name)
                states[d.name] = d.new_state()
        env.requests_seen += 1
        verdict = self._verdict(env, results, errors, now, env.requests_seen, hold, weights)
        env.last_ts = max(env.last_ts, now)
        return verdict

    def peek(self, state: bytes | None, now: float, weights: Mapping[str, float] | None = None) -> Verdict:
        """The verdict the stored state implies now (no request folded in; counters not decayed)."""
        env, states = self._open(state)
        results: list[DetectorScore] = []
        errors: list[str] = []
        for d in self.detectors:
            try:
                results.append(_checked(d.score(states[d.name], now)))
            except Exception as e:
                self._fail(d.name, e)
                errors.append(d.name)
        return self._verdict(env, results, errors, now, env.requests_seen, weights=weights)


def _checked(r: DetectorScore) -> DetectorScore:
    """A detector's result, refused (as if it had raised) unless its score is a number in [0, 1]: a NaN
    score would make the combiner's logit NaN, which it maps to 0 for the *whole* client."""
    if not 0.0 <= r.score <= 1.0:  # False for NaN; a non-number raises TypeError (also a failure)
        raise ValueError(f"detector {r.name!r} returned the score {r.score!r}, not a number in [0, 1]")
    return r
