"""A lean, multiplexed Redis connection for the store's hot path (RESP2 over one socket, replies in order).

Why not redis-py's pool for every request: each command through it costs ~100 µs of CPU on this machine
(pool locks, observability hooks, argument encoding, a syscall per command), which alone would eat the
Redis-store throughput budget. Redis answers the commands of one connection strictly in order, so a single
connection can carry every concurrent request of the process: each call appends its encoded command to a
write buffer flushed once per event-loop iteration (concurrent callers share one ``send``) and parks a
future in a FIFO; replies (parsed by ``hiredis``) resolve the futures in the same order.

Failure behaviour, which ``ResilientStore`` builds on:
- every call is bounded by ``timeout_s`` (connect included);
- a call that times out closes the connection: its reply may still come, and a half-dead TCP connection
  must not swallow later calls; the others in flight fail at once with ``ConnectionError``;
- a cancelled caller's reply is read and dropped, so ordering is never lost;
- the next call reconnects (lazily, one connect at a time); a connect that times out, or that ``close``
  overtakes, closes its socket (its caller gets the error), so no connection outlives its owner.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Arg = bytes | str | int | float
MAX_PENDING = 50_000  # replies outstanding on one connection before new calls are refused


def _b(a: Arg) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, float):
        return repr(a).encode()
    return str(a).encode()


def pack_bulks(args: Sequence[Arg]) -> bytes:
    """RESP2 bulk strings, without the array header (to splice pre-encoded parts into one command)."""
    parts = []
    for a in args:
        b = _b(a)
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP2: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + pack_bulks(args)


# Error replies that mean "this server cannot serve us right now", not "this command is wrong": a primary demoted
# to a replica by a failover, a dataset still loading after a restart, maxmemory reached with noeviction, a failing
# RDB save refusing writes, a cluster without quorum, another client's script hogging the server.
UNAVAILABLE_REPLIES = ("READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "OOM", "MISCONF", "NOREPLICAS", "BUSY ")


# A timeout firing later than this many times its deadline was held up by this process's own event loop (a busy
# loop runs timers late), not by Redis: no reason to reset the connection or to declare the store down.
LATE_TIMEOUT_FACTOR = 2.0


def is_unavailable_reply(e: BaseException) -> bool:
    return isinstance(e, ResponseError) and str(e).startswith(UNAVAILABLE_REPLIES)


def reply_error(reply: Any) -> ResponseError | None:
    if isinstance(reply, hiredis.ReplyError):
        return ResponseError(str(reply))
    return None


def check_replies(replies: list[Any]) -> list[Any]:
    """Raise the first error reply of a pipeline (an ``EXEC`` result's items included); else the replies."""
    for r in replies:
        err = reply_error(r)
        if err is not None:
            raise err
        if isinstance(r, list):
            for item in r:
                nested = reply_error(item)
                if nested is not None:
                    raise nested
    return replies


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def send(self, data: bytes, replies: int) -> list[asyncio.Future[Any]]:
        if self.closed:
            raise RedisConnectionError("connection to Redis is closed")
        if len(self._pending) + replies > MAX_PENDING:
            raise RedisConnectionError("too many Redis replies outstanding")
        futs = [self._loop.create_future() for _ in range(replies)]
        self._pending.extend(futs)
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return futs

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as e:
                self.abort(RedisConnectionError(f"Redis protocol error: {e}"))
                return
            if reply is False:
                return
            if not self._pending:
                self.abort(RedisConnectionError("reply from Redis with no request waiting"))
                return
            fut = self._pending.popleft()
            if not fut.done():  # a cancelled (timed-out) caller: drop its reply, keep the order
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc}" if exc else "Redis closed the connection"))

    def abort(self, exc: Exception) -> None:
        self._fail(exc)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        self._out.clear()
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a caller that timed out will never look at it


class RespMux:
    """One multiplexed connection to the Redis named by a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {u.scheme!r} (redis://, rediss:// or unix://)")
        self._scheme = u.scheme
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or 6379
        self._path = u.path if u.scheme == "unix" else ""
        db = u.path.lstrip("/") if u.scheme != "unix" else ""
        query = dict(p.split("=", 1) for p in u.query.split("&") if "=" in p)
        self._db = int(db or query.get("db", "0") or 0)
        self._username = unquote(u.username) if u.username else None
        self._password = unquote(u.password) if u.password else None
        self._timeout = timeout_s
        self._proto: _Protocol | None = None
        self._connecting = asyncio.Lock()
        self._closes = 0  # close() count: a connect in flight across a close() must not outlive it
        #: Connections that replaced a lost one (the server closed it, a call timed out). A Redis restarted
        #: while no call was in flight is only seen here: it may have come back without its data.
        self.reconnects = 0

    @property
    def host(self) -> str:
        return self._host

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._scheme == "unix":
            _, proto = await loop.create_unix_connection(lambda: _Protocol(loop), self._path)
        else:
            ctx = ssl.create_default_context() if self._scheme == "rediss" else None
            _, proto = await loop.create_connection(lambda: _Protocol(loop), self._host, self._port, ssl=ctx)
        hello: list[Sequence[Arg]] = []
        if self._password is not None:
            hello.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            hello.append(("SELECT", self._db))
        if hello:
            futs = proto.send(b"".join(pack(c) for c in hello), len(hello))
            try:
                for f in futs:
                    err = reply_error(await f)
                    if err is not None:
                        raise err
            except BaseException as e:  # an error reply, or a timeout/cancel: nobody else owns this socket
                proto.abort(e if isinstance(e, Exception) else RedisConnectionError("Redis connect cancelled"))
                raise
        return proto

    async def _ready(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        closes = self._closes
        async with self._connecting:
            if self._proto is None or self._proto.closed:
                lost = self._proto is not None  # not the first connect, nor one after close()
                proto = await self._connect()
                if self._closes != closes:
                    proto.abort(RedisConnectionError("connection to Redis is closed"))
                    raise RedisConnectionError("connection to Redis is closed")
                self._proto = proto
                self.reconnects += lost
            return self._proto

    async def execute_packed(self, data: bytes, replies: int = 1, key: Arg | None = None) -> list[Any]:
        """Send pre-encoded commands in one write; return their replies (errors as values, see reply_error).
        ``key`` (one key the commands touch) is what ``cluster.ClusterMux`` routes by; one endpoint ignores it."""
        proto: _Protocol | None = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self._timeout):
                proto = await self._ready()
                futs = proto.send(data, replies)
                return [await f for f in futs]
        except TimeoutError:
            # A deadline that fired on time: Redis (or the path to it) is hung, reset the connection. One that
            # fired late was held up by this process's busy event loop: the replies are on their way and the
            # protocol drops this caller's in order, so the connection (and every other call on it) stays.
            if proto is not None and loop.time() - started <= self._timeout * LATE_TIMEOUT_FACTOR:
                proto.abort(RedisConnectionError("a Redis call timed out; connection reset"))
            raise
        except OSError as e:
            raise RedisConnectionError(f"cannot reach Redis: {e}") from e

    async def execute(self, *args: Arg) -> Any:
        reply = (await self.execute_packed(pack(args)))[0]
        err = reply_error(reply)
        if err is not None:
            raise err
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Pipeline: all commands in one contiguous write (so MULTI ... EXEC is never interleaved with other
        callers' commands on this shared connection); raises the first error reply."""
        return check_replies(await self.execute_packed(b"".join(pack(c) for c in commands), len(commands)))

    async def ping(self) -> None:
        await self.execute("PING")

    async def close(self) -> None:
        self._closes += 1
        if self._proto is not None:
            self._proto.abort(RedisConnectionError("closed"))
            self._proto = None
