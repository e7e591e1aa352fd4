"""``ipgate serve [--config FILE] [--workers N]``: run the gateway (without ``--config``: ``$IPGATE_CONFIG``, else
``/etc/ipgate/ipgate.yaml``; see ``gateway/cli/findconfig.py``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from gateway.cli.findconfig import config_arg, find_config, searched
from gateway.config import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway (public API + admin listener)",
                       description="Run the gateway. SIGTERM drains gracefully; SIGHUP reloads models and routing.")
    p.add_argument("--config", type=config_arg, help="YAML configuration file (IPGATE_* env overrides apply); default: "
                                    "$IPGATE_CONFIG, else /etc/ipgate/ipgate.yaml")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes sharing the port (default: server.workers from the config)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="default INFO; with --workers N every worker logs at this level")
    # internal: a worker started by the --workers supervisor, which has claimed the ports for it
    # with the addresses it claimed: a restarted worker serves them even if the file's listen changed since
    p.add_argument("--supervised", nargs=2, metavar=("LISTEN", "ADMIN_LISTEN"), default=None,
                   help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # SIGHUP's default action ends the process. Until the worker's reload handler (or the supervisor's
    # forwarder) is installed, a reload request (`systemctl reload` right after a start, a config-reloader
    # sidecar) must not kill a gateway that is still importing: ignored, as the file is read after this point
    # anyway (and a worker started by the supervisor begins with it ignored too); from the file's read on,
    # ``serve`` notes one and reloads once serving. Before the server import, which is most of the start-up
    # time.
    # Nor may one kill it on its way out: SIGHUP's default action is never put back (the process ends soon
    # after this returns, and a reload sent during a rolling restart made a clean stop a death by signal). A
    # Python handler of an in-process caller is.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return _run(args)
    finally:
        if callable(previous):
            signal.signal(signal.SIGHUP, previous)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway.fdlimit import raise_open_file_limit
    from gateway.server import serve

    if args.workers is not None and not 1 <= args.workers <= 1024:  # the same bounds as server.workers
        print("ipgate serve: --workers must be between 1 and 1024", file=sys.stderr)
        return 2
    found = find_config(args.config)
    if found is None:
        print(f"ipgate serve: no configuration: pass --config FILE (looked in {searched()}; `ipgate demo` runs "
              "the built-in one)", file=sys.stderr)
        return 2
    if found.implicit:
        logging.getLogger("ipgate").info("configuration %s (found through %s)", found.path, found.origin)
    if args.supervised is None:  # a supervised worker inherits the supervisor's raised limit
        raise_open_file_limit()
    try:
        supervised = (args.supervised[0], args.supervised[1]) if args.supervised else None
        return serve(str(found.path), args.workers, args.log_level, supervised=supervised)
    except ConfigError as e:
        print(f"ipgate serve: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a port is taken (PortInUse: by another gateway too), or a file cannot be opened
        if e.filename is not None:
            print(f"ipgate serve: cannot open {e.filename}: {e.strerror or e}", file=sys.stderr)
        else:
            print(f"ipgate serve: cannot listen: {e.strerror or e}", file=sys.stderr)
        return 2
