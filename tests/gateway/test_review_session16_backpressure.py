"""Review of the proxy under slow and hostile peers (session 16, area ``backpressure``): each defect test failed
before its fix. Real parts: the in-process gateway of ``tests/support/harness.py``, real aiohttp servers as
backends, raw sockets for the clients that misbehave (a small receive buffer and no reads; bytes trickled)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from aiohttp import web

from tests.support.harness import app_backend, eventually, gateway_config, running_gateway
from tests.support.stall import OwnClock

MSGS: list[Any] = [{"role": "user", "content": "hi"}]


def _big_answer(size: int) -> web.Application:
    """A backend whose non-streamed answer carries ``max_tokens`` bytes of content."""

    async def chat(request: web.Request) -> web.Response:
        n = int((await request.json()).get("max_tokens", 16))
        return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "sim",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * n},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _raw_post(gw_url: str, head: bytes, body: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    port = int(gw_url.rsplit(":", 1)[1])
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, head + body)
    return sock


def _head(token: str, length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


async def _read_all(sock: socket.socket, timeout_s: float) -> tuple[bytes, str]:
    """Everything the socket yields until EOF, a reset or ``timeout_s`` of silence; and how it ended."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while True:
        try:
            part = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), timeout_s)
        except TimeoutError:
            return bytes(got), "silence"
        except ConnectionError:
            return bytes(got), "reset"
        if not part:
            return bytes(got), "eof"
        got += part


# --- 1. a non-streamed answer the client does not read ---------------------------------------------------------

async def test_a_client_that_does_not_read_a_large_answer_is_let_go() -> None:
    """Defect: a non-streamed answer was returned to aiohttp, which writes it with one drain and no timer. A
    client that read nothing held the answer's bytes in the gateway's memory (all but what the kernel's socket
    buffers took: ≈ 13.7 MB of heap per unread 8 MiB answer in ``bench/slow_clients.py``) and its connection
    for ever, and an authenticated client could pile them up (an embeddings batch answers tens of MB). Now the
    answer is
    written in slices under the stream's stall bound (the backend's ``idle_timeout_s``): the connection is
    aborted, so the client gets less than the answer and then a reset or EOF."""
    size = 24 * 1024 * 1024  # far more than loopback's socket buffers take (≈ 3 MB with a 4 KiB receive buffer)
    async with app_backend(_big_answer(size)) as url:
        cfg = gateway_config(url)
        cfg["models"][0]["backends"][0]["idle_timeout_s"] = 1.0
        async with running_gateway(cfg) as gw:
            body = json.dumps({"model": "sim", "messages": MSGS, "max_tokens": size}).encode()
            sock = await _raw_post(gw.url, _head(gw.token("a"), len(body)), body, rcvbuf=4096)
            try:
                # reads nothing until the gateway is done with the request: at least idle_timeout_s once the answer
                # is being written (a fixed 3 s was too short on a loaded host: the 24 MB answer was still on its
                # way from the backend, and the client, reading at once after, kept up and got it all). Before the
                # fix the handler returned the answer to aiohttp at once and the client then read all of it.
                await eventually(lambda: bool(gw.ctx.inflight), 30, "the request reached the proxy")
                await eventually(lambda: not gw.ctx.inflight, 30, "the gateway let the request go")
                got, end = await _read_all(sock, 2.0)
            finally:
                sock.close()
            assert got.startswith(b"HTTP/1.1 200")
            assert len(got) < size and end in ("reset", "eof"), (len(got), end)


async def test_a_slow_reader_still_gets_the_whole_large_answer() -> None:
    """Control: the bound is on a client that does not keep up for ``idle_timeout_s``; one that reads steadily
    (64 KiB every 20 ms, ≈ 3 MB/s) gets the whole answer, intact. (As for streams, "keep up" means: frees the
    kernel's socket buffer enough for the next slice within ``idle_timeout_s``; the buffer holds ≈ 3 MB on
    loopback, so at the default 60 s a reader slower than ≈ 25 KB/s of an answer over ≈ 3 MB is cut.)"""
    size = 6 * 1024 * 1024
    async with app_backend(_big_answer(size)) as url:
        cfg = gateway_config(url)
        cfg["models"][0]["backends"][0]["idle_timeout_s"] = 1.0
        async with running_gateway(cfg) as gw:
            body = json.dumps({"model": "sim", "messages": MSGS, "max_tokens": size}).encode()
            sock = await _raw_post(gw.url, _head(gw.token("a"), len(body)), body)
            loop = asyncio.get_running_loop()
            got = bytearray()
            try:
                while True:
                    part = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                    assert part, f"the gateway ended the answer after {len(got)} bytes"
                    got += part
                    head, sep, rest = bytes(got).partition(b"\r\n\r\n")
                    if sep and len(rest) >= int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]):
                        break
                    await asyncio.sleep(0.02)
            finally:
                sock.close()
            answer = json.loads(bytes(got).partition(b"\r\n\r\n")[2])
            assert answer["choices"][0]["message"]["content"] == "x" * size


# --- 2. a request body sent slowly (slowloris on the body) -----------------------------------------------------

async def test_a_body_that_never_arrives_is_a_408_and_the_connection_closes(monkeypatch: Any) -> None:
    """Defect: aiohttp has no timer on a request body. A client that declared a body and then sent a byte a
    second (or all but its last byte: up to ``max_body_bytes``, 4 MiB, held in memory) kept its connection, a
    handler task and the bytes so far for ever (``bench/slow_clients.py``: every slow-body connection still
    open). Now the whole body must arrive
    within ``pipeline.BODY_TIMEOUT_S`` (60 s): a 408 naming ``body``, then the connection closes."""
    from gateway import pipeline

    monkeypatch.setattr(pipeline, "BODY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(pipeline, "BODY_MIN_RATE", 10**9)  # (the time a body's size adds: none here)
    async with app_backend(_big_answer(0)) as url, running_gateway(gateway_config(url)) as gw:
        # (with a credential: one without is refused before its body is read, tests/gateway/test_auth_before_body.py)
        sock = await _raw_post(gw.url, _head(gw.token("a"), 100000), b'{"model": "sim", ')
        loop = asyncio.get_running_loop()
        clock = OwnClock()  # the sleeps and the gateway's timer count in full, a busy host's CPU waits do not
        try:
            for _ in range(3):  # a byte a second: never idle for long, never done
                await asyncio.sleep(0.5)
                await loop.sock_sendall(sock, b" ")
            got = b""
            while b"}}" not in got:  # the whole error answer (aiohttp then reads on for its lingering 10 s, closes)
                part = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                assert part, got
                got += part
        finally:
            sock.close()
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"\r\nConnection: close\r\n" in got and clock.elapsed() < 3
        err = json.loads(got.partition(b"\r\n\r\n")[2])["error"]
        assert err["param"] == "body" and err["code"] == "request_timeout" and "1 s" in err["message"]


async def test_a_body_that_arrives_slowly_but_in_time_is_served(monkeypatch: Any) -> None:
    """Control: a body that trickles in but is complete within the deadline is answered as usual."""
    from gateway import pipeline

    monkeypatch.setattr(pipeline, "BODY_TIMEOUT_S", 3.0)
    async with app_backend(_big_answer(0)) as url, running_gateway(gateway_config(url)) as gw:
        body = json.dumps({"model": "sim", "messages": MSGS, "max_tokens": 5}).encode()
        sock = await _raw_post(gw.url, _head(gw.token("a"), len(body)), body[:10])
        loop = asyncio.get_running_loop()
        try:
            for i in range(10, len(body), 10):
                await asyncio.sleep(0.05)
                await loop.sock_sendall(sock, body[i:i + 10])
            got = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        finally:
            sock.close()
        assert got.startswith(b"HTTP/1.1 200") and b'"xxxxx"' in got


# --- 3. a backend whose non-streamed answer has no end ----------------------------------------------------------

def _endless_body(state: dict[str, Any], declared: int | None = None, total: int | None = None) -> web.Application:
    """A 200 JSON answer: ``total`` bytes (None: for ever, until the gateway leaves), chunked unless ``declared``
    (then that Content-Length is sent and nothing more)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declared is not None:
            resp.content_length = declared
            await resp.prepare(request)
            return resp  # (the gateway must refuse on the header alone)
        await resp.prepare(request)
        if total is not None:
            body = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "sim",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "y" * total},
                                            "finish_reason": "stop"}]}).encode()
            for i in range(0, len(body), 4096):
                await resp.write(body[i:i + 4096])
            await resp.write_eof()
            return resp
        try:
            while True:
                await resp.write(b'{"x": "' + b"y" * 65536)
        except BaseException as e:
            state["gone"] = type(e).__name__
            raise

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _post_chat(gw: Any, **extra: Any) -> tuple[int, dict[str, Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gw.token('a')}"},
            json={"model": "sim", "messages": MSGS, **extra}) as r:
        return r.status, await r.json()


async def test_a_backend_answer_without_end_is_cut_at_the_bound(monkeypatch: Any) -> None:
    """Defect: a non-streamed answer was read whole with no size bound (streams have one per event). A backend
    that wrote an endless body (broken, hostile, or a wrong URL) grew the gateway by up to 1 GB/s until
    ``first_byte_timeout_s`` (600 s by default): 5.2 GB of RSS within 5 s in ``bench/slow_clients.py``, an OOM
    kill at the default. Now more than ``forward.MAX_ANSWER_BYTES`` is a 502 at once, and the backend sees the close."""
    from gateway.proxy import forward

    monkeypatch.setattr(forward, "MAX_ANSWER_BYTES", 1024 * 1024)
    state: dict[str, Any] = {}
    async with app_backend(_endless_body(state)) as url:
        cfg = gateway_config(url)
        cfg["models"][0]["backends"][0]["first_byte_timeout_s"] = 5.0
        async with running_gateway(cfg) as gw:
            clock = OwnClock()  # (a busy host's CPU waits taken off; the 5 s timer would count in full)
            status, body = await _post_chat(gw)
            assert status == 502 and body["error"]["code"] == "upstream_too_large", body
            assert clock.elapsed() < 2.5  # not the 5 s timeout
            await eventually(lambda: "gone" in state, what="the backend saw the close")
            backend = gw.ctx.router.pool("sim").backends[0]
            assert backend.in_flight == 0


async def test_a_declared_length_over_the_bound_is_refused_and_one_under_it_is_served(monkeypatch: Any) -> None:
    from gateway.proxy import forward

    monkeypatch.setattr(forward, "MAX_ANSWER_BYTES", 1024 * 1024)
    async with app_backend(_endless_body({}, declared=2 * 1024 * 1024)) as url, \
            running_gateway(gateway_config(url)) as gw:
        status, body = await _post_chat(gw)
        assert status == 502 and body["error"]["code"] == "upstream_too_large", body
    # a chunked answer (no Content-Length) under the bound is read whole and served
    async with app_backend(_endless_body({}, total=900 * 1024)) as url, running_gateway(gateway_config(url)) as gw:
        status, body = await _post_chat(gw)
        assert status == 200 and body["choices"][0]["message"]["content"] == "y" * (900 * 1024)



# --- 4. a Responses stream without end ---------------------------------------------------------------------------

def _endless_responses(state: dict[str, Any]) -> web.Application:
    """A Responses stream that opens a message part and then sends 16 KB text deltas for ever."""
    from tests.support.responses_events import sse, stream_events

    async def responses(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        head = [e for e in stream_events("sim", "hello there") if e["type"] in (
            "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added")]
        await resp.write(sse(head))
        piece, n = "word " * 3200, len(head)
        try:
            while True:
                await resp.write(sse([{"type": "response.output_text.delta", "content_index": 0, "output_index": 0,
                                       "item_id": "msg_1", "delta": piece, "logprobs": [], "sequence_number": n}]))
                n += 1
        except BaseException as e:
            state["gone"] = type(e).__name__
            raise

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


async def test_a_responses_stream_without_end_is_ended_at_the_bound() -> None:
    """Defect: the Responses relay keeps every part's text for the part's ``done`` copies, so a backend that
    streamed deltas without end grew the gateway 1:1 with what it relayed (590 MB of RSS after 5 s in the
    repro; the chat relay keeps nothing). A stream keeping more than twice what the backend's own
    ``response.completed`` may carry (``MAX_EVENT_BYTES``) can never complete: it now ends as a malformed
    upstream (the terminating error event), and the backend sees the close."""
    import aiohttp

    state: dict[str, Any] = {}
    async with app_backend(_endless_responses(state)) as url, running_gateway(gateway_config(url)) as gw:
        got = bytearray()

        async def read() -> None:
            async with aiohttp.ClientSession() as s, s.post(
                    gw.url + "/v1/responses", headers={"Authorization": f"Bearer {gw.token('a')}"},
                    json={"model": "sim", "input": "hi", "stream": True}) as r:
                async for chunk in r.content.iter_any():
                    got.extend(chunk)

        await asyncio.wait_for(read(), 20)  # before the fix: no end
        tail = bytes(got[-400:])
        assert b'"code": "upstream_malformed"' in tail, tail
        assert 16 * 1024 * 1024 < len(got) < 20 * 1024 * 1024
        await eventually(lambda: "gone" in state, what="the backend saw the close")
        err = gw.ctx.metrics.stream_errors_total.labels(model="sim", reason="malformed")
        assert err._value.get() == 1


async def test_the_official_client_reads_an_answer_written_in_slices() -> None:
    """Control for section 1: an answer over the socket's write buffer goes out through the handler's own writes
    (a ``StreamResponse`` with the answer's status, headers and length); the official client parses it like
    any other, with the gateway's headers."""
    size = 1024 * 1024
    async with app_backend(_big_answer(size)) as url, running_gateway(gateway_config(url)) as gw:
        client = gw.openai_client("a")
        raw = await client.chat.completions.with_raw_response.create(model="sim", messages=MSGS, max_tokens=size)
        answer = raw.parse()
        assert answer.choices[0].message.content == "x" * size and answer.usage is not None
        assert raw.headers["content-type"].startswith("application/json")
        assert raw.headers["x-request-id"] and "x-ratelimit-remaining-requests" in raw.headers
        assert int(raw.headers["content-length"]) == len(raw.content)
        await client.close()

