"""A chat answer whose ``content`` is a list of parts (Mistral's API for its reasoning models: ``thinking`` parts
holding the chain of thought, then ``text`` parts) carries the client's watermark like a string answer, and a
tier that strips reasoning drops its thinking parts. Before, such an answer was relayed as the backend wrote it:
unwatermarked, and with the thought served to a throttled client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.proxy.relay import ReasoningOnly, StreamRelay, transform_body
from tests.gateway.test_relay import Upper, _run
from tests.support.harness import lexical_gateway
from watermark.keys import KeyRing, parse_master_secret
from watermark.lexical import LexicalScheme

SECRET = "content-parts-test-secret-0123456789abcdef"
RING = KeyRing(parse_master_secret(SECRET), 1)
SCHEME = LexicalScheme(RING.master)

THOUGHT = ("First, we need to figure out what the user is asking. It is important to note that the question is "
           "about the total cost. In addition, we should make sure that the answer is easy to follow. Let's "
           "calculate the total step by step. Furthermore, it is a good idea to check the result. We do not "
           "want to make a mistake, and it is not hard to verify. Also, the user would like a short answer.")
ANSWER = ("Sure, here is the answer. First, calculate the total cost of the items. In addition, it is important "
          "to make sure that you do not forget the tax. Furthermore, you can't skip the shipping fee, and it is "
          "a good idea to check each step. In total, the order costs $42. Let us know if you have questions. "
          "Also, it is worth noting that the price may change; however, it is unlikely to change soon.")


def _embedded(client: str, text: str) -> str:
    emb = SCHEME.embedder(RING.key(client))
    return emb.feed(text) + emb.finish()


def _parts_message(thought: str, answer: str) -> list[dict[str, Any]]:
    return [{"type": "thinking", "thinking": [{"type": "text", "text": thought}]}, {"type": "text", "text": answer}]


def _chunk(content: Any, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    c = {"id": "x", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                      "logprobs": {"content": [{"token": "t", "logprob": -0.1}]}}]}
    return b"data: " + json.dumps(c).encode() + b"\n\n"


def _read(events: list[Any]) -> tuple[str, str, list[str]]:
    """(thought, answer, shapes: 'list'/'str' per delta with content) of a relayed stream."""
    thought = answer = ""
    shapes = []
    for e in events:
        if e == "DONE":
            continue
        for c in e["choices"]:
            content = c["delta"].get("content")
            if isinstance(content, str):
                answer += content
                shapes.append("str")
            elif isinstance(content, list):
                shapes.append("list")
                for p in content:
                    if p["type"] == "text":
                        answer += p["text"]
                    else:
                        thought += "".join(q["text"] for q in p["thinking"])
    return thought, answer, shapes


def test_a_whole_answer_of_parts_is_watermarked_part_by_part() -> None:
    body = {"choices": [{"index": 0, "finish_reason": "stop", "logprobs": {"content": [{}, {}]},
                         "message": {"role": "assistant", "content": [
                             *_parts_message("ab", "cd"), {"type": "reference", "reference_ids": [1]}]}}]}
    changed, _, _, positions, wm = transform_body("chat", body, Upper)
    content = body["choices"][0]["message"]["content"]
    assert changed and wm and positions == 0 and body["choices"][0]["logprobs"] is None
    assert content == [*_parts_message("AB", "CD"), {"type": "reference", "reference_ids": [1]}]


def test_reasoning_only_leaves_the_text_parts_as_written() -> None:
    body = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"content": _parts_message("ab", "cd")}}]}
    changed, _, _, _, wm = transform_body("chat", body, ReasoningOnly(Upper))
    assert changed and wm and body["choices"][0]["message"]["content"] == _parts_message("AB", "cd")


def test_an_answer_of_parts_without_usage_is_charged_for_its_text() -> None:
    body = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"content": _parts_message("x" * 400,
                                                                                                   "y" * 400)}}]}
    _, usage, _, _, _ = transform_body("chat", body, None)
    assert usage.completion_tokens == 200


def test_a_stream_of_parts_then_strings_keeps_its_shape_and_order() -> None:
    """Mistral streams the thought as thinking parts and then the answer as strings: the thought's held-back
    piece goes in a thinking part before the first answer text, never after it."""
    r = StreamRelay("chat", False, Upper)
    ev = _run(r, _chunk([{"type": "thinking", "thinking": [{"type": "text", "text": "ab"}]}]),
              _chunk([{"type": "thinking", "thinking": [{"type": "text", "text": "cd"}]}]),
              _chunk("xy"), _chunk("z"), _chunk(None, finish="stop"), b"data: [DONE]\n\n")
    thought, answer, shapes = _read(ev)
    assert (thought, answer) == ("ABCD", "XYZ") and r.watermarked
    assert shapes == ["list", "list", "list", "str", "str"]  # the first answer delta carries the thought's tail
    first_answer = ev[2]["choices"][0]["delta"]["content"]
    assert [p["type"] for p in first_answer] == ["thinking", "text"]
    assert all(e == "DONE" or e["choices"][0]["logprobs"] is None for e in ev)  # tokens would spell the original


def test_a_stream_of_text_parts_is_flushed_at_done() -> None:
    r = StreamRelay("chat", False, Upper)
    ev = _run(r, _chunk([{"type": "text", "text": "ab"}]), _chunk([{"type": "text", "text": "c"}]),
              b"data: [DONE]\n\n")
    assert _read(ev)[1] == "ABC" and ev[-1] == "DONE"


def _mistral_backend() -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base = {"id": "x", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": _parts_message(THOUGHT, ANSWER)}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 150, "total_tokens": 155}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = THOUGHT.split(" ")
        pieces: list[Any] = [[{"type": "thinking", "thinking": [{"type": "text", "text": w + " "}]}]
                             for w in words[:-1]]
        pieces.append([{"type": "thinking", "thinking": [{"type": "text", "text": words[-1]}]}])
        pieces += [w + " " for w in ANSWER.split(" ")[:-1]] + [ANSWER.split(" ")[-1]]
        for p in pieces:
            c = {"index": 0, "delta": {"content": p}, "finish_reason": None}
            await resp.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [c]})}\n\n"
                             .encode())
        end = {"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}
        await resp.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [end]})}\n\n"
                         .encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _ask(gw: Any, client: str, stream: bool) -> tuple[str, str]:
    oc = gw.openai_client(client)
    msgs: Any = [{"role": "user", "content": "What does the order cost?"}]
    thought = answer = ""
    try:
        if stream:
            async for c in await oc.chat.completions.create(model="sim", messages=msgs, stream=True):
                for ch in c.choices:
                    content: Any = ch.delta.content
                    if isinstance(content, str):
                        answer += content
                    for p in content if isinstance(content, list) else ():
                        if p["type"] == "text":
                            answer += p["text"]
                        else:
                            thought += "".join(q["text"] for q in p["thinking"])
        else:
            r = await oc.chat.completions.create(model="sim", messages=msgs)
            content = r.choices[0].message.content
            assert isinstance(content, list)  # the shape the backend wrote reaches the client
            for p in content:
                if p["type"] == "text":
                    answer += p["text"]
                else:
                    thought += "".join(q["text"] for q in p["thinking"])
    finally:
        await oc.close()
    return thought, answer


@pytest.mark.parametrize("stream", [False, True])
async def test_mistral_reasoning_answers_carry_the_clients_watermark(tmp_path: Path, stream: bool) -> None:
    async with lexical_gateway(_mistral_backend(), SECRET, tmp_path) as gw:
        thought, answer = await _ask(gw, "bob", stream)
        async with aiohttp.ClientSession() as s, s.put(
                gw.admin_url + "/admin/clients/carol/override", json={"tier": "throttle"},
                headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
            assert r.status == 200
        carol_thought, carol_answer = await _ask(gw, "carol", stream)
    assert thought == _embedded("bob", THOUGHT) and answer == _embedded("bob", ANSWER)
    assert thought != THOUGHT and answer != ANSWER  # both carry bob's watermark
    # the throttle tier strips reasoning: no thinking part reaches carol; her answer is still watermarked (with
    # the throttle tier's stronger table, so not comparable word for word with the default embedder)
    assert carol_thought == "" and carol_answer not in (ANSWER, answer) and "$42" in carol_answer
