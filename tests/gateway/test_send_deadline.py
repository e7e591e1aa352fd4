"""The public listener's send deadline (``server.send_timeout_s``): a client that stops taking its answers is
disconnected; one that reads, however slowly, is not.

Defect: a client that pipelined requests on one connection and never read the answers held that connection (and
the kernel's socket buffers: megabytes each way) for ever. aiohttp answers pipelined requests one after the other
and, once the connection's write buffer passed its high-water mark, waited without a deadline for the client to
read; reading from the client stopped behind it (a full queue of parsed requests), so the keep-alive timer never
ran either. The relay's own writes were bounded (``idle_timeout_s``); the answers the gateway writes itself (401,
404, 429, small 200s) were not. Real parts: the in-process gateway, a real aiohttp backend, raw sockets with a
4 KiB receive buffer."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from gateway.senddeadline import Stalls
from tests.support.harness import GatewayHandle, app_backend, body_size_backend, gateway_config, running_gateway
from tests.support.raw_http import Raw, request_head

BODY = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hello"}]}).encode()


def _held(gw: GatewayHandle) -> int:
    """The gateway's established connections on its public port (its side of them, from /proc/net/tcp)."""
    port = int(gw.url.rsplit(":", 1)[1])
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        n += int(f[1].split(":")[1], 16) == port and f[3] == "01"
    return n


def _answering(text: str) -> web.Application:
    """A backend whose every chat completion answers ``text``."""
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "sim",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _answered(gw: GatewayHandle) -> float:
    """Requests the gateway has finished (each answer written), all labels together."""
    return sum(sample.value for family in gw.ctx.metrics.registry.collect() if family.name == "ipgate_requests"
               for sample in family.samples if sample.name == "ipgate_requests_total")


def _timeouts(gw: GatewayHandle) -> float:
    return gw.ctx.metrics.registry.get_sample_value("ipgate_client_send_timeouts_total") or 0.0


async def _pipeline_until_refused(conn: Raw, request: bytes, quiet_s: float = 0.3, limit_s: float = 30.0) -> int:
    """Write ``request`` over and over, reading nothing, until the connection has taken none for ``quiet_s`` (the
    gateway stopped reading and every buffer on the way is full); returns the bytes it took."""
    sent, start = 0, time.monotonic()
    last = start
    batch = request * 20
    while time.monotonic() - last < quiet_s:
        assert time.monotonic() - start < limit_s, "the gateway kept reading: nothing was held"
        try:
            sent += conn.sock.send(batch)
            last = time.monotonic()
        except BlockingIOError:
            pass
        except ConnectionResetError:  # closed by the deadline before every buffer on the way was full
            break
        await asyncio.sleep(0.01)
    return sent


@pytest.mark.parametrize("who", ["anonymous", "authenticated", "behind a PROXY protocol balancer"])
async def test_a_client_that_pipelines_and_never_reads_is_closed_after_send_timeout_s(who: str) -> None:
    seen: list[int] = []
    cfg: dict[str, object] = {"send_timeout_s": 2.0}
    if who.startswith("behind"):
        cfg["proxy_protocol_from"] = ["127.0.0.1"]
    async with app_backend(body_size_backend(seen)) as url, \
            running_gateway(gateway_config(url, server=cfg)) as gw:
        auth = f"Bearer {gw.token('a')}" if who == "authenticated" else None
        conn = await Raw.open(gw, rcvbuf=4096)
        try:
            if who.startswith("behind"):
                await conn.send(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n")
            await _pipeline_until_refused(conn, request_head(auth, len(BODY), expect=None) + BODY)
            # The gateway may still have many queued requests to answer (its kernel send buffer grows to a few
            # MB, hundreds of bytes an answer): the deadline runs from its last answer, not from here.
            t0 = last = time.monotonic()
            answered = _answered(gw)
            while _held(gw) and time.monotonic() - t0 < 60:  # before: held for ever (still at 120 s, past keep-alive)
                await asyncio.sleep(0.05)
                if (now := _answered(gw)) != answered:
                    answered, last = now, time.monotonic()
            assert _held(gw) == 0, "the connection is still held"
            # at most the deadline, one look and a loaded host's slack after the gateway's last answer
            assert time.monotonic() - last < 2.0 + 0.5 + 2.5
            assert _timeouts(gw) == 1
        finally:
            conn.close()
    if who == "authenticated":
        assert seen, "(answers were served before the client's buffers filled)"


async def test_a_slow_reader_is_not_cut_off() -> None:
    """A 256 KiB answer read 8 KiB every 100 ms (about 3 s) through a send deadline of 1 s: every byte arrives."""
    size = 256 * 1024
    text = "x" * size

    async with app_backend(_answering(text)) as url, \
            running_gateway(gateway_config(url, server={"send_timeout_s": 1.0})) as gw:
        conn = await Raw.open(gw, rcvbuf=4096)
        try:
            await conn.send(request_head(f"Bearer {gw.token('a')}", len(BODY), expect=None) + BODY)
            loop = asyncio.get_running_loop()
            t0 = time.monotonic()
            while not _complete(conn.got):
                part = await asyncio.wait_for(loop.sock_recv(conn.sock, 8192), 5)
                assert part, "closed by the gateway"
                conn.got += part
                await asyncio.sleep(0.1)
            status, _, body = await conn.answer()
            assert time.monotonic() - t0 > 2.0, "the answer did not make the reader slow enough to matter"
        finally:
            conn.close()
        assert status.startswith(b"HTTP/1.1 200") and body["choices"][0]["message"]["content"] == text
        assert _timeouts(gw) == 0


async def test_a_steady_reader_of_a_big_answer_is_not_cut_off() -> None:
    """A 4 MB answer read 128 KiB every 250 ms (512 KB/s, about 8 s) through a send deadline of 1 s: every byte
    arrives. Defect: the deadline watched the write buffer alone, and the kernel takes more of it only once a third
    of its send queue (megabytes, autotuned) is free: the buffer stood still for over a second while the client
    read half a megabyte a second, and the connection was aborted 67 KB before the end (2 of 2 runs). Now the
    kernel's queue counts too (SIOCOUTQ)."""
    size = 4_000_000
    text = "x" * size

    async with app_backend(_answering(text)) as url, \
            running_gateway(gateway_config(url, server={"send_timeout_s": 1.0})) as gw:
        conn = await Raw.open(gw)  # the system's buffers, autotuned
        try:
            await conn.send(request_head(f"Bearer {gw.token('a')}", len(BODY), expect=None) + BODY)
            loop = asyncio.get_running_loop()
            while not _complete(conn.got):
                try:
                    part = await asyncio.wait_for(loop.sock_recv(conn.sock, 128 * 1024), 5)
                except ConnectionResetError:
                    part = b""
                assert part, f"closed by the gateway after {len(conn.got)} bytes"
                conn.got += part
                await asyncio.sleep(0.25)
            status, _, body = await conn.answer()
        finally:
            conn.close()
        assert status.startswith(b"HTTP/1.1 200") and len(body["choices"][0]["message"]["content"]) == size
        assert _timeouts(gw) == 0


def _complete(got: bytes) -> bool:
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next(int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                  if k.strip().lower() == b"content-length")
    return len(body) >= length


# --- the rule, without sockets -----------------------------------------------------------------------------------


def test_stalls_time_a_connection_from_its_first_look_with_bytes_waiting() -> None:
    s: Stalls[str] = Stalls(10.0)
    assert s.look(0.0, [("a", 0), ("b", 100)]) == []  # nothing waiting on a: not watched
    assert s.look(5.0, [("a", 100), ("b", 100)]) == []
    assert s.look(10.0, [("a", 150), ("b", 100)]) == ["b"]  # b: 10 s without a byte taken
    assert s.look(14.9, [("a", 150)]) == []
    assert s.look(15.0, [("a", 150)]) == ["a"]
    assert len(s) == 0


def test_stalls_start_again_when_bytes_are_taken_and_forget_what_is_gone() -> None:
    s: Stalls[str] = Stalls(10.0)
    s.look(0.0, [("a", 100), ("b", 100)])
    assert s.look(9.0, [("a", 90), ("b", 100)]) == []  # a took 10 bytes: its time starts again
    assert s.look(18.0, [("a", 90)]) == []  # b gone (closed); a since 9 s
    assert s.look(19.0, [("a", 90)]) == ["a"]
    s.look(20.0, [("c", 10)])
    assert s.look(25.0, [("c", 0)]) == [] and len(s) == 0  # all of c's bytes taken
    assert s.look(35.0, [("c", 10)]) == []  # waiting again: a fresh start


def _held_on(port: int) -> int:
    """Established connections on ``port``, the listener's side of them (/proc/net/tcp)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        n += int(f[1].split(":")[1], 16) == port and f[3] == "01"
    return n


def test_the_admin_listener_closes_a_client_that_pipelines_and_never_reads(tmp_path: Path) -> None:
    """ipgate serve's admin listener has the send deadline too. Defect: it was a plain site; anyone who could reach
    the admin port (scraped by a DNS name per deploy/README, no credential needed for /healthz or a 401) could
    pipeline requests, never read, and hold the connection and its kernel buffers for ever (checked: still held
    past 3x the deadline and the keep-alive timeout)."""
    import socket
    import urllib.request

    from tests.support.process import GatewayProcess

    cfg = gateway_config("http://127.0.0.1:1", server={"send_timeout_s": 2.0})
    with GatewayProcess(cfg, tmp_path) as gw:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.admin_port))
        sock.setblocking(False)
        try:
            batch = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200
            start = last = time.monotonic()
            while time.monotonic() - last < 0.3:  # until the gateway stops reading: every buffer on the way full
                assert time.monotonic() - start < 30, "the gateway kept reading: nothing was held"
                try:
                    sock.send(batch)
                    last = time.monotonic()
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    break
                time.sleep(0.01)
            t0 = time.monotonic()
            while _held_on(gw.admin_port) and time.monotonic() - t0 < 10:
                time.sleep(0.05)
            assert _held_on(gw.admin_port) == 0, "the admin connection is still held"
        finally:
            sock.close()
        with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "ipgate_client_send_timeouts_total 1.0" in text
