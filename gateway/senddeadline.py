"""The listeners' send deadline (public and admin): a connection whose client has taken none of the bytes waiting
for it for ``server.send_timeout_s`` is closed (nginx's ``send_timeout``).

Why: aiohttp writes every answer a handler returns and then waits, without a deadline, until the connection's
write buffer is below its high-water mark again. A client that pipelines requests and never reads the answers
fills its socket buffers, then that buffer; from then on the connection's handler waits for ever (reading is
paused behind it), and so does an idle connection closed while bytes were still waiting (the event loop keeps
the socket until they are sent). The relay's own writes have a bound (the backend's ``idle_timeout_s``); the
answers the gateway writes itself (401, 404, 429, small 200s) and aiohttp's own had none.

How: every ``min(1 s, send_timeout_s / 4)`` one look at each open connection whose writes are paused (its write
buffer, the bytes the kernel would not take, passed the high-water mark: every writer now waits for the client)
or that is closed with bytes still waiting. One found so at every look for ``send_timeout_s``, its bytes never
fewer than at the look before (taking any is progress and starts the time again), is aborted. The bytes counted
are the write buffer's and the kernel's send queue's (``SIOCOUTQ`` on Linux: sent and not acknowledged, or not
sent yet), so any byte the client acknowledges is progress: the write buffer alone moves only when a third of the
kernel's queue is free, and a client reading 512 KB/s through a 4 MB answer was cut off. A client that reads,
however slowly, is never cut off by this; a connection nobody waits on costs two attribute reads a look, a
paused one an ``ioctl`` more.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from aiohttp import web

try:  # Linux: the kernel's send queue of a socket (SIOCOUTQ is TIOCOUTQ's number)
    import fcntl
    import termios
    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover (not Linux): the write buffer alone
    _OUTQ = None

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
LOOK_EVERY_S = 1.0  # at most; a short send_timeout_s looks four times within it


class Stalls(Generic[K]):
    """Which connections have had bytes waiting, and none taken, for ``timeout_s``. Pure: fed each look's
    ``(connection, bytes waiting)`` for every open connection and the time."""

    __slots__ = ("_seen", "_timeout")

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._seen: dict[K, tuple[float, int]] = {}  # connection -> (waiting since, bytes at the last look)

    def look(self, now: float, waiting: Iterable[tuple[K, int]]) -> list[K]:
        """The connections stalled for ``timeout_s`` as of ``now`` (forgotten once returned). One with nothing
        waiting, or fewer bytes than at the last look, is not stalled; one not listed is gone."""
        seen: dict[K, tuple[float, int]] = {}
        stalled = []
        for conn, size in waiting:
            if size <= 0:
                continue
            prev = self._seen.get(conn)
            since = now if prev is None or size < prev[1] else prev[0]
            if now - since >= self._timeout:
                stalled.append(conn)
            else:
                seen[conn] = (since, size)
        self._seen = seen
        return stalled

    def __len__(self) -> int:
        return len(self._seen)


class SendDeadline:
    """The look, as a task over one aiohttp server's connections; ``on_close`` is called for each connection it
    aborts (the metric)."""

    __slots__ = ("_logged", "_on_close", "_task", "_timeout")

    def __init__(self, timeout_s: float, on_close: Callable[[], None]) -> None:
        self._timeout = timeout_s
        self._on_close = on_close
        self._task: asyncio.Task[None] | None = None
        self._logged = False

    def start(self, server: web.Server | None) -> None:
        if server is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(server), name="send-deadline")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, server: web.Server) -> None:
        stalls: Stalls[asyncio.Transport] = Stalls(self._timeout)
        every = min(LOOK_EVERY_S, self._timeout / 4)
        loop = asyncio.get_running_loop()
        # each connection's transport as last seen: a handler forgets its transport when it closes it, while the
        # event loop keeps the socket until the bytes still waiting are sent (an idle connection closed by the
        # keep-alive timer with its last answers unread); the server lists the handler until then
        known: dict[web.RequestHandler, asyncio.Transport] = {}
        while True:
            await asyncio.sleep(every)
            try:
                known = {h: t for h in server.connections if (t := h.transport or known.get(h)) is not None}
                for transport in stalls.look(loop.time(), _blocked(known)):
                    self._close(transport)
            except Exception:  # never let the watcher die quietly: the bound would be gone
                log.exception("send deadline: a look at the connections failed")

    def _close(self, transport: asyncio.Transport) -> None:
        if not self._logged:
            self._logged = True
            log.warning("a client took none of the bytes waiting for it for %.0f s (server.send_timeout_s): its "
                        "connection is closed (logged once; ipgate_client_send_timeouts_total counts them)",
                        self._timeout)
        self._on_close()
        transport.abort()


def _blocked(conns: dict[web.RequestHandler, asyncio.Transport]) -> Iterable[tuple[asyncio.Transport, int]]:
    """The bytes waiting on each connection that can only wait for its client: its handler's writes are paused
    (the buffer passed its high-water mark: every writer waits for it to drain, so nothing more is added and
    fewer bytes mean the client took some), or it is closed and only its last bytes are left. A connection that
    can still be written to is not blocked: bytes may be taken while more are added. The bytes are the write
    buffer's and the kernel's (``kernel_queued``): the kernel takes more of the buffer only once a third of its
    send queue is free, so the buffer alone stood still for seconds while the client was reading steadily."""
    for handler, transport in conns.items():
        if handler.writing_paused or transport.is_closing():
            yield transport, transport.get_write_buffer_size() + kernel_queued(transport)


def kernel_queued(transport: asyncio.BaseTransport) -> int:
    """The bytes the kernel holds for the connection's peer, sent and not acknowledged or not sent yet (Linux's
    ``SIOCOUTQ`` on a TCP socket; the TLS record bytes under a TLS connection); 0 where it cannot be read."""
    if _OUTQ is None:
        return 0
    sock = transport.get_extra_info("socket")
    try:
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return 0
        return int(struct.unpack("i", fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0


class SendDeadlineSite(web.BaseSite):
    """A site whose connections have a send deadline while it listens (a base beside ``web.TCPSite`` or a
    subclass of it; the concrete class holds ``_deadline``)."""

    __slots__ = ()
    _deadline: SendDeadline

    async def start(self) -> None:
        await super().start()
        self._deadline.start(self._runner.server)

    async def stop(self) -> None:
        await self._deadline.stop()
        await super().stop()
