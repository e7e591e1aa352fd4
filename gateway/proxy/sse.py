"""Sans-IO Server-Sent Events: feed bytes in, get events out; encode events back to bytes.

Follows the WHATWG event-stream rules that matter for OpenAI-compatible servers:
- lines end in LF, CRLF or a lone CR; a chunk boundary may fall anywhere, even between CR and LF;
- a blank line dispatches the event; ``data:`` lines accumulate, joined with LF;
- one optional space after the colon is removed; a line starting with ``:`` is a comment (``: ping``);
- a field without a colon is a field with an empty value; unknown fields are ignored.

Comments are surfaced as ``SSEComment`` so that a proxy can pass keep-alives through. No I/O here.

Bounded: an event (its pending line plus its accumulated ``data`` lines) larger than ``max_event_bytes``
raises ``SSETooLarge``. Without the bound one endless line from a broken upstream grew the buffer without
limit; a chunk without a line break is only appended (no rescan), so buffering stays linear.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: one per streamed event (a frozen __init__ costs ~3x); never mutated
class SSEEvent:
    data: bytes
    event: str | None = None
    id: str | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class SSEComment:
    text: bytes


SSEItem = SSEEvent | SSEComment

DONE = b"[DONE]"
MAX_EVENT_BYTES = 8 * 1024 * 1024  # far above any real chunk (a tool call's arguments, 20 top logprobs)


class SSETooLarge(ValueError):
    """One event exceeded the decoder's bound: the stream is broken, not merely slow."""


class SSEDecoder:
    """Incremental decoder. ``feed(chunk)`` returns the items completed by this chunk."""

    __slots__ = ("_buf", "_buf_size", "_data", "_data_size", "_event", "_id", "_max", "_parts", "_pending_cr",
                 "_retry")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buf = b""
        self._buf_size = 0
        self._parts: list[bytes] = []  # chunks with no line break yet, joined when one arrives
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._pending_cr = False  # the previous chunk ended in CR: a LF at the start of this one belongs to it

    def feed(self, chunk: bytes) -> list[SSEItem]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = chunk.endswith(b"\r")
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:  # still inside one line: append, do not rescan (linear, not quadratic)
                self._parts.append(chunk)
                self._buf_size += len(chunk)
                self._check(self._buf_size)
            return []
        if self._parts:
            self._buf = b"".join([self._buf, *self._parts])
            self._parts = []
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[SSEItem] = []
        start = 0
        find = buf.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                break
            self._line(buf[start:nl], out)
            start = nl + 1
        self._buf = buf[start:]
        self._buf_size = len(self._buf)
        self._check(self._buf_size)
        return out

    def _check(self, pending: int) -> None:
        if pending + self._data_size > self._max:
            raise SSETooLarge(f"an event exceeds {self._max} bytes")

    def finish(self) -> list[SSEItem]:
        """End of stream: a trailing line without its newline is processed; an event that was never
        terminated by a blank line is discarded, as the spec says."""
        out: list[SSEItem] = []
        if self._parts:
            self._buf = b"".join([self._buf, *self._parts])
            self._parts = []
        if self._buf:
            self._line(self._buf, out)
            self._buf = b""
        self._buf_size = self._data_size = 0
        self._data = []
        self._event = self._id = None
        self._retry = None
        return out

    @property
    def has_partial(self) -> bool:
        """True when bytes of an unfinished event are buffered (useful to tell a clean end from a cut)."""
        return bool(self._buf or self._parts or self._data or self._event)

    def _line(self, line: bytes, out: list[SSEItem]) -> None:
        if not line:
            if self._data or self._event is not None:
                out.append(SSEEvent(b"\n".join(self._data), self._event, self._id, self._retry))
            self._data = []
            self._data_size = 0
            self._event = None
            self._retry = None
            return
        if line[0] == 0x3A:  # ':'
            text = line[1:]
            out.append(SSEComment(text[1:] if text.startswith(b" ") else text))
            return
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_size += len(value) + 1
            self._check(0)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        # any other field name is ignored


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """One event as bytes. Multi-line data becomes several ``data:`` lines."""
    head = f"event: {event}\n".encode() if event else b""
    if b"\n" in data or b"\r" in data:
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head + b"".join(b"data: " + ln + b"\n" for ln in lines) + b"\n"
    return head + b"data: " + data + b"\n\n"


def encode_comment(text: bytes) -> bytes:
    return b": " + text + b"\n\n" if text else b":\n\n"


def encode_item(item: SSEItem) -> bytes:
    if isinstance(item, SSEComment):
        return encode_comment(item.text)
    return encode_event(item.data, item.event)
