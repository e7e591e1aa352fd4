"""``ipgate check [--config FILE] [--connect] [--json] [--strict]``: validate a configuration before serving it.

Run it before a deployment or a SIGHUP reload, in CI for a config repository, or when the gateway refuses to
start: it builds every part of the gateway that reads the config, secrets and files (``gateway/preflight/``),
reports every problem at once instead of the first, and warns about what would start but not as meant.
``--connect`` also checks Redis, every backend (health path, KGW plugin probe) and the JWKS endpoint.

Exit codes: 0 no error (warnings allowed), 1 warnings with ``--strict``, 2 errors (``serve`` would refuse to
start, or a configured check cannot work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.findconfig import config_arg, find_config, searched
from gateway.config import ConfigError

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check", help="validate a configuration (secrets, files, keys; --connect: Redis, backends, JWKS)",
        description="Validate a gateway configuration without serving it. Exit 0: no error; 1: warnings with "
                    "--strict; 2: errors.")
    p.add_argument("--config", type=config_arg, help="YAML configuration file (IPGATE_* env overrides apply); default: "
                                    "$IPGATE_CONFIG, else /etc/ipgate/ipgate.yaml")
    p.add_argument("--connect", action="store_true",
                   help="also check Redis (PING), each backend's health path and KGW plugin, and the JWKS URL")
    p.add_argument("--json", action="store_true", help='print one object: {"ok", "errors", "warnings", "findings"}')
    p.add_argument("--strict", action="store_true", help="exit 1 when there are warnings (and no errors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the parts built here log what they would log at start-up; the findings say it once, in order
    logging.basicConfig(level=logging.CRITICAL)
    from gateway.preflight import Finding, offline, online

    found = find_config(args.config)
    if found is None:
        message = f"no configuration: pass --config FILE (looked in {searched()})"
        print(f"ipgate check: {message}", file=sys.stderr)
        if args.json:  # stdout is one object whatever happened: CI parses it
            print(json.dumps({"ok": False, "errors": 1, "warnings": 0,
                              "findings": [{"level": "error", "area": "config", "message": message}]}))
        return 2
    args.config = str(found.path)
    try:
        cfg = found.load()
    except ConfigError as e:  # several validation problems: one finding each, as every other check reports
        findings = [Finding("error", "config", p) for p in e.problems or (str(e),)]
    else:
        findings = offline(cfg)
        if args.connect:
            findings += asyncio.run(online(cfg))
        findings = [Finding(f.level, f.area, _without_passwords(f.message, cfg)) for f in findings]
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    if args.json:
        print(json.dumps({"ok": errors == 0, "errors": errors, "warnings": warnings,
                          "findings": [{"level": f.level, "area": f.area, "message": f.message} for f in findings]}))
    else:
        width = max(len(f.area) for f in findings)
        for f in findings:
            print(f"{f.level:<8} {f.area:<{width}}  {f.message}")
        verdict = "the gateway would refuse to start or a check cannot work" if errors else "configuration OK"
        print(f"{args.config}: {errors} error(s), {warnings} warning(s): {verdict}",
              file=sys.stderr if errors else sys.stdout)
    if errors:
        return 2
    return 1 if warnings and args.strict else 0


def _without_passwords(message: str, cfg: GatewayConfig) -> str:
    """``message`` with the password of every configured URL masked (``redis://:***@host:6379/0``). The findings
    name URLs ("Redis at redis://:pw@host/0 answers PING"), and this output goes to terminals and CI logs."""
    from yarl import URL

    urls = [cfg.store.url, *cfg.store.cluster_seeds, *(b.url for m in cfg.models for b in m.backends),
            *(s.url for s in cfg.alerts.sinks if s.url)]
    if cfg.auth.jwt is not None and cfg.auth.jwt.jwks_url:
        urls.append(cfg.auth.jwt.jwks_url)
    for raw in urls:
        try:
            u = URL(raw)
            password, quoted = u.password, u.raw_password
        except (ValueError, TypeError):
            continue
        # only the "user:password@" part is replaced, so any spelling of the URL (as written, normalised, with a
        # path appended: "http://u:***@gpu:8000/v1/models answers") keeps the rest as it was
        for pw in sorted({p for p in (password, quoted) if p}, key=len, reverse=True):
            message = message.replace(f":{pw}@", ":***@")
    return message
