"""Review session 15 of ``POST /v1/responses``: a backend writing what the relay did not expect (non-object items
and parts, unhashable types), a stream ending without the parts' ``done`` events, and a part the stream never
announced. The real gateway, a real aiohttp fake backend (``Crafted``), the official openai client.

The leak check: the backend's text is ANSWER (the lexical watermark always changes it), so a verbatim ANSWER in
what the client receives is text relayed unwatermarked.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.test_responses_review import Crafted, _leaks, _post
from tests.support.harness import lexical_gateway
from tests.support.lexical import ANSWER
from tests.support.responses_events import parse_sse, response_body, stream_events

SECRET = "responses-session15-master-secret-0123456789"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Any]:
    backend = Crafted()
    async with lexical_gateway(backend.app(), SECRET, tmp_path) as g:
        g.backend = backend  # type: ignore[attr-defined]
        yield g


def _delta_text(raw: str) -> str:
    return "".join(e["delta"] for e in parse_sse(raw.encode()) if e.get("type") == "response.output_text.delta")


# --- non-object items and parts -------------------------------------------------------------------------------

async def test_body_items_and_parts_that_are_not_objects_are_not_relayed(gw: Any) -> None:
    body = response_body("sim", ANSWER)
    body["output"].append(ANSWER)  # an item that is a bare string
    body["output"][0]["content"].append(ANSWER)  # a part that is a bare string
    body["output"][0]["summary"] = [ANSWER]
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and not _leaks(text), text
    got = json.loads(text)
    assert [i["type"] for i in got["output"]] == ["message"]


async def test_stream_snapshot_items_and_parts_that_are_not_objects_are_not_relayed(gw: Any) -> None:
    events = stream_events("sim", ANSWER, step=9)
    for e in events:
        if e["type"] == "response.completed":
            e["response"]["output"].append(ANSWER)
            e["response"]["output"][0]["content"].append(ANSWER)
        elif e["type"] == "response.output_item.done":
            e["item"]["content"].append(ANSWER)
        elif e["type"] == "response.output_item.added":
            e["item"]["content"] = [ANSWER]
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text


# --- unhashable types from the backend ----------------------------------------------------------------------

@pytest.mark.parametrize("where", ["item", "part"])
async def test_body_with_an_unhashable_type_is_not_a_crash(gw: Any, where: str) -> None:
    body = response_body("sim", ANSWER)
    if where == "item":
        body["output"].append({"type": ["message"], "content": [{"type": "output_text", "text": ANSWER}]})
    else:
        body["output"][0]["content"].append({"type": {"x": 1}, "text": ANSWER})
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and not _leaks(text), text


@pytest.mark.parametrize("where", ["item", "part", "snapshot"])
async def test_stream_with_an_unhashable_type_is_not_a_crash(gw: Any, where: str) -> None:
    events = stream_events("sim", ANSWER, step=9)
    for e in events:
        if where == "item" and e["type"] == "response.output_item.added":
            e["item"]["type"] = ["message"]
        elif where == "part" and e["type"] == "response.content_part.done":
            e["part"]["type"] = ["output_text"]
        elif where == "snapshot" and e["type"] == "response.completed":
            e["response"]["output"][0]["content"].append({"type": ["x"], "text": ANSWER})
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text
    assert parse_sse(text.encode())[-1].get("type") == "response.completed", text[-500:]


# --- held-back words at the end of a stream -----------------------------------------------------------------

@pytest.mark.parametrize("final", ["response.completed", "response.incomplete", "response.failed"])
async def test_a_final_event_without_done_events_still_delivers_the_held_back_word(gw: Any, final: str) -> None:
    full = stream_events("sim", ANSWER, step=9)
    gw.backend.events = full
    _, text = await _post(gw, {"stream": True})
    expected = _delta_text(text)
    assert expected and expected.split()[-1]
    # the same deltas, then the terminal event straight away (its snapshot without output, as a thin server writes)
    events = [e for e in full if e["type"] in ("response.created", "response.in_progress",
                                                "response.output_item.added", "response.content_part.added",
                                                "response.output_text.delta")]
    last = copy.deepcopy(full[-1])
    last["type"] = final
    last["response"]["output"] = []
    last["response"]["status"] = {"response.completed": "completed", "response.incomplete": "incomplete",
                                  "response.failed": "failed"}[final]
    gw.backend.events = [*events, last]
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text
    assert _delta_text(text) == expected


# --- a field of another event type ----------------------------------------------------------------------------

@pytest.mark.parametrize(("etype", "extra"), [
    ("response.output_text.delta", {"text": ANSWER}),  # a done event's field on a delta event
    ("response.output_text.delta", {"refusal": ANSWER}),
    ("response.output_text.delta", {"part": {"type": "output_text", "text": ANSWER}}),
    ("response.output_text.delta", {"item": ANSWER}),
    ("response.output_text.done", {"delta": ANSWER}),
    ("response.content_part.added", {"text": ANSWER}),
    ("response.content_part.done", {"delta": ANSWER}),
    ("response.output_item.done", {"text": ANSWER}),
    ("response.completed", {"text": ANSWER}),  # beside the response object
    ("response.created", {"delta": ANSWER}),
])
async def test_stream_text_in_a_field_of_another_event_type_is_not_relayed(gw: Any, etype: str,
                                                                            extra: dict[str, Any]) -> None:
    events = stream_events("sim", ANSWER, step=9)
    e = next(e for e in events if e["type"] == etype)
    e.update(copy.deepcopy(extra))
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text


# --- a part the stream never announced ------------------------------------------------------------------------

@pytest.mark.parametrize("announced", ["nothing", "item"])
async def test_a_part_the_stream_never_announced_does_not_break_the_sdk(gw: Any, announced: str) -> None:
    full = stream_events("sim", ANSWER, step=9)
    keep = {"response.created", "response.in_progress", "response.completed"}
    if announced == "item":  # the item's events, but no content_part.added and no deltas
        keep |= {"response.output_item.added", "response.output_item.done"}
    gw.backend.events = [e for e in full if e["type"] in keep]
    client = gw.openai_client("alice")
    async with client.responses.stream(model="sim", input="hi") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text and final.output_text != ANSWER


# --- request side: text the backend reads that the chat view did not --------------------------------------------

HIDDEN = "Translate the following proprietary benchmark item word for word: the quick brown fox."


@pytest.mark.parametrize("role", ["assistant", "user"])
def test_a_text_beside_a_replayed_refusal_is_in_the_chat_view(role: str) -> None:
    """vLLM validates a replayed assistant message (id + status) as ResponseOutputMessage, whose refusal part keeps
    an extra ``text``; its chat path reads ``content[0].text`` and its harmony path every part's ``text``: the
    model read HIDDEN while detection and the token estimate read only the refusal."""
    from gateway.proxy.responses_request import responses_view

    part = {"type": "refusal", "refusal": "I cannot help.", "text": HIDDEN}
    view = responses_view({"input": [
        {"type": "message", "role": role, "id": "msg_1", "status": "in_progress", "content": [part]}]})
    assert any(HIDDEN in (m.get("content") or "") for m in view["messages"]), view
    with pytest.raises(Exception, match=r"input\[0\]\.content\[0\]\.text"):
        responses_view({"input": [{"type": "message", "role": role, "content": [{**part, "text": [HIDDEN]}]}]})


async def test_a_text_beside_a_replayed_refusal_is_charged(gw: Any) -> None:
    """The same through the gateway: the reservation (the chat view's estimate) counts the hidden text."""
    gw.backend.body = response_body("sim", ANSWER)
    big = HIDDEN * 200
    item = {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
            "content": [{"type": "refusal", "refusal": "No.", "text": big}]}
    from gateway.proxy.parse import parse_request

    raw = json.dumps({"model": "sim", "input": [item, {"role": "user", "content": "go on"}]}).encode()
    parsed = parse_request("responses", raw, {"sim"})
    from gateway.ratelimit import estimate_parts

    prompt, _ = estimate_parts("/v1/responses", parsed.seen)
    assert prompt >= len(big) // 4
    status, text = await _post(gw, {"input": [item, {"role": "user", "content": "go on"}]})
    assert status == 200, text


# --- an output that is not a list -----------------------------------------------------------------------------

async def test_body_output_that_is_not_a_list_is_not_relayed(gw: Any) -> None:
    body = response_body("sim", ANSWER)
    body["output"] = ANSWER
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and not _leaks(text), text


@pytest.mark.parametrize("etype", ["response.created", "response.in_progress", "response.completed"])
async def test_stream_snapshot_output_that_is_not_a_list_is_not_relayed(gw: Any, etype: str) -> None:
    events = stream_events("sim", ANSWER, step=9)
    for e in events:
        if e["type"] == etype:
            e["response"]["output"] = {"text": ANSWER}
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text


async def test_an_item_announced_late_as_unknown_gets_no_more_events(gw: Any) -> None:
    """Deltas for a message, then its ``output_item.done`` says it is a custom tool call: nothing more of it is
    relayed (its held-back word is not flushed before ``response.completed``, now that open parts are closed
    there)."""
    full = stream_events("sim", ANSWER, step=9)
    gw.backend.events = full
    _, text = await _post(gw, {"stream": True})
    whole = _delta_text(text)
    events = [e for e in full if e["type"] not in ("response.output_text.done", "response.content_part.done",
                                                  "response.output_item.done")]
    late = {"type": "response.output_item.done", "output_index": 0,
            "item": {"id": "msg_1", "type": "custom_tool_call", "call_id": "c", "name": "x", "input": ANSWER}}
    events.insert(len(events) - 1, late)
    events[-1]["response"]["output"] = [late["item"]]
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text
    got = _delta_text(text)
    assert whole.startswith(got) and got != whole  # the held-back word stays withheld with its item
