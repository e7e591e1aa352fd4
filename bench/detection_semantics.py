"""Full-precision record of what detection decides on a trace, to check that a performance change changes none of it.

    .venv/bin/python -m gateway traffic -o /tmp/trace.jsonl --benign 30 --attack logit_probe=3 --attack template=3 \\
        --attack self_instruct=2 --attack topic_sweep=2 --attack cot=2 --attack slow_low=1 --attack dataset_replay=1 \\
        --mixed 0.25=2 --hydra 8 --requests 150 --seed 5
    .venv/bin/python bench/detection_semantics.py /tmp/trace.jsonl /tmp/new.json
    (cd ../other-checkout && PYTHONPATH=$PWD python bench/detection_semantics.py /tmp/trace.jsonl /tmp/old.json)
    cmp /tmp/old.json /tmp/new.json      # identical, or the change altered a decision

Recorded (floats as ``repr``, so the last bit counts): every verdict of ``replay`` (score, own score, tier,
reasons, every detector's score, sketches, errors, cluster score) on the warm path (decoded-state cache on)
and on the cold path (cache off: every step decodes the bytes); the ``replay`` result; and a run through the
gateway's adapter (``GatewayDetection.observe`` + ``account`` on the memory store, every 7th stored state
handed back as an equal copy of the bytes): every outcome, and each client's final tier, score and SHA-256
of its stored state. Also compare ``ipgate replay TRACE --json`` byte for byte, and for a larger sample
``python -m scripts.eval.evaluate --benign 200 --per-kind 10 --seed 11 --json F`` (wall time aside).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.replay import replay
from detectors.types import Verdict
from gateway.config import parse_config
from gateway.detection import GatewayDetection
from gateway.hooks import ResponseFacts
from gateway.policy import Policy
from gateway.principal import Principal
from gateway.store.base import AdmitRequest
from gateway.store.memory import MemoryStore
from gateway.telemetry.metrics import Metrics


def _replay(recs: list[dict[str, Any]], cold: bool) -> tuple[dict[str, Any], list[list[Any]]]:
    engine = Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text()))
    if cold:
        engine.cache_size = 0
    rows: list[list[Any]] = []

    def hook(client: str, i: int, v: Verdict, rec: dict[str, Any]) -> None:
        rows.append([client, i, repr(v.score), v.tier, list(v.reasons),
                     {k: repr(x) for k, x in sorted(v.detector_scores.items())}, list(v.sketches), list(v.errors),
                     repr(v.cluster_score), repr(v.own_score), v.requests_seen])

    return replay(recs, engine, on_verdict=hook), rows


async def _gateway(recs: list[dict[str, Any]]) -> tuple[list[list[Any]], dict[str, Any]]:
    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}]}, env={})
    policy = Policy.from_config(cfg)
    det = GatewayDetection.from_config(cfg, policy, metrics=Metrics(CollectorRegistry()))
    store = MemoryStore()
    rows: list[list[Any]] = []
    for k, r in enumerate(sorted(recs, key=lambda r: r["ts"])):
        res = await store.hot_path(AdmitRequest(r["client"], 100, policy.limits_by_tier))
        state = res.detector_state
        if k % 7 == 3 and state is not None:
            state = bytes(bytearray(state))  # equal bytes, another object (as from Redis)
        s = det.observe(Principal(r["client"], tenant="t"), r["endpoint"], r["body"], state, res.tier, r["ts"])
        o = s.outcome
        rows.append([r["client"], repr(o.score), o.tier, list(o.reasons), o.unscored])
        usage = (r.get("response") or {}).get("usage") or {}
        await s.account(store, ResponseFacts(status=200, prompt_tokens=usage.get("prompt_tokens"),
                                             completion_tokens=usage.get("completion_tokens"),
                                             finish_reasons=["stop"]))
    finals: dict[str, Any] = {}
    for c in sorted({r["client"] for r in recs}):
        rec = await store.get_client(c)
        st = (await store.hot_path(AdmitRequest(c, 1, policy.limits_by_tier))).detector_state
        finals[c] = [rec.tier, repr(rec.score), hashlib.sha256(st).hexdigest() if st else None] if rec else None
    return rows, finals


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    recs = [json.loads(line) for line in Path(sys.argv[1]).read_text(encoding="utf-8").split("\n") if line]
    out: dict[str, Any] = {}
    out["replay"], out["verdicts"] = _replay(recs, cold=False)
    out["replay_cold"], out["verdicts_cold"] = _replay(recs, cold=True)
    out["gateway"], out["gateway_finals"] = asyncio.run(_gateway(recs))
    Path(sys.argv[2]).write_text(json.dumps(out, indent=0, sort_keys=True))
    print(f"{len(recs)} requests: {len(out['verdicts'])} verdicts warm, {len(out['verdicts_cold'])} cold, "
          f"{len(out['gateway'])} gateway outcomes, {out['replay']['summary']['flagged']} flagged, "
          f"{len(out['replay']['clusters'])} clusters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
