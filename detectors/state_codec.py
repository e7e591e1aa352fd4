"""A client's state between its bytes and the engine's decoded objects: ``Pending`` and ``StateCodec``.

``StateCodec`` is the part of ``detectors.engine.Engine`` that decodes the stored bytes into the envelope and
the detectors' state objects (``_open``), serialises them again (``_close``), keeps recently written states
decoded (the decoded-state cache) and hands out the working copy (``open`` / ``encode`` / ``snapshot`` /
``retire``). ``Engine.__init__`` sets the attributes it reads. Never raises on bad state bytes: garbage or a
newer format starts the client's evidence fresh, logged once, at the tier the bytes hold (``state.header_tier``,
clamped to the configured maximum): another build's or configuration's replica may have raised it, and a reader
that cannot decode the rest must not lower it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from detectors import state as envelope
from detectors.base import AnyDetector
from detectors.combiner import TierThresholds
from detectors.decoded_cache import DecodedCache
from detectors.profiles import PLANS, PLANS_BYTES
from detectors.turns import TURN_MEMORY, TURNS
from detectors.types import RequestFeatures

log = logging.getLogger(__name__)

DECODED_CACHE = 2048  # clients whose decoded state is kept between requests (~16 KB each: ~32 MB when full)


class Pending:
    """A client's state after ``Engine.observe_pending``, still decoded (engine-internal objects).

    Hand it to ``Engine.observe_response`` or ``Engine.encode`` exactly once; it is mutable state of one
    request and must not be shared."""

    __slots__ = ("_env", "_states", "parent", "read", "text")

    def __init__(self, env: envelope.Envelope, states: dict[str, Any], parent: bytes | None = None,
                 text: str | None = None) -> None:
        self._env: envelope.Envelope | None = env
        self._states = states
        self.parent = parent  # the stored bytes this state was derived from (the decoded cache's supersession)
        # the history turn the detectors read instead of the last turn (``detectors.turns.read_turn``); None:
        # the last turn. Alert evidence quotes it: the last turn of a made-up conversation is the harmless
        # cover ("Go ahead.")
        self.text = text
        # the last request folded in, as the detectors read it (the drawn turn, if any): what
        # ``replay_request`` folds into another state to give the same evidence without drawing again
        self.read: RequestFeatures | None = None

    def tier_score(self) -> tuple[int, float]:
        """The tier and score of the state as it is now (what a save stores beside it)."""
        env, _ = self._live()
        return env.tier, env.last_score

    def _live(self) -> tuple[envelope.Envelope, dict[str, Any]]:
        if self._env is None:
            raise ValueError("this Pending state was already used")
        return self._env, self._states

    def take(self) -> tuple[envelope.Envelope, dict[str, Any]]:
        env, self._env = self._env, None
        if env is None:
            raise ValueError("this Pending state was already used")
        return env, self._states


class StateCodec:
    """The engine's state (de)serialisation and its decoded-state cache (a base of ``Engine``)."""

    # set by ``Engine.__init__``
    detectors: list[AnyDetector]
    tiers: TierThresholds
    state_errors: int
    cache_size: int
    _loaders: list[tuple[str, Callable[[bytes], Any], Callable[[], Any]]]
    # detectors that keep part of their state in an envelope blob of their own: (detector name, blob name, load
    # into the state, dump from it). A build that does not know the blob drops it and reads the rest as before.
    _sidecars: list[tuple[str, str, Callable[[Any, bytes], None], Callable[[Any], bytes]]]
    _logged_bad_state: bool
    _decoded: DecodedCache[tuple[envelope.Envelope, dict[str, Any]]]

    def _open(
        self, data: bytes | None, only: frozenset[str] | None = None
    ) -> tuple[envelope.Envelope, dict[str, Any]]:
        """Decode the envelope and the named detectors' states (all when ``only`` is None); the other
        blobs stay raw bytes and are written back untouched by ``_close``."""
        if data:
            hit = self._decoded.take(data)
            if hit is not None:
                return hit
        env = envelope.Envelope()
        if data:
            try:
                env = envelope.decode(data)
                if env.tier > self.tiers.max_tier:
                    # A bit flip, or state written under a configuration with more tiers: next_tier would
                    # index past the thresholds (an IndexError out of observe).
                    raise ValueError(f"tier {env.tier} > the configured maximum {self.tiers.max_tier}")
            except ValueError as e:
                # The evidence starts afresh, the tier does not: a state written by a later build (another
                # envelope version) or under more tiers (a refitted combiner on another replica) raised it
                # there, and the save after this request stores the tier it holds (a throttled or blocked
                # client was back at tier 0 after one request here).
                env = envelope.Envelope(tier=min(envelope.header_tier(data), self.tiers.max_tier))
                self.state_errors += 1
                if not self._logged_bad_state:
                    log.warning("detector state unreadable, starting the client's evidence fresh at its stored "
                                "tier: %s", e)
                    self._logged_bad_state = True
        states: dict[str, Any] = {}
        blobs = env.blobs
        for name, load, new_state in self._loaders:  # bound methods resolved once (the cold path runs this)
            if only is not None and name not in only:
                continue
            blob = blobs.get(name)
            try:
                states[name] = load(blob) if blob else new_state()
            except Exception as e:  # ValueError by contract; anything else from a parser bug is garbage too
                self.state_errors += 1
                log.warning("detector %s: state unreadable, starting fresh: %s", name, e)
                states[name] = new_state()
        for name, side, load_side, _ in self._sidecars:
            part = blobs.get(side)
            if part and name in states:
                try:
                    load_side(states[name], part)
                except ValueError as e:
                    self.state_errors += 1
                    log.warning("detector %s: %s unreadable, starting it empty: %s", name, side, e)
        return env, states

    def _close(
        self, env: envelope.Envelope, states: Mapping[str, Any], dirty: frozenset[str] | None = None,
        parent: bytes | None = None, cache: bool = True,
    ) -> bytes:
        """Serialise. Only the ``dirty`` detectors' states (all when None) are dumped again; every other
        blob is written back as it was. That is exact: a blob in ``env.blobs`` is either the raw blob the
        state was loaded from (not in ``states``) or, after a cache hit, the dump of that very state object,
        which a step that leaves the detector clean has not touched (``observe_response`` touches the
        response detectors only, ``apply_links`` the linker only). Saves re-dumping ~7 KB per step."""
        old = env.blobs
        env.blobs = {
            d.name: d.dump(states[d.name])
            if d.name in states and (dirty is None or d.name in dirty or d.name not in old)
            else old.get(d.name, b"")
            for d in self.detectors
        }
        turns = old.get(TURNS)
        if turns is not None:  # the memory of the client's last turns (``detectors.turns``), kept as it is
            env.blobs[TURNS] = turns
        plans = old.get(PLANS)
        if plans is not None:  # the plans the client was seen with (``detectors.profiles``), kept as they are
            env.blobs[PLANS] = plans
        for name, side, _, dump_side in self._sidecars:  # dumped with their detector, else kept as they were
            part = dump_side(states[name]) if name in states and (dirty is None or name in dirty or name not in old) \
                else old.get(side, b"")
            if part:
                env.blobs[side] = part
        data = envelope.encode(env)
        if cache and self.cache_size and len(states) == len(self.detectors):
            self._decoded.put(data, (env, dict(states)), self.cache_size, parent)
        return data

    def encode(self, pending: Pending) -> bytes:
        """Serialise a ``Pending`` state (and remember it decoded, keyed by the bytes)."""
        env, states = pending.take()
        return self._close(env, states, parent=pending.parent)

    def open(self, state: bytes | None) -> Pending:
        """The client's state decoded (from the cache when these are the bytes this engine wrote last)."""
        env, states = self._open(state)
        return Pending(env, states, state or None)

    def snapshot(self, pending: Pending) -> bytes:
        """The bytes of ``pending`` as it is now; it stays usable (and is not cached: it will change)."""
        env, states = pending._live()
        return self._close(env, states, cache=False)

    def retire(self, pending: Pending, data: bytes) -> None:
        """Give up ``pending``, whose state is exactly ``data`` (its last ``snapshot``, nothing folded since):
        kept decoded for the next request whose stored bytes are ``data``."""
        env, states = pending.take()
        if self.cache_size and len(states) == len(self.detectors):
            self._decoded.put(data, (env, dict(states)), self.cache_size, pending.parent)


def declared_state_bytes(detectors: Iterable[AnyDetector]) -> int:
    """The largest state the engine can write with these detectors: the envelope header, each detector's
    declared bound with its name field, the memory of last turns and the record of plans."""
    sides = 0
    for d in detectors:
        side: str | None = getattr(d, "sidecar", None)
        if side:
            sides += int(getattr(d, "sidecar_bytes", 0)) + 3 + len(side)
    return (64 + sum(d.state_bytes + 3 + len(d.name) for d in detectors) + TURN_MEMORY * 4 + 3 + len(TURNS) + sides
            + PLANS_BYTES + 3 + len(PLANS))

