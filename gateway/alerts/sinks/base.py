"""What every alert sink shares: the two failures a delivery attempt can end in, how the dispatcher delivers to
a sink (``Delivery``), and the one-method protocol a sink implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.alerts.model import Alert
from gateway.config import AlertSinkConfig


class SinkError(Exception):
    """A delivery attempt failed; retrying may help."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentSinkError(SinkError):
    """A delivery attempt failed in a way retrying will not fix."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """How the dispatcher delivers to one sink."""

    redact: bool = True
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 5.0
    queue_size: int = 1000

    @classmethod
    def from_config(cls, cfg: AlertSinkConfig) -> Delivery:
        return cls(
            redact=cfg.redact, max_retries=cfg.max_retries, backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s, timeout_s=cfg.timeout_s, queue_size=cfg.queue_size,
        )


class AlertSink(Protocol):
    name: str
    delivery: Delivery

    async def emit(self, alert: Alert, payload: str) -> None:
        """Deliver one alert (``payload``: its JSON, redacted per ``delivery.redact``); raise on failure."""

    async def close(self) -> None: ...
