"""``ipgate fingerprint record|check``: does a backend serve the genuine model?

``record`` probes a backend known to be genuine and writes its signature (with the bundled public probes, or
the operator's private set from ``--probes FILE``); ``check`` probes a backend (or a suspect API) with the
reference's own probes (all, or a random ``--sample N``) and compares. Exit codes for ``check``: 0 match,
1 mismatch or inconclusive, 2 error (nothing to compare: no probe answered, or the reference cannot be used).
``record`` needs every probe to answer; ``check`` decides on the probes that answered, as the gateway does.
Prompts are never printed: errors name the probe's id and the file's line.

``record`` checks the set's size against ``fingerprint.probes_per_check`` of the gateway's configuration
(``--config``, else ``$IPGATE_CONFIG``, else ``/etc/ipgate/ipgate.yaml`` if it exists; see
``gateway/cli/findconfig.py``) before sending anything: fewer probes is an error (exit 2, nothing probed or
written), exactly as many a warning, as ``ipgate check`` judges the reference. A private set recorded with no
configuration found gets a warning that it was not checked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from fingerprint import DEFAULT_PROBES, Probe, ProbeSetError, Signature, compare, parse_probe_set
from fingerprint.probeset import public_probe_ids, reference_probes, restrict, sample
from gateway.cli.findconfig import config_arg, find_config, searched
from gateway.config import ConfigError
from gateway.fingerprint_client import FingerprintError, probe_backend_partial
from gateway.tls import backend_context

MIN_USABLE_ANSWERS = 4  # fingerprint.min_probes' default: a reference with fewer usable answers cannot decide


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
    if not v > 0:  # aiohttp reads a zero total timeout as "no timeout": a hung backend would block for ever
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from e
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return v


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
        q.add_argument("--timeout", type=_positive_float, default=30.0,
                       help="seconds per probe request (> 0; default 30)")
        q.add_argument("--tls-ca", metavar="FILE", help="https backend: CA file to verify it with (a private CA)")
        q.add_argument("--tls-cert", metavar="FILE", help="https backend requiring mutual TLS: client certificate")
        q.add_argument("--tls-key", metavar="FILE", help="the client certificate's key (with --tls-cert)")
        if name == "record":
            q.add_argument("-o", "--output", required=True, help="file to write the signature to")
            q.add_argument("--probes", metavar="FILE",
                           help="private probe set: JSONL, one {\"id\", \"prompt\", \"max_tokens\"?} per line "
                                "(default: the bundled public probes)")
            q.add_argument("--config", type=config_arg,
                           help="gateway YAML whose fingerprint.probes_per_check the set is checked "
                                "against (default: $IPGATE_CONFIG, then /etc/ipgate/ipgate.yaml)")
        else:
            q.add_argument("--reference", required=True, help="signature file written by 'record'")
            q.add_argument("--json", action="store_true", help="print one JSON object (also on an error)")
            q.add_argument("--sample", type=_positive_int, metavar="N",
                           help="send a random N of the reference's probes (default: all of them)")
    p.set_defaults(func=run)


class _Fail(Exception):
    """An error to report (exit 2): the message names the file, variable or probe at fault."""


def _read_reference(path: str) -> Signature:
    try:
        return Signature.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise _Fail(f"reference {path} cannot be read: {e.strerror or e}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise _Fail(f"reference {path}: {e}") from e


def _probe_set(path: str | None) -> tuple[Probe, ...]:
    if path is None:
        return DEFAULT_PROBES
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first probe
    except OSError as e:
        raise _Fail(f"--probes {path} cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise _Fail(f"--probes {path}: not UTF-8 text") from e
    try:
        probes = parse_probe_set(text, source=path)
    except ProbeSetError as e:
        raise _Fail(f"--probes {e}") from e
    if len(probes) < MIN_USABLE_ANSWERS:
        raise _Fail(f"--probes {path}: {len(probes)} probes; at least {MIN_USABLE_ANSWERS} are needed for a "
                    "verdict (and more than fingerprint.probes_per_check for the rounds to rotate)")
    public = public_probe_ids(probes)
    if public:
        print(f"warning: {len(public)} of the {len(probes)} probes are bundled public ones ({', '.join(public)}): "
              "a dishonest backend can recognise those", file=sys.stderr)
    return probes


def _check_rotation(probes: tuple[Probe, ...], config: str | None, path: str | None) -> None:
    """Refuse a set the gateway could not rotate: with fewer probes than ``probes_per_check`` every round sends
    all of them (one round shows a backend the whole private set) and ``ipgate check`` calls the reference an
    error. Caught here, before the private prompts go to a backend for a reference that would be refused."""
    found = find_config(config)
    what = f"--probes {path}: {len(probes)} probes" if path else f"the {len(probes)} bundled probes"
    if found is None:
        if path:
            print(f"warning: no gateway configuration found ({searched()}): the set's {len(probes)} probes were not "
                  "checked against fingerprint.probes_per_check (rounds rotate only with more probes than that; "
                  "`ipgate check` checks it)", file=sys.stderr)
        return
    try:
        k = found.load().fingerprint.probes_per_check
    except ConfigError as e:
        raise _Fail(str(e)) from e
    where = f"{found.path}" + (f" ({found.origin})" if found.implicit else "")
    if len(probes) < k:
        raise _Fail(f"{what}, fewer than fingerprint.probes_per_check ({k}) in {where}: every round would send "
                    "all of them and `ipgate check` refuses such a reference; "
                    + ("add probes to the set" if path else "record from a private set (--probes FILE)")
                    + " or lower probes_per_check")
    if path and len(probes) == k:
        print(f"warning: {what}, exactly fingerprint.probes_per_check in {where}: every round sends all of them, "
              "so one round shows a backend the whole private set; add probes", file=sys.stderr)
    elif found.implicit:
        print(f"note: {what} checked against fingerprint.probes_per_check ({k}) in {where}", file=sys.stderr)


def _check_probes(reference: Signature, n: int | None, path: str) -> tuple[Probe, ...]:
    available = reference_probes(reference)
    if not available:
        raise _Fail(f"reference {path}: none of its probes can be sent (no prompts stored): re-record it")
    if n is None:
        return available
    if n > len(available):
        raise _Fail(f"--sample {n}: the reference has only {len(available)} probes")
    if n < MIN_USABLE_ANSWERS:  # compare() needs that many answers: a smaller sample is always inconclusive
        raise _Fail(f"--sample {n}: at least {MIN_USABLE_ANSWERS} probes are needed for a verdict")
    return sample(available, n, secrets.SystemRandom())


def _api_key(var: str | None) -> str | None:
    if not var:
        return None
    key = os.environ.get(var)
    if not key:  # a silent unauthenticated probe would fail as an opaque HTTP 401 (or probe the wrong tenant)
        raise _Fail(f"--api-key-env: the environment variable {var} is not set or empty")
    return key


def _record(args: argparse.Namespace, sig: Signature, private: bool) -> None:
    empty = [a.probe_id for a in sig.answers if not a.text.strip()]
    usable = len(sig.answers) - len(empty)
    if usable < MIN_USABLE_ANSWERS:
        # All-empty answers would "match" any equally broken backend and mismatch every working one.
        raise _Fail(f"only {usable} of {len(sig.answers)} probes gave a non-empty answer (empty: "
                    f"{', '.join(empty)}); not writing a reference from {args.url}")
    for probe_id in empty:
        print(f"warning: probe {probe_id} got an empty answer; it is skipped in checks", file=sys.stderr)
    # Written beside and renamed into place: a running gateway re-reads the reference on every check and must
    # never see half a file (that would be an inconclusive check, or a parse of a truncated signature).
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a leftover of a crashed run may be a file another user made readable
        # A private set's reference holds its prompts: created owner-only, like a key file (the gateway's user
        # must own it or be given read access on purpose). The public set's reference is left to the umask.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(sig.dumps())
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _Fail(f"cannot write {args.output}: {e.strerror or e}") from e


def run(args: argparse.Namespace) -> int:
    try:
        if not args.url.startswith(("http://", "https://")):
            raise _Fail(f"--url must start with http:// or https:// (got {args.url!r})")
        api_key = _api_key(args.api_key_env)
        reference = _read_reference(args.reference) if args.fp_command == "check" else None
        if reference is None:
            probes = _probe_set(args.probes)
            _check_rotation(probes, args.config, args.probes)
        else:
            probes = _check_probes(reference, args.sample, args.reference)
            reference = restrict(reference, (p.id for p in probes))
        if (args.tls_cert is None) != (args.tls_key is None):
            raise _Fail("--tls-cert and --tls-key go together")
        try:
            tls = backend_context(args.tls_ca, args.tls_cert, args.tls_key, what="--tls-*")
            # record needs every probe; check decides on those that answered, as the gateway does (min_probes)
            run = asyncio.run(probe_backend_partial(args.url, args.model, api_key=api_key, probes=probes,
                                                    logprobs=not args.no_logprobs, timeout_s=args.timeout,
                                                    ssl=tls))
        except (ValueError, FingerprintError, ConfigError) as e:
            raise _Fail(str(e)) from e
        if run.failures and (reference is None or not run.signature.answers):
            raise _Fail(run.failures[0] + (f" (and {len(run.failures) - 1} more)" if len(run.failures) > 1 else ""))
        sig = run.signature
        if reference is None:
            private = args.probes is not None
            _record(args, sig, private)
            print(f"wrote a signature of {len(sig.answers)} probes to {args.output}"
                  + (" (it holds the private prompts: owner-only, keep it secret)" if private else ""))
            return 0
    except _Fail as e:
        print(f"ipgate fingerprint: {e}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"verdict": None, "error": str(e)}))
        return 2
    if reference.model and reference.model != args.model:
        # Not an error: a suspect third-party API may serve the model under another name. But say so.
        print(f"note: the reference was recorded as model {reference.model!r}; probed as {args.model!r}",
              file=sys.stderr)
    for failure in run.failures:
        print(f"warning: {failure}", file=sys.stderr)
    result = compare(reference, sig)
    if run.failures:
        result = replace(result, reasons=(*result.reasons, *run.failures))
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
