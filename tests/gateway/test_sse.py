"""The sans-IO SSE decoder/encoder, table-driven: framing, comments, CRLF, multi-line data, split chunks."""

from __future__ import annotations

import pytest

from gateway.proxy.sse import SSEComment, SSEDecoder, SSEEvent, encode_event, encode_item

CASES: list[tuple[str, list[bytes], list[object]]] = [
    ("one event", [b"data: hello\n\n"], [SSEEvent(b"hello")]),
    ("no space after colon", [b"data:hello\n\n"], [SSEEvent(b"hello")]),
    ("only one space stripped", [b"data:  two\n\n"], [SSEEvent(b" two")]),
    ("two events one chunk", [b"data: a\n\ndata: b\n\n"], [SSEEvent(b"a"), SSEEvent(b"b")]),
    ("multi-line data joined with LF", [b"data: a\ndata: b\n\n"], [SSEEvent(b"a\nb")]),
    ("CRLF line endings", [b"data: a\r\n\r\n"], [SSEEvent(b"a")]),
    ("lone CR line endings", [b"data: a\r\rdata: b\r\r"], [SSEEvent(b"a"), SSEEvent(b"b")]),
    ("CRLF split between chunks", [b"data: a\r", b"\n\r", b"\n"], [SSEEvent(b"a")]),
    ("event split mid-field", [b"da", b"ta: he", b"llo\n", b"\n"], [SSEEvent(b"hello")]),
    ("ping comment", [b": ping\n\n"], [SSEComment(b"ping")]),
    ("comment between data lines", [b"data: a\n: keepalive\ndata: b\n\n"],
     [SSEComment(b"keepalive"), SSEEvent(b"a\nb")]),
    ("bare colon comment", [b":\n\n"], [SSEComment(b"")]),
    ("event name and id", [b"event: error\nid: 7\ndata: {}\n\n"], [SSEEvent(b"{}", "error", "7")]),
    ("retry field", [b"retry: 100\ndata: x\n\n"], [SSEEvent(b"x", retry=100)]),
    ("bad retry ignored", [b"retry: soon\ndata: x\n\n"], [SSEEvent(b"x")]),
    ("unknown field ignored", [b"foo: bar\ndata: x\n\n"], [SSEEvent(b"x")]),
    ("field without colon", [b"data\n\n"], [SSEEvent(b"")]),
    ("blank lines alone dispatch nothing", [b"\n\n\n"], []),
    ("unterminated event waits", [b"data: partial\n"], []),
    ("DONE sentinel", [b"data: [DONE]\n\n"], [SSEEvent(b"[DONE]")]),
    ("utf-8 split inside a character", [b"data: \xc3", b"\xa9t\xc3\xa9\n\n"], [SSEEvent("été".encode())]),
]


@pytest.mark.parametrize(("name", "chunks", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decoder(name: str, chunks: list[bytes], expected: list[object]) -> None:
    d = SSEDecoder()
    out: list[object] = []
    for c in chunks:
        out.extend(d.feed(c))
    assert out == expected


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    stream = (b": ping\r\ndata: {\"a\": 1}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n")
    whole = SSEDecoder().feed(stream)
    d = SSEDecoder()
    parts: list[object] = []
    for i in range(0, len(stream), size):
        parts.extend(d.feed(stream[i:i + size]))
    assert parts == whole
    assert [type(x).__name__ for x in whole] == ["SSEComment", "SSEEvent", "SSEEvent", "SSEEvent"]


def test_finish_discards_an_unterminated_event_and_reports_partial() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: cut off") == []
    assert d.has_partial
    assert d.finish() == []


def test_encode_roundtrip() -> None:
    for ev in [SSEEvent(b"x"), SSEEvent(b"a\nb"), SSEEvent(b"{}", "error"), SSEComment(b"ping")]:
        assert SSEDecoder().feed(encode_item(ev)) == [ev]
    assert encode_event(b"a\r\nb") == b"data: a\ndata: b\n\n"
