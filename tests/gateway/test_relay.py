"""The stream transform (sans-IO): usage chunk stripped or made compliant, watermark embedders per choice,
comments passed through, and a stream without [DONE] ends with an error event, never a clean end."""

from __future__ import annotations

import copy
import json
from typing import Any

from gateway.proxy.body import transform_body
from gateway.proxy.relay import StreamRelay
from gateway.proxy.sse import SSEComment, SSEDecoder, SSEEvent


def _chunk(content: str | None = None, finish: str | None = None, usage: Any = "absent",
           choices: bool = True, index: int = 0) -> bytes:
    c: dict[str, Any] = {"id": "x", "object": "chat.completion.chunk", "model": "sim"}
    if choices:
        delta = {"content": content} if content is not None else {}
        c["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
    else:
        c["choices"] = []
    if usage != "absent":
        c["usage"] = usage
    return b"data: " + json.dumps(c).encode() + b"\n\n"


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def _events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for item in SSEDecoder().feed(raw):
        if isinstance(item, SSEComment):
            out.append(("comment", item.text))
        elif isinstance(item, SSEEvent):
            out.append("DONE" if item.data == b"[DONE]" else json.loads(item.data))
    return out


def _run(relay: StreamRelay, *chunks: bytes) -> list[Any]:
    return _events(b"".join(relay.feed(c) for c in chunks) + relay.finish())


def test_usage_chunk_stripped_when_client_did_not_ask() -> None:
    r = StreamRelay("chat", False, None)
    ev = _run(r, _chunk("a", usage=None), _chunk("b", usage=None), _chunk(finish="stop", usage=None),
              _chunk(choices=False, usage=USAGE), b"data: [DONE]\n\n")
    assert ev[-1] == "DONE"
    assert all(e == "DONE" or e["choices"] for e in ev)  # no choices:[] chunk reached the client
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 2)
    assert r.finish_reasons == ["stop"] and r.done


def test_usage_chunk_kept_and_compliant_when_client_asked() -> None:
    r = StreamRelay("chat", True, None)
    ev = _run(r, _chunk("a", usage=None), _chunk(finish="stop", usage=None), _chunk(choices=False, usage=USAGE),
              b"data: [DONE]\n\n")
    assert ev[-2]["choices"] == [] and ev[-2]["usage"] == USAGE


def test_piggybacked_usage_is_split_into_a_compliant_chunk() -> None:
    asked = _run(StreamRelay("chat", True, None), _chunk("a", finish="stop", usage=USAGE), b"data: [DONE]\n\n")
    assert asked[0]["choices"][0]["delta"]["content"] == "a" and asked[0]["usage"] is None
    assert asked[1]["choices"] == [] and asked[1]["usage"] == USAGE
    not_asked = _run(StreamRelay("chat", False, None), _chunk("a", finish="stop", usage=USAGE), b"data: [DONE]\n\n")
    assert len(not_asked) == 2 and "usage" not in not_asked[0]


def test_comments_pass_and_missing_done_is_an_error() -> None:
    r = StreamRelay("chat", False, None)
    ev = _run(r, b": ping\n\n", _chunk("a"))
    assert ev[0] == ("comment", b"ping")
    assert ev[-1]["error"]["code"] == "stream_interrupted"
    assert "DONE" not in ev and not r.done and r.content_events == 1


def test_upstream_error_event_is_relayed_without_a_second_error() -> None:
    r = StreamRelay("chat", False, None)
    ev = _run(r, _chunk("a"), b'data: {"error": {"message": "boom"}}\n\n')
    assert ev[-1] == {"error": {"message": "boom"}} and len(ev) == 2


class Upper:
    """A toy embedder that holds back the last character (like a real one holds a partial word)."""

    def __init__(self) -> None:
        self.held = ""

    def feed(self, text: str) -> str:
        s = self.held + text
        self.held = s[-1:]
        return s[:-1].upper()

    def finish(self) -> str:
        out, self.held = self.held.upper(), ""
        return out


def test_embedders_per_choice_and_flush_on_finish() -> None:
    made: list[Upper] = []

    def factory() -> Upper:
        made.append(Upper())
        return made[-1]

    r = StreamRelay("chat", False, factory)
    ev = _run(r, _chunk("ab", index=0), _chunk("xy", index=1), _chunk("c", index=0, finish="stop"),
              _chunk(None, index=1, finish="length"), b"data: [DONE]\n\n")
    text = {0: "", 1: ""}
    for e in ev[:-1]:
        for c in e["choices"]:
            text[c["index"]] += c["delta"].get("content") or ""
    assert text == {0: "ABC", 1: "XY"} and len(made) == 2 and r.watermarked


def test_held_text_is_flushed_at_done_when_no_finish_reason() -> None:
    r = StreamRelay("completions", False, Upper)
    raw = b'data: {"object": "text_completion", "model": "sim", "choices": [{"index": 0, "text": "hey"}]}\n\n'
    ev = _run(r, raw, b"data: [DONE]\n\n")
    assert "".join(e["choices"][0]["text"] for e in ev[:-1]) == "HEY" and ev[-1] == "DONE"


def test_transform_body() -> None:
    body: dict[str, Any] = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "abc"},
                                         "finish_reason": "stop", "logprobs": {"content": [{}, {}, {}]}}],
                            "usage": USAGE}
    plain = copy.deepcopy(body)
    changed, usage, reasons, positions, wm = transform_body("chat", body, Upper)
    assert changed and wm and body["choices"][0]["message"]["content"] == "ABC"
    # the backend's logprob tokens would spell the unwatermarked text: withheld, and not counted as served
    assert body["choices"][0]["logprobs"] is None
    assert (usage.prompt_tokens, usage.completion_tokens, reasons, positions) == (3, 2, ["stop"], 0)
    changed, _, _, positions, wm = transform_body("chat", plain, None)
    assert not changed and not wm and positions == 3 and plain["choices"][0]["logprobs"] is not None


def test_streamed_watermarked_choice_withholds_logprobs() -> None:
    raw = (b'data: {"object": "chat.completion.chunk", "model": "sim", "choices": [{"index": 0, '
           b'"delta": {"content": "ab "}, "logprobs": {"content": [{"token": "ab", "logprob": -0.1}]}}]}\n\n')
    wm, plain = StreamRelay("chat", False, Upper), StreamRelay("chat", False, None)
    ev_wm, ev_plain = _run(wm, raw, b"data: [DONE]\n\n"), _run(plain, raw, b"data: [DONE]\n\n")
    assert ev_wm[0]["choices"][0]["logprobs"] is None and wm.logprob_positions == 0
    assert ev_plain[0]["choices"][0]["logprobs"]["content"][0]["token"] == "ab" and plain.logprob_positions == 1


def test_fast_path_gives_the_same_bytes_and_facts() -> None:
    chunks = [_chunk("a", usage=None), _chunk("b", usage=None), _chunk(finish="stop", usage=None),
              _chunk(choices=False, usage=USAGE), b"data: [DONE]\n\n"]
    slow, fast = StreamRelay("chat", True, None), StreamRelay("chat", True, None, details=False)
    assert _run(slow, *chunks) == _run(fast, *chunks)
    assert fast.finish_reasons == ["stop"] and fast.usage.completion_tokens == 2 and fast.model == "sim"
    assert fast.content_events >= 2
