"""The JSON access log: one line per request, to stderr or a file, written by a dedicated thread.

The record holds identifiers, sizes and timings only — never prompt or completion text, never credentials.

Cost on the request path is what matters here (measured in bench/auth_bench.py): the request path only puts
the record and its timestamp on an in-process queue (well under a microsecond). A dedicated writer thread
drains the queue every 50 ms in batches, formats each line (one shared compact ``JSONEncoder`` on a dict
built field by field; ``dataclasses.asdict`` deep-copies and is slower) and makes one ``write`` per batch,
so formatting stays out of the request's latency and a slow disk or a full stderr pipe never stalls the
event loop. Going through ``logging``
(LogRecord + QueueHandler) cost about three times as much per line, so the access log deliberately does not
use it; the lines are data, not diagnostics, and must not mix into the application log anyway.

Bounded: if the writer falls more than ``max_pending`` lines behind, new lines are dropped and counted
(``dropped``), with one warning when dropping starts and one when it stops.

File sinks behave like ``logging.handlers.WatchedFileHandler``: if logrotate moves the file, the writer
notices (device/inode change, checked at most once a second) and reopens the path.

A line looks like::

    {"ts":1764168000.123,"request_id":"b1f0…","client_id":"acme-7","tenant":"acme","model":"sim",
     "backend":"stable","route":"/v1/chat/completions","status":200,"latency_ms":41.2,"overhead_ms":0.31,
     "prompt_tokens":12,"completion_tokens":96,"tier":"normal","stream":true,"error_type":null,
     "limit_class":"default","ip":"198.51.100.9"}
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from gateway.config import TelemetryConfig

log = logging.getLogger(__name__)

_BATCH = 512
_FLUSH_INTERVAL_S = 0.05
_STAT_INTERVAL_S = 1.0


# Not frozen: one is built per request, and a frozen dataclass's __init__ (object.__setattr__ per field) cost
# four times as much as plain slot assignments for these 15 fields. Nothing mutates a record after ``write``.
@dataclass(slots=True)
class AccessRecord:
    request_id: str
    client_id: str | None
    tenant: str | None
    model: str | None
    backend: str | None
    route: str
    status: int
    latency_ms: float
    overhead_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tier: str | int | None = None
    stream: bool = False
    error_type: str | None = None
    limit_class: str | None = None  # the client's plan (a key of `limits`); None when not authenticated
    ip: str | None = None  # the client's address (the TCP peer, or forwarded by server.trusted_proxies)


# One shared encoder: json.dumps with options builds a new JSONEncoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def format_record(rec: AccessRecord, ts: float) -> str:
    return _ENCODER.encode(
        {
            "ts": round(ts, 3),
            "request_id": rec.request_id,
            "client_id": rec.client_id,
            "tenant": rec.tenant,
            "model": rec.model,
            "backend": rec.backend,
            "route": rec.route,
            "status": rec.status,
            "latency_ms": round(rec.latency_ms, 3),
            "overhead_ms": None if rec.overhead_ms is None else round(rec.overhead_ms, 3),
            "prompt_tokens": rec.prompt_tokens,
            "completion_tokens": rec.completion_tokens,
            "tier": rec.tier,
            "stream": rec.stream,
            "error_type": rec.error_type,
            "limit_class": rec.limit_class,
            "ip": rec.ip,
        }
    )


class _Sink:
    """stderr, or a file reopened when it is rotated away.

    A file is written with ``os.write`` on its descriptor, not through a buffered text stream: a write that
    fails part-way (a full disk, a file size limit) leaves half a line in the file, and the sink has to know it
    so that the next write that works starts on a new line. Through ``TextIOWrapper`` the next batch was glued
    to the half line, and that line (two records) no longer parsed as JSON.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._stderr: TextIO = sys.stderr
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._checked = 0.0
        self._partial = False  # the file ends inside a line (a write failed part-way)
        if path is not None:
            self._open(path)

    def _open(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        self._partial = False  # a new file (rotation) starts clean; a half line stays in the old one

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _reopen_if_rotated(self, path: str) -> None:
        if self._fd is None:  # the last reopen failed: try again on every write until it works
            self._open(path)
            return
        now = time.monotonic()
        if now - self._checked < _STAT_INTERVAL_S:
            return
        self._checked = now
        try:
            st = os.stat(path)
            moved = (st.st_dev, st.st_ino) != self._ident
        except FileNotFoundError:
            moved = True
        if moved:
            self._close_fd()
            self._open(path)  # OSError: no descriptor, and the next write retries

    def write(self, text: str) -> None:
        if self.path is None:
            self._stderr.write(text)
            self._stderr.flush()
            return
        self._reopen_if_rotated(self.path)
        fd = self._fd
        if fd is None:  # (unreachable: a failed open raised)
            raise OSError(f"{self.path} is not open")
        data = (b"\n" if self._partial else b"") + text.encode("utf-8")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        finally:
            done = len(data) - len(view)
            if done:
                self._partial = data[done - 1] != 0x0A  # 0x0A: b"\n"

    def close(self) -> None:
        if self.path is not None:
            self._close_fd()
        else:
            self._stderr.flush()


class AccessLog:
    """Writes ``AccessRecord``s as JSON lines. ``enabled=False`` makes ``write`` a no-op."""

    def __init__(self, *, enabled: bool = True, file: str | None = None, max_pending: int = 100_000) -> None:
        self.enabled = enabled
        self.dropped = 0
        self._dropping = False
        self._max_pending = max_pending
        self._queue: queue.SimpleQueue[tuple[AccessRecord, float]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False  # the sink refuses writes (logged once per change of state)
        if not enabled:
            return
        self._sink = _Sink(file)  # opened here so that a bad path fails at start-up, not in the thread
        self._thread = threading.Thread(target=self._run, name="ipgate-access-log", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, cfg: TelemetryConfig) -> AccessLog:
        return cls(enabled=cfg.access_log, file=cfg.access_log_file)

    def write(self, rec: AccessRecord) -> None:
        if self._thread is None:
            return
        if self._queue.qsize() >= self._max_pending:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("access log writer is %d lines behind: dropping lines", self._max_pending)
            return
        if self._dropping:
            self._dropping = False
            log.warning("access log writer caught up; %d lines dropped so far", self.dropped)
        self._queue.put((rec, time.time()))

    def _run(self) -> None:
        # Wake on a timer, not per line: a thread woken for every put would contend for the GIL with the
        # event loop on each request. Lines reach the sink within _FLUSH_INTERVAL_S.
        while True:
            stopping = self._stop.wait(_FLUSH_INTERVAL_S)
            self._drain()
            if stopping:
                return

    def _drain(self) -> None:
        batch: list[str] = []
        while True:
            try:
                batch.append(format_record(*self._queue.get_nowait()))
            except queue.Empty:
                break
            if len(batch) >= _BATCH:
                self._emit(batch)
                batch = []
        if batch:
            self._emit(batch)

    def _emit(self, batch: list[str]) -> None:
        try:
            self._sink.write("\n".join(batch) + "\n")
        except (OSError, ValueError) as e:  # a full disk or a failed reopen must not kill the thread
            self.dropped += len(batch)
            if not self._failing:
                self._failing = True
                log.error("access log write failed, dropping lines until it works again: %s", e)
            return
        if self._failing:
            self._failing = False
            log.warning("access log writes work again; %d lines dropped so far", self.dropped)

    def close(self) -> None:
        """Write everything queued, then stop the writer thread (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        thread = self._thread
        thread.join(timeout=10)
        self._thread = None
        if thread.is_alive():  # stuck in a write (a hung disk): closing its descriptor under it could let the
            log.warning("access log writer still busy after 10 s; its file is left open")  # number be reused
            return
        self._sink.close()
