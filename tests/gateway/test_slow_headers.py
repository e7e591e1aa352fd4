"""A connection whose request headers never finish is let go after server.keepalive_timeout_s (aiohttp's own
default, 3 630 s, let a client that trickles header bytes, before any credential, hold a connection for an
hour). The real `ipgate serve` process; a raw socket sends the headers a byte at a time."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from tests.support.harness import gateway_config
from tests.support.process import GatewayProcess


async def test_a_client_that_never_finishes_its_headers_is_let_go(tmp_path: Path) -> None:
    cfg = gateway_config("http://127.0.0.1:9", server={"keepalive_timeout_s": 2})
    with GatewayProcess(cfg, tmp_path) as gw:
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", gw.port))
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
        t0, closed = time.monotonic(), False
        for i in range(len(head)):
            try:
                await loop.sock_sendall(s, head[i:i + 1])
                closed = await asyncio.wait_for(loop.sock_recv(s, 100), 0.5) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
            break
        s.close()
        assert closed and time.monotonic() - t0 < 5
