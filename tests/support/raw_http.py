"""A raw HTTP/1.1 client over a socket, driven byte by byte: for what no client library lets a test do (send only
the headers of an ``Expect: 100-continue`` request, pipeline requests, never read an answer)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from tests.support.harness import GatewayHandle


class Raw:
    """One HTTP/1.1 connection driven byte by byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got = b""

    @classmethod
    async def open(cls, gw: GatewayHandle | str, *, rcvbuf: int | None = None) -> Raw:
        """To the gateway's public listener, or to the ``http://127.0.0.1:PORT`` given. ``rcvbuf``: the socket's
        receive buffer (set before connecting, so the window is that small)."""
        url = gw if isinstance(gw, str) else gw.url
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _more(self, timeout_s: float = 5.0) -> bool:
        part = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout_s)
        self.got += part
        return bool(part)

    async def until(self, marker: bytes) -> bytes:
        """Everything received until ``marker`` is in it (or the peer closed)."""
        while marker not in self.got and await self._more():
            pass
        return self.got

    async def to_close(self, timeout_s: float = 5.0) -> bytes:
        """Everything received until the peer closed the connection (a reset after an answer included: a
        server that closes with bytes of ours unread resets the connection)."""
        try:
            while await self._more(timeout_s):
                pass
        except ConnectionResetError:
            pass
        return self.got

    async def answer(self) -> tuple[bytes, dict[str, str], dict[str, Any]]:
        """The status line, headers (names lower-cased) and JSON body of a final answer."""
        await self.until(b"\r\n\r\n")
        head = self.got.partition(b"\r\n\r\n")[0]
        lines = head.split(b"\r\n")
        headers = {k.decode().lower(): v.decode().strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        size = int(headers["content-length"])
        while len(self.got) < len(head) + 4 + size and await self._more():
            pass
        return lines[0], headers, json.loads(self.got[len(head) + 4:len(head) + 4 + size])

    def close(self) -> None:
        self.sock.close()


def request_head(auth: str | None, length: int, *, expect: str | None = "100-continue",
                 path: str = "/v1/chat/completions") -> bytes:
    """The headers of a JSON POST of ``length`` bytes (``Expect: 100-continue`` unless ``expect`` is None)."""
    lines = [f"POST {path} HTTP/1.1", "Host: gw", "Content-Type: application/json", f"Content-Length: {length}"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    if expect is not None:
        lines.append(f"Expect: {expect}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
