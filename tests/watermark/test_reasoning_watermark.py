"""A reasoning model's chain of thought (``reasoning`` / ``reasoning_content`` beside ``content``) is the output
distillation wants most: it is watermarked with the client's key like the answer, streamed or not, and both
copies of a server that writes both names carry the same text.

The relay is tested sans-IO against the embedder itself (streamed pieces must equal the whole text embedded at
once); end to end, a real aiohttp backend speaks like vLLM with a reasoning parser, the official openai client
reads the reasoning, and verification attributes it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.proxy.body import transform_body
from gateway.proxy.relay import StreamRelay
from tests.support.harness import app_backend, gateway_config, running_gateway
from tests.support.lexical import ANSWER
from tests.support.reasoning import reasoning_app
from watermark.keys import KeyRing, parse_master_secret
from watermark.lexical import LexicalScheme
from watermark.verify import candidate_keys, verify

SECRET = "reasoning-watermark-secret-0123456789abcdef"
MASTER = parse_master_secret(SECRET)
RING = KeyRing(MASTER, 1)
SCHEME = LexicalScheme(MASTER)
CLIENTS = ["alice", "bob", "carol"]
THOUGHT = ANSWER  # ~330 words of prose with many choice points
FINAL = "In short: a mid-range laptop with a good keyboard. It is not hard to find one."


def _factory(client: str) -> Any:
    return lambda: SCHEME.embedder(RING.key(client))


def _whole(client: str, text: str) -> str:
    emb = SCHEME.embedder(RING.key(client))
    return emb.feed(text) + emb.finish()


def _attributed(text: str) -> str | None:
    v = verify(text, candidate_keys(RING, CLIENTS), [SCHEME], fpr=1e-6)
    return v.client if v.watermarked else None


def _pieces(text: str, rnd: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rnd.randint(1, 9)
        out.append(text[i : i + n])
        i += n
    return out


def _sse(deltas: list[dict[str, Any]], finish: bool = True) -> bytes:
    base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    events = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    if finish:
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _collect(raw: bytes) -> dict[str, str]:
    got: dict[str, str] = {}
    for event in raw.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            continue
        for choice in json.loads(event[len(b"data: "):])["choices"]:
            for k, v in choice.get("delta", {}).items():
                if isinstance(v, str):
                    got[k] = got.get(k, "") + v
    return got


@pytest.mark.parametrize("keys", [("reasoning",), ("reasoning_content",), ("reasoning", "reasoning_content")])
@pytest.mark.parametrize("finish", [True, False])
def test_streamed_reasoning_equals_the_whole_thought_embedded_and_verifies(keys: tuple[str, ...],
                                                                            finish: bool) -> None:
    rnd = random.Random(7)
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{**dict.fromkeys(keys, p), "content": None} for p in _pieces(THOUGHT, rnd)]
    deltas += [{"content": p} for p in _pieces(FINAL, rnd)]
    relay = StreamRelay("chat", False, _factory("alice"))
    raw = _sse(deltas, finish)
    out = b"".join(relay.feed(raw[i : i + 97]) for i in range(0, len(raw), 97))  # cut mid-event
    out += relay.finish()
    got = _collect(out)
    assert relay.done and relay.watermarked
    for k in keys:  # both copies identical, and what the embedder makes of the whole thought: nothing lost
        assert got[k] == _whole("alice", THOUGHT)
    assert got["content"] == _whole("alice", FINAL)
    assert got[keys[0]] != THOUGHT and _attributed(got[keys[0]]) == "alice"
    # the thought is complete (its held-back word sent) before the first piece of the answer
    before_answer = out[: out.index(b'"content":"' + FINAL[:1].encode())]
    assert _collect(before_answer[: before_answer.rindex(b"\n\n")])[keys[0]] == got[keys[0]]


def test_a_body_with_reasoning_is_watermarked_in_both_fields_and_logprobs_are_withheld() -> None:
    body = {"choices": [{"index": 0, "finish_reason": "stop", "logprobs": {"content": []},
                         "message": {"role": "assistant", "content": FINAL, "reasoning": THOUGHT,
                                     "reasoning_content": THOUGHT}}]}
    changed, _, _, _, watermarked = transform_body("chat", body, _factory("bob"))
    msg = body["choices"][0]["message"]
    assert changed and watermarked and body["choices"][0]["logprobs"] is None
    assert msg["reasoning"] == msg["reasoning_content"] == _whole("bob", THOUGHT)
    assert msg["content"] == _whole("bob", FINAL)
    assert _attributed(msg["reasoning"]) == "bob"


def test_a_tool_call_answer_still_gets_its_reasoning_watermarked() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "it is"}'}}
    body = {"choices": [{"index": 0, "finish_reason": "tool_calls",
                         "message": {"role": "assistant", "content": None, "reasoning": THOUGHT,
                                     "tool_calls": [call]}}]}
    changed, *_ = transform_body("chat", body, _factory("carol"))
    msg = body["choices"][0]["message"]
    assert changed and _attributed(msg["reasoning"]) == "carol"
    assert msg["tool_calls"] == [call] and msg["content"] is None  # arguments are never touched


def test_differing_reasoning_fields_are_each_watermarked_on_their_own() -> None:
    other = "This is a different thought. It is not the same one."
    body = {"choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"content": FINAL, "reasoning": THOUGHT, "reasoning_content": other}}]}
    transform_body("chat", body, _factory("alice"))
    msg = body["choices"][0]["message"]
    assert msg["reasoning"] == _whole("alice", THOUGHT) and msg["reasoning_content"] == _whole("alice", other)


def _reasoning_backend() -> web.Application:
    return reasoning_app(THOUGHT, FINAL, usage={"prompt_tokens": 5, "completion_tokens": 400, "total_tokens": 405})


@pytest.mark.parametrize("stream", [False, True])
async def test_the_openai_client_gets_a_watermarked_chain_of_thought(tmp_path: Path, stream: bool) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with app_backend(_reasoning_backend()) as url, running_gateway(
            gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)})) as gw:
        client = gw.openai_client("bob")
        msgs: Any = [{"role": "user", "content": "Which laptop should I buy? Think it through."}]
        try:
            if stream:
                thought = answer = ""
                async for c in await client.chat.completions.create(model="sim", messages=msgs, stream=True):
                    for ch in c.choices:
                        thought += (ch.delta.model_extra or {}).get("reasoning") or ""
                        answer += ch.delta.content or ""
            else:
                r = await client.chat.completions.create(model="sim", messages=msgs)
                thought = (r.choices[0].message.model_extra or {})["reasoning"]
                answer = r.choices[0].message.content or ""
        finally:
            await client.close()
    assert thought == _whole("bob", THOUGHT) != THOUGHT
    assert answer == _whole("bob", FINAL)
    assert _attributed(thought) == "bob"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_throttled_client_gets_the_answer_without_the_chain_of_thought(tmp_path: Path, stream: bool) -> None:
    """``strip_reasoning`` (on at the default throttle tier): the trace chain-of-thought harvesting is after is
    withheld, the answer is served (watermarked); a client below that tier still gets both."""
    import aiohttp

    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with app_backend(_reasoning_backend()) as url, running_gateway(
            gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)})) as gw:
        async with aiohttp.ClientSession() as s, s.put(
                gw.admin_url + "/admin/clients/carol/override", json={"tier": "throttle"},
                headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
            assert r.status == 200, await r.text()
        got = {}
        for who in ("carol", "alice"):
            client = gw.openai_client(who)
            msgs: Any = [{"role": "user", "content": "Which laptop should I buy?"}]
            try:
                if stream:
                    thought, answer = [], ""
                    async for c in await client.chat.completions.create(model="sim", messages=msgs, stream=True):
                        for ch in c.choices:
                            thought += [v for k, v in (ch.delta.model_extra or {}).items() if k.startswith("reason")]
                            answer += ch.delta.content or ""
                else:
                    r2 = await client.chat.completions.create(model="sim", messages=msgs)
                    extra = r2.choices[0].message.model_extra or {}
                    thought = [v for k, v in extra.items() if k.startswith("reason")]
                    answer = r2.choices[0].message.content or ""
            finally:
                await client.close()
            got[who] = ("".join(x for x in thought if x), answer)
    assert got["carol"] == ("", _whole("carol", FINAL))
    assert got["alice"] == (_whole("alice", THOUGHT), _whole("alice", FINAL))


def test_token_ids_of_a_watermarked_choice_are_withheld_streamed_or_not() -> None:
    """vLLM's ``return_token_ids`` numbers the backend's tokens: decoded with the model's public tokenizer they
    spell the unwatermarked text, so a watermarked choice goes without them (as without logprobs)."""
    body = {"choices": [{"index": 0, "finish_reason": "stop", "token_ids": [1, 2, 3],
                         "message": {"role": "assistant", "content": FINAL}}]}
    changed, *_ = transform_body("chat", body, _factory("bob"))
    assert changed and "token_ids" not in body["choices"][0]
    untouched = {"choices": [{"index": 0, "finish_reason": "stop", "token_ids": [1, 2, 3],
                              "message": {"role": "assistant", "content": FINAL}}]}
    transform_body("chat", untouched, None)  # not watermarked (e.g. structured output): nothing to hide
    assert untouched["choices"][0]["token_ids"] == [1, 2, 3]
    base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    raw = b"".join(b"data: " + json.dumps({**base, "choices": [
        {"index": 0, "delta": {"content": piece}, "token_ids": [i], "finish_reason": None}]}).encode() + b"\n\n"
        for i, piece in enumerate(FINAL.split(" "))) + b"data: [DONE]\n\n"
    relay = StreamRelay("chat", False, _factory("bob"))
    out = relay.feed(raw) + relay.finish()
    assert b"token_ids" not in out and relay.watermarked
