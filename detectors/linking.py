"""Cross-account linking (hydra / Sybil campaigns), Blacklight-style.

One account-agnostic table maps prompt sketches to the accounts that sent them. Only sketches of a
client's *hot* templates go in (see ``detectors.templates``), so one-off human prompts leave no trace and
common phrasings are filtered by the benign reference's stop list. When a client adds sketches, the table
answers which other accounts already hold them and how many; a client accumulates those counts per peer
(decayed with a one-day half-life), counting only requests that share at least ``min_shared`` sketches with
that peer (after scaling down requests shared with more than ``fanout`` accounts: common phrasings), and is
*linked* to a peer once the count reaches ``link_min``.

Two places keep the table: ``LinkIndex`` below (in memory, for ``ipgate replay`` and tests) and, in the
gateway, ``StateStore.link_sketches`` (shared by every replica). Both answer the same question with the
same semantics: ``add(client, sketches) -> {other client: number of these sketches it also sent}``.

The detector's own score grows with the number of linked peers and is reported (``detector_scores``), but
the shipped combiner gives it weight 0: a link is not evidence by itself (ordinary users share phrasings).
What acts is the *cluster* score - the best *own* score among linked peers - which every member inherits
(x 0.9) through ``Engine.apply_links``: one exposed member flags the campaign, a cluster of ordinary users
stays as quiet as its loudest member.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import ClassVar

from detectors.base import ramp, time_decay
from detectors.state import MAX_TS
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

MAX_PEERS = 16
MAX_ID_BYTES = 200
LINK_HALF_LIFE_S = 24 * 3600.0
_HEAD, _TS = struct.Struct("<dB"), struct.Struct("<d")
MAX_SHARED = 1e6  # cap on one peer's accumulated shared-sketch count (real ones stay in the tens)


def _id_bytes(peer: str) -> int:
    """UTF-8 length of a peer id; 0 (skipped) for one that has none (a lone surrogate, e.g. from a trace's
    ``"\\ud800"`` escape): it could not be stored, and ``encode()`` raising dropped all of the request's
    links."""
    try:
        return len(peer.encode())
    except UnicodeEncodeError:
        return 0


class LinkIndex:
    """In-memory sketch table with the ``StateStore.link_sketches`` semantics (bounded per sketch)."""

    def __init__(self, max_members: int = 64, ttl_s: float = 7 * 24 * 3600.0) -> None:
        self.max_members = max_members
        self.ttl_s = ttl_s
        self._table: dict[int, OrderedDict[str, float]] = {}

    def add(self, client: str, sketches: Iterable[int], now: float) -> dict[str, int]:
        shared: dict[str, int] = {}
        for sk in set(sketches):
            members = self._table.setdefault(sk, OrderedDict())
            for other, ts in list(members.items()):
                if now - ts > self.ttl_s:
                    del members[other]
                elif other != client:
                    shared[other] = shared.get(other, 0) + 1
            members[client] = now
            members.move_to_end(client)
            while len(members) > self.max_members:
                members.popitem(last=False)
        return shared

    def __len__(self) -> int:
        return len(self._table)


class LinkState:
    __slots__ = ("last_ts", "peers")

    def __init__(self) -> None:
        self.last_ts = 0.0
        self.peers: dict[str, float] = {}


class CrossAccountLinking:
    name: ClassVar[str] = "linking"
    state_bytes: ClassVar[int] = 8 + 1 + MAX_PEERS * (1 + MAX_ID_BYTES + 4)
    _quiet: ClassVar[DetectorScore] = DetectorScore(name, 0.0, ())  # frozen: one shared instance

    def __init__(self, link_min: float = 4.0, min_shared: int = 1, fanout: int = 64) -> None:
        self.link_min = link_min
        self.min_shared = min_shared
        self.fanout = fanout

    def new_state(self) -> LinkState:
        return LinkState()

    def dump(self, state: LinkState) -> bytes:
        parts = [struct.pack("<dB", state.last_ts, len(state.peers))]
        for peer, count in state.peers.items():
            raw = peer.encode()
            parts.append(bytes((len(raw),)) + raw + struct.pack("<f", count))
        return b"".join(parts)

    def load(self, data: bytes) -> LinkState:
        st = LinkState()
        if len(data) == _HEAD.size and data[8] == 0:  # no peers (nearly every client): nothing else to check
            (st.last_ts,) = _TS.unpack_from(data)
            if not 0.0 <= st.last_ts <= MAX_TS:  # False for NaN
                raise ValueError(f"{self.name}: timestamp outside [0, {MAX_TS:.0f}]")
            return st
        try:
            st.last_ts, count = _HEAD.unpack_from(data, 0)
            pos = 9
            for _ in range(count):
                n = data[pos]
                peer = data[pos + 1 : pos + 1 + n].decode()
                (st.peers[peer],) = struct.unpack_from("<f", data, pos + 1 + n)
                pos += 5 + n
        except (struct.error, IndexError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.name}: malformed state: {e}") from e
        if pos != len(data) or count > MAX_PEERS:
            raise ValueError(f"{self.name}: malformed state")
        # the declared ranges: what ``fold_links`` can write (False for NaN)
        if not (0.0 <= st.last_ts <= MAX_TS and all(0.0 <= c <= MAX_SHARED for c in st.peers.values())):
            raise ValueError(f"{self.name}: timestamp or peer counts outside their declared range")
        return st

    def fold_links(self, state: LinkState, shared: Mapping[str, int], now: float) -> tuple[str, ...]:
        """Accumulate one ``link_sketches`` answer; return the peers linked now."""
        decay = time_decay(now - state.last_ts, LINK_HALF_LIFE_S) if state.last_ts else 1.0
        peers = {p: c * decay for p, c in state.peers.items() if c * decay >= 0.5}
        # A request whose sketches many accounts already hold is a common phrasing ("let's think step by
        # step"), not a campaign: its counts are scaled down by how widely they are shared (an IDF-like
        # weight), so a campaign of up to ``fanout`` accounts counts in full and a phrase used by hundreds of
        # ordinary users counts for nothing.
        weight = min(1.0, self.fanout / len(shared)) if shared else 1.0
        for peer, count in shared.items():
            # Blacklight-style per-query match: one request must share several sketches with a peer to
            # count at all; single coincidences never add up to a link.
            # Capped: a count is a number of sketches (a handful); an absurd one from the store would
            # overflow the float32 on the wire and make ``dump`` raise.
            effective = min(count * weight, MAX_SHARED)
            if effective >= self.min_shared and 0 < _id_bytes(peer) <= MAX_ID_BYTES:
                peers[peer] = min(peers.get(peer, 0.0) + effective, MAX_SHARED)
        state.peers = dict(sorted(peers.items(), key=lambda kv: -kv[1])[:MAX_PEERS])
        state.last_ts = max(state.last_ts, now)
        return self.linked(state)

    def linked(self, state: LinkState) -> tuple[str, ...]:
        return tuple(sorted(p for p, c in state.peers.items() if c >= self.link_min))

    def observe(self, state: LinkState, feats: RequestFeatures, now: float) -> DetectorScore:
        return self.score(state, now)

    def observe_response(self, state: LinkState, resp: ResponseFeatures, now: float) -> None:
        return None

    def score(self, state: LinkState, now: float) -> DetectorScore:
        if not state.peers:  # no peer (nearly every client): ``_score`` would give ramp(0, 0, 3) = 0.0, no reasons
            return self._quiet
        return self._score(state, now)

    def _score(self, state: LinkState, now: float) -> DetectorScore:
        decay = time_decay(now - state.last_ts, LINK_HALF_LIFE_S) if state.last_ts else 1.0
        linked = [p for p, c in state.peers.items() if c * decay >= self.link_min]
        s = ramp(len(linked), 0.0, 3.0)
        reasons = (f"shares prompt templates with {len(linked)} other account(s)",) if linked else ()
        return DetectorScore(self.name, s, reasons)
