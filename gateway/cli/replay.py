"""``ipgate replay TRACE.jsonl [--config FILE] [--json]``: run the detector pipeline over a recorded trace.

No network and no store: records are replayed in timestamp order through the same engine the gateway
builds from its config (``--config``; default: the shipped combiner with every detector enabled), with an
in-memory cross-account link table. ``--json`` prints one object::

    {"clients": [{"client", "flagged", "tier", "score", "max_score", "first_flag_index", "reasons",
                  "requests"}],
     "clusters": [[client ids linked together]],
     "summary": {"records", "clients", "flagged", "clusters", "tier_counts", "detector_errors", "detectors"}}

``first_flag_index`` is 1-based within the client's own requests (null if never flagged); ``flagged``
means the client reached the policy's flag tier (``policy.flag_tier``, "throttle" by default).
Exit codes: 0 done, 2 unreadable trace or config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.replay import TraceError, replay
from detectors.types import FLAG_TIER


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("replay", help="score a recorded trace offline (no network)")
    p.add_argument("trace", type=Path, help="JSONL trace: one {ts, client, endpoint, body} object per line")
    p.add_argument("--config", type=Path, help="gateway YAML config (its detection and policy sections)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceError(f"record {i}: not valid JSON ({e.msg})") from e


def _engine(config: Path | None) -> tuple[Engine, int]:
    if config is None:
        params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
        return Engine.from_params(params), FLAG_TIER
    # The gateway's own builder, so replay scores exactly as a gateway with this config would.
    from gateway.config import load_config
    from gateway.detection import GatewayDetection
    from gateway.policy import Policy

    cfg = load_config(config)
    policy = Policy.from_config(cfg)
    return GatewayDetection.from_config(cfg, policy).engine, policy.flag_tier


def run(args: argparse.Namespace) -> int:
    try:
        engine, flag_tier = _engine(args.config)
    except Exception as e:  # ConfigError, unreadable combiner file: one line, no traceback
        print(f"ipgate replay: {e}", file=sys.stderr)
        return 2
    try:
        out = replay(_records(args.trace), engine, flag_tier=flag_tier)
    except (OSError, TraceError) as e:
        print(f"ipgate replay: {args.trace}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
        return 0
    s = out["summary"]
    print(f"{s['records']} requests from {s['clients']} clients; {s['flagged']} flagged; {s['clusters']} clusters")
    for c in out["clients"]:
        if c["flagged"] or c["tier"] > 0:
            first = c["first_flag_index"] if c["first_flag_index"] is not None else "-"
            print(f"  {c['client']}: tier {c['tier']} score {c['score']:.2f} (max {c['max_score']:.2f}), "
                  f"flagged at request {first}: {'; '.join(c['reasons'][:3])}")
    for group in out["clusters"]:
        print(f"  cluster: {', '.join(group)}")
    return 0
