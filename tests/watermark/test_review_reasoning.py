"""Review of the reasoning watermark's stream edges: the text an embedder still holds when a stream ends without
an ordinary finish chunk (``[DONE]`` with no finish_reason, upstream EOF, a finish chunk without a ``delta``)
must go through the same response hardening as every other chunk — ``strip_reasoning`` must not let the
chain of thought's held-back tail reach a throttled client — and must reach the client before the choice's
finish_reason, not after it.

Sans-IO against the real embedder and the real ``strip_reasoning`` hook; the held-back tail is large when the
thought has no spaces for a while (CJK text is held up to the next space or line end)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from gateway.proxy.relay import StreamRelay
from gateway.reasoning_strip import strip_reasoning
from tests.watermark.test_reasoning_watermark import FINAL, THOUGHT, _collect, _factory, _pieces, _whole

BASE = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
CJK_TAIL = "所以答案是一台中档笔记本电脑键盘要好"  # no space: the embedder holds all of it back


def _event(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if delta is not None:
        choice["delta"] = delta
    return b"data: " + json.dumps({**BASE, "choices": [choice]}).encode() + b"\n\n"


def _thought_events() -> bytes:
    words = (THOUGHT + " " + CJK_TAIL).split(" ")
    return b"".join(_event({"reasoning": w if i == 0 else " " + w}) for i, w in enumerate(words))


def _text(out: bytes) -> dict[str, str]:
    """The text of every delta, by field (the terminating error event of a cut stream has no choices)."""
    return _collect(b"\n\n".join(e for e in out.split(b"\n\n") if not e.startswith(b'data: {"error"')))


ENDINGS = {
    "done_without_finish": b"data: [DONE]\n\n",
    "eof_without_done": b"",
    "finish_without_delta": _event(None, "stop") + b"data: [DONE]\n\n",
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_strip_reasoning_withholds_the_held_back_tail_however_the_stream_ends(ending: str) -> None:
    relay = StreamRelay("chat", False, _factory("mallory"), choice_hook=strip_reasoning)
    out = relay.feed(_thought_events() + ENDINGS[ending]) + relay.finish()
    assert "reasoning" not in out.decode() and CJK_TAIL[:3] not in out.decode(), out[-400:]


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_without_stripping_the_whole_thought_arrives_watermarked(ending: str) -> None:
    relay = StreamRelay("chat", False, _factory("alice"))
    out = relay.feed(_thought_events() + ENDINGS[ending]) + relay.finish()
    assert _text(out)["reasoning"] == _whole("alice", THOUGHT + " " + CJK_TAIL)


def test_a_finish_chunk_without_a_delta_still_comes_after_all_of_the_text() -> None:
    """Nothing of a choice may follow its finish_reason: clients (and the openai SDK's accumulators) stop
    reading a choice there."""
    raw = (_event({"reasoning": THOUGHT}) + _event({"content": FINAL}) + _event(None, "stop")
           + b"data: [DONE]\n\n")
    relay = StreamRelay("chat", False, _factory("bob"))
    out = relay.feed(raw) + relay.finish()
    events = out.split(b"\n\n")
    finish_at = next(i for i, e in enumerate(events) if e.startswith(b"data: {")
                     and json.loads(e[6:])["choices"][0]["finish_reason"] == "stop")
    got = _collect(out)
    assert got["content"] == _whole("bob", FINAL) and got["reasoning"] == _whole("bob", THOUGHT)
    assert _collect(b"\n\n".join(events[: finish_at + 1])) == got  # everything is in or before it


def _choice_text(out: bytes) -> tuple[dict[int, dict[str, str]], dict[int, int]]:
    """Per choice: the text of each field, and the event number of its finish_reason."""
    text: dict[int, dict[str, str]] = {}
    finished: dict[int, int] = {}
    for n, event in enumerate(out.split(b"\n\n")):
        if not event.startswith(b"data: {"):
            continue
        obj = json.loads(event[len(b"data: "):])
        assert "error" not in obj, obj
        for c in obj["choices"]:
            idx = c["index"]
            assert idx not in finished, f"choice {idx} got more after its finish_reason: {c}"
            assert c.get("logprobs") is None and "token_ids" not in c, c
            for k, v in (c.get("delta") or {}).items():
                if isinstance(v, str):
                    text.setdefault(idx, {})[k] = text.get(idx, {}).get(k, "") + v
            if c.get("finish_reason") is not None:
                finished[idx] = n
    return text, finished


@pytest.mark.parametrize("seed", range(12))
def test_interleaved_choices_with_reasoning_lose_nothing_and_leak_no_tokens(seed: int) -> None:
    """n > 1, choices interleaved, reasoning pieces beside tool-call deltas and logprobs/token_ids, the finish
    chunk sometimes carrying the last text, sometimes without a delta, the stream sometimes ending in [DONE]
    without any finish_reason: per choice, each channel equals the whole text embedded at once."""
    rnd = random.Random(seed)
    n = rnd.randint(1, 3)
    thoughts = [THOUGHT[rnd.randint(0, 200):] for _ in range(n)]
    finals = [FINAL[: rnd.randint(20, len(FINAL))] for _ in range(n)]
    queues: list[list[dict[str, Any]]] = []
    for i in range(n):
        q: list[dict[str, Any]] = [{"index": i, "delta": {"role": "assistant", "content": ""}}]
        for piece in _pieces(thoughts[i], rnd):
            delta: dict[str, Any] = {"reasoning": piece, "content": None}
            if rnd.random() < 0.1:
                delta["tool_calls"] = [{"index": 0, "function": {"arguments": "{}"}}]
            q.append({"index": i, "delta": delta, "logprobs": {"content": [{"token": piece, "logprob": -0.1}]},
                      "token_ids": [1]})
        pieces = _pieces(finals[i], rnd)
        last = pieces.pop() if rnd.random() < 0.5 else None
        q += [{"index": i, "delta": {"content": p}, "token_ids": [2]} for p in pieces]
        ending = rnd.choice(["text", "empty", "no_delta", "none"])
        if last is not None and ending != "text":
            q.append({"index": i, "delta": {"content": last}})
        if ending == "text":
            q.append({"index": i, "delta": {"content": last or ""}, "finish_reason": "stop"})
        elif ending == "empty":
            q.append({"index": i, "delta": {}, "finish_reason": "stop"})
        elif ending == "no_delta":
            q.append({"index": i, "finish_reason": "length"})
        queues.append(q)
    raw = b""
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        c = q.pop(0)
        c.setdefault("finish_reason", None)
        raw += b"data: " + json.dumps({**BASE, "choices": [c]}, ensure_ascii=False).encode() + b"\n\n"
    raw += b"data: [DONE]\n\n"
    relay = StreamRelay("chat", False, _factory("alice"))
    step = rnd.randint(1, 300)
    out = b"".join(relay.feed(raw[i : i + step]) for i in range(0, len(raw), step)) + relay.finish()
    text, _ = _choice_text(out)
    for i in range(n):
        assert text[i]["reasoning"] == _whole("alice", thoughts[i]), i
        assert text[i]["content"] == _whole("alice", finals[i]), i
    assert relay.done and relay.watermarked
