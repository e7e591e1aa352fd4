"""The base of every configuration section: ``ConfigError``, the strict pydantic model (unknown keys and
pasted secrets refused), and reading a secret from a file or an environment variable."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationInfo,
    field_validator,
)

if TYPE_CHECKING:
    pass


class ConfigError(Exception):
    """Raised at start-up when the configuration cannot be used; the message names file and field.

    ``problems``: when validation found several, one line each (``file: field: what``), as the message lists
    them; ``ipgate check`` reports each as its own finding."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


# The longest TTL a field handed to the state store may ask for: stores keep TTLs as integer micro- or
# milliseconds (``int(inf)`` raises) and Redis refuses an expiry beyond its 64-bit millisecond range.
MAX_TTL_S = 100 * 365 * 86400.0
MAX_REDIS_LEN = 1_000_000_000  # a list/stream length bound handed to Redis (it takes 64-bit integers only)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a valid header name


class _Model(BaseModel):
    # Every number finite: `.inf` (YAML's "never"/"unlimited") reached code that cannot take it - aiohttp's
    # timeouts (`first_byte_timeout_s: .inf`: every request to the backend a 500), integer store TTLs - and NaN
    # compares false with everything (a cap that never caps). A very large value says "never" where one works.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _env_names(cls, v: Any, info: ValidationInfo) -> Any:
        # Fields ending in _env name a variable that holds a secret. A value that is not a variable name is
        # most likely the secret itself pasted into the YAML: refuse it, and never echo it (error messages
        # and start-up errors would otherwise print it).
        if info.field_name and info.field_name.endswith("_env") and isinstance(v, str) and v \
                and not _ENV_NAME.fullmatch(v):
            raise ValueError("must be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), "
                             "not a secret value; secrets never go in the YAML")
        return v


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if int(port) > 65535:
        raise ValueError(f"port {int(port)} is out of range (0-65535)")
    return host.strip("[]"), int(port)

def read_secret(
    env_name: str | None, file_name: str | None, *, what: str, env: Mapping[str, str] | None = None
) -> str | None:
    """Return a secret from a file (preferred) or an environment variable; None when neither is set."""
    if file_name:
        try:
            raw = Path(file_name).read_bytes()
        except OSError as e:
            raise ConfigError(f"{what}: cannot read secret file {file_name}: {e.strerror}") from e
        try:
            # utf-8-sig: a BOM (Windows editors) is not part of the secret; neither is the trailing newline
            # (CRLF included) that editors and `echo` add: the file and the env var give the same secret.
            return raw.decode("utf-8-sig").strip()
        except UnicodeDecodeError:
            # never echo the bytes: they are the secret
            raise ConfigError(f"{what}: secret file {file_name} is not UTF-8 text (binary secrets: "
                              "store them base64- or hex-encoded)") from None
    source = os.environ if env is None else env
    if env_name and source.get(env_name):
        return source[env_name]
    return None


_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what aiohttp refuses in a header (tab is allowed)


def read_header_secret(
    env_name: str | None, file_name: str | None, *, what: str, env: Mapping[str, str] | None = None
) -> str | None:
    """``read_secret`` for a credential sent in an HTTP header (a backend's API key): one holding a control
    character is a ``ConfigError`` naming its source, never the value. aiohttp refuses such a header ("header
    injection"), so every request would fail; an environment value is used as set, and a Kubernetes secret
    made from a file (``env: valueFrom: secretKeyRef``) keeps the file's trailing newline."""
    secret = read_secret(env_name, file_name, what=what, env=env)
    if secret is not None and _HEADER_UNSAFE.search(secret):
        source = f"secret file {file_name}" if file_name else f"environment variable {env_name}"
        raise ConfigError(f"{what}: {source} holds a line break or another control character, which an HTTP "
                          "header cannot carry (a trailing newline? strip it)")
    return secret
