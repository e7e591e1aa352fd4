"""Replay: run the detector pipeline over recorded trace records, without a network (pure).

Records are processed in timestamp order (ties keep file order), each client with its own state, all
clients sharing one in-memory ``LinkIndex`` - the same steps the gateway takes per request (observe,
fold the response in, link sketches). ``ipgate replay`` wraps this with file reading and JSON output.

A trace record: ``{"ts": <unix seconds>, "client": "<id>", "endpoint": "/v1/chat/completions" |
"/v1/completions" | "/v1/responses", "body": {...}}`` with optional ``"ip"``, ``"tenant"`` and
``"response": {"usage": {...}}`` (``finish_reasons`` or OpenAI ``choices[].finish_reason`` are read when
present) and ``"limit_class"`` (the plan of the credential the request came with; a record without one is on
``DEFAULT_PLAN``, as a gateway client that names none): as in the gateway (``detection.class_weights``), the
plan is recorded in the client's state and the client is judged by the strictest profile of ``class_weights``
among all the plans it was seen with so far (``detectors.profiles``); other fields are ignored. A
``/v1/responses`` body is scored through its chat reading, as the gateway scores it: the caller converts it
(``ipgate replay`` uses the gateway's own reading) before it gets here, since this core reads chat-shaped
bodies only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detectors.engine import Engine
from detectors.features import extract, seeded_draws
from detectors.linking import LinkIndex
from detectors.state import MAX_TS
from detectors.types import FLAG_TIER, ResponseFeatures, Verdict

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
DEFAULT_PLAN = "default"  # the plan of a record without ``limit_class`` (the gateway's ``DEFAULT_LIMIT_CLASS``)


class TraceError(ValueError):
    """A trace record is malformed; the message names the record (1-based line) and the field."""


@dataclass(slots=True)
class ClientResult:
    client: str
    requests: int = 0
    tier: int = 0
    score: float = 0.0
    max_score: float = 0.0
    first_flag_index: int | None = None
    reasons: tuple[str, ...] = ()
    linked: set[str] = field(default_factory=set)
    state: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client, "flagged": self.first_flag_index is not None, "tier": self.tier,
            "score": round(self.score, 4), "max_score": round(self.max_score, 4),
            "first_flag_index": self.first_flag_index, "reasons": list(self.reasons), "requests": self.requests,
        }


def response_features(rec: Mapping[str, Any], body: Mapping[str, Any]) -> ResponseFeatures | None:
    resp = rec.get("response")
    if not isinstance(resp, Mapping):
        return None
    raw_usage = resp.get("usage")
    usage: Mapping[str, Any] = raw_usage if isinstance(raw_usage, Mapping) else {}
    finish = resp.get("finish_reasons")
    if not isinstance(finish, list):
        choices = resp.get("choices")
        choices = choices if isinstance(choices, list) else []
        finish = [c.get("finish_reason") for c in choices if isinstance(c, Mapping)]
    mt = body.get("max_tokens")

    def _int(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    return ResponseFeatures(
        status=_int(resp.get("status")) or 200,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        finish_reasons=tuple(str(f) for f in finish if f),
        max_tokens=_int(mt),
    )


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)  # OverflowError for an int beyond the float range
    except OverflowError:
        return False


def validate(rec: Any, line: int) -> tuple[float, str, str, Mapping[str, Any]]:
    if not isinstance(rec, Mapping):
        raise TraceError(f"record {line}: expected a JSON object")
    ts, client, endpoint, body = rec.get("ts"), rec.get("client"), rec.get("endpoint"), rec.get("body")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not _finite(ts):
        # JSON allows NaN/Infinity (Python's json reads them) and ints too large for a float: neither is a time
        raise TraceError(f"record {line}: field 'ts' must be a finite number of unix seconds")
    if not 0.0 <= ts <= MAX_TS:
        # a millisecond clock (or a negative time) ran decay and cool-down 1000x off without a word, and the
        # engine refuses a state holding such a time as corrupt (clients past its decoded cache restart fresh)
        raise TraceError(f"record {line}: field 'ts' must be unix seconds in [0, {MAX_TS:.0f}], got {ts!r} "
                         "(milliseconds? divide by 1000)")
    if not isinstance(client, str) or not client:
        raise TraceError(f"record {line}: field 'client' must be a non-empty string")
    if endpoint not in ENDPOINTS:
        raise TraceError(f"record {line}: field 'endpoint' must be one of {list(ENDPOINTS)}")
    if not isinstance(body, Mapping):
        raise TraceError(f"record {line}: field 'body' must be an object")
    plan = rec.get("limit_class")
    if plan is not None and (not isinstance(plan, str) or not plan):
        raise TraceError(f"record {line}: field 'limit_class' must be a non-empty string (the plan) or absent")
    return float(ts), client, str(endpoint), body


VerdictHook = Callable[[str, int, Verdict, Mapping[str, Any]], None]


def replay(
    records: Iterable[Mapping[str, Any]], engine: Engine, flag_tier: int = FLAG_TIER,
    link_index: LinkIndex | None = None, on_verdict: VerdictHook | None = None,
    neural: Sequence[np.ndarray | None] | None = None, presorted: bool = False,
    class_weights: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Run the trace; return the ``ipgate replay --json`` object (clients, clusters, summary).

    ``on_verdict(client, index, verdict, record)`` (1-based index within the client) lets the evaluation
    and fitting scripts see every verdict without a second pass.

    ``neural`` (``--embedder minilm``): one MiniLM vector per record, in the order of ``records`` (None for
    a record without one). They are fed as the gateway's background encoder feeds them: a record's vector
    reaches the engine with the client's *next* request (``RequestFeatures.neural``), one request late.

    ``presorted``: the records are already in timestamp order (as ``ipgate traffic`` writes them and as logs
    usually are): they are processed as they come, so memory holds the clients' states and not the trace. A
    record that goes back in time then raises ``TraceError``. Otherwise the whole trace is loaded and sorted.

    ``class_weights`` (plan -> detector weights): the detection profiles, installed on ``engine``
    (``Engine.set_profiles``); None or empty leaves the engine's profiles as they are.
    """
    # the prompt scored for a batched request (and the turn of a made-up history): a draw, but the same one in
    # every replay; the process's own generator is back afterwards
    if class_weights:
        engine.set_profiles(class_weights)
    with seeded_draws(0):
        return _replay(records, engine, flag_tier, link_index, on_verdict, neural, presorted)


def _replay(
    records: Iterable[Mapping[str, Any]], engine: Engine, flag_tier: int, link_index: LinkIndex | None,
    on_verdict: VerdictHook | None, neural: Sequence[np.ndarray | None] | None, presorted: bool,
) -> dict[str, Any]:
    rows: Iterable[tuple[tuple[float, str, str, Mapping[str, Any]], Mapping[str, Any], int]]
    if presorted and neural is None:
        rows = _in_order(records)
    else:
        loaded = [(validate(r, i + 1), r, i) for i, r in enumerate(records)]
        loaded.sort(key=lambda x: x[0][0])
        if neural is not None and len(neural) != len(loaded):
            raise ValueError(f"neural: {len(neural)} vectors for {len(loaded)} records")
        rows = loaded
    n_records = 0
    pending: dict[str, list[np.ndarray]] = {}
    index = link_index or LinkIndex()
    clients: dict[str, ClientResult] = {}
    scores: dict[str, float] = {}
    errors: dict[str, int] = {}
    for (ts, client, endpoint, body), rec, i in rows:
        n_records += 1
        cr = clients.setdefault(client, ClientResult(client))
        cr.requests += 1
        feats = extract(endpoint, body, ts)
        if neural is not None:
            done = pending.pop(client, None)
            if done:
                feats = dataclasses.replace(feats, neural=np.stack(done))
            vec = neural[i]
            if vec is not None:
                pending.setdefault(client, []).append(vec)
        plan = rec.get("limit_class") or DEFAULT_PLAN  # (checked by ``validate``: a non-empty string or absent)
        obs = engine.observe(cr.state, feats, ts, plan=plan)
        v, state = obs.verdict, obs.state
        for name in v.errors:
            errors[name] = errors.get(name, 0) + 1
        resp = response_features(rec, body)
        if resp is not None:
            state = engine.observe_response(state, resp, ts)
        scores[client] = v.own_score  # a cluster's score is its members' own evidence, never re-inherited
        if v.sketches:
            shared = index.add(client, v.sketches, ts)
            if shared:
                link = engine.apply_links(state, shared, ts, peer_scores=scores)
                state = link.state
                cr.linked.update(link.linked)
        cr.state, cr.tier, cr.score = state, v.tier, v.score
        if v.score >= cr.max_score:
            cr.max_score = v.score
            if v.reasons:
                cr.reasons = v.reasons
        if v.tier >= flag_tier and cr.first_flag_index is None:
            cr.first_flag_index = cr.requests
        if on_verdict is not None:
            on_verdict(client, cr.requests, v, rec)
    clusters = _clusters(clients)
    flagged = sum(1 for c in clients.values() if c.first_flag_index is not None)
    return {
        "clients": [c.as_json() for c in sorted(clients.values(), key=lambda c: c.client)],
        "clusters": clusters,
        "summary": {
            "records": n_records, "clients": len(clients), "flagged": flagged, "clusters": len(clusters),
            "tier_counts": _tier_counts(clients.values()), "detector_errors": errors,
            "detectors": list(engine.names),
        },
    }


def _in_order(
    records: Iterable[Mapping[str, Any]],
) -> Iterable[tuple[tuple[float, str, str, Mapping[str, Any]], Mapping[str, Any], int]]:
    last = -math.inf
    for i, r in enumerate(records):
        row = validate(r, i + 1)
        if row[0] < last:
            raise TraceError(f"record {i + 1}: field 'ts' goes back in time in a trace replayed as sorted")
        last = row[0]
        yield row, r, i


def _tier_counts(clients: Iterable[ClientResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in clients:
        out[str(c.tier)] = out.get(str(c.tier), 0) + 1
    return out


def _clusters(clients: Mapping[str, ClientResult]) -> list[list[str]]:
    """Connected components of the link graph (links seen from either side), size >= 2."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in clients.values():
        for peer in c.linked:
            parent[find(c.client)] = find(peer)
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g))
