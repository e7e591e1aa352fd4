"""``AuditTrail``: seals each admin action's record into this process's hash chain and writes it to the
shared store (every replica reads the same capped list) and, optionally, to an append-only JSONL file.

Write order and failure handling, on purpose:
- The action has already happened when its record is written (the record carries its outcome), so a
  failed audit write never undoes or refuses it. Refusing admin actions while the store is down would keep
  an operator from, say, aborting a bad canary during an outage; the failure is made loud instead.
- A record the store refused is kept in a bounded in-process backlog (oldest first) and written before the
  next record, so a short outage loses nothing while the process lives. Each refused record counts once in
  ``ipgate_audit_write_failures_total{sink="store"}``; the first failure logs one ERROR, the recovery one
  WARNING (log once per change of state). A backlog overflow drops its oldest record, counted as
  ``sink="backlog"``.
- The file (``admin.audit_file``) gets every record, store up or down: the line is written, flushed and
  fsynced in a worker thread (never on the event loop) before the admin answer is sent. A failed file write
  counts as ``sink="file"``, logged like the store's. A rotated file (moved away by logrotate) is noticed and
  the path reopened, as the access log does.
- One lock orders sealing and writing, so this writer's records reach the file and the store in ``seq``
  order and its chain verifies in both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Mapping
from typing import IO, Any, Protocol

from gateway.audit.chain import Chain, canonical
from gateway.store.base import StateStore

log = logging.getLogger(__name__)

BACKLOG_MAX = 10_000


class _Counter(Protocol):
    def labels(self, *values: str) -> Any: ...


def new_writer_id() -> str:
    """host:pid:nonce -- a restarted process (even with the same pid) starts a new chain."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class _File:
    """An append-only JSONL file, reopened when rotated away. Used from one worker thread at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self._ident: tuple[int, int] | None = None
        self._open()  # a bad path fails at start-up, not at the first admin action

    def _open(self) -> None:
        self._fh = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - lives as long as the trail
        st = os.fstat(self._fh.fileno())
        self._ident = (st.st_dev, st.st_ino)
        if st.st_size and not self._ends_with_newline():
            # A crash mid-line left the file without its final newline: end the torn line, or this writer's
            # first record would be glued to it and its whole chain would read as broken.
            self._fh.write("\n")
            self._fh.flush()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def write(self, line: str) -> None:
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._ident
        except FileNotFoundError:
            moved = True
        if moved or self._fh is None or self._fh.closed:
            if self._fh is not None:
                self._fh.close()
            self._open()
        assert self._fh is not None
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class AuditTrail:
    def __init__(self, store: StateStore, *, max_records: int, file: str | None = None,
                 failures: _Counter | None = None, writer: str | None = None, key: bytes | None = None,
                 backlog_max: int = BACKLOG_MAX) -> None:
        self.store = store
        self.max_records = max_records
        self.chain = Chain(writer or new_writer_id(), key)
        self._file = _File(file) if file else None
        self._failures = failures
        self._backlog: deque[str] = deque()
        self._backlog_max = backlog_max
        self._failing: dict[str, bool] = {}
        self._lock = asyncio.Lock()
        self._soon: set[asyncio.Task[dict[str, Any]]] = set()

    @property
    def writer(self) -> str:
        return self.chain.writer

    @property
    def pending(self) -> int:
        """Records the store refused, waiting in this process for the next write."""
        return len(self._backlog)

    def _failed(self, sink: str, error: BaseException, action: str) -> None:
        if self._failures is not None:
            self._failures.labels(sink).inc()
        if not self._failing.get(sink):
            self._failing[sink] = True
            log.error("audit: writing to the %s failed (%s: %s) for %s; the action itself was performed. "
                      "Further failures are counted in ipgate_audit_write_failures_total{sink=%r} until it "
                      "works again", sink, type(error).__name__, error, action, sink)

    def _recovered(self, sink: str) -> None:
        if self._failing.get(sink):
            self._failing[sink] = False
            log.warning("audit: writing to the %s works again (%d records still pending)", sink, len(self._backlog))

    async def write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Seal ``fields`` into the chain and write the record everywhere; never raises for a sink failure."""
        async with self._lock:
            record = self.chain.seal(fields)
            line = canonical(record)
            action = str(record.get("action"))
            # The anchor of this record, for the log (shipped off the host): `ipgate audit verify --anchor`
            # then shows records cut off the end of a chain, which the chain alone cannot.
            log.info("audit record %s writer=%s seq=%d hash=%s (anchor %s:%d:%s)", action, self.chain.writer,
                     record["seq"], record["hash"], self.chain.writer, record["seq"], record["hash"])
            if self._file is not None:
                try:
                    await asyncio.to_thread(self._file.write, line)
                    self._recovered("file")
                except (OSError, ValueError) as e:  # a full disk, a removed directory
                    self._failed("file", e, action)
            self._backlog.append(line)
            if len(self._backlog) > self._backlog_max:
                self._backlog.popleft()
                self._failed("backlog", OverflowError(f"more than {self._backlog_max} records pending"), action)
            await self._drain(action, count_new=True)
            return record

    def write_soon(self, fields: Mapping[str, Any]) -> asyncio.Task[dict[str, Any]]:
        """``write`` in a task of its own, which the caller's cancellation does not reach (await it through
        ``asyncio.shield``); ``close`` waits for it."""
        task = asyncio.get_running_loop().create_task(self.write(fields))
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)
        return task

    async def flush(self) -> int:
        """Try the backlog again now (e.g. before a read); returns the records still pending."""
        async with self._lock:
            if self._backlog:
                await self._drain("a pending record", count_new=False)
            return len(self._backlog)

    async def _drain(self, action: str, *, count_new: bool) -> None:
        while self._backlog:
            try:
                await self.store.append_audit(self._backlog[0], self.max_records)
            # Any failure of the store (a 503 from the resilient wrapper, a Redis error, a bug in a store)
            # must not turn a performed action into an error answer: the record stays pending and is counted.
            except Exception as e:
                if count_new:
                    self._failed("store", e, action)
                return
            self._backlog.popleft()
        self._recovered("store")

    async def close(self) -> None:
        if self._soon:
            await asyncio.gather(*self._soon, return_exceptions=True)
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
        if self._backlog:
            log.error("audit: %d records never reached the store (they are in the audit file when one is "
                      "configured, and in the INFO log lines of the actions)", len(self._backlog))
