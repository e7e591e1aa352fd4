"""The multiplexed Redis connection: URL forms (db, password, unix socket), ordering under cancellation,
timeouts that reset the connection, reconnecting."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.store.resp import RespMux, pack
from tests.conftest import RedisProcess


def test_pack() -> None:
    assert pack(["SET", "k", b"\x00v", 12, 1.5]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$2\r\n12\r\n$3\r\n1.5\r\n")


async def test_db_from_url_and_pipelining(redis_url: str) -> None:
    mux = RespMux(redis_url.rsplit("/", 1)[0] + "/3", timeout_s=2)
    try:
        replies = await asyncio.gather(*(mux.execute("INCR", "n") for _ in range(200)))
        assert sorted(replies) == list(range(1, 201)), "every caller gets its own reply, in order"
        assert await mux.execute_many([("SET", "a", "1"), ("GET", "a"), ("GET", "missing")]) == [b"OK", b"1", None]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await mux.execute_many([("SET", "s", "x"), ("LPUSH", "s", "y")])
        assert await mux.execute("GET", "a") == b"1", "an error reply does not break the connection"
    finally:
        await mux.close()
    with redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3") as r:
        assert r.get("n") == b"200"


async def test_password_and_unix_socket() -> None:
    rp = RedisProcess(extra_args=("--requirepass", "s3cret pw"))
    rp.extra_args += ("--unixsocket", os.path.join(rp.dir, "r.sock"), "--unixsocketperm", "700")
    rp.start()
    try:
        ok = RespMux(f"redis://:s3cret%20pw@127.0.0.1:{rp.port}/0", timeout_s=2)
        assert await ok.execute("PING") == b"PONG"
        await ok.close()
        sock = RespMux(f"unix://:s3cret%20pw@{os.path.join(rp.dir, 'r.sock')}", timeout_s=2)
        assert await sock.execute("PING") == b"PONG"
        await sock.close()
        bad = RespMux(f"redis://:wrong@127.0.0.1:{rp.port}/0", timeout_s=2)
        with pytest.raises(ResponseError):
            await bad.execute("PING")
        await bad.close()
    finally:
        rp.stop()


def test_bad_scheme() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RespMux("http://127.0.0.1", timeout_s=1)


async def test_cancelled_caller_keeps_order(redis_process: Any) -> None:
    mux = RespMux(redis_process.url, timeout_s=5)
    try:
        await mux.execute("SET", "k", "before")
        redis_process.pause()
        doomed = asyncio.ensure_future(mux.execute("GET", "k"))
        await asyncio.sleep(0.05)
        doomed.cancel()  # e.g. the client disconnected
        later = asyncio.ensure_future(mux.execute("SET", "k", "after"))
        await asyncio.sleep(0.05)
        redis_process.resume()
        assert await later == b"OK", "the cancelled call's reply was dropped, not handed to the next caller"
        assert await mux.execute("GET", "k") == b"after"
        assert doomed.cancelled()
    finally:
        await mux.close()


async def test_timeout_resets_connection_then_reconnects(redis_process: Any) -> None:
    mux = RespMux(redis_process.url, timeout_s=0.05)
    try:
        assert await mux.execute("PING") == b"PONG"
        redis_process.pause()
        a = asyncio.ensure_future(mux.execute("INCR", "x"))
        await asyncio.sleep(0.01)
        b = asyncio.ensure_future(mux.execute("INCR", "x"))
        with pytest.raises(TimeoutError):
            await a
        with pytest.raises(RedisConnectionError):
            await b  # in flight on the reset connection: fails at once, not after its own timeout
        redis_process.resume()
        assert await mux.execute("INCR", "x") == 3, "a fresh connection; the paused commands still ran"
        redis_process.kill()
        with pytest.raises(RedisConnectionError):
            await mux.execute("PING")
        redis_process.start()
        assert await mux.execute("PING") == b"PONG"
    finally:
        await mux.close()


def _clients(rp: RedisProcess) -> int:
    with redis.Redis(port=rp.port, socket_timeout=5) as r:
        return len(r.client_list()) - 1  # less this counting connection


async def test_timeout_during_the_handshake_leaves_no_connection(redis_process: Any) -> None:
    """A call that times out while its fresh connection's handshake (here ``SELECT``) is unanswered must close
    that connection: the next call opens another, and the first would stay open, owned by nobody."""
    mux = RespMux(redis_process.url.rsplit("/", 1)[0] + "/3", timeout_s=0.1)
    try:
        redis_process.pause()  # the kernel still completes the TCP connect; SELECT is never answered
        with pytest.raises(TimeoutError):
            await mux.execute("PING")
        redis_process.resume()
        assert await mux.execute("PING") == b"PONG"
        deadline = asyncio.get_running_loop().time() + 2.0
        while _clients(redis_process) > 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert _clients(redis_process) == 1, "the timed-out handshake's connection is still open"
    finally:
        await mux.close()


async def test_close_while_connecting_fails_the_call_and_leaves_no_connection(redis_process: Any) -> None:
    mux = RespMux(redis_process.url.rsplit("/", 1)[0] + "/3", timeout_s=2.0)
    redis_process.pause()
    call = asyncio.ensure_future(mux.execute("PING"))
    await asyncio.sleep(0.05)  # connected, SELECT answered only after close
    await mux.close()
    redis_process.resume()
    with pytest.raises(RedisConnectionError, match="closed"):
        await call
    deadline = asyncio.get_running_loop().time() + 2.0
    while _clients(redis_process) > 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert _clients(redis_process) == 0, "a connect in flight at close() survived it"
