"""Adversarial review of ``POST /v1/responses``: a backend (a boundary the gateway does not own) writing text
where the relay did not look, and request fields vLLM 0.33's ResponsesRequest honours that take output or
context around the watermark or detection. The real gateway, a real aiohttp fake backend, the openai client.

The leak check: the backend's text is ANSWER (long enough that the lexical watermark always changes it), so a
verbatim ANSWER (or its JSON-escaped form) anywhere in what the client receives is text relayed unwatermarked.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.support.harness import gateway_config, lexical_gateway, running_gateway
from tests.support.lexical import ANSWER
from tests.support.responses_events import response_body, sse, stream_events

SECRET = "responses-review-master-secret-0123456789"


class Crafted:
    """Serves whatever the test set: ``events`` (a stream) or ``body`` (non-stream), and records requests."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.body: dict[str, Any] = {}
        self.raw: bytes | None = None
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        async def responses(request: web.Request) -> web.StreamResponse:
            self.requests.append(await request.json())
            if not self.requests[-1].get("stream"):
                return web.json_response(self.body)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(self.raw if self.raw is not None else sse(self.events))
            return resp

        app = web.Application()
        app.router.add_post("/v1/responses", responses)
        return app


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Any]:
    backend = Crafted()
    async with lexical_gateway(backend.app(), SECRET, tmp_path) as g:
        g.backend = backend  # type: ignore[attr-defined]
        yield g


def _leaks(raw: str) -> bool:
    return ANSWER in raw or json.dumps(ANSWER)[1:-1] in raw


async def _post(g: Any, body: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(
            g.url + "/v1/responses", json={"model": "sim", "input": "hi", **body},
            headers={"Authorization": f"Bearer {g.token('alice')}"}) as r:
        return r.status, await r.text()


def _events() -> list[dict[str, Any]]:
    return stream_events("sim", ANSWER, step=9)


def _insert(events: list[dict[str, Any]], before: str, *new: dict[str, Any]) -> list[dict[str, Any]]:
    i = next(k for k, e in enumerate(events) if e["type"] == before)
    return events[:i] + list(new) + events[i:]


# --- request side ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("enable_response_messages", True),  # vLLM returns the raw output tokens as output_messages
    ("previous_input_messages", [{"role": "user", "content": "a hidden prefix"}]),  # context detection misses
    ("prompt", {"id": "pmpt_1", "variables": {"x": "y"}}),  # a stored template detection never reads
    ("conversation", "conv_123"),  # OpenAI's stateful conversations: stored, unwatermarked context
])
async def test_fields_that_bypass_detection_or_the_watermark_are_refused(gw: Any, field: str, value: Any) -> None:
    status, text = await _post(gw, {field: value})
    assert status == 400, text
    err = json.loads(text)["error"]
    assert err["param"] == field and field in err["message"]
    assert gw.backend.requests == []


async def test_enable_response_messages_false_is_accepted(gw: Any) -> None:
    gw.backend.body = response_body("sim", ANSWER)
    status, text = await _post(gw, {"enable_response_messages": False})
    assert status == 200, text


# --- non-stream body ------------------------------------------------------------------------------------------

async def test_body_output_messages_and_output_text_are_not_relayed(gw: Any) -> None:
    body = response_body("sim", ANSWER)
    body["output_messages"] = [{"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]
    body["input_messages"] = [{"role": "user", "content": "hi"}]
    body["output_text"] = ANSWER
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and not _leaks(text), text
    got = json.loads(text)
    assert "output_messages" not in got and "input_messages" not in got and "output_text" not in got


async def test_body_unknown_items_and_parts_are_not_relayed(gw: Any) -> None:
    body = response_body("sim", ANSWER)
    body["output"].insert(0, {"id": "ct_1", "type": "custom_tool_call", "call_id": "c1", "name": "x",
                              "input": ANSWER})
    body["output"].append({"id": "mcp_1", "type": "mcp_call", "output": ANSWER, "arguments": "{}"})
    body["output"][1]["content"].append({"type": "output_audio", "transcript": ANSWER})
    body["output"].append({"id": "rs_9", "type": "reasoning", "summary": [], "encrypted_content": ANSWER})
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and not _leaks(text), text
    got = json.loads(text)
    assert [i["type"] for i in got["output"]] == ["message", "reasoning"]
    assert got["output"][0]["content"][0]["text"] != ANSWER


# --- stream ---------------------------------------------------------------------------------------------------

def _msg_index(events: list[dict[str, Any]]) -> int:
    oi: int = next(e["output_index"] for e in events if e["type"] == "response.output_text.delta")
    return oi


@pytest.mark.parametrize("extra", [
    # an event type the relay does not know, carrying text
    {"type": "response.output_text_v2.delta", "output_index": 0, "content_index": 0, "item_id": "msg_1",
     "delta": ANSWER},
    {"type": "response.audio.transcript.delta", "delta": ANSWER},
    {"type": "response.custom_tool_call_input.delta", "output_index": 0, "item_id": "msg_1", "delta": ANSWER},
    {"type": "response.output_text.annotation.added", "output_index": 0, "content_index": 0, "item_id": "msg_1",
     "annotation_index": 0, "annotation": {"type": "url_citation", "title": ANSWER, "url": "http://x"}},
    # a known text event whose index is not an int: it was passed through
    {"type": "response.output_text.delta", "output_index": 0, "content_index": "0", "item_id": "msg_1",
     "delta": ANSWER},
    {"type": "response.output_text.delta", "output_index": "0", "content_index": 0, "item_id": "msg_1",
     "delta": ANSWER},
    {"type": "response.output_text.done", "output_index": 0, "content_index": None, "item_id": "msg_1",
     "text": ANSWER},
    {"no_type": True, "text": ANSWER},
])
async def test_stream_text_in_unknown_or_malformed_events_is_not_relayed(gw: Any, extra: dict[str, Any]) -> None:
    events = _insert(_events(), "response.output_text.done", extra)
    gw.backend.raw = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text


async def test_stream_non_json_data_and_comment_text_are_not_relayed(gw: Any) -> None:
    gw.backend.raw = sse(_events()[:4]) + f"data: {ANSWER}\n\n: {ANSWER}\n\n".encode() + sse(_events()[4:])
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text
    assert "\n:\n\n" in text  # the keep-alive itself is passed on


async def test_stream_text_in_added_events_and_snapshots_is_not_relayed(gw: Any) -> None:
    events = _events()
    for e in events:
        if e["type"] == "response.content_part.added":
            e["part"]["text"] = ANSWER
        elif e["type"] == "response.output_item.added":
            e["item"]["content"] = [{"type": "output_text", "text": ANSWER, "annotations": []}]
        elif e["type"] in ("response.created", "response.in_progress"):
            e["response"]["output"] = copy.deepcopy(response_body("sim", ANSWER)["output"])
            e["response"]["output_text"] = ANSWER
        elif e["type"] == "response.completed":
            e["response"]["output_messages"] = [{"role": "assistant", "content": ANSWER}]
            e["response"]["output_text"] = ANSWER
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text


async def test_stream_unknown_items_are_not_relayed_and_the_sdk_still_parses(gw: Any) -> None:
    events = _events()
    oi = _msg_index(events)
    tool = {"id": "ct_1", "type": "custom_tool_call", "call_id": "c1", "name": "x", "input": ""}
    # an unknown item before the message: its events, and its place in output_index, are withheld
    for e in events:
        if isinstance(e.get("output_index"), int):
            e["output_index"] += 1
    new = [
        {"type": "response.output_item.added", "output_index": oi, "item": tool},
        {"type": "response.custom_tool_call_input.delta", "output_index": oi, "item_id": "ct_1", "delta": ANSWER},
        {"type": "response.output_item.done", "output_index": oi, "item": {**tool, "input": ANSWER}},
    ]
    events = _insert(events, "response.output_item.added", *new)
    done = next(e for e in events if e["type"] == "response.completed")
    done["response"]["output"].insert(0, {**tool, "input": ANSWER})
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text

    client = gw.openai_client("alice")
    final = None
    async with client.responses.stream(model="sim", input="hi") as s:
        async for ev in s:
            assert getattr(ev, "output_index", 0) == 0
        final = await s.get_final_response()
    assert [i.type for i in final.output] == ["message"] and final.output_text != ANSWER


async def test_a_cut_stream_ends_with_an_error_the_sdk_raises(gw: Any) -> None:
    events = _events()
    gw.backend.events = events[: len(events) // 2]
    client = gw.openai_client("alice")
    with pytest.raises(openai.APIError):
        async with client.responses.stream(model="sim", input="hi") as s:
            async for _ in s:
                pass


async def test_extra_fields_beside_the_text_are_not_relayed(gw: Any) -> None:
    """A newer backend's raw text or token ids beside the watermarked text (event, part, item)."""
    events = _events()
    for e in events:
        if e["type"] == "response.output_text.delta":
            e["raw_delta"] = e["delta"]
        elif e["type"] == "response.output_text.done":
            e["raw_text"] = ANSWER
        elif e["type"] == "response.output_item.done":
            e["item"]["raw"] = ANSWER
            e["item"]["content"][0]["raw"] = ANSWER
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text
    assert "raw_delta" not in text and "token_ids" not in text

    body = response_body("sim", ANSWER)
    body["output"][0]["content"][0]["token_ids"] = [1, 2, 3]
    body["output"][0]["raw"] = ANSWER
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and not _leaks(text) and "token_ids" not in text, text
    before = gw.ctx.metrics.responses_withheld_total.labels(what="unknown_field")._value.get()
    assert before >= 3


async def test_a_client_cannot_opt_out_of_the_engines_own_watermark(gw: Any) -> None:
    """vLLM 0.33's ``watermarking: false`` turns the engine's watermark off for the request (every endpoint)."""
    gw.backend.body = response_body("sim", ANSWER)
    status, text = await _post(gw, {"watermarking": False, "vllm_xargs": {"kgw_key": "x"}})
    assert status == 200, text
    sent = gw.backend.requests[-1]
    assert "watermarking" not in sent and "vllm_xargs" not in sent and sent["store"] is False


async def test_the_sdks_multi_turn_replay_of_a_reasoning_answer_is_accepted_and_seen(gw: Any) -> None:
    """``input=previous.output + [next message]``: the previous output holds a reasoning item (and may hold a
    refusal part); both were 400s. Detection reads the replayed thought as an assistant turn."""
    gw.backend.body = response_body("sim", ANSWER, "I think the user wants a laptop.")
    client = gw.openai_client("alice")
    r = await client.responses.create(model="sim", input="Which laptop?")
    replay = [item.model_dump(exclude_none=True) for item in r.output]
    replay[1]["content"].append({"type": "refusal", "refusal": "I cannot say more."})
    r2 = await client.responses.create(model="sim", input=[*replay, {"role": "user", "content": "And memory?"}])
    assert r2.output_text != ANSWER
    sent = gw.backend.requests[-1]["input"]
    assert sent[0]["type"] == "reasoning" and sent[-1]["content"] == "And memory?"
    status, text = await _post(gw, {"input": [{"type": "reasoning", "summary": [], "encrypted_content": "x"}]})
    assert status == 400 and json.loads(text)["error"]["param"] == "input[0].encrypted_content"


async def test_text_and_logprobs_in_an_unexpected_shape_are_not_relayed(gw: Any) -> None:
    body = response_body("sim", "A short answer.")
    body["output"][0]["content"].append({"type": "output_text", "text": [ANSWER], "annotations": []})
    body["output"][0]["content"][0]["logprobs"] = {"tokens": ANSWER.split()}
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and "Sure, here is" not in text, text
    got = json.loads(text)["output"][0]["content"]
    assert got[0]["logprobs"] == [] and got[1]["text"] == ""

    events = _events()
    for e in events:
        if e["type"] == "response.output_text.delta":
            e["logprobs"] = {"tokens": [ANSWER]}
    gw.backend.events = events
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text), text


def _call_events(args: str) -> list[dict[str, Any]]:
    call = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "save", "arguments": "",
            "status": "in_progress"}
    done = {**call, "arguments": args, "status": "completed"}
    created = {**response_body("sim", ""), "output": [], "usage": None}
    evs: list[dict[str, Any]] = [
           {"type": "response.created", "response": created},
           {"type": "response.output_item.added", "output_index": 0, "item": call},
           {"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": args},
           {"type": "response.function_call_arguments.done", "output_index": 0, "item_id": "fc_1",
            "arguments": args},
           {"type": "response.output_item.done", "output_index": 0, "item": done},
           {"type": "response.completed", "response": {**response_body("sim", ""), "output": [done]}}]
    return [{**e, "sequence_number": i} for i, e in enumerate(evs)]


async def test_function_calls_reach_only_a_request_that_declared_tools(gw: Any) -> None:
    """Function-call arguments are relayed verbatim (counted under ``tools``): a backend that writes one for a
    request without tools would hand out free text around the watermark, uncounted."""
    args = json.dumps({"text": ANSWER})
    tools = [{"type": "function", "name": "save", "parameters": {"type": "object"}}]
    gw.backend.events = _call_events(args)
    status, text = await _post(gw, {"stream": True})
    assert status == 200 and not _leaks(text) and "fc_1" not in text, text
    status, text = await _post(gw, {"stream": True, "tools": tools})
    assert status == 200 and "fc_1" in text and ANSWER[:40] in text, text

    body = response_body("sim", "ok")
    body["output"].append({"id": "fc_1", "type": "function_call", "call_id": "c", "name": "save",
                           "arguments": args})
    gw.backend.body = body
    status, text = await _post(gw, {})
    assert status == 200 and not _leaks(text) and "fc_1" not in text, text
    status, text = await _post(gw, {"tools": tools, "tool_choice": "auto"})
    assert status == 200 and "fc_1" in text, text


async def test_multi_turn_replay_against_the_bundled_sim(tmp_path: Path) -> None:
    from tests.support.harness import sim_backend

    async with sim_backend(reasoning=True) as sim:
        cfg = gateway_config(sim.url, watermark={"enabled": True, "scheme": "lexical",
                                                 "secret_file": str(tmp_path / "s")})
        (tmp_path / "s").write_text(SECRET)
        async with running_gateway(cfg) as g:
            client = g.openai_client("alice")
            r = await client.responses.create(model="sim", input="Which laptop?")
            assert r.output[0].type == "reasoning"
            replay: list[Any] = [*r.output, {"role": "user", "content": "More?"}]  # the SDK serialises its models
            r2 = await client.responses.create(model="sim", input=replay)
            assert r2.output_text
