"""Review session 14b, the Responses API (``POST /v1/responses``): each test failed before its fix
(/work/team/docs/review-session14b-responses-api.md)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.proxy.responses_relay import ResponsesRelay
from tests.support.harness import app_backend, gateway_config, running_gateway, settled, sim_backend
from tests.support.responses_events import parse_sse, response_body, sse, stream_events

LONG = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 40)  # ≈ 2 600 chars


# --- 1. a Responses answer without usage was charged no output tokens (chat: what it generated) ----------------

@pytest.mark.parametrize("endpoint", ["responses", "chat"])
async def test_a_responses_answer_without_usage_is_charged_what_it_generated(endpoint: str) -> None:
    async def responses(request: web.Request) -> web.Response:
        await request.read()
        body = response_body("sim", LONG)
        del body["usage"]
        return web.json_response(body)

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "sim",
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": LONG}}]})

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/chat/completions", chat)
    limits = {"requests_per_minute": 600, "tokens_per_minute": 60, "burst_tokens": 100000}
    path, body = (("/v1/responses", {"model": "sim", "input": "Hello", "max_output_tokens": 1000})
                  if endpoint == "responses" else
                  ("/v1/chat/completions", {"model": "sim", "messages": [{"role": "user", "content": "Hello"}],
                                            "max_tokens": 1000}))
    async with app_backend(app) as url, running_gateway(gateway_config(
            url, limits={"default": limits, "suspicious": limits}, watermark={"enabled": True, "scheme": "none"},
    )) as gw, aiohttp.ClientSession() as s:
        remaining = []
        for _ in range(2):
            async with s.post(gw.url + path, json=body,
                              headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
                assert r.status == 200, await r.text()
                remaining.append(int(r.headers["x-ratelimit-remaining-tokens"]))
                await r.read()
            await settled(gw)
    charged_first = remaining[0] - remaining[1]  # both reserved the same; refill ≈ 1 token/s
    assert charged_first > len(LONG) // 4 * 0.8, charged_first  # before, responses: ≈ 10 (the prompt alone)


# --- 2. logprob_noise drawn anew on every copy of a streamed part's logprobs (averaged away) ---------------------

async def test_stream_logprob_noise_is_drawn_once_per_token_and_counted_once() -> None:
    """vLLM 0.33 writes a part's logprobs in its deltas and again in ``content_part.done``, ``output_item.done``
    and ``response.completed``. Each copy got fresh noise: four independent draws per token, whose mean is the
    true logprob at half the noise. Every copy must carry the values of the deltas, counted once."""
    text = "alpha bravo delta gamma omega sigma kappa theta"  # 5 letters + a space: one token per delta

    async def responses(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(stream_events("sim", text, logprobs=True, step=6)))
        return resp

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    policy = {"tiers": [{"name": "normal", "hardening": {"max_top_logprobs": 2, "logprob_noise": 0.5}},
                        {"name": "suspicious"}, {"name": "throttle"}, {"name": "block", "block": True}]}
    body = {"model": "sim", "input": "hi", "stream": True, "include": ["message.output_text.logprobs"]}
    async with app_backend(app) as url, running_gateway(gateway_config(url, policy=policy)) as gw, \
            aiohttp.ClientSession() as s, s.post(gw.url + "/v1/responses", json=body,
                                                 headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
        assert r.status == 200
        events = parse_sse(await r.read())
    streamed: list[float] = []
    copies: dict[str, list[float]] = {}
    for ev in events:
        t = ev.get("type")
        if t == "response.output_text.delta":
            streamed += [e["logprob"] for e in ev["logprobs"]]
        elif t == "response.content_part.done":
            copies[t] = [e["logprob"] for e in ev["part"]["logprobs"]]
        elif t == "response.output_item.done":
            copies[t] = [e["logprob"] for e in ev["item"]["content"][0]["logprobs"]]
        elif t == "response.completed":
            copies[t] = [e["logprob"] for e in ev["response"]["output"][0]["content"][0]["logprobs"]]
    assert len(streamed) == len(text.split()) and len(set(streamed)) > 1  # noise was added
    assert copies == {k: streamed for k in ("response.content_part.done", "response.output_item.done",
                                            "response.completed")}


# --- 3. strip_reasoning: the answer's logprobs still spelled the stripped chain of thought ----------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_strip_reasoning_also_withholds_the_thoughts_tokens_in_the_answers_logprobs(stream: bool) -> None:
    """vLLM 0.33 computes a non-streamed message's logprobs over ALL generated tokens, the chain of thought's
    first (utils.py, emulated by the sim): under ``strip_reasoning`` the reasoning item went, but its tokens
    stayed, spelled one by one in the answer's ``logprobs``. The chat path withholds a stripped choice's
    tokens (``withhold_tokens``)."""
    policy = {"tiers": [{"name": "normal", "hardening": {"strip_reasoning": True, "max_top_logprobs": 2}},
                        {"name": "suspicious"}, {"name": "throttle"}, {"name": "block", "block": True}]}
    async with sim_backend(reasoning=True) as sim, running_gateway(gateway_config(sim.url, policy=policy)) as gw:
        client = gw.openai_client()
        try:
            kw: Any = {"model": "sim", "input": "Explain how a bicycle stays upright.",
                       "include": ["message.output_text.logprobs"], "top_logprobs": 2}
            if stream:
                async with await client.responses.create(stream=True, **kw) as s:
                    (final,) = [ev.response async for ev in s if ev.type == "response.completed"]
            else:
                final = await client.responses.create(**kw)
        finally:
            await client.close()
    assert [i.type for i in final.output] == ["message"]
    part = final.output[0].content[0]  # type: ignore[union-attr]
    tokens = "".join(lp.token for lp in part.logprobs or [])  # type: ignore[union-attr]
    assert tokens in ("", part.text)  # before: the thought's tokens, then the answer's (not streamed)
    if stream:  # vLLM streams the answer's own logprobs (and repeats them in response.completed): kept
        assert tokens == part.text  # type: ignore[union-attr]


# --- 4. strip_reasoning: a <think> section removed from the answer stayed spelled in its logprobs ---------------

@pytest.mark.parametrize("stream", [False, True])
async def test_strip_reasoning_withholds_the_logprobs_of_a_think_section(stream: bool) -> None:
    """A backend without a reasoning parser writes the chain of thought into the answer as ``<think>…</think>``.
    The tier's ``strip_reasoning`` removed it from the text, but the part's (unwatermarked) logprobs still
    listed its tokens; the chat path withholds the tokens of what it strips (``withhold_tokens``)."""
    text = "<think> hidden scheming chain </think> The answer is forty two ."

    async def responses(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not stream:
            return web.json_response(response_body("sim", text, logprobs=True))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(stream_events("sim", text, logprobs=True, step=len(text))))
        return resp

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    policy = {"tiers": [{"name": "normal", "hardening": {"strip_reasoning": True}},
                        {"name": "suspicious"}, {"name": "throttle"}, {"name": "block", "block": True}]}
    body = {"model": "sim", "input": "hi", "stream": stream, "include": ["message.output_text.logprobs"]}
    async with app_backend(app) as url, running_gateway(gateway_config(url, policy=policy)) as gw, \
            aiohttp.ClientSession() as s, s.post(gw.url + "/v1/responses", json=body,
                                                 headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
        assert r.status == 200
        raw = (await r.read()).decode()
    assert "The answer is forty two" in raw
    assert "scheming" not in raw and "think>" not in raw, raw


def test_stream_logprob_positions_are_counted_once_per_token() -> None:
    """Detection reads the logprob positions a client received (``logprobs_returned``). vLLM repeats a part's
    logprobs in three later events; each copy was counted again, so a Responses stream reported four times
    the positions a chat stream of the same answer does."""


    text = "alpha bravo delta gamma omega sigma kappa theta"
    relay = ResponsesRelay(None)
    relay.feed(sse(stream_events("sim", text, logprobs=True, step=6)))
    assert relay.done and relay.logprob_positions == len(text.split())
