"""Template harvesting: prompts that fill a few templates, and self-instruct meta-prompts.

Each prompt is reduced (after masking numbers, quotes, URLs and code) to three sketches: the hash of its
first and last 8 tokens (3 for prompts under 16 tokens; a long slot payload would otherwise dominate)
and a 16-slot MinHash of its content-word bigrams. A prompt joins a known template cluster when its head
or tail key matches (and is not a key that is common in ordinary prompts, per the benign reference) or when
at least ``min_agree`` of the 16 MinHash slots agree with the cluster's (a Jaccard estimate of ~0.2: fills
of one template share most content bigrams; two unrelated real prompts agree on 3+ slots ~0.1 % of the
time, mostly near-duplicates in the corpus). The client keeps at most ``MAX_CLUSTERS`` clusters with
decayed counts (space-saving eviction) and, per cluster, the intersection of its fills' bottom-32 token
samples (the template's skeleton, used for cross-account linking), so state is bounded at ~5 KiB (and 2 KiB
for the anchor ring below, kept in an envelope blob of its own).

Scores: the reuse ratio (share of recent prompts that matched an earlier cluster), the top-template share,
and the share of self-instruct meta-prompts. A chain-of-thought prompt that shares only a phrase with its
cluster (skeleton under ``MIN_SKELETON`` tokens) counts as ``DEMAND_PHRASE_WEIGHT`` of a fill: the demand
itself is the reasoning detector's evidence. For cross-account linking, a prompt that falls into one of
the client's *hot* clusters (seen ``hot_count`` times) contributes that cluster's keys as sketches; one-off
prompts contribute nothing, so ordinary users leave almost no trace in the shared table.

A fill wrapped in fresh padding matches nothing by those three sketches. Prompts of 64 tokens or more also
carry anchors (``detectors.anchors``: winnowed shingles, position-free); the table keeps the client's last
``RING`` anchors, and a long prompt that matches no cluster but shares at least ``needle_min`` anchors with
them is read by those recurring anchors alone (its *needle view*: a MinHash of them, no head or tail key, each
anchor standing for its 4 tokens in the skeleton), which the next fill of the same template matches. A
prompt the usual sketches match (the same document pasted with each new question, a template with a fixed
head or tail) is read exactly as before. ``needle_min: 0`` turns the anchors off (no ring is kept).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from detectors.anchors import NEEDLE_MIN, RING, needle_view
from detectors.base import F4LE, U4LE, Counters, any_of, counts_in_range, ramp, shrunk_share
from detectors.features import LONG_PROMPT, minhash_of
from detectors.reference import Reference
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures

MAX_CLUSTERS = 24
SLOTS = 16
SKEL = 32  # bottom-k token sample kept per cluster, intersected over its fills
MIN_SKELETON = 8  # fewer fixed tokens is a phrase ("let's think step by step ."), not a template: never linked
N, REUSED, META = range(3)
_ROW = 4 * (SLOTS + SKEL + 4)  # bytes per cluster: signature, skeleton, head, tail, last prompt key, count
TAG_HEAD, TAG_TAIL, TAG_SKELETON = 1, 2, 3
_NO_SIGNATURE = (0,) * SLOTS
# The template table remembers for a week of silence, not a day: a harvester that hides a campaign in a
# person's stream at human pace (a few dozen requests a day, a quarter of them template fills) would
# otherwise never accumulate more fills than an ordinary user's day holds. Per-request decay still limits
# the table to about the last ``WINDOW`` prompts, and a client that keeps sending ordinary prompts cools
# down at the same rate as before.
TEMPLATE_HALF_LIFE_S = 7 * 24 * 3600.0
# Decayed fills of one *real* template (a skeleton of at least MIN_SKELETON fixed tokens) that count as
# evidence whatever their share of the stream: 0 at 4, full at 8. Chosen on TRAIN traces, where no benign
# persona's top template reached 3 (EVALUATION.md, "Mixed traffic").
FILLS = (4.0, 8.0)
# What a chain-of-thought prompt adds to its cluster's fill count (and to the reuse ratio) when all it
# shares with the cluster is a phrase (the skeleton shrank under MIN_SKELETON tokens: "<question> Let's
# think step by step."). That demand is the reasoning detector's evidence; counting it here in full as well
# made an honest user who asks for steps on half of their prompts read as a template pipeline (all the
# benign clients flagged on TEST were such users). Half, not zero: a harvester appending one phrase to
# nearly every prompt still fills a cluster at half pace (share 0.9 -> 0.45, past both share ramps), while a
# person doing it on 20-60 % of prompts stays under them. A fill with a real skeleton (a template that also
# demands reasoning) counts in full. Chosen on TRAIN traces (seeds 7 and 23; EVALUATION.md, "Chain-of-thought
# demand phrases"). Configurable per deployment as the templates detector's ``demand_phrase_weight`` param.
DEMAND_PHRASE_WEIGHT = 0.5
_MASK63 = (1 << 63) - 1
_NO_ANCHORS = np.zeros(0, dtype=np.uint32)


def _gather(k: int) -> np.ndarray:
    """Indexes into a k-cluster table's uint32 columns as stored (k signatures, k skeletons, heads, tails,
    lasts) that read them in ``TemplateState``'s order: k rows of signature + head + tail, k skeletons, k
    lasts."""
    a, b = k * SLOTS, k * (SLOTS + SKEL)
    rows = np.arange(k)[:, None]
    keys = np.hstack((rows * SLOTS + np.arange(SLOTS), b + rows, b + k + rows))
    return np.concatenate((keys.ravel(), np.arange(a, b), np.arange(b + 2 * k, b + 3 * k))).astype(np.intp)


_GATHER = [_gather(k) for k in range(MAX_CLUSTERS + 1)]
_NATIVE_IS_U4LE = np.dtype(np.uint32) == U4LE  # little-endian host: the table's arrays are wire-ready
_COUNTS = [struct.Struct(f"<{k}f") for k in range(MAX_CLUSTERS + 1)]


def tag(kind: int, value: int) -> int:
    """An account-agnostic sketch id: kind in the top bits so head/tail/MinHash keys never collide."""
    return ((kind << 56) | (value & ((1 << 56) - 1))) & _MASK63


class TemplateState:
    """Cluster table as parallel numpy arrays (matching one prompt against all clusters is one compare).

    ``keys`` holds each cluster's MinHash signature, head key and tail key in one row (``sigs``, ``heads``
    and ``tails`` are views of it, made when asked for: the request path reads and writes ``keys`` itself),
    so that matching a prompt is one comparison of the whole table."""

    __slots__ = ("_room", "counters", "counts", "keys", "lasts", "ring", "skels")

    def __init__(self, size: int = 0) -> None:
        self.counters = Counters(3)
        self.keys = np.zeros((size, SLOTS + 2), dtype=np.uint32)  # signature, head, tail per row
        self.skels = np.zeros((size, SKEL), dtype=np.uint32)  # sorted, zero-padded
        self.lasts = np.zeros(size, dtype=np.uint32)
        self.counts = np.zeros(size, dtype=np.float64)
        # The anchors of the client's last long prompts (``detectors.anchors``), oldest first, at most RING
        self.ring = _NO_ANCHORS
        # After the first growth the columns are views of these arrays, which have room for every row.
        self._room: tuple[np.ndarray, ...] | None = None

    @property
    def sigs(self) -> np.ndarray:
        out: np.ndarray = self.keys[:, :SLOTS]
        return out

    @property
    def heads(self) -> np.ndarray:
        out: np.ndarray = self.keys[:, SLOTS]
        return out

    @property
    def tails(self) -> np.ndarray:
        out: np.ndarray = self.keys[:, SLOTS + 1]
        return out

    def __len__(self) -> int:
        return len(self.counts)

    def set_row(
        self, i: int, sig: tuple[int, ...], bottom: tuple[int, ...], last: int, head: int, tail: int,
    ) -> None:
        if i == len(self):
            self._grow()
        self.keys[i] = (*(sig + (0,) * SLOTS)[:SLOTS], head, tail)  # signature, head, tail: one row write
        self.set_skeleton(i, np.asarray(bottom[:SKEL], dtype=np.uint32))
        self.lasts[i], self.counts[i] = last, 1.0

    def remember(self, anchors: np.ndarray, kept: np.ndarray) -> None:
        """The ring becomes ``kept`` (what stays of it) followed by a long prompt's anchors, the oldest beyond
        ``RING`` dropped. The ring is never written in place (a loaded one is a view of the stored bytes)."""
        ring = np.concatenate((kept, anchors)) if len(kept) else anchors
        self.ring = ring[-RING:] if len(ring) > RING else ring

    def _grow(self) -> None:
        """Add one zero row. The first growth moves the columns into arrays with room for ``MAX_CLUSTERS`` rows
        (one copy) and makes them views of those; every later growth re-slices the views instead of
        concatenating six arrays (a table grows by one row per new prompt until it is full). The rows past
        the table's length stay zero: rows are only ever written below it."""
        k = len(self)
        room = self._room
        if room is None or k >= len(room[0]):
            cap = max(MAX_CLUSTERS, k + 1)
            room = (
                np.zeros((cap, SLOTS + 2), dtype=np.uint32), np.zeros((cap, SKEL), dtype=np.uint32),
                np.zeros(cap, dtype=np.uint32), np.zeros(cap, dtype=np.float64),
            )
            for dst, src in zip(room, (self.keys, self.skels, self.lasts, self.counts), strict=True):
                dst[:k] = src
            self._room = room
        k += 1
        self.keys = room[0][:k]
        self.skels, self.lasts, self.counts = room[1][:k], room[2][:k], room[3][:k]

    def set_skeleton(self, i: int, tokens: np.ndarray) -> None:
        self.skels[i] = 0
        self.skels[i, : len(tokens)] = tokens

    def skeleton(self, i: int) -> np.ndarray:
        row: np.ndarray = self.skels[i]
        out: np.ndarray = row[row != 0]
        return out


class Templates:
    name: ClassVar[str] = "templates"
    uses_reference: ClassVar[bool] = True
    state_bytes: ClassVar[int] = 8 + 4 * 3 + 1 + MAX_CLUSTERS * _ROW
    # The anchor ring is an envelope blob of its own (``StateCodec``'s sidecars): a build without anchors drops
    # that blob and keeps reading the cluster table, where the ring appended to the table made the whole blob
    # unreadable to it (during a rolling upgrade every older replica reset a client's template evidence).
    sidecar: ClassVar[str] = "~anchors"
    sidecar_bytes: ClassVar[int] = 4 * RING

    def __init__(
        self, reference: Reference | None = None, min_agree: int = 3, hot_count: int = 3,
        common_keys: Iterable[int] = (), half_life_s: float = TEMPLATE_HALF_LIFE_S,
        fills: tuple[float, float] = FILLS, demand_phrase_weight: float | None = None,
        needle_min: int = NEEDLE_MIN,
    ) -> None:
        w = DEMAND_PHRASE_WEIGHT if demand_phrase_weight is None else demand_phrase_weight
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"demand_phrase_weight must lie in [0, 1], got {w}")
        self.demand_phrase_weight = w
        if isinstance(needle_min, bool) or not isinstance(needle_min, int) or needle_min < 0:
            raise ValueError(f"needle_min must be an integer >= 0 (0: no anchors), got {needle_min!r}")
        # Recurring anchors that make a prompt nothing else matched read by them alone (``detectors.anchors``);
        # 0 turns the anchors off: no ring is kept, long prompts cost what they did before them.
        self.needle_min = needle_min
        self.half_life_s = half_life_s
        self.fills = fills
        self.common = frozenset(common_keys) | (reference.common_keys if reference else frozenset())
        self.min_agree = min_agree
        self.hot_count = hot_count
        # _match's row weights, by (signature compared, head compared, tail compared)
        key_weight = float(max(min_agree, SLOTS + 1))
        self._weights = {
            (sig, h, t): np.array([float(sig)] * SLOTS + [key_weight * h, key_weight * t])
            for sig in (False, True) for h in (False, True) for t in (False, True)
        }

    def new_state(self) -> TemplateState:
        return TemplateState()

    def dump(self, state: TemplateState) -> bytes:
        # The stored order: signatures, skeletons, heads, tails, lasts. The last two columns of ``keys``
        # transposed are the heads followed by the tails, so they are written with one ``tobytes``.
        keys = state.keys
        cols: list[np.ndarray] = [keys[:, :SLOTS], state.skels, keys[:, SLOTS:].T, state.lasts]
        if not _NATIVE_IS_U4LE:  # a big-endian host: the wire is little-endian
            cols = [c.astype(U4LE) for c in cols]
        sigs, skels, heads_tails, lasts = cols
        return b"".join((
            state.counters.dump(), bytes((len(state),)), sigs.tobytes(), skels.tobytes(), heads_tails.tobytes(),
            lasts.tobytes(), state.counts.astype(F4LE).tobytes(),
        ))

    def dump_sidecar(self, state: TemplateState) -> bytes:
        """The anchor ring's blob (empty while the client has sent no long prompt: no blob is written)."""
        ring = state.ring
        return (ring if _NATIVE_IS_U4LE else ring.astype(U4LE)).tobytes() if len(ring) else b""

    def load_sidecar(self, state: TemplateState, data: bytes) -> None:
        """Attach a stored anchor ring to ``state``; ``ValueError`` (the ring then stays empty) if malformed."""
        if len(data) % 4 or len(data) > self.sidecar_bytes:
            raise ValueError(f"{self.name}: malformed anchor ring ({len(data)} bytes)")
        # read-only, no copy (``remember`` replaces the ring; nothing writes into it)
        state.ring = np.frombuffer(data, U4LE) if data else _NO_ANCHORS

    def load(self, data: bytes) -> TemplateState:
        # Built field by field: ``TemplateState()`` would first allocate the zero arrays replaced here.
        st = TemplateState.__new__(TemplateState)
        st.counters = Counters.decode(data, 3)
        pos = 8 + 4 * 3
        k = data[pos] if len(data) > pos else 0xFF  # cut after the counters: malformed, not IndexError
        if k > MAX_CLUSTERS or len(data) != pos + 1 + k * _ROW:
            raise ValueError(f"{self.name}: malformed cluster table")
        pos += 1
        # One gather (``take``) makes the one writable copy of the uint32 columns, already in memory order:
        # the rows of ``keys`` (signature, head, tail: see ``TemplateState``), then the skeletons, then the
        # last prompt keys; the three are views of it. (Its dtype is the stored "<u4", which on a little-endian
        # host, i.e. every supported one, is the native uint32 the table uses.)
        u = np.frombuffer(data, U4LE, k * (SLOTS + SKEL + 3), pos).take(_GATHER[k])
        a, b = k * (SLOTS + 2), k * (SLOTS + 2 + SKEL)
        st.keys, st.skels, st.lasts = u[:a].reshape(k, SLOTS + 2), u[a:b].reshape(k, SKEL), u[b:]
        counts = _COUNTS[k].unpack_from(data, pos + 4 * k * (SLOTS + SKEL + 3))
        # Decayed counts, in their declared range (``detectors.base.COUNT_MAX``). A NaN count made the score NaN
        # (read as 0 for the client); a negative one would keep a hot template cold.
        if not counts_in_range(data, pos + 4 * k * (SLOTS + SKEL + 3), k):
            raise ValueError(f"{self.name}: cluster counts outside their declared range")
        st.counts = np.array(counts, np.float64)
        st.ring = _NO_ANCHORS  # its own blob: ``load_sidecar``
        st._room = None
        return st

    def _match(self, state: TemplateState, f: RequestFeatures, head: int, tail: int) -> int:
        return self._match_sig(state, f.minhash, head, tail)

    def _match_sig(self, state: TemplateState, minhash: tuple[int, ...], head: int, tail: int) -> int:
        """The first cluster with at least ``min_agree`` MinHash slots equal to the prompt's, or its head key,
        or its tail key (a key of 0 is not compared).

        One comparison of the whole key table and one weighted sum per row: the slots weigh 1 each and a
        head or tail match weighs ``_key_weight`` (more than 16 slots and at least ``min_agree``), so a
        row's sum reaches the threshold exactly when one of the three conditions holds. The sums are small
        integers, exact in float64."""
        if not len(state):
            return -1
        signed = len(minhash) == SLOTS
        if signed:
            q, threshold = np.array((*minhash, head, tail), dtype=np.uint32), self.min_agree
        else:  # no signature (an empty prompt): only the keys can match
            q, threshold = np.array((*_NO_SIGNATURE, head, tail), dtype=np.uint32), 1
        hit = (state.keys == q) @ self._weights[signed, head != 0, tail != 0] >= threshold
        first = int(hit.argmax())  # the first matching cluster; argmax of all-False is 0
        return first if hit[first] else -1

    def observe(self, state: TemplateState, feats: RequestFeatures, now: float) -> DetectorScore:
        factor = state.counters.advance(now, half_life_s=self.half_life_s)
        c = state.counters.c
        c[N] += 1
        if feats.meta_prompt:
            c[META] += 1
        state.counts *= factor
        sketches: tuple[int, ...] = ()
        if feats.prompt_words >= 4:
            head = feats.head_key if feats.head_key not in self.common else 0
            tail = feats.tail_key if feats.tail_key not in self.common else 0
            i = self._match_sig(state, feats.minhash, head, tail)
            sig, bottom = feats.minhash, feats.bottom
            if feats.anchors and self.needle_min:
                anchors = np.array(feats.anchors, dtype=np.uint32)  # sorted: ``winnow`` returns them so
                ring = state.ring
                if len(ring):
                    # which ring entries the prompt holds: one binary search of the ring in its sorted anchors
                    at = np.searchsorted(anchors, ring)
                    at[at == len(anchors)] = 0
                    held = anchors[at] == ring
                    recurring = ring[held]
                    if i < 0 and len(recurring) >= self.needle_min:
                        # Nothing known by its ends or its words: read it by the passages it shares with the
                        # client's last long prompts (a fill between fresh padding is its template's fixed text).
                        shingles, pseudo = needle_view(np.sort(recurring))
                        sig, bottom, head, tail = minhash_of(shingles), tuple(pseudo.tolist()), 0, 0
                        i = self._match_sig(state, sig, 0, 0)
                    # each anchor once in the ring, this prompt's all at the newest end (a recurring passage
                    # stays however long the prompts around it)
                    state.remember(anchors, ring[~held])
                else:
                    state.remember(anchors, ring)
            if i >= 0:
                # An identical prompt sent again (a regeneration) is not a template fill; only count fills
                # whose content differs from the cluster's previous prompt.
                if feats.prompt_key != int(state.lasts[i]):
                    # The tokens every fill so far contains: converges to the template's fixed part.
                    kept = sorted(set(state.skeleton(i).tolist()).intersection(bottom))
                    state.set_skeleton(i, np.asarray(kept, dtype=np.uint32))
                    w = self.demand_phrase_weight if feats.cot and len(kept) < MIN_SKELETON else 1.0
                    c[REUSED] += w
                    state.counts[i] += w
                state.lasts[i] = feats.prompt_key
                if state.counts[i] >= self.hot_count:
                    sketches = self._sketches(state, i, feats)
            else:
                j = len(state) if len(state) < MAX_CLUSTERS else int(state.counts.argmin())
                state.set_row(j, sig, bottom, feats.prompt_key, head, tail)
        out = self.score(state, now)
        return DetectorScore(self.name, out.score, out.reasons, sketches) if sketches else out

    def _sketches(self, state: TemplateState, i: int, f: RequestFeatures) -> tuple[int, ...]:
        """What a hot template contributes to the cross-account table: the hash of its skeleton (the
        tokens all its fills share, so accounts filling the same template converge on the same value) and,
        for long prompts, its head/tail keys (a 3-token key such as "step by step ." is specific inside one
        client's stream, not across thousands of accounts)."""
        keys: list[int] = []
        skeleton = state.skeleton(i)
        if len(skeleton) >= MIN_SKELETON:
            keys.append(tag(TAG_SKELETON, zlib.crc32(skeleton.astype(U4LE).tobytes())))
        if f.prompt_words >= LONG_PROMPT:
            head, tail = int(state.keys[i, SLOTS]), int(state.keys[i, SLOTS + 1])
            keys += [tag(TAG_HEAD, head)] if head else []
            keys += [tag(TAG_TAIL, tail)] if tail else []
        return tuple(keys)

    def observe_response(self, state: TemplateState, resp: ResponseFeatures, now: float) -> None:
        return None

    def score(self, state: TemplateState, now: float) -> DetectorScore:
        c = state.counters.c.tolist()
        n = c[N]
        counts = state.counts.tolist()
        top = max(counts) if counts else 0.0  # the first of the sorted list; the sort waits for the reasons
        e_reuse = ramp(shrunk_share(c[REUSED], n, 10.0), 0.25, 0.6)
        e_top = ramp(shrunk_share(top, n, 10.0), 0.12, 0.4)
        # Teachers ask for "10 quiz questions" too: a few meta-prompts are normal, a stream of them is not.
        e_meta = ramp(shrunk_share(c[META], n, 10.0), 0.1, 0.4)
        # Absolute evidence as well as shares: 60 fills of one template among 300 prompts is a campaign
        # even when it is only a fifth of what the account sends.
        top_fills = 0.0
        if top > self.fills[0]:  # skip the skeleton scan when no cluster could count (most clients)
            real = np.count_nonzero(state.skels, axis=1) >= MIN_SKELETON
            top_fills = float(state.counts[real].max()) if real.any() else 0.0
        e_fills = ramp(top_fills, *self.fills)
        score = any_of(e_reuse, e_top, e_meta, e_fills)
        reasons: list[str] = []
        if e_reuse > 0 or e_top > 0:
            reused = [x for x in sorted(counts, reverse=True) if x >= 2.0]
            k = min(len(reused), 3)
            filled = sum(reused[:3])
            reasons.append(f"{filled:.0f} of the last {n:.0f} prompts fill {k} template{'s' * (k != 1)}")
            reasons.append(f"top template share {top / max(n, 1):.0%}")
        if e_fills > 0:
            reasons.append(f"{top_fills:.0f} recent prompts fill one template (of {n:.0f} recent prompts)")
        if e_meta > 0:
            reasons.append(f"{c[META]:.0f} of the last {n:.0f} prompts are self-instruct meta-prompts")
        return DetectorScore(self.name, score, tuple(reasons))
