"""Slow and hostile clients against a real ``ipgate serve`` process: what each one costs the gateway (RSS) and
how long it is held.

    .venv/bin/python bench/slow_clients.py [--n 40] [--idle 3] [--answer-kib 8192] [--slow-s S] [--only A,B]
                                           [--send-timeout S] [--traced]

Starts a backend (aiohttp, in this process: endless fast SSE streams; non-streamed answers of
``max_tokens`` bytes) and ``ipgate serve`` as a child process (memory store, detection and watermark off, the
backend's ``idle_timeout_s`` = ``--idle``), then runs, one after the other:

- ``stream-never-read``: ``--n`` streams whose clients (raw sockets, 4 KiB receive buffer) read nothing.
  Reports the gateway's RSS growth per stream, what the backend managed to write per stream before
  backpressure stopped it, and whether the streams were ended after ``--idle`` s.
- ``body-never-read``: ``--n`` non-streamed requests whose answer is ``--answer-kib`` KiB; the clients read
  nothing. Reports RSS growth per request and whether the gateway still holds the connections after
  ``2 * --idle + 2`` s.
- ``slow-headers`` / ``slow-body``: ``--n`` connections that send a request's headers (or its body) one byte
  every second for ``--slow-s`` s (default ``2 * --idle + 2``), then nothing for 12 s; reports how many
  connections the gateway still holds then.

- ``anonymous-body``: ``--n`` connections with no credential, each declaring a 4 MiB body and sending all of it
  but its last byte at once; reports the gateway's RSS growth after 2 s and how many were answered (a 401 before
  the body is read; when the body was read first, each held its 4 MiB until the 60 s body deadline).
- ``pipelined-never-read``: ``--n`` connections writing unauthenticated requests as fast as the gateway
  takes them for ``--slow-s`` s, reading nothing, then silent for 12 s: connections still held (closed once
  none of their answers' bytes were taken for ``--send-timeout`` s: ``server.send_timeout_s``).
- ``endless-answer`` / ``endless-responses`` (a broken backend): a non-streamed answer without end (peak RSS,
  and what the client got within ``2 * --idle + 2`` s); a Responses stream of text deltas without end, read as
  it comes for that long (how much was relayed, whether the gateway ended it, RSS after).

RSS is read from ``/proc/<pid>/status`` (VmRSS) of the gateway process; it rarely drops once the allocator
has grown, so ``--traced`` runs the gateway under ``bench/memprobe.py`` and also reports its Python heap
(tracemalloc), which does (slower: keep ``--idle`` at 8-10 s so the streams stall before their bound). For an
A/B run, copy this file into a checkout of the other build and run it from there: the gateway comes from the
checkout it is run in. Bench only: the product has no such switch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.process import GatewayProcess

STATE: dict[str, Any] = {"written": {}, "open": 0}


def _chunk(text: str) -> bytes:
    obj = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "sim",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("user") == "endless":  # a broken backend: a 200 JSON answer that never ends
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        while True:
            await resp.write(b'{"x": "' + b"y" * 65536)
    if not body.get("stream"):
        n = int(body.get("max_tokens", 16))
        return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "sim",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * n},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": n // 4,
                                            "total_tokens": 3 + n // 4}})
    rid = request.headers.get("X-Request-Id", "?")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    piece = _chunk("x" * 2000)
    STATE["open"] += 1
    try:
        while True:
            await resp.write(piece)
            STATE["written"][rid] = STATE["written"].get(rid, 0) + len(piece)
    finally:
        STATE["open"] -= 1


class TracedGateway(GatewayProcess):
    """``ipgate serve`` under ``bench/memprobe.py`` (tracemalloc, a sample every 0.5 s): ``traced_kib()`` is the
    Python heap in use, which, unlike RSS, drops again when the memory is freed."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        super().__init__(config, workdir)
        self.probe_dir = workdir / "probe"
        # memprobe.py imports the gateway from its own tree (a checkout beside this one, for an A/B run), not the
        # one installed in the virtualenv
        self.env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "memprobe.py"), "run", str(self.probe_dir), "--frames", "1",
             "--every", "0.5", "--snap-every", "1e9", "--", "serve", "--config", str(self.config_path)],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready() == 200:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"ipgate serve did not become ready:\n{self.output()}")

    def traced_kib(self) -> int:
        lines = (self.probe_dir / "samples.jsonl").read_text().splitlines()
        return int(json.loads(lines[-1]).get("traced", 0)) // 1024


def heap_kib(gw: GatewayProcess) -> int | None:
    return gw.traced_kib() if isinstance(gw, TracedGateway) else None


async def responses(request: web.Request) -> web.StreamResponse:
    """A broken backend's Responses stream: a message part opened, then 16 KB text deltas for ever."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    created = {"id": "resp_1", "object": "response", "model": "sim", "status": "in_progress", "output": []}
    evs: list[dict[str, Any]] = [
           {"type": "response.created", "response": created},
           {"type": "response.output_item.added", "output_index": 0,
            "item": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "status": "in_progress"}},
           {"type": "response.content_part.added", "output_index": 0, "item_id": "msg_1", "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}]
    n = 0
    while True:
        ev = evs[n] if n < len(evs) else {"type": "response.output_text.delta", "content_index": 0,
                                          "output_index": 0, "item_id": "msg_1", "delta": "word " * 3200,
                                          "logprobs": []}
        await resp.write(f"event: {ev['type']}\ndata: {json.dumps({**ev, 'sequence_number': n})}\n\n".encode())
        n += 1


async def endless_answer(gw: GatewayProcess, pid: int, seconds: float) -> dict[str, Any]:
    """A backend whose non-streamed answer never ends; the client waits up to ``seconds``."""
    import aiohttp

    base = peak = rss_kib(pid)
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        task = asyncio.ensure_future(s.post(gw.url + "/v1/chat/completions",
                                            headers={"Authorization": f"Bearer {gw.token('e')}"},
                                            json={"model": "sim", "messages": [{"role": "user", "content": "hi"}],
                                                  "user": "endless"}))
        while not task.done() and time.monotonic() - t0 < seconds:
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.1)
        if task.done():
            r = task.result()
            status, code = r.status, (await r.json())["error"]["code"]
        else:
            task.cancel()
            status, code = None, "no answer yet"
    return {"scenario": "endless-answer", "rss_base_kib": base, "rss_peak_kib": peak, "status": status,
            "code": code, "seconds": round(time.monotonic() - t0, 1)}


async def endless_responses(gw: GatewayProcess, pid: int, seconds: float) -> dict[str, Any]:
    """A Responses stream without end, read as fast as it comes for up to ``seconds``."""
    import aiohttp

    base, got, tail = rss_kib(pid), 0, b""
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/responses", headers={"Authorization": f"Bearer {gw.token('e')}"},
            json={"model": "sim", "input": "hi", "stream": True}) as r:
        async for chunk in r.content.iter_any():
            got += len(chunk)
            tail = (tail + chunk)[-300:]
            if time.monotonic() - t0 > seconds:
                break
    return {"scenario": "endless-responses", "relayed_kib": got // 1024, "seconds": round(time.monotonic() - t0, 1),
            "ended_by_gateway": b"upstream_malformed" in tail, "rss_base_kib": base, "rss_after_kib": rss_kib(pid)}


async def pipelined_never_read(gw: GatewayProcess, pid: int, n: int, seconds: float) -> dict[str, Any]:
    """``n`` connections writing unauthenticated requests as fast as the gateway takes them, reading nothing."""
    loop = asyncio.get_running_loop()
    req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" * 50
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", gw.port))
        socks.append(s)
    base, sent, t0 = rss_kib(pid), 0, time.monotonic()
    reset: dict[int, float] = {}  # socket -> seconds after the start when the gateway closed it
    while time.monotonic() - t0 < seconds:
        for i, s in enumerate(socks):
            if i in reset:
                continue
            try:
                sent += s.send(req)
            except BlockingIOError:
                pass
            except OSError:  # closed by the gateway's send deadline
                reset[i] = time.monotonic() - t0
        await asyncio.sleep(0.05)
    await asyncio.sleep(12)
    out = {"scenario": "pipelined-never-read", "n": n, "requests_sent": sent * 50 // len(req),
           "rss_base_kib": base, "rss_kib": rss_kib(pid), "then_silent_s": 12,
           "closed_while_sending_at_s": sorted(round(v, 1) for v in reset.values()),
           "gateway_conns_still_open": gateway_conns(pid, gw.port)}
    for s in socks:
        s.close()
    return out


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model"}]})


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gateway_conns(pid: int, port: int) -> int:
    """Established TCP connections of the gateway's listening port (from /proc/net/tcp)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == "01":
            n += 1
    return n


async def raw_request(port: int, token: str, body: dict[str, Any], rcvbuf: int = 4096) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", port))
    await loop.sock_sendall(s, (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
                                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
                            + data)
    return s


async def settle_rss(pid: int, seconds: float = 1.0) -> int:
    await asyncio.sleep(seconds)
    return rss_kib(pid)


async def stream_never_read(gw: GatewayProcess, pid: int, n: int, idle: float) -> dict[str, Any]:
    STATE["written"].clear()
    base = await settle_rss(pid)
    socks = [await raw_request(gw.port, gw.token("c0"),
                               {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                "max_tokens": 100000}) for i in range(n)]
    heap_base = heap_kib(gw)
    await asyncio.sleep(min(1.5 + n / 50, idle / 2))
    held = rss_kib(pid)
    heap_held = heap_kib(gw)
    written = sorted(STATE["written"].values())
    open_during = STATE["open"]
    await asyncio.sleep(idle + 2)
    released = rss_kib(pid)
    heap_released = heap_kib(gw)
    out: dict[str, Any] = {"scenario": "stream-never-read", "n": n, "rss_base_kib": base, "rss_held_kib": held,
           "rss_after_release_kib": released, "rss_held_per_stream_kib": round((held - released) / n, 1),
           "backend_bytes_per_stream_median": written[len(written) // 2] if written else 0,
           "backend_streams_open_while_stalled": open_during,
           "backend_streams_open_after_idle": STATE["open"], "gateway_conns_after_idle": gateway_conns(pid, gw.port)}
    if heap_held is not None and heap_released is not None:
        out.update(heap_before_kib=heap_base, heap_held_kib=heap_held, heap_released_kib=heap_released,
                   heap_per_stream_kib=round((heap_held - heap_released) / n, 1))
    for s in socks:
        s.close()
    return out


async def body_never_read(gw: GatewayProcess, pid: int, n: int, idle: float, answer_kib: int) -> dict[str, Any]:
    base = await settle_rss(pid)
    socks = [await raw_request(gw.port, gw.token(f"d{i % 4}"),
                               {"model": "sim", "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": answer_kib * 1024}) for i in range(n)]
    held = await settle_rss(pid, 2.0)
    heap_held = heap_kib(gw)
    await asyncio.sleep(2 * idle + 2)
    out: dict[str, Any] = {"scenario": "body-never-read", "n": n, "answer_kib": answer_kib, "rss_base_kib": base,
           "rss_held_kib": held, "rss_per_request_kib": round((held - base) / n, 1),
           "gateway_conns_after_2idle": gateway_conns(pid, gw.port), "rss_after_2idle_kib": rss_kib(pid)}
    if heap_held is not None:
        out.update(heap_held_kib=heap_held, heap_after_2idle_kib=heap_kib(gw))
    for s in socks:
        s.close()
    await asyncio.sleep(1)
    out["rss_after_close_kib"] = rss_kib(pid)
    if heap_held is not None:
        out["heap_after_close_kib"] = heap_kib(gw)
    return out


async def slow_bytes(gw: GatewayProcess, pid: int, n: int, seconds: float, what: str) -> dict[str, Any]:
    token = gw.token("slow")
    data = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", gw.port))
        if what == "slow-body":
            await loop.sock_sendall(s, head)
        socks.append(s)
    trickle = head if what == "slow-headers" else data
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds and i < len(trickle) - 1:
        for s in socks:
            with contextlib.suppress(OSError):
                await loop.sock_sendall(s, trickle[i:i + 1])
        i += 1
        await asyncio.sleep(1.0)
    trickled = round(time.monotonic() - t0, 1)
    await asyncio.sleep(12)  # silent now: past aiohttp's lingering read (10 s) after an early answer
    out = {"scenario": what, "n": n, "trickled_s": trickled, "then_silent_s": 12,
           "gateway_conns_still_open": gateway_conns(pid, gw.port)}
    for s in socks:
        s.close()
    return out


async def anonymous_body(gw: GatewayProcess, pid: int, n: int) -> dict[str, Any]:
    base = await settle_rss(pid)
    loop = asyncio.get_running_loop()
    size = 4 * 1024 * 1024
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode())
    body = b"{" + b" " * (size - 2)
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        socks.append(sock)
    await asyncio.gather(*(asyncio.wait_for(loop.sock_sendall(s, head + body), 30) for s in socks))
    held = await settle_rss(pid, 2.0)
    answered = 0
    for sock in socks:
        with contextlib.suppress(OSError):
            answered += sock.recv(65536).startswith(b"HTTP/1.1 401")
        sock.close()
    return {"scenario": "anonymous-body", "n": n, "rss_growth_kib": held - base, "answered_401": answered}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--answer-kib", type=int, default=8192)
    ap.add_argument("--slow-s", type=float, default=0.0, help="how long the slow-* clients trickle (0: 2*idle+2)")
    ap.add_argument("--only", default="")
    ap.add_argument("--send-timeout", type=float, default=60.0, help="the gateway's server.send_timeout_s")
    ap.add_argument("--traced", action="store_true", help="run the gateway under bench/memprobe.py (tracemalloc) "
                    "and report its Python heap too")
    a = ap.parse_args()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", models)  # the gateway's health check
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cfg = {"server": {"send_timeout_s": a.send_timeout},
           "store": {"kind": "memory"}, "auth": {"jwt": {"algorithms": ["HS256"], "audience": "ipgate"}},
           "detection": {"enabled": False}, "watermark": {"enabled": False},
           "limits": {"default": {"requests_per_minute": 100000, "tokens_per_minute": 10**9}},
           "models": [{"name": "sim", "backends": [{"name": "b0", "url": f"http://127.0.0.1:{port}",
                                                    "idle_timeout_s": a.idle, "max_concurrency": 1024}]}]}
    with tempfile.TemporaryDirectory() as tmp, \
            (TracedGateway(cfg, Path(tmp)) if a.traced else GatewayProcess(cfg, Path(tmp))) as gw:
        assert gw.proc is not None
        pid = gw.proc.pid
        await settle_rss(pid)
        slow_s = a.slow_s or 2 * a.idle + 2
        for name in ("stream-never-read", "body-never-read", "slow-headers", "slow-body", "anonymous-body",
                     "pipelined-never-read", "endless-answer", "endless-responses"):
            if a.only and name not in a.only.split(","):
                continue
            if name == "anonymous-body":
                out = await anonymous_body(gw, pid, a.n)
            elif name == "pipelined-never-read":
                out = await pipelined_never_read(gw, pid, a.n, slow_s)
            elif name == "endless-answer":
                out = await endless_answer(gw, pid, 2 * a.idle + 2)
            elif name == "endless-responses":
                out = await endless_responses(gw, pid, 2 * a.idle + 2)
            elif name == "stream-never-read":
                out = await stream_never_read(gw, pid, a.n, a.idle)
            elif name == "body-never-read":
                out = await body_never_read(gw, pid, a.n, a.idle, a.answer_kib)
            else:
                out = await slow_bytes(gw, pid, a.n, slow_s, name)
            print(json.dumps(out), flush=True)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
