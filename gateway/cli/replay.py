"""``ipgate replay TRACE.jsonl [--config FILE] [--json] [--embedder minilm]``: run the detector pipeline over a
recorded trace.

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
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.features import prompt_of
from detectors.replay import TraceError, replay, validate
from detectors.types import FLAG_TIER
from gateway.cli.findconfig import config_arg

if TYPE_CHECKING:
    from detectors.neural import Encoder


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("replay", help="score a recorded trace offline (no network)")
    p.add_argument("trace", type=Path, help="JSONL trace: one {ts, client, endpoint, body} object per line")
    p.add_argument("--config", type=lambda v: Path(config_arg(v)),
                   help="gateway YAML config (its detection and policy sections)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--embedder", choices=["hashed", "minilm"],
                   help="override detection.embedder; minilm encodes the trace's prompts up front (needs the "
                        "[torch] extra) and feeds them one request late, as the gateway's background encoder does")
    p.set_defaults(func=run)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The trace's records, each validated here so that an error names its LINE in the file ("record N" is
    the line number: blank lines are skipped, and must not shift the number reported)."""
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            if i == 1:  # a byte-order mark (editors and exports on Windows) is not part of the first record
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise TraceError(f"record {i}: not valid UTF-8 (byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise TraceError(f"record {i}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise TraceError(f"record {i}: nested too deeply") from None
            validate(rec, i)
            if rec["endpoint"] == RESPONSES:
                rec = {**rec, "body": _responses_body(rec["body"], i)}
            yield rec


RESPONSES = "/v1/responses"


def _responses_body(body: dict[str, Any], line: int) -> dict[str, Any]:
    """The chat reading the gateway scores a Responses API request by (``ParsedRequest.seen``): replay must
    score a recorded ``/v1/responses`` request exactly as the gateway did. A body the gateway would refuse
    is an error naming the record and the field."""
    from gateway.errors import InvalidRequest
    from gateway.proxy.responses_request import responses_view

    try:
        return responses_view(dict(body))
    except InvalidRequest as e:
        raise TraceError(f"record {line}: field 'body': {e.message}") from None


def _in_order(path: Path) -> bool:
    last = -math.inf
    ordered = True
    for rec in _records(path):
        ts = float(rec["ts"])
        ordered = ordered and ts >= last
        last = ts
    return ordered


Weights = dict[str, dict[str, float]]


def _engine(config: Path | None, embedder: str | None = None) -> tuple[Engine, int, Encoder | None, Weights]:
    if config is None:
        params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
        if embedder != "minilm":
            return Engine.from_params(params), FLAG_TIER, None, {}
        from gateway.config import DetectionConfig
        from gateway.embedding import EmbeddingWorker, load_semantic_reference, semantic_settings

        d = DetectionConfig(embedder="minilm")
        semantic = semantic_settings(d, load_semantic_reference())
        encoder = EmbeddingWorker.from_config(d).encoder  # ConfigError naming the extra when torch is missing
        return Engine.from_params(params, detectors={"semantic": semantic}), FLAG_TIER, encoder, {}
    # The gateway's own builder, so replay scores exactly as a gateway with this config would.
    from gateway.config import load_config
    from gateway.detection import GatewayDetection
    from gateway.policy import Policy

    cfg = load_config(config)
    if embedder is not None:
        cfg = cfg.model_copy(update={"detection": cfg.detection.model_copy(update={"embedder": embedder})})
    policy = Policy.from_config(cfg)
    det = GatewayDetection.from_config(cfg, policy)
    weights = {name: dict(w) for name, w in det.class_weights.items()}
    return det.engine, policy.flag_tier, det.embedding.encoder if det.embedding is not None else None, weights


def _neural(records: list[Any], encoder: Encoder) -> list[np.ndarray | None]:
    """One MiniLM vector per record (None where the record has no prompt), encoded in batches up front; each
    distinct prompt once (the encoder runs at tens of prompts per second per CPU thread)."""
    texts: list[str] = []
    for rec in records:
        body, endpoint = (rec.get("body"), rec.get("endpoint")) if isinstance(rec, dict) else (None, None)
        texts.append(prompt_of(endpoint, body)[0] if isinstance(body, dict) and isinstance(endpoint, str) else "")
    distinct = [t for t in dict.fromkeys(texts) if t.strip()]
    row = {t: i for i, t in enumerate(distinct)}
    vecs = encoder.encode(distinct)
    return [vecs[row[t]] if t in row else None for t in texts]


def run(args: argparse.Namespace) -> int:
    try:
        engine, flag_tier, encoder, weights = _engine(args.config, args.embedder)
    except Exception as e:  # ConfigError, unreadable combiner file: one line, no traceback
        print(f"ipgate replay: {e}", file=sys.stderr)
        return 2
    try:
        if encoder is None and args.trace.is_file():
            # A first pass validates every record (an error exits before any output) and checks the order; a
            # trace in timestamp order - the usual case - is then streamed, in memory bounded by the number of
            # clients rather than the size of the trace.
            ordered = _in_order(args.trace)
            out = replay(_records(args.trace), engine, flag_tier=flag_tier, presorted=ordered, class_weights=weights)
        elif encoder is None:
            # a pipe (`<(zcat trace.gz)`, /dev/stdin) or a FIFO can be read only once: a second pass read nothing
            out = replay(list(_records(args.trace)), engine, flag_tier=flag_tier, class_weights=weights)
        else:
            records = list(_records(args.trace))
            out = replay(records, engine, flag_tier=flag_tier, neural=_neural(records, encoder),
                         class_weights=weights)
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
            print(_printable(f"  {c['client']}: tier {c['tier']} score {c['score']:.2f} (max {c['max_score']:.2f}), "
                             f"flagged at request {first}: {'; '.join(c['reasons'][:3])}"))
    for group in out["clusters"]:
        print(_printable(f"  cluster: {', '.join(group)}"))
    return 0


def _printable(text: str) -> str:
    """``text`` as stdout can encode it: a client id from the trace ("José", or a lone surrogate from a ``\\udc80``
    escape) on a stdout that cannot hold it (PYTHONIOENCODING=ascii, a Latin-1 locale) stopped the report half
    printed with "internal error: UnicodeEncodeError"; it is written escaped instead."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)
