"""A Responses API answer as vLLM 0.33 writes it (vllm/entrypoints/openai/responses/streaming_events.py,
the "simple" non-harmony path): the event stream and the non-streaming body, for tests of the gateway's
Responses relay. Text is split into small deltas, mid-word (and mid-character when encoded, by the caller's
chunking)."""

from __future__ import annotations

import json
import time
from typing import Any


def _usage(inp: int, out: int, reasoning: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": inp + out}


def _lp(text: str) -> list[dict[str, Any]]:
    return [{"token": w, "logprob": -0.5, "top_logprobs": [{"token": w, "logprob": -0.5}]} for w in text.split()]


def response_body(model: str, text: str, reasoning: str | None = None, *, logprobs: bool = False,
                  status: str = "completed", usage: tuple[int, int] = (12, 300)) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if reasoning is not None:
        output.append({"id": "rs_1", "type": "reasoning", "summary": [], "status": None,
                       "content": [{"type": "reasoning_text", "text": reasoning}]})
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": [],
                            "logprobs": _lp(text) if logprobs else None}
    output.append({"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                   "content": [part]})
    return {"id": "resp_1", "object": "response", "created_at": int(time.time()), "model": model,
            "status": status, "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": _usage(*usage)}


def stream_events(model: str, text: str, reasoning: str | None = None, *, logprobs: bool = False,
                  step: int = 5) -> list[dict[str, Any]]:
    """The events of a streamed answer, sequence-numbered like vLLM."""
    events: list[dict[str, Any]] = []
    pending = {**response_body(model, text, reasoning, logprobs=logprobs), "status": "in_progress", "output": [],
               "usage": None}

    def add(**ev: Any) -> None:
        events.append({**ev, "sequence_number": len(events)})

    add(type="response.created", response=pending)
    add(type="response.in_progress", response=pending)
    oi = 0
    if reasoning is not None:
        add(type="response.output_item.added", output_index=oi,
            item={"id": "rs_1", "type": "reasoning", "summary": [], "status": "in_progress"})
        add(type="response.content_part.added", output_index=oi, item_id="rs_1", content_index=0,
            part={"text": "", "type": "reasoning_text"})
        for i in range(0, len(reasoning), step):
            add(type="response.reasoning_text.delta", item_id="rs_1", output_index=oi, content_index=0,
                delta=reasoning[i : i + step])
        add(type="response.reasoning_text.done", item_id="rs_1", output_index=oi, content_index=0, text=reasoning)
        part = {"text": reasoning, "type": "reasoning_text"}
        add(type="response.content_part.done", item_id="rs_1", output_index=oi, content_index=0, part=part)
        add(type="response.output_item.done", output_index=oi, item={
            "id": "rs_1", "type": "reasoning", "summary": [], "status": "completed", "content": [part]})
        oi += 1
    add(type="response.output_item.added", output_index=oi, item={
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "status": "in_progress"})
    add(type="response.content_part.added", output_index=oi, item_id="msg_1", content_index=0,
        part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    for i in range(0, len(text), step):
        piece = text[i : i + step]
        add(type="response.output_text.delta", content_index=0, output_index=oi, item_id="msg_1", delta=piece,
            logprobs=_lp(piece) if logprobs else [])
    add(type="response.output_text.done", output_index=oi, content_index=0, text=text, logprobs=[],
        item_id="msg_1")
    tpart = {"type": "output_text", "text": text, "annotations": [], "logprobs": _lp(text) if logprobs else None}
    add(type="response.content_part.done", item_id="msg_1", output_index=oi, content_index=0, part=tpart)
    add(type="response.output_item.done", output_index=oi, item={
        "id": "msg_1", "type": "message", "role": "assistant", "content": [tpart], "status": "completed"})
    add(type="response.completed", response=response_body(model, text, reasoning, logprobs=logprobs))
    return events


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n".encode()
                    for e in events)


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """The data objects of an SSE byte stream (the gateway's output), in order."""
    out = []
    for block in raw.decode().split("\n\n"):
        data = [ln[6:] for ln in block.split("\n") if ln.startswith("data: ")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out
