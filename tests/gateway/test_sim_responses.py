"""The simulated backend's ``POST /v1/responses`` (vLLM 0.33's Responses API), driven directly with the
official ``openai`` client: the SDK must parse every event and the final response, in every mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from gateway.sim.corpus import pick, tokenize
from gateway.sim.responses import MAX_MODEL_LEN
from tests.support.harness import SimHandle, sim_backend

PROMPT = "Explain how a bicycle stays upright."
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"}, "days": {"type": "integer"},
               "unit": {"type": "string", "enum": ["c", "f"]}, "note": {"type": "string"}},
               "required": ["city", "days", "unit"]}}


async def _client(sim: SimHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)


async def _events(client: openai.AsyncOpenAI, **kw: Any) -> list[Any]:
    stream = await client.responses.create(model="sim", stream=True, **kw)
    return [ev async for ev in stream]


async def _raw_stream(sim: SimHandle, body: dict[str, Any]) -> str:
    async with aiohttp.ClientSession() as s, s.post(sim.url + "/v1/responses", json=body) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        return await r.text()


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with sim_backend() as handle:
        yield handle


async def test_plain_answer_is_the_chat_corpus_choice_with_usage(sim: SimHandle) -> None:
    client = await _client(sim)
    try:
        r1 = await client.responses.create(model="sim", input=PROMPT)
        r2 = await client.responses.create(model="sim", input=[{"role": "user", "content": PROMPT}])
        chat = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": PROMPT}])
    finally:
        await client.close()
    assert r1.output_text == r2.output_text == chat.choices[0].message.content == pick(PROMPT).text
    assert r1.id.startswith("resp_") and r1.object == "response" and r1.status == "completed"
    assert r1.incomplete_details is None and r1.model == "sim" and r1.tool_choice == "none"
    [msg] = r1.output
    assert msg.type == "message" and msg.id.startswith("msg_") and msg.status == "completed"
    assert msg.role == "assistant" and msg.content[0].type == "output_text"
    assert msg.content[0].annotations == [] and msg.content[0].logprobs is None
    assert r1.usage is not None and r1.usage.output_tokens == len(pick(PROMPT).tokens)
    assert r1.usage.total_tokens == r1.usage.input_tokens + r1.usage.output_tokens
    assert r1.max_output_tokens == MAX_MODEL_LEN - r1.usage.input_tokens  # vLLM's default: what the context leaves
    assert r1.usage.output_tokens_details.reasoning_tokens == 0 and r1.usage.input_tokens_details.cached_tokens == 0
    assert sim.stats.completed == 3


async def test_instructions_and_message_items_choose_the_text(sim: SimHandle) -> None:
    items: Any = [{"role": "user", "content": [{"type": "input_text", "text": "First question."}]},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Yes."}]},
                  {"role": "user", "content": PROMPT}]
    client = await _client(sim)
    try:
        r = await client.responses.create(model="sim", input=items, instructions="Be brief.")
        again = await client.responses.create(model="sim", input=items, instructions="Be brief.")
    finally:
        await client.close()
    assert r.output_text == again.output_text == pick(f"Be brief.\nFirst question.\nYes.\n{PROMPT}").text
    assert r.instructions == "Be brief."


async def test_stream_event_sequence_matches_vllm(sim: SimHandle) -> None:
    client = await _client(sim)
    try:
        events = await _events(client, input=PROMPT)
        full = await client.responses.create(model="sim", input=PROMPT)
    finally:
        await client.close()
    types = [e.type for e in events]
    n = len(pick(PROMPT).tokens)
    assert types == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * n
                     + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                        "response.completed"])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[0].response.usage is None and events[0].response.id == events[-1].response.id
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    item_id = events[2].item.id
    assert all(d.item_id == item_id and d.output_index == 0 and d.content_index == 0 and d.logprobs == []
               for d in deltas)
    text = "".join(d.delta for d in deltas)
    assert text == events[-4].text == events[-3].part.text == full.output_text
    final = events[-1].response
    assert final.output_text == text and final.status == "completed" and final.output[0].id == item_id
    assert final.usage is not None and final.usage.output_tokens == n


async def test_raw_sse_framing_has_event_lines_and_no_done(sim: SimHandle) -> None:
    raw = await _raw_stream(sim, {"model": "sim", "input": "hi", "stream": True, "max_output_tokens": 4})
    blocks = [b for b in raw.split("\n\n") if b]
    assert "[DONE]" not in raw and len(blocks) == 4 + 4 + 3 + 1
    for i, block in enumerate(blocks):
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}" and data["sequence_number"] == i
    assert json.loads(blocks[-1].split("\n")[1][6:])["type"] == "response.incomplete"


async def test_sdk_stream_helper_accumulates_the_same_response(sim: SimHandle) -> None:
    client = await _client(sim)
    try:
        async with client.responses.stream(model="sim", input=PROMPT) as stream:
            deltas = [ev.delta async for ev in stream if ev.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    finally:
        await client.close()
    assert final.output_text == "".join(deltas) == pick(PROMPT).text


@pytest.mark.parametrize("stream", [False, True])
async def test_max_output_tokens_cuts_and_marks_incomplete(sim: SimHandle, stream: bool) -> None:
    client = await _client(sim)
    try:
        if stream:
            events = await _events(client, input=PROMPT, max_output_tokens=7)
            assert events[-1].type == "response.incomplete"
            assert events[-2].type == "response.output_item.done" and events[-2].item.status == "incomplete"
            r = events[-1].response
        else:
            r = await client.responses.create(model="sim", input=PROMPT, max_output_tokens=7)
    finally:
        await client.close()
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and r.max_output_tokens == 7
    assert r.output[0].status == "incomplete" and r.output_text == "".join(pick(PROMPT).tokens[:7])
    assert r.usage is not None and r.usage.output_tokens == 7


async def test_logprobs_when_included(sim: SimHandle) -> None:
    client = await _client(sim)
    kw: Any = {"input": PROMPT, "max_output_tokens": 6, "include": ["message.output_text.logprobs"],
               "top_logprobs": 2}
    try:
        full = await client.responses.create(model="sim", **kw)
        events = await _events(client, **kw)
    finally:
        await client.close()
    lps = full.output[0].content[0].logprobs
    assert lps is not None and [lp.token for lp in lps] == list(pick(PROMPT).tokens[:6])
    assert all(len(lp.top_logprobs) == 2 and lp.top_logprobs[0].token == lp.token for lp in lps)
    assert lps[0].bytes == list(lps[0].token.encode()) and full.top_logprobs == 2
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [d.logprobs[0].token for d in deltas] == [lp.token for lp in lps]
    assert [d.logprobs[0].logprob for d in deltas] == [lp.logprob for lp in lps]
    assert "bytes" not in deltas[0].logprobs[0].model_dump(exclude_unset=True)


@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_item_precedes_the_message(stream: bool) -> None:
    async with sim_backend(reasoning=True) as sim:
        client = await _client(sim)
        try:
            if stream:
                events = await _events(client, input=PROMPT)
                r = events[-1].response
                types = [e.type for e in events]
                thought_deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
                first_text = types.index("response.output_text.delta")
                assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
                assert types.index("response.reasoning_text.done") < first_text
                assert events[2].item.type == "reasoning" and events[2].item.content is None
                assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1]
            else:
                r = await client.responses.create(model="sim", input=PROMPT)
        finally:
            await client.close()
    thought = pick(PROMPT + "\x1fthink")
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and reasoning.summary == []
    assert reasoning.content is not None and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text == thought.text
    assert reasoning.status == ("completed" if stream else None)  # vLLM: status=None when not streamed
    assert message.type == "message" and r.output_text == pick(PROMPT).text
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == len(thought.tokens)
    assert r.usage.output_tokens == len(thought.tokens) + len(pick(PROMPT).tokens)
    if stream:
        assert thought_deltas == thought.text


async def test_reasoning_that_uses_the_whole_budget_leaves_no_message() -> None:
    async with sim_backend(reasoning=True) as sim:
        client = await _client(sim)
        try:
            r = await client.responses.create(model="sim", input=PROMPT, max_output_tokens=5)
            events = await _events(client, input=PROMPT, max_output_tokens=5)
        finally:
            await client.close()
    assert r.status == "incomplete" and [o.type for o in r.output] == ["reasoning"] and r.output_text == ""
    assert events[-1].type == "response.incomplete" and events[-2].item.status == "incomplete"
    assert [o.type for o in events[-1].response.output] == ["reasoning"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
async def test_function_call_item(sim: SimHandle, stream: bool, choice: Any) -> None:
    other = {"type": "function", "name": "noop", "parameters": {"type": "object", "properties": {}}}
    tools: Any = [WEATHER, other] if choice == "required" else [other, WEATHER]
    client = await _client(sim)
    try:
        if stream:
            events = await _events(client, input=PROMPT, tools=tools, tool_choice=choice)
            types = [e.type for e in events]
            assert types[2] == "response.output_item.added" and events[2].item.arguments == ""
            assert events[2].item.status == "in_progress"
            assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                                  "response.completed"]
            assert "response.content_part.added" not in types
            streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
            assert streamed == events[-3].arguments and events[-3].model_extra["name"] == "get_weather"
            r = events[-1].response
        else:
            r = await client.responses.create(model="sim", input=PROMPT, tools=tools, tool_choice=choice)
    finally:
        await client.close()
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.id is not None and call.id.startswith("fc_") and call.call_id.startswith("chatcmpl-tool-")
    args = json.loads(call.arguments)
    assert set(args) == {"city", "days", "unit"} and isinstance(args["city"], str) and args["city"]
    assert isinstance(args["days"], int) and args["unit"] in ("c", "f")
    assert r.output_text == "" and r.status == "completed"
    assert r.usage is not None and r.usage.output_tokens == len(tokenize(call.arguments))
    if stream:
        assert streamed == call.arguments


async def test_auto_tool_choice_answers_with_text(sim: SimHandle) -> None:
    client = await _client(sim)
    try:
        r = await client.responses.create(model="sim", input=PROMPT, tools=[WEATHER])
    finally:
        await client.close()
    assert [o.type for o in r.output] == ["message"] and r.tool_choice == "auto"
    assert r.tools[0].type == "function" and r.tools[0].name == "get_weather"


@pytest.mark.parametrize(("body", "status", "param", "fragment"), [
    ({"model": "sim"}, 400, "body.input", "Field required"),
    ({"model": "sim", "input": 5}, 400, "body.input", "valid string"),
    ({"model": "sim", "input": ["hi"]}, 400, "body.input.0", "response item"),
    ({"model": "sim", "input": "hi", "tool_choice": "required"}, 400, "tool_choice",
     "Tool choice 'required' must be specified with 'tools' parameter."),
    ({"model": "sim", "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     400, "tool_choice", "not found in 'tools'"),
    ({"model": "sim", "input": "hi", "include": ["bogus"]}, 400, "body.include", "message.output_text.logprobs"),
    ({"model": "sim", "input": "hi", "max_output_tokens": "ten"}, 400, "body.max_output_tokens", "valid integer"),
    ({"model": "sim", "input": "hi", "max_output_tokens": 0}, 400, "max_tokens",
     "max_tokens must be at least 1, got 0."),
    ({"model": "sim", "input": "hi", "top_logprobs": "two"}, 400, "body.top_logprobs", "valid integer"),
    ({"model": "sim", "input": "hi", "top_logprobs": 21, "include": ["message.output_text.logprobs"]}, 400,
     "logprobs", "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    ({"model": "sim", "input": "hi", "background": True}, 400, "background", "VLLM_ENABLE_RESPONSES_API_STORE"),
    ({"model": "sim", "input": "hi", "previous_response_id": "resp_x"}, 404, "response_id",
     "Response with id 'resp_x' not found."),
    ({"model": "sim", "input": " ".join(["word"] * MAX_MODEL_LEN)}, 400, "input",
     f"The engine prompt length {MAX_MODEL_LEN + 3} exceeds the max_model_len {MAX_MODEL_LEN}."),
])
async def test_bad_input_gets_vllms_error_json(sim: SimHandle, body: dict[str, Any], status: int,
                                               param: str | None, fragment: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(sim.url + "/v1/responses", json=body) as r:
        assert r.status == status
        err = (await r.json())["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    assert err["param"] == param and fragment in err["message"]
    assert err["type"] in ("Bad Request", "BadRequestError", "invalid_request_error")
    client = await _client(sim)
    try:
        with pytest.raises(openai.APIStatusError) as exc:
            await client.post("/responses", body=body, cast_to=object)
    finally:
        await client.close()
    assert exc.value.status_code == status and sim.stats.completed == 0


async def test_cut_stream_is_an_error_for_the_sdk_and_counted() -> None:
    async with sim_backend(cut_after=3) as sim:
        client = await _client(sim)
        try:
            with pytest.raises(openai.APIError):
                await _events(client, input=PROMPT)
        finally:
            await client.close()
        assert sim.stats.cut == 1 and sim.stats.completed == 0


def _missing_keys(raw: Any, dumped: Any, path: str = "") -> list[str]:
    """Keys the SDK's own serialisation has that the raw JSON lacks (vLLM's model_dump keeps every null)."""
    if isinstance(dumped, dict) and isinstance(raw, dict):
        out = [f"{path}.{k}" for k in dumped if k not in raw]
        return out + [m for k in dumped if k in raw for m in _missing_keys(raw[k], dumped[k], f"{path}.{k}")]
    if isinstance(dumped, list) and isinstance(raw, list):
        return [m for i, (r, d) in enumerate(zip(raw, dumped, strict=True))
                for m in _missing_keys(r, d, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("extra", [{}, {"include": ["message.output_text.logprobs"], "top_logprobs": 1},
                                   {"tools": [WEATHER], "tool_choice": "required"}])
async def test_every_item_and_event_has_all_sdk_fields(extra: dict[str, Any]) -> None:
    from openai.types.responses import ResponseOutputItem, ResponseStreamEvent
    from pydantic import TypeAdapter

    events_ta: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    item_ta: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)
    body = {"model": "sim", "input": "hi", "max_output_tokens": 1000, **extra}
    async with sim_backend(reasoning=True) as sim:
        raw = await _raw_stream(sim, {**body, "stream": True})
        async with aiohttp.ClientSession() as s, s.post(sim.url + "/v1/responses", json=body) as r:
            full = await r.json()
    events = [json.loads(b.split("\n")[1][6:]) for b in raw.split("\n\n") if b]
    missing: list[str] = []
    for ev in events:
        if "response" in ev:  # vLLM's own ResponsesResponse, not the SDK's Response: checked field by field above
            assert {"usage", "output", "status", "incomplete_details", "top_logprobs"} <= set(ev["response"])
            continue
        dumped = events_ta.dump_python(events_ta.validate_python(ev), mode="json", by_alias=True)
        missing += _missing_keys(ev, dumped, ev["type"])
    for item in full["output"]:
        missing += _missing_keys(item, item_ta.dump_python(item_ta.validate_python(item), mode="json",
                                                           by_alias=True), item["type"])
    assert missing == []


async def test_reasoning_with_logprobs_follows_vllms_token_accounting() -> None:
    """Non-streamed, vLLM computes the message's logprobs over every generated token (the chain of thought
    too); streamed, each text delta carries its own token's, the same values at the same positions."""
    kw: Any = {"input": PROMPT, "include": ["message.output_text.logprobs"]}
    async with sim_backend(reasoning=True) as sim:
        client = await _client(sim)
        try:
            full = await client.responses.create(model="sim", **kw)
            events = await _events(client, **kw)
        finally:
            await client.close()
    thought, answer = pick(PROMPT + "\x1fthink").tokens, pick(PROMPT).tokens
    lps = full.output[1].content[0].logprobs
    assert lps is not None and [lp.token for lp in lps] == list(thought + answer)
    streamed = [e.logprobs[0] for e in events if e.type == "response.output_text.delta"]
    assert [(s.token, s.logprob) for s in streamed] == [(lp.token, lp.logprob) for lp in lps[len(thought):]]
    final_lps = events[-1].response.output[1].content[0].logprobs
    assert final_lps is not None and len(final_lps) == len(answer)
