"""``ipgate audit verify FILE [FILE ...] [--partial] [--key-env NAME] [--anchor W:S:H] [--json]``: check audit
files' hash chains.

The files are what ``admin.audit_file`` wrote (give rotated files oldest first: they are read as one
stream, so a chain continues across them). Every writer's chain is checked on its own (see
``gateway/audit/chain.py``): an edited, deleted, duplicated or moved record, or a line that is not a record,
breaks it.

Exit codes: 0 every chain intact; 1 broken (the first bad line is named, then every problem found); 2 an error
(a file cannot be read, or holds no record at all).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from gateway.audit.chain import Anchor, verify_lines


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "audit", help="check the hash chains of admin audit files (admin.audit_file)",
        description="Check every writer's hash chain in audit JSONL files (rotated files oldest first). "
                    "Exit 0: intact; 1: broken (the first bad line is named); 2: error (also: a keyed chain "
                    "without --key-env, whose sequence is in order).")
    # One verb today; a positional choice (not a nested subparser) keeps `ipgate audit verify` extensible
    # and its flags on one parser.
    p.add_argument("verb", choices=["verify"], help="verify: check the hash chains")
    p.add_argument("files", nargs="+", metavar="FILE", help="audit JSONL file(s), oldest first")
    p.add_argument("--partial", action="store_true",
                   help="a writer's first record may be mid-chain (the files' beginning was rotated away)")
    p.add_argument("--key-env", metavar="NAME",
                   help="variable holding the chain key (admin.audit_key_env): every record must be keyed")
    p.add_argument("--anchor", action="append", default=[], metavar="WRITER:SEQ:HASH",
                   help="a record that must be there (from the gateway's 'audit record ... (anchor ...)' log "
                        "line); shows records cut off the end of a chain (repeatable)")
    p.add_argument("--json", action="store_true",
                   help='print one object: {"intact", "records", "writers", "problems"} ({"intact": null, '
                        '"error"} when the files cannot be checked)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    starts: list[int] = []  # global line index (0-based) where each file begins
    read = 0

    def lines() -> Iterator[str]:
        nonlocal read
        for path in args.files:
            starts.append(read)
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    read += 1
                    yield line

    def error(message: str) -> int:
        """Exit 2: one line on stderr and, with --json, still one object on stdout (a script parses it)."""
        print(f"ipgate audit verify: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"intact": None, "error": message}))
        return 2

    try:
        anchors = [Anchor.parse(a) for a in args.anchor]
    except ValueError as e:
        return error(f"--anchor: {e}")
    key = None
    if args.key_env:
        value = os.environ.get(args.key_env)
        if not value:
            return error(f"--key-env: {args.key_env} is not set")
        key = value.encode()
    try:
        report = verify_lines(lines(), partial_start=args.partial, key=key, anchors=anchors)
    except OSError as e:
        return error(f"cannot read {e.filename}: {e.strerror}")
    if report.records == 0:
        return error(f"no audit record in {', '.join(args.files)}")
    if report.problems and all(p.needs_key for p in report.problems):
        # every record is in place and linked, but the hashes are keyed: without the key that is no verdict
        # (a "BROKEN" read as tampering by a script), and a structural fault would have been reported as such
        keyed = len(report.problems)
        return error(f"the chain is keyed (hmac-sha256, {keyed} of {report.records} records): give --key-env "
                     "NAME (the variable admin.audit_key_env names) to check its hashes; its sequence and links "
                     "are in order")

    def where(line: int) -> tuple[str, int]:
        if line == 0:  # a missing anchor: no line of the files
            return "(anchor)", 0
        i = bisect.bisect_right(starts, line - 1) - 1
        return args.files[i], line - starts[i]

    problems = [(*where(p.line), p.writer, p.reason) for p in report.problems]
    if args.json:
        print(json.dumps({"intact": report.intact, "records": report.records, "writers": report.writers,
                          "problems": [{"file": f, "line": n, "writer": w, "reason": r}
                                       for f, n, w, r in problems]}))
    elif report.intact:
        print(f"intact: {report.records} records from {report.writers} writer(s)")
    else:
        f, n, w, r = problems[0]
        print(_printable(f"BROKEN: first bad line {f}:{n} (writer {w}): {r}"))
        for f, n, w, r in problems[1:]:
            print(_printable(f"  also {f}:{n} (writer {w}): {r}"))
    return 0 if report.intact else 1


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped: a writer id comes from the files or from an --anchor argument
    (an undecodable byte reads as one), and a strict UTF-8 stdout refused it: "internal error", not the verdict."""
    # in stdout's own encoding: a non-ASCII writer id on an ASCII or Latin-1 stdout failed the same way
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)
