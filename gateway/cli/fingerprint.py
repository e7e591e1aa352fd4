"""``ipgate fingerprint record|check``: does a backend serve the genuine model?

``record`` probes a backend known to be genuine and writes its signature; ``check`` probes a backend (or a
suspect API) and compares it with that reference. Exit codes for ``check``: 0 match, 1 mismatch or
inconclusive, 2 error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from fingerprint import Signature, compare
from gateway.fingerprint_client import FingerprintError, probe_backend


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("fingerprint", help="record or check a backend's model fingerprint")
    fsub = p.add_subparsers(dest="fp_command", required=True, metavar="ACTION")
    for name, help_text in (("record", "probe a genuine backend and save its signature"),
                            ("check", "probe a backend and compare it with a saved signature")):
        q = fsub.add_parser(name, help=help_text)
        q.add_argument("--url", required=True, help="backend base URL (without /v1)")
        q.add_argument("--model", required=True, help="model name to send in the probes")
        q.add_argument("--api-key-env", help="environment variable holding the backend's API key")
        q.add_argument("--no-logprobs", action="store_true", help="do not ask for logprobs (backends that refuse them)")
        q.add_argument("--timeout", type=float, default=30.0)
        if name == "record":
            q.add_argument("-o", "--output", required=True, help="file to write the signature to")
        else:
            q.add_argument("--reference", required=True, help="signature file written by 'record'")
            q.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    try:
        reference = None
        if args.fp_command == "check":
            reference = Signature.loads(Path(args.reference).read_text(encoding="utf-8"))
        sig = asyncio.run(
            probe_backend(args.url, args.model, api_key=api_key, logprobs=not args.no_logprobs, timeout_s=args.timeout)
        )
    except (OSError, ValueError, FingerprintError) as e:
        print(f"ipgate fingerprint: {e}", file=sys.stderr)
        return 2
    if reference is None:
        Path(args.output).write_text(sig.dumps(), encoding="utf-8")
        print(f"wrote a signature of {len(sig.answers)} probes to {args.output}")
        return 0
    result = compare(reference, sig)
    if args.json:
        print(json.dumps({
            "verdict": result.verdict,
            "similarity": round(result.similarity, 4),
            "probes": [
                {"probe": c.probe_id, "text_similarity": round(c.text_similarity, 4),
                 "logprob_distance": None if c.logprob_distance is None else round(c.logprob_distance, 4)}
                for c in result.probes
            ],
            "reasons": list(result.reasons),
        }))
    else:
        print(f"{result.verdict}: median similarity {result.similarity:.2f} over {len(result.probes)} probes")
        for r in result.reasons:
            print(f"  {r}")
    return 0 if result.verdict == "match" else 1
