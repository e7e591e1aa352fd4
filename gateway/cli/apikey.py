"""``ipgate apikey create``: make a new API key, print it once, and the hash line for the key file.

    ipgate apikey create --client acme-batch --tenant acme --roles chat [--append keys.txt]

The key (``sk-...``) is shown only here; the gateway stores and compares only its SHA-256. Keep the key
file readable by the gateway's user only. Changes to the file are picked up within
``auth.api_keys.reload_interval_s`` seconds (or on SIGHUP).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.auth.apikeys import NAME_RE, format_line, generate_key, hash_key


def _create(args: argparse.Namespace) -> int:
    for what, value in (("--client", args.client), ("--tenant", args.tenant)):
        if value is not None and not NAME_RE.fullmatch(value):
            print(f"ipgate apikey: {what} {value!r} has characters outside [A-Za-z0-9._:@/+-]", file=sys.stderr)
            return 2
    roles = frozenset(r for r in (args.roles or "").split(",") if r)
    key = generate_key()
    line = format_line(hash_key(key), args.client, args.tenant, roles)
    if args.append:
        path = Path(args.append)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        print(f"key (shown once, store it now): {key}")
        print(f"appended to {path}: {line}")
    else:
        print(f"key (shown once, store it now): {key}")
        print("line for the API key file (auth.api_keys.file):")
        print(line)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("apikey", help="create API keys (stored as hashes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="create a key and print it once with its key-file line")
    c.add_argument("--client", required=True, help="client id the key authenticates as")
    c.add_argument("--tenant", help="tenant")
    c.add_argument("--roles", help="comma-separated roles")
    c.add_argument("--append", metavar="FILE", help="append the hash line to this key file (created 0600)")
    c.set_defaults(func=_create)
