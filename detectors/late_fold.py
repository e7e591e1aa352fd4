"""The steps after the verdict: the upstream's response and the cross-account links, folded into the state.

``LateFold`` is the part of ``detectors.engine.Engine`` that folds what arrives once the request was judged:
the response (usage, finish reasons, logprobs served) into the detectors that declare ``wants_response``, and
``StateStore.link_sketches``' answer into the linking detector and the client's cluster score. A detector
that raises here is reported by no verdict: it is counted in ``late_errors`` for the caller to export.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from detectors import state as envelope
from detectors.base import ramp
from detectors.linking import CrossAccountLinking
from detectors.state_codec import Pending, StateCodec
from detectors.types import LinkResult, ResponseFeatures


class LateFold(StateCodec):
    """Folding responses and links (a base of ``Engine``; ``Engine.__init__`` sets the attributes)."""

    _linker: CrossAccountLinking | None
    _link_only: frozenset[str]
    _response_only: frozenset[str]
    late_errors: dict[str, int]
    _fail: Callable[[str, BaseException], None]  # ``Engine._fail``: logs a detector's failure once

    def observe_response(self, state: bytes | Pending, resp: ResponseFeatures, now: float) -> bytes:
        """Fold the upstream's answer (usage, finish reasons, logprobs served) into the state."""
        only = self._response_only
        dirty: frozenset[str] | None = only
        if isinstance(state, Pending):
            parent = state.parent
            env, states = state.take()
            dirty = None  # nothing of this state was serialised yet
        else:
            parent = state or None
            env, states = self._open(state, only)
        for d in self.detectors:
            # Only the detectors that declare ``wants_response`` read the response (on a cache hit
            # ``states`` holds every detector; the others' ``observe_response`` is a no-op by contract).
            if d.name not in only or d.name not in states:
                continue
            try:
                d.observe_response(states[d.name], resp, now)
            except Exception as e:
                self._fail_late(d.name, e)
        return self._close(env, states, dirty, parent)

    def apply_links(
        self, state: bytes, shared: Mapping[str, int], now: float,
        peer_scores: Mapping[str, float] | None = None,
    ) -> LinkResult:
        """Fold ``StateStore.link_sketches``' answer (peer -> sketches shared) into the state.

        Peers whose accumulated shared count reaches the linking detector's threshold are "linked"; the
        cluster score is the highest ``peer_scores`` value among the linked peers the caller knows (replay
        knows all; the gateway reads this request's sharers), raised towards 1 by up to half the remaining
        distance as the number of linked peers grows from 3 to 12 (a large cluster is hydra evidence in
        itself), kept until the next update and reset when no peer is linked any more; the client inherits
        ``inherit`` x that score.
        """
        env, states = self._open(state, self._link_only)
        if self._linker is None:
            return LinkResult(state, (), 0.0)
        try:
            linked = self._linker.fold_links(states[self._linker.name], shared, now)
        except Exception as e:
            self._fail_late(self._linker.name, e)
            return LinkResult(state, (), env.cluster_score)
        self._cluster(env, linked, peer_scores)
        return LinkResult(self._close(env, states, self._link_only), linked, env.cluster_score)

    def _link(
        self, env: envelope.Envelope, states: dict[str, Any], shared: Mapping[str, int], now: float,
        peer_scores: Mapping[str, float] | None,
    ) -> tuple[tuple[str, ...], float]:
        if self._linker is None:
            return (), 0.0
        try:
            linked = self._linker.fold_links(states[self._linker.name], shared, now)
        except Exception as e:
            self._fail_late(self._linker.name, e)
            return (), env.cluster_score
        self._cluster(env, linked, peer_scores)
        return linked, env.cluster_score

    def _cluster(self, env: envelope.Envelope, linked: tuple[str, ...], peer_scores: Mapping[str, float] | None
                 ) -> None:
        if not linked:
            env.cluster_score = 0.0
        elif peer_scores is not None:
            # Only peers whose score the caller knows count; a linked peer missing from ``peer_scores`` (the
            # gateway reads the scores of this request's sharers only) leaves the cluster score as it was.
            # Scores outside [0, 1] (or NaN) are not scores: clamped, so the cluster score stays one too.
            known = [_unit(peer_scores[p]) for p in linked if p in peer_scores]
            if known:
                # The cluster is as suspicious as its most suspicious member, and a large cluster is itself
                # evidence (hydra): up to half of the remaining distance to 1 as the links grow from 3 to 12.
                best = max(known)
                env.cluster_score = best + (1.0 - best) * 0.5 * ramp(len(linked), 3.0, 12.0)

    def fold_response(self, pending: Pending, resp: ResponseFeatures, now: float) -> None:
        """``observe_response`` in place."""
        _, states = pending._live()
        for d in self.detectors:
            if d.name not in self._response_only:
                continue
            try:
                d.observe_response(states[d.name], resp, now)
            except Exception as e:
                self._fail_late(d.name, e)

    def fold_links(
        self, pending: Pending, shared: Mapping[str, int], now: float,
        peer_scores: Mapping[str, float] | None = None,
    ) -> tuple[tuple[str, ...], float]:
        """``apply_links`` in place: (the linked peers, the cluster score)."""
        env, states = pending._live()
        return self._link(env, states, shared, now, peer_scores)

    def _fail_late(self, name: str, e: BaseException) -> None:
        """A detector (or the linker) raised after the request was judged (response, links): no verdict
        reports it, so it is counted here for the caller to export (``late_errors``)."""
        self.late_errors[name] = self.late_errors.get(name, 0) + 1
        self._fail(name, e)


def _unit(x: float) -> float:
    """``x`` clamped to [0, 1]; NaN (or anything not comparable as a float) reads as 0."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return 0.0
    return min(max(x, 0.0), 1.0) if x == x else 0.0
