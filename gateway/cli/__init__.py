"""``ipgate``: one console script, one module per subcommand.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the default. The exit code is the function's return value.

Only the module of the subcommand being run is imported (``ipgate verify`` must not pay for importing the
gateway's server, the detectors and scikit-learn); ``ipgate --help`` and unknown commands import them all.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

SUBCOMMANDS: tuple[str, ...] = (
    "serve",
    "check",
    "demo",
    "sim_backend",
    "token",
    "apikey",
    "replay",
    "traffic",
    "watermark",
    "verify",
    "fingerprint",
    "audit",
)


def _module_for(command: str) -> str | None:
    name = command.replace("-", "_")
    return name if name in SUBCOMMANDS else None


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2, like every other input error of the CLI: argparse's own
    answer puts the usage synopsis (up to seven lines for ``verify``) before it, so a script's log or a systemd
    journal shows the synopsis and the reason is easy to miss. ``--help`` still prints the synopsis.
    Subparsers are made with the parent's class, so every subcommand answers this way."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the arguments)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="ipgate", description="LLM IP-protection gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (only,) if only else SUBCOMMANDS:
        module = importlib.import_module(f"gateway.cli.{name}")
        module.register(sub)
    return parser


INTERNAL_ERROR = 2  # never 1: for `verify` that means "not watermarked", for `fingerprint check` "no match"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_module_for(argv[0]) if argv else None)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout went away (`ipgate ... | head`): one line, no traceback, never a verdict
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush would hit it
        print(f"ipgate {args.command}: output closed before all results were written", file=sys.stderr)
        return INTERNAL_ERROR
    except Exception as e:  # a bug: exit 2 (an error), never a verdict; the traceback only on request
        if os.environ.get("IPGATE_DEBUG"):
            traceback.print_exc()
        print(f"ipgate {args.command}: internal error: {type(e).__name__}: {e} "
              "(set IPGATE_DEBUG=1 for the traceback)", file=sys.stderr)
        return INTERNAL_ERROR
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
