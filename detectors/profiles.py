"""Detection profiles per plan, and the plans a client was seen with: a client is judged by the strictest.

A *detection profile* is the combiner weights the clients of one plan (limit class) are judged with
(``Engine.weights_for``), e.g. ``{"templates": 0}`` for a plan of template applications. A client id may hold
credentials of several plans (two API keys, tokens with different plan claims), and all its requests fold into
one state. Judging each request by the plan of the credential it came with gave such a client the most lenient
profile whenever it wanted it: its harvesting sent on the muted plan's key was judged without the templates
detector, its evidence fed by both keys. So a client is judged by every plan it was ever seen with (within the
state's lifetime): per detector, the highest weight among those plans' profiles, a plan without a profile
contributing the engine's own weights.

Why the highest weight per detector, and not, say, the highest of the profiles' scores. The combiner is
``sigmoid(intercept + sum_d w_d * s_d)`` with every detector score ``s_d`` in [0, 1]: the score only grows
with each weight. So the per-detector maximum scores every client at least as high as each of its plans'
profiles would, whatever its detector scores, and it is the least weight vector that does (for a detector
``d``, a client scoring 1 on ``d`` alone is scored by ``w_d`` alone). Calibration: the intercept and weights
were fitted together on the full weight set, and a profile only swaps weights, never the intercept. Profiles
that mute detectors (the use they are for) give a maximum that lies between the plans' own weights and the
fitted ones: a client seen with a plan without a profile gets the fitted, calibrated combiner back, exactly;
one seen with two plans that mute different detectors gets each detector that either plan keeps. Taking the
highest *score* instead would judge each plan's evidence apart: a client holding a key of a plan that mutes
``templates`` and one of a plan that mutes ``reasoning`` would be scored without either half of a
harvest that uses both, below what the fitted combiner gives for that very traffic. A profile that raises a
weight above the fitted one (a stricter plan) passes that weight on to every client seen with that plan.

The record: the plans a client was seen with are one blob of its state envelope (``PLANS``; sorted names, at
most ``MAX_PLANS`` of at most ``MAX_PLAN_BYTES`` UTF-8 bytes each). It is saved with the rest of the state,
in the store's single hot-path round trip, so every replica judges the client by the plans any replica saw,
and a merge of two replicas' saves replays each request with its plan (the record is a set: merging is
union). A plan that does not fit (one plan too many, a longer name) marks the record *overflowing*: the
client is then judged by the strictest of every profile and of the engine's weights, never by fewer plans
than it used. A malformed record reads as overflowing too. A build that predates the record drops it on its
save (unknown envelope blobs are not written back); the next request of this build records its plan again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

PLANS = "~plans"  # the envelope blob (never a detector name: "~" is not one)
MAX_PLANS = 8  # plans recorded per client; one more marks the record overflowing
MAX_PLAN_BYTES = 64  # a plan name's UTF-8 bytes; a longer name marks the record overflowing
PLANS_BYTES = 1 + MAX_PLANS * (1 + MAX_PLAN_BYTES)  # the record's bound: a flags byte, u8 length + name each
_OVERFLOW = 1
_CACHE = 4096  # (record, plan) -> record and record -> weights memoised; cleared when full


def encode_plans(plans: Iterable[str], overflow: bool = False) -> bytes:
    """The record of ``plans`` (sorted, without repeats; names that do not fit set the overflow flag)."""
    out = bytearray()
    kept = 0
    for name in sorted(set(plans)):
        raw = name.encode("utf-8", "surrogatepass")
        if kept >= MAX_PLANS or len(raw) > MAX_PLAN_BYTES:
            overflow = True
            continue
        out += bytes((len(raw),)) + raw
        kept += 1
    return bytes((_OVERFLOW if overflow else 0,)) + bytes(out)


def decode_plans(blob: bytes | None) -> tuple[tuple[str, ...], bool]:
    """(the plans recorded, whether the record overflowed); no record: ``((), False)``. A malformed record
    reads as overflowing (judged by every profile: the strict side), never as an error."""
    if not blob:
        return (), False
    if blob[0] & ~_OVERFLOW:
        return (), True
    names: list[str] = []
    pos, end = 1, len(blob)
    while pos < end:
        n = blob[pos]
        if n == 0 or n > MAX_PLAN_BYTES or pos + 1 + n > end or len(names) >= MAX_PLANS:
            return tuple(names), True
        try:
            names.append(blob[pos + 1: pos + 1 + n].decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            return tuple(names), True
        pos += 1 + n
    return tuple(names), bool(blob[0] & _OVERFLOW)


_RECORDED: dict[tuple[bytes | None, str], bytes] = {}


def record_plan(blob: bytes | None, plan: str) -> bytes:
    """The record ``blob`` with ``plan`` added (``blob`` itself when it holds the plan already). Memoised:
    the request path pays one dictionary lookup."""
    key = (blob, plan)
    hit = _RECORDED.get(key)
    if hit is not None:
        return hit
    names, overflow = decode_plans(blob)
    # an overflowing record stands for every plan (a malformed one is kept as it is: it reads as overflowing)
    out = blob if blob and (overflow or plan in names) else encode_plans((*names, plan), overflow)
    if len(_RECORDED) >= _CACHE:
        _RECORDED.clear()
    _RECORDED[key] = out
    return out


class Profiles:
    """The engine's weights, the profiles per plan, and the weights a record of plans is judged with."""

    __slots__ = ("_by_record", "base", "by_plan", "everything")

    def __init__(self, base: Mapping[str, float], by_plan: Mapping[str, Mapping[str, float]]) -> None:
        self.base = dict(base)
        for plan, w in by_plan.items():
            if set(w) != set(self.base):
                raise ValueError(f"profile {plan!r} weighs {sorted(w)}, not the engine's detectors {sorted(base)}")
        self.by_plan = {plan: dict(w) for plan, w in by_plan.items()}
        #: an overflowing record's weights: the strictest of every profile and of the engine's own
        self.everything = _highest([self.base, *self.by_plan.values()])
        self._by_record: dict[bytes | None, dict[str, float]] = {}

    def strictest(self, plans: Iterable[str], overflow: bool = False) -> dict[str, float]:
        """Per detector the highest weight among ``plans``' profiles (a plan without one: the engine's
        weights); no plans: the engine's weights."""
        if overflow:
            return self.everything
        sets = [self.by_plan.get(p, self.base) for p in plans]
        return _highest(sets) if sets else self.base

    def weights(self, record: bytes | None) -> dict[str, float]:
        """The weights a client whose state holds ``record`` (the ``PLANS`` blob) is judged with (memoised)."""
        hit = self._by_record.get(record)
        if hit is None:
            hit = self.strictest(*decode_plans(record))
            if len(self._by_record) >= _CACHE:
                self._by_record.clear()
            self._by_record[record] = hit
        return hit


def _highest(sets: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if len(sets) == 1:
        return dict(sets[0])
    return {name: max(s[name] for s in sets) for name in sets[0]}
