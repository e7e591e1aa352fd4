"""Where alerts go: one small class per destination behind a one-method protocol.

A sink makes **one** delivery attempt per ``emit`` call and raises when it did not land; the dispatcher owns
retries, back-off, queueing and metrics, so every sink gets the same delivery semantics. ``SinkError`` says a
retry may help (and may carry the server's ``Retry-After``); ``PermanentSinkError`` says it will not (a 4xx
from a webhook: fix the config, not the network).

- ``JsonlSink``: appends one JSON line per alert to a file (mode 0600). "fsync-light": each line is
  flushed to the OS at once, and ``fsync`` runs at most once per ``FSYNC_INTERVAL_S`` and on close — a
  crash of the host can lose the last second, a crash of the process loses nothing. A file moved or
  deleted by log rotation is noticed at the next alert and reopened.
- ``RedisStreamSink``: ``XADD stream MAXLEN ~ N`` with fields ``alert`` (the JSON), ``client``, ``tier``.
- ``WebhookSink``: ``POST`` of the JSON with ``X-Ipgate-Alert-Id`` and, when a secret is configured,
  ``X-Ipgate-Timestamp`` and ``X-Ipgate-Signature: sha256=HMAC(secret, timestamp + "." + body)`` so the
  receiver can authenticate it and reject replays. Redirects are not followed (a 3xx is a permanent failure:
  a POST followed as a GET could count an alert as delivered that nobody received). Many webhook URLs are
  themselves credentials (Slack, Teams, Discord put the token in the path; some put ``user:password@`` or a
  ``?key=``): errors and logs name only the URL's origin (``https://hooks.example.com/…``), never the full URL.
- ``StoreSink``: the store's bounded shared alert list that the admin API and dashboard read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import errno
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.exceptions import NoPermissionError
from yarl import URL

from gateway.alerts.model import Alert
from gateway.config import AlertSinkConfig, ConfigError, read_secret
from gateway.store.base import StateStore

FSYNC_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


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


_MAX_WEBHOOK_BODY = 64 * 1024
_LOCK_WAIT_S = 0.25  # a JSONL write waits this long for the sink's lock (held for microseconds unless a write hangs)


class JsonlSink:
    """One JSON object per line, appended (``O_APPEND``: lines of several processes never interleave).

    The open, the write and the fsync run in a worker thread, so a slow or hung filesystem (NFS) never stalls
    the event loop. A short write (a full disk) leaves a fragment: the next line then starts with a newline, so
    the fragment stays a line of its own that readers skip, and the retried alert is a whole line."""

    def __init__(self, cfg: AlertSinkConfig) -> None:
        if not cfg.path:
            raise ConfigError("alerts.sinks: a jsonl sink needs path")
        self.cfg = cfg
        self.name = cfg.name or "jsonl"
        self.delivery = Delivery.from_config(cfg)
        self.path = Path(cfg.path)
        self._fd: int | None = None
        self._last_fsync = 0.0
        self._dirty = False
        self._partial = False  # the last write was cut short: start the next one on a new line
        self._closed = False
        self._fsync_later: asyncio.Task[None] | None = None
        self._fsync_failing = False
        self._lock = threading.Lock()  # one writer thread at a time per sink

    def _open(self) -> int:
        if self._fd is not None and self._rotated(self._fd):
            self._drop_handle()
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return self._fd

    def _write(self, line: bytes) -> None:
        # Never wait behind a write that has not returned (a hung NFS server): the dispatcher's timeout cannot
        # stop a thread, so each timed-out attempt would leave one more thread of asyncio's shared default pool
        # blocked here - the pool that also resolves backend host names and fetches JWKS. At most one thread
        # per sink is ever stuck; this attempt fails after a short wait (retried, then counted as failed). The
        # wait covers the background fsync, which holds the lock only to duplicate the descriptor.
        if not self._lock.acquire(timeout=_LOCK_WAIT_S):
            raise OSError(errno.EBUSY, "the previous write has not returned (the file system is not answering)")
        try:
            data = (b"\n" + line) if self._partial else line
            try:
                fd = self._open()
                written = os.write(fd, data)  # one write() of the whole line
            except OSError:
                self._drop_handle()
                raise
            if written != len(data):
                self._partial = True
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            self._partial = False
            self._dirty = True
        finally:
            if self._closed:  # the sink was closed while this write hung: close() left the file to us
                self._drop_handle()
            self._lock.release()

    async def emit(self, alert: Alert, payload: str) -> None:
        try:
            await asyncio.to_thread(self._write, payload.encode("utf-8") + b"\n")
        except OSError as e:
            raise SinkError(f"{self.path}: {e.strerror or e}") from e
        if self._fsync_later is None or self._fsync_later.done():
            # The line is written: the fsync runs in the background (at once, or at the end of the interval
            # when one ran less than a second ago: "the last second", whether or not another alert follows).
            # Awaited here, an fsync that failed (on NFS a full disk or quota shows at fsync, after write()
            # succeeded) or outlasted the attempt's timeout (a loaded disk) failed the delivery, and each retry
            # appended the alert again.
            delay = max(0.0, self._last_fsync + FSYNC_INTERVAL_S - time.monotonic())
            self._fsync_later = asyncio.create_task(self._deferred_fsync(delay))

    async def _deferred_fsync(self, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            if not await self._checked_fsync() or not self._dirty or self._closed:
                return  # (a failed fsync is tried again by the next alert's, or close's)
            # a line written while that fsync ran: synced within the interval too
            delay = max(0.0, self._last_fsync + FSYNC_INTERVAL_S - time.monotonic())

    async def _checked_fsync(self) -> bool:
        """fsync; False when it failed: logged (when it starts failing, and when fsync works again), the lines
        stay unsynced for the next alert's (or close's) fsync to try again."""
        try:
            await self._fsync()
        except OSError as e:
            self._dirty = True
            if not self._fsync_failing:
                self._fsync_failing = True
                log.warning("alert sink %s: fsync of %s failed (%s); alerts are written but may not survive a "
                            "host crash", self.name, self.path, e.strerror or e)
            return False
        if self._fsync_failing:
            self._fsync_failing = False
            log.info("alert sink %s: fsync of %s works again", self.name, self.path)
        return True

    def _rotated(self, fd: int) -> bool:
        """True when the path no longer names the open file (logrotate moved or deleted it): reopen, so
        alerts land in the new file. Alerts are rare, so one stat per alert is nothing."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        own = os.fstat(fd)
        return (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev)

    def _sync(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a write is still in progress (or hung): the next fsync covers it
        try:
            if self._fd is None or not self._dirty:
                return
            self._dirty = False
            # The fsync (background, maybe slow) runs on a duplicate of the descriptor, outside the lock: the next
            # alert's write never waits for it (nor fails "busy"), and a rotation closing the file meanwhile
            # cannot hand the number to another file under it.
            fd = os.dup(self._fd)
        finally:
            if self._closed:  # closed while this held the lock: close() left the file to us
                self._drop_handle()
            self._lock.release()
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def _fsync(self) -> None:
        if self._fd is not None and self._dirty:
            self._last_fsync = time.monotonic()
            await asyncio.to_thread(self._sync)

    def _drop_handle(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # already broken; the next emit reopens the file
                os.close(self._fd)
            self._fd = None

    async def close(self) -> None:
        self._closed = True
        if self._fsync_later is not None:
            self._fsync_later.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fsync_later
        try:
            # bounded: shutdown must not wait on a file system that stopped answering
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fsync(), self.delivery.timeout_s)
        finally:
            # never block the event loop on the lock: a write hung in the file system holds it, and closes
            # the file itself when (if ever) it returns
            if self._lock.acquire(blocking=False):
                try:
                    self._drop_handle()
                finally:
                    self._lock.release()


# One alert, one stream entry, however often it is retried: a retry after a timeout used to add it again when
# the first XADD had run but its reply was late (a slow Redis), so one alert could be written up to 1 + retries
# times. A marker key per alert id (NX, kept a day: longer than any retry schedule) decides atomically.
_XADD_ONCE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
           'alert', ARGV[3], 'client', ARGV[4], 'tier', ARGV[5], 'id', ARGV[6])
return 1
"""
_SEEN_TTL_MS = 86_400_000


class RedisStreamSink:
    def __init__(self, cfg: AlertSinkConfig, default_url: str) -> None:
        self.cfg = cfg
        self.name = cfg.name or "redis_stream"
        self.delivery = Delivery.from_config(cfg)
        self.url = cfg.url or default_url
        self._redis: aioredis.Redis | None = None
        self._scripts = True  # False once the server refused scripting (ACL): plain XADD, retries may repeat

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.url, socket_timeout=self.cfg.timeout_s, socket_connect_timeout=self.cfg.timeout_s,
            )
        return self._redis

    async def emit(self, alert: Alert, payload: str) -> None:
        stream = self.cfg.stream
        try:
            if self._scripts:
                try:
                    await self._client().eval(  # type: ignore[misc]  # redis-py types eval as sync|async
                        _XADD_ONCE, 2, stream, f"{stream}:seen:{alert.id}",
                        _SEEN_TTL_MS, self.cfg.max_len, payload, alert.client, alert.tier, alert.id)
                    return
                except aioredis.ResponseError as e:
                    # refused by ACL: EVAL itself (NoPermissionError), or SET/XADD inside the script
                    if not isinstance(e, NoPermissionError) and "NOPERM" not in str(e) \
                            and "can't run this command" not in str(e):
                        raise
                    self._scripts = False
                    log.warning("alert sink %s: the Redis user may not run scripts (%s); writing with plain XADD, "
                                "so an alert retried after a timeout may appear twice (grant +eval and +set, "
                                "or deduplicate by the id field)", self.name, e)
            await self._client().xadd(
                stream,
                {"alert": payload, "client": alert.client, "tier": alert.tier, "id": alert.id},
                maxlen=self.cfg.max_len,
                approximate=True,
            )
        except (aioredis.RedisError, OSError) as e:
            # The URL may carry the Redis password: keep it out of the message, as for webhooks.
            detail = scrub_url(str(e), self.url)
            raise SinkError(f"redis stream {self.cfg.stream}: {type(e).__name__}: {detail}") from None

    def check_url(self) -> None:
        """Raise ``ConfigError`` naming the field (no password in it) when the URL is not a Redis URL: refused at
        start-up rather than failing every alert on this sink."""
        try:
            parse_url(self.url)
        except ValueError as e:
            raise ConfigError(f"alerts.sinks.{self.name}.url: {scrub_url(str(e), self.url)}") from None

    async def ping(self) -> None:
        """Raise ``SinkError`` (no password in it) unless the sink's Redis answers PING (``ipgate check``)."""
        try:
            await self._client().ping()
        except (aioredis.RedisError, OSError, ValueError) as e:  # ValueError: not a Redis URL
            raise SinkError(f"{type(e).__name__}: {scrub_url(str(e), self.url)}") from None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


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


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` plus ``/…`` when the URL had a path or query: safe to log or show."""
    try:
        u = URL(url)
        origin = str(u.origin())
    except (ValueError, TypeError):
        return "<invalid url>"
    return origin + ("/…" if u.raw_path not in ("", "/") or u.raw_query_string else "")


def scrub_url(text: str, url: str) -> str:
    """``text`` with every spelling of ``url`` (as configured, as yarl normalises it, its path, query and
    password) replaced by its redacted form; for messages of third-party exceptions."""
    safe = redact_url(url)
    parts = {url}
    try:
        u = URL(url)
        parts |= {str(u), u.human_repr()}
        pieces = (u.raw_path_qs, u.path_qs, u.raw_path, u.path, u.raw_query_string, u.query_string, u.password)
        parts |= {p for p in pieces if p and len(p) > 1}
    except (ValueError, TypeError):
        pass
    for part in sorted(parts, key=len, reverse=True):  # whole URLs first, then the pieces left over
        text = text.replace(part, safe if "://" in part else "…")
    return text


def store_degraded(store: StateStore) -> bool:
    """True when the store says it is answering from its failure-mode fallback (``ResilientStore.degraded``).

    Such a store swallows writes (``append_alert`` returns) and refuses leases (``acquire_lease`` is False),
    which for alerts would mean silently lost alerts; callers check this to treat those answers as failures.
    Stores without the notion (memory, a bare Redis store) are never degraded.
    """
    return bool(getattr(store, "degraded", False))


class StoreSink:
    """The shared recent-alerts list (always redacted: any admin may read it)."""

    def __init__(self, store: StateStore, max_len: int) -> None:
        self.name = "store"
        self.delivery = Delivery(redact=True, max_retries=2, backoff_base_s=0.2, backoff_max_s=2.0)
        self._store = store
        self._max_len = max_len

    async def emit(self, alert: Alert, payload: str) -> None:
        if store_degraded(self._store):
            raise SinkError("the state store is degraded; the shared alert list cannot be written")
        await self._store.append_alert(payload, self._max_len)
        if store_degraded(self._store):  # this very write failed and flipped the store to degraded
            raise SinkError("the state store became unavailable while appending the alert")

    async def close(self) -> None:
        return None


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


def build_sinks(cfgs: list[AlertSinkConfig], *, default_redis_url: str) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    for c in cfgs:
        if c.kind == "jsonl":
            sinks.append(JsonlSink(c))
        elif c.kind == "redis_stream":
            stream = RedisStreamSink(c, default_redis_url)
            stream.check_url()
            sinks.append(stream)
        else:
            sinks.append(WebhookSink(c))
    names = [s.name for s in sinks]
    # "store" is the shared list's sink; "all" labels the dispatcher's own outcomes (deduplicated, rate_limited,
    # dropped after shutdown): a sink of that name mixed its deliveries and drops into them
    if len(set(names)) != len(names) or "store" in names or "all" in names:
        raise ConfigError(f"alerts.sinks: names must be unique and neither 'store' nor 'all' (set `name:`), "
                          f"got {names}")
    return sinks
