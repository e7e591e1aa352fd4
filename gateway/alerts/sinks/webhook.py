"""The webhook alert sink: a signed ``POST`` of each alert, redirects not followed, the URL never shown whole."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import hmac
import math
import time

import aiohttp
from yarl import URL

from gateway.alerts.model import Alert
from gateway.alerts.sinks.base import Delivery, PermanentSinkError, SinkError
from gateway.alerts.sinks.urls import redact_url, scrub_url
from gateway.config import AlertSinkConfig, ConfigError, read_secret

_MAX_WEBHOOK_BODY = 64 * 1024


class WebhookSink:
    def __init__(self, cfg: AlertSinkConfig) -> None:
        if not cfg.url:
            raise ConfigError("alerts.sinks: a webhook sink needs url")
        self.cfg = cfg
        self.name = cfg.name or "webhook"
        self.delivery = Delivery.from_config(cfg)
        self.url = cfg.url
        secret = read_secret(cfg.secret_env, None, what=f"alerts sink {self.name}") if cfg.secret_env else None
        if cfg.secret_env and not secret:
            raise ConfigError(f"alerts.sinks.{self.name}.secret_env: environment variable {cfg.secret_env} is unset")
        self._secret = secret.encode() if secret else None
        self._session: aiohttp.ClientSession | None = None
        self.display_url = redact_url(cfg.url)
        self._check_url()

    def _check_url(self) -> None:
        """A URL no request can go to (no host, a port out of range, an empty host label) is refused at start-up
        (and by ``ipgate check``), naming the field: otherwise every alert failed on this sink and the first
        one, maybe days later, said so. The message holds the URL's origin at most (the path may be a token)."""
        try:
            u = URL(self.url)
            host, port = u.raw_host, u.port
            if not host:
                raise ValueError("no host")
            if port is None or not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")
            host.encode("idna")  # raises on an empty or over-long label ("a..b"), as the connection would
        except (ValueError, UnicodeError) as e:
            raise ConfigError(f"alerts.sinks.{self.name}.url: not a usable URL ({self.display_url}): "
                              f"{scrub_url(str(e), self.url)}") from None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
        return self._session

    def headers(self, alert: Alert, payload: str, now: float) -> dict[str, str]:
        h = {"Content-Type": "application/json", "X-Ipgate-Alert-Id": alert.id, "User-Agent": "ipgate-alerts"}
        if self._secret is not None:
            ts = str(int(now))
            mac = hmac.new(self._secret, f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
            h["X-Ipgate-Timestamp"] = ts
            h["X-Ipgate-Signature"] = f"sha256={mac}"
        return h

    async def emit(self, alert: Alert, payload: str) -> None:
        try:
            # No redirects: aiohttp turns a POST into a GET on 301/302, so a redirected alert would have been
            # counted as delivered when the target answered the GET with 200 (nobody received it).
            async with self._client().post(
                self.url, data=payload.encode(), headers=self.headers(alert, payload, time.time()),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                try:
                    await resp.content.read(_MAX_WEBHOOK_BODY)  # a receiver's body is not ours to hold whole
                except (aiohttp.ClientError, TimeoutError):
                    # A 2xx is the receiver's word that it has the alert: a body that then does not come (a
                    # handler that acknowledges first, then works) must not count it failed and send it again.
                    if not 200 <= status < 300:
                        raise
        except (aiohttp.ClientError, TimeoutError) as e:
            # `from None`: the chained exception's text (e.g. InvalidURL, ClientResponseError) can hold the URL.
            detail = scrub_url(str(e), self.url)
            raise SinkError(f"webhook {self.display_url}: {type(e).__name__}: {detail}") from None
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise PermanentSinkError(
                f"webhook {self.display_url}: HTTP {status} redirect (not followed: configure the final URL)"
            )
        if status in (408, 425, 429) or status >= 500:
            raise SinkError(f"webhook {self.display_url}: HTTP {status}", retry_after_s=retry_after)
        raise PermanentSinkError(f"webhook {self.display_url}: HTTP {status} (not retried)")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from ``Retry-After``: delay-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent
    or unreadable (our own back-off applies). The dispatcher caps it at ``backoff_max_s``."""
    if value is None:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is read as UTC
            when = when.replace(tzinfo=datetime.UTC)
        secs = when.timestamp() - time.time()
    return 0.0 if math.isnan(secs) or secs <= 0 else secs  # +inf is fine: the dispatcher caps it
