"""A chat answer whose ``content`` is a list of parts (Mistral's API for its reasoning models: ``thinking`` parts
holding the chain of thought, then ``text`` parts) carries the client's watermark like a string answer, and a
tier that strips reasoning drops its thinking parts. Before, such an answer was relayed as the backend wrote it:
unwatermarked, and with the thought served to a throttled client."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.proxy.body import transform_body
from gateway.proxy.choice import ReasoningOnly
from gateway.proxy.relay import StreamRelay
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
    body: dict[str, Any] = {"choices": [{"index": 0, "finish_reason": "stop", "logprobs": {"content": [{}, {}]},
                         "message": {"role": "assistant", "content": [
                             *_parts_message("ab", "cd"), {"type": "reference", "reference_ids": [1]}]}}]}
    changed, _, _, positions, wm = transform_body("chat", body, Upper)
    content = body["choices"][0]["message"]["content"]
    assert changed and wm and positions == 0 and body["choices"][0]["logprobs"] is None
    assert content == [*_parts_message("AB", "CD"), {"type": "reference", "reference_ids": [1]}]


def test_reasoning_only_leaves_the_text_parts_as_written() -> None:
    body: dict[str, Any] = {"choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"content": _parts_message("ab", "cd")}}]}
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


# --- review session 15 (relay leaks) ----------------------------------------------------------------------------

FIRST_THOUGHT = "Let me see. "  # the lexical embedder writes it back unchanged (nothing to substitute, no partial word)


def _lp_chunk(content: Any, finish: str | None = None, index: int = 0) -> bytes:
    c = {"id": "cmpl-7", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
         "choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish, "token_ids": [7],
                      "logprobs": {"content": [{"token": "t", "logprob": -0.1, "top_logprobs": []}]}}]}
    return b"data: " + json.dumps(c).encode() + b"\n\n"


def _think(text: str) -> list[dict[str, Any]]:
    return [{"type": "thinking", "thinking": [{"type": "text", "text": text}]}]


def _json_mode_backend() -> web.Application:
    """A Mistral reasoning model in JSON mode: its thought streams as thinking parts, each chunk with the
    tokens' logprobs and vLLM-style token_ids; the answer is the JSON."""
    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in (_think(FIRST_THOUGHT), _think("The user wants "), _think("a total."), '{"total": 42}'):
            await resp.write(_lp_chunk(piece))
        await resp.write(_lp_chunk("", finish="stop") + b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_json_mode_withholds_the_tokens_of_every_watermarked_thinking_chunk(tmp_path: Path) -> None:
    """JSON mode leaves the answer as written and watermarks only the thought (``ReasoningOnly``). The first
    thinking chunk's logprobs and token_ids were relayed when the embedder happened to leave its text as it
    was: the chunk was then sent as the backend's bytes, though its tokens had been withheld in the copy."""
    body = {"model": "sim", "stream": True, "logprobs": True, "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "Total as JSON"}]}
    async with lexical_gateway(_json_mode_backend(), SECRET, tmp_path) as gw, aiohttp.ClientSession() as s, \
            s.post(gw.url + "/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {gw.token('bob')}"}) as r:
        assert r.status == 200
        raw = await r.read()
    chunks = [json.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    thinking = [c["choices"][0] for c in chunks
                if any(p.get("type") == "thinking" for p in c["choices"][0]["delta"].get("content") or []
                       if isinstance(p, dict))]
    assert thinking and thinking[0]["delta"]["content"][0]["thinking"][0]["text"].startswith("Let me")
    assert all(c.get("logprobs") is None and "token_ids" not in c for c in thinking), thinking[0]
    assert _read(chunks)[1] == '{"total": 42}'  # JSON mode: the answer as the backend wrote it


def test_chunks_the_relay_writes_itself_carry_the_upstream_id_and_created() -> None:
    """The held-back tail of a thought (or an answer) that a stream ends without a finish chunk for is sent in a
    chunk the relay writes. It had no ``id`` and no ``created``, both required in a chunk: Mistral's SDK
    (``CompletionChunk.id: str``) and typed clients reject the stream there."""
    for tail in (_lp_chunk(_think("thinking about it")), _lp_chunk("the answer is")):
        relay = StreamRelay("chat", False, lambda: SCHEME.embedder(RING.key("bob")))
        ev = _run(relay, tail, b"data: [DONE]\n\n")
        made = ev[-2]
        assert ev[-1] == "DONE" and made["choices"][0]["finish_reason"] is None
        assert (made["id"], made["created"]) == ("cmpl-7", 1700000000), made
    relay = StreamRelay("completions", False, Upper)
    raw = b'data: {"id": "cmpl-9", "created": 5, "object": "text_completion", "choices": [{"text": "hey"}]}\n\n'
    made = _run(relay, raw, b"data: [DONE]\n\n")[-2]
    assert (made["id"], made["created"], made["choices"][0]["text"]) == ("cmpl-9", 5, "Y")


def test_a_thinking_part_whose_inner_text_has_no_type_is_watermarked() -> None:
    """Inside a thinking part Mistral's SDK reads ``{"text": …}`` without ``type`` as a text chunk (``type`` is
    optional there): the relay passed such text over, so the thought reached the client unwatermarked."""
    untyped: list[dict[str, Any]] = [{"type": "thinking", "thinking": [{"text": "ab"}]}, {"text": "cd"}]
    body: dict[str, Any] = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"content": untyped}}]}
    transform_body("chat", body, Upper)
    assert body["choices"][0]["message"]["content"] == [{"type": "thinking", "thinking": [{"text": "AB"}]},
                                                       {"text": "CD"}]
    ev = _run(StreamRelay("chat", False, Upper), _chunk([{"type": "thinking", "thinking": [{"text": "ab"}]}]),
              _chunk(None, finish="stop"), b"data: [DONE]\n\n")
    assert "ab" not in json.dumps(ev) and _read_untyped(ev) == "AB"


def _read_untyped(events: list[Any]) -> str:
    return "".join(q["text"] for e in events if e != "DONE" for c in e["choices"]
                   for p in c["delta"].get("content") or [] if p.get("type") == "thinking" for q in p["thinking"])


def _strip_tier_hook() -> Any:
    """What ``gateway.shape.response_hook`` runs for a tier with ``strip_reasoning``."""
    from gateway.proxy.choice import withhold_tokens
    from gateway.reasoning_strip import ThinkStripper, strip_reasoning, strip_think
    strippers: dict[int, ThinkStripper] = {}

    def hook(choice: dict[str, Any]) -> bool:
        if strip_reasoning(choice) | strip_think(choice, strippers):
            withhold_tokens(choice)
            return True
        return False
    return hook


def test_strip_reasoning_keeps_answer_text_in_parts_in_order() -> None:
    """Under strip_reasoning the answer's ``<think>`` stripper skipped text parts: a whitespace piece it held
    from a string delta came out after the next text part, and at the finish it replaced the finish chunk's
    list of parts, and the answer text in it, by that whitespace."""
    raw = [_chunk(_think("hmm")), _chunk([{"type": "text", "text": "In"}]), _chunk(" "),
           _chunk([{"type": "text", "text": "short"}]), _chunk(" "), _chunk([{"type": "text", "text": "done."}],
                                                                            finish="stop"), b"data: [DONE]\n\n"]
    ev = _run(StreamRelay("chat", False, None, choice_hook=_strip_tier_hook()), *raw)
    thought, answer, _ = _read(ev)
    assert (thought, answer) == ("", "In short done.")
    ev = _run(StreamRelay("chat", False, Upper, choice_hook=_strip_tier_hook()), *raw)
    assert _read(ev)[:2] == ("", "IN SHORT DONE.")


def _mixed_stream(rnd: random.Random) -> tuple[bytes, list[str], list[str]]:
    """n = 1..3 choices interleaved, each a thought in thinking parts (now and then beside a reference part, an
    empty text part, an empty thinking part, a tool call; empty lists between), then its answer in strings and
    text parts, ended by a finish chunk carrying a string or parts, an empty delta, no delta, or nothing; the
    stream by [DONE], an error event or EOF. Every chunk carries logprobs and token_ids."""
    n = rnd.randint(1, 3)
    thoughts = [THOUGHT[rnd.randint(0, 150): rnd.randint(200, len(THOUGHT))] for _ in range(n)]
    finals = [ANSWER[: rnd.randint(20, 200)] for _ in range(n)]
    queues: list[list[dict[str, Any]]] = []
    for i in range(n):
        q: list[dict[str, Any]] = [{"delta": {"role": "assistant", "content": rnd.choice(["", [], None])}}]
        for piece in _pieces(thoughts[i], rnd):
            content = _think(piece)
            extra = rnd.random()
            if extra < 0.1:
                content.append({"type": "text", "text": ""})
            elif extra < 0.2:
                content.insert(0, {"type": "reference", "reference_ids": [1]})
            elif extra < 0.25:
                content += _think("")
            delta: dict[str, Any] = {"content": content}
            if rnd.random() < 0.05:
                delta["tool_calls"] = [{"index": 0, "function": {"arguments": "{}"}}]
            q.append({"delta": delta})
            if rnd.random() < 0.05:
                q.append({"delta": {"content": []}})
        pieces = _pieces(finals[i], rnd)
        last = pieces.pop() if rnd.random() < 0.5 else None
        q += [{"delta": {"content": p if rnd.random() < 0.6 else [{"type": "text", "text": p}]}} for p in pieces]
        ending = rnd.choice(["str", "list", "empty", "no_delta", "none"])
        if last is not None and ending not in ("str", "list"):
            q.append({"delta": {"content": last}})
        if ending == "str":
            q.append({"delta": {"content": last or ""}, "finish_reason": "stop"})
        elif ending == "list":
            q.append({"delta": {"content": [{"type": "text", "text": last or ""}]}, "finish_reason": "stop"})
        elif ending == "empty":
            q.append({"delta": {}, "finish_reason": "stop"})
        elif ending == "no_delta":
            q.append({"finish_reason": "length"})
        for c in q:
            c.update(index=i, logprobs={"content": [{"token": "t", "logprob": -0.1}]}, token_ids=[1])
        queues.append(q)
    raw = b""
    while any(queues):
        c = rnd.choice([q for q in queues if q]).pop(0)
        c.setdefault("finish_reason", None)
        raw += b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                        "choices": [c]}).encode() + b"\n\n"
    raw += rnd.choice([b"data: [DONE]\n\n", b'data: {"error": {"message": "engine died"}}\n\n', b""])
    return raw, thoughts, finals


def _pieces(text: str, rnd: random.Random) -> list[str]:
    cuts = sorted(rnd.sample(range(1, len(text)), min(len(text) - 1, len(text) // 5)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def _per_choice(out: bytes, reasoning_only: bool) -> tuple[dict[int, str], dict[int, str], set[int]]:
    """Per choice: thought, answer, and the choices a chunk of which kept tokens (with ``reasoning_only``, a
    chunk with thought in it: the answer is not watermarked); asserts that nothing of a choice comes after its
    finish_reason and that every chunk has the upstream's id."""
    thought: dict[int, str] = {}
    answer: dict[int, str] = {}
    tokens: set[int] = set()
    finished: set[int] = set()
    for e in out.split(b"\n\n"):
        if not e.startswith(b"data: {") or e.startswith(b'data: {"error"'):
            continue
        obj = json.loads(e[6:])
        assert obj["id"] == "x", obj
        for c in obj["choices"]:
            i = c["index"]
            assert i not in finished, f"choice {i} got more after its finish_reason: {c}"
            content = (c.get("delta") or {}).get("content")
            listed = content if isinstance(content, list) else []
            a = content if isinstance(content, str) else "".join(p["text"] for p in listed if p["type"] == "text")
            th = "".join(q["text"] for p in listed if p["type"] == "thinking" for q in p["thinking"])
            thought[i], answer[i] = thought.get(i, "") + th, answer.get(i, "") + a
            if (c.get("logprobs") is not None or "token_ids" in c) and (th or not reasoning_only):
                tokens.add(i)
            if c.get("finish_reason") is not None:
                finished.add(i)
    return thought, answer, tokens


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("mode", ["watermark", "strip_reasoning", "reasoning_only"])
def test_mixed_shapes_lose_nothing_and_leak_nothing(seed: int, mode: str) -> None:
    """Per choice, the thought equals the whole thought embedded at once (none at all under strip_reasoning),
    the answer the whole answer embedded at once (as written with ``ReasoningOnly``), no watermarked choice
    keeps a token, and every chunk is well formed (the upstream's id, nothing after a finish_reason)."""
    rnd = random.Random(seed)
    raw, thoughts, finals = _mixed_stream(rnd)
    factory: Any = lambda: SCHEME.embedder(RING.key("bob"))  # noqa: E731
    relay = StreamRelay("chat", False, ReasoningOnly(factory) if mode == "reasoning_only" else factory,
                        choice_hook=_strip_tier_hook() if mode == "strip_reasoning" else None)
    step = rnd.randint(1, 300)
    out = b"".join(relay.feed(raw[i: i + step]) for i in range(0, len(raw), step)) + relay.finish()
    thought, answer, tokens = _per_choice(out, mode == "reasoning_only")
    for i, (t, a) in enumerate(zip(thoughts, finals, strict=True)):
        assert thought.get(i, "") == ("" if mode == "strip_reasoning" else _embedded("bob", t)), i
        assert answer.get(i, "") == (a if mode == "reasoning_only" else _embedded("bob", a)), i
    assert not tokens


@pytest.mark.parametrize("message", [None, {}])
def test_strip_reasoning_reads_the_delta_beside_a_message_key(message: Any) -> None:
    """``strip_reasoning`` took ``choice["message"]`` whenever the key was there: a stream chunk that also
    carries ``"message": null`` (or an empty one) kept its delta's reasoning and thinking parts, the fields the
    relay and the client read, for a throttled client."""
    c = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [{
        "index": 0, "message": message, "finish_reason": None,
        "delta": {"reasoning_content": "secret plan", "content": _think("secret thought")}}]}
    from gateway.reasoning_strip import strip_reasoning
    for factory in (None, Upper):
        out = StreamRelay("chat", False, factory, choice_hook=strip_reasoning).feed(
            b"data: " + json.dumps(c).encode() + b"\n\n")
        assert b"secret" not in out.lower() and b"reasoning_content" not in out, out
