"""The JSONL alert sink: one JSON line per alert appended to a file (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from pathlib import Path

from gateway.alerts.model import Alert
from gateway.alerts.sinks.base import Delivery, SinkError
from gateway.config import AlertSinkConfig, ConfigError

FSYNC_INTERVAL_S = 1.0
_LOCK_WAIT_S = 0.25  # a JSONL write waits this long for the sink's lock (held for microseconds unless a write hangs)

log = logging.getLogger(__name__)


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
