"""Finding the gateway's configuration when ``--config`` is not given.

``serve`` and ``check`` need one (none found: exit 2). ``apikey create --limits CLASS`` (is CLASS a key of
``limits``?) and ``fingerprint record --probes FILE`` (does the set hold more probes than
``fingerprint.probes_per_check``?) do not need one to do their job, but a mistake they let through is found
only later, by the gateway or ``ipgate check``; so they check whenever they find one. The order:

1. ``--config FILE``;
2. the file the environment variable ``IPGATE_CONFIG`` names (an empty value counts as unset);
3. ``/etc/ipgate/ipgate.yaml``, where ``deploy/`` installs it, when that file exists and this user can read
   it: ``/etc/ipgate`` also holds the gateway's secrets (``env``) and is often ``root:ipgate 0750``, and an
   operator who cannot read it still gets the command done (the warning says the file was not readable),
   as before the lookup existed, instead of an error or a ``PermissionError``.

A configuration that is found but cannot be loaded is an error (the command stops, the message says where the
path came from); finding none is said on stderr by the command, never skipped silently. ``IPGATE_*`` overrides
in the environment apply as they do for ``serve`` (the gateway's own environment file is not read).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config

ENV_VAR = "IPGATE_CONFIG"
DEFAULT_CONFIG = Path("/etc/ipgate/ipgate.yaml")


@dataclass(frozen=True, slots=True)
class FoundConfig:
    path: Path
    origin: str  # "--config", "$IPGATE_CONFIG" or "the default path": for messages

    @property
    def implicit(self) -> bool:
        """Found without ``--config``: worth saying which file was used."""
        return self.origin != "--config"

    def load(self) -> GatewayConfig:
        """The validated configuration; ConfigError names the file and, for an implicit one, where it came from."""
        try:
            return load_config(self.path)
        except ConfigError as e:
            if not self.implicit:
                raise
            note = f" (found through {self.origin}; pass --config FILE to use another)"
            raise ConfigError(f"{e}{note}", tuple(p + note for p in e.problems)) from e


def searched() -> str:
    """The places looked in, in order: what the commands print when they find none."""
    note = " (not readable by this user)" if _default_state() == "unreadable" else ""
    return f"--config, ${ENV_VAR}, {DEFAULT_CONFIG}{note}"


def _default_state() -> str:
    """``DEFAULT_CONFIG`` is "readable", "unreadable" by this user, or "absent"."""
    try:
        if not DEFAULT_CONFIG.is_file():
            return "absent"
    except OSError:  # stat refused (EACCES: the directory is not searchable by this user); is_file re-raises it
        return "unreadable"
    return "readable" if os.access(DEFAULT_CONFIG, os.R_OK) else "unreadable"


def config_arg(value: str) -> str:
    """The ``--config`` argument type of every command: an empty path is refused (``--config "$UNSET"``) instead
    of counting as absent, which would have used ``$IPGATE_CONFIG`` or the default path, or no configuration."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty path (an unset variable?)")
    return value


def find_config(explicit: str | None, env: Mapping[str, str] | None = None) -> FoundConfig | None:
    """The configuration to check against, or None when there is none to find."""
    if explicit:
        return FoundConfig(Path(explicit), "--config")
    named = (os.environ if env is None else env).get(ENV_VAR)
    if named:
        return FoundConfig(Path(named), f"${ENV_VAR}")
    if _default_state() == "readable":
        return FoundConfig(DEFAULT_CONFIG, "the default path")
    return None
