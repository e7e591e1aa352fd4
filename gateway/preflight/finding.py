"""What ``ipgate check`` reports: a ``Finding`` (error, warning or ok, per area), and ``Guard``, which records
a constructor's ``ConfigError`` or ``OSError`` as an error finding instead of letting it end the check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config import ConfigError

Level = Literal["error", "warning", "ok"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    area: str  # "auth", "watermark", "backend sim/b0", ...
    message: str


class Guard:
    """``with Guard(out, area, ok_message):`` records ``ok_message`` (if any), or the ``ConfigError`` or
    ``OSError`` raised inside as an error; ``failed`` tells which."""

    def __init__(self, findings: list[Finding], area: str, ok: str) -> None:
        self._findings, self._area, self._ok = findings, area, ok
        self.failed = False

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            if self._ok:
                self._findings.append(Finding("ok", self._area, self._ok))
            return False
        if isinstance(exc, ConfigError | OSError):
            self._findings.append(Finding("error", self._area, str(exc)))
            self.failed = True
            return True
        return False
