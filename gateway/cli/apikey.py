"""``ipgate apikey create``: make a new API key, print it once, and the hash line for the key file.

    ipgate apikey create --client acme-batch --tenant acme --roles chat [--limits CLASS] [--append keys.txt]

``--limits CLASS`` gives the key a limit class (a key of the config's ``limits``), checked against the
gateway's configuration: ``--config``, else ``$IPGATE_CONFIG``, else ``/etc/ipgate/ipgate.yaml`` if it exists
(``gateway/cli/findconfig.py``). With none of them the class is not checked (a warning says so) and the gateway
checks it when it loads the key file (an unknown class is an error naming the line, and a reload with one keeps
the previous keys).

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
from gateway.cli.findconfig import config_arg, find_config, searched
from gateway.config import ConfigError


def _create(args: argparse.Namespace) -> int:
    for what, value in (("--client", args.client), ("--tenant", args.tenant), ("--limits", args.limits)):
        if value is not None and not NAME_RE.fullmatch(value):
            print(f"ipgate apikey: {what} {value!r} has characters outside [A-Za-z0-9._:@/+-]", file=sys.stderr)
            return 2
    # "chat, embed" is a natural way to type it; a role with a space or '#' would break the key file's line
    # (a space adds a field: the whole file stops parsing; '#' starts a comment: the role is cut off).
    roles = frozenset(r.strip() for r in (args.roles or "").split(",") if r.strip())
    for role in sorted(roles):
        if not NAME_RE.fullmatch(role):
            print(f"ipgate apikey: --roles: {role!r} has characters outside [A-Za-z0-9._:@/+-]", file=sys.stderr)
            return 2
    found = find_config(args.config) if args.limits is not None else None
    if found is not None:
        try:
            classes = found.load().limits
        except ConfigError as e:
            print(f"ipgate apikey: {e}", file=sys.stderr)
            return 2
        if args.limits not in classes:
            print(f"ipgate apikey: --limits {args.limits!r} is not a limit class of {found.path} "
                  f"(classes: {', '.join(sorted(classes))})", file=sys.stderr)
            return 2
        if found.implicit:
            print(f"ipgate apikey: --limits {args.limits!r} checked against {found.path} ({found.origin})",
                  file=sys.stderr)
    elif args.limits is not None:
        # The key is still made: a wrong class is caught by the gateway when it loads the key file (an error
        # naming the line, the previous keys kept), but only then.
        print(f"ipgate apikey: warning: --limits {args.limits!r} was not checked: no gateway configuration "
              f"found ({searched()}); the gateway refuses the key file if it is not a key of its limits",
              file=sys.stderr)
    key = generate_key()
    line = format_line(hash_key(key), args.client, args.tenant, roles, args.limits)
    if args.append:
        path = Path(args.append)
        try:
            _append(path, line)
        except OSError as e:  # no such directory, a directory, a full disk: the key is not shown, nothing made
            print(f"ipgate apikey: --append {path}: cannot write: {e.strerror or e}", file=sys.stderr)
            return 2
        print(f"key (shown once, store it now): {key}")
        print(f"appended to {path}: {line}")
    else:
        print(f"key (shown once, store it now): {key}")
        print("line for the API key file (auth.api_keys.file):")
        print(line)
    return 0


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        st = os.fstat(fd)
        if st.st_mode & 0o022:  # anyone who can write the file can add a key with the role admin
            print(f"ipgate apikey: warning: {path} is writable by group or others (mode "
                  f"{st.st_mode & 0o777:o}); chmod 600 it", file=sys.stderr)
        # a last line without its newline (edited by hand) would merge with ours: both lines break
        prefix = ""
        if st.st_size > 0:
            os.lseek(fd, -1, os.SEEK_END)
            prefix = "" if os.read(fd, 1) == b"\n" else "\n"
        f.write(prefix + line + "\n")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("apikey", help="create API keys (stored as hashes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="create a key and print it once with its key-file line")
    c.add_argument("--client", required=True, help="client id the key authenticates as")
    c.add_argument("--tenant", help="tenant")
    c.add_argument("--roles", help="comma-separated roles")
    c.add_argument("--limits", metavar="CLASS", help="limit class (plan) of the key: a key of the config's limits")
    c.add_argument("--config", type=config_arg,
                   help="gateway YAML to check --limits against (default: $IPGATE_CONFIG, then "
                        "/etc/ipgate/ipgate.yaml if it exists)")
    c.add_argument("--append", metavar="FILE", help="append the hash line to this key file (created 0600)")
    c.set_defaults(func=_create)
