"""``strip_reasoning`` must not serve the chain of thought another way: a backend's ``logprobs`` (and vLLM's
``token_ids``) list every generated token, the chain of thought's included, so a stripped choice (or stream chunk)
loses them too. Without this, a throttled client on a backend whose answers keep their logprobs (watermarking
off, ``watermark_scheme: none``, or a KGW backend, whose answers need no ``withhold_tokens``) read the stripped
thought back token by token with ``logprobs: true``."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, running_gateway

THOUGHT = "Okay, the user wants a laptop. Secret plan: mid-range."
ANSWER = "Buy a mid-range laptop with a good keyboard."


def _lp(text: str) -> dict[str, Any]:
    return {"content": [{"token": text, "logprob": -0.5, "bytes": list(text.encode()), "top_logprobs": []}]}


def _backend(mode: str) -> web.Application:
    """``mode``: ``think`` (a leading <think> section in content), ``prefilled`` (content holds only </think>),
    ``field`` (a reasoning parser: the thought in ``reasoning_content``)."""
    if mode == "think":
        pieces = [("content", p) for p in ("<think>", THOUGHT, "</think>", "\n\n", ANSWER)]
    elif mode == "prefilled":
        pieces = [("content", p) for p in (THOUGHT, "</think>", "\n\n", ANSWER)]
    else:
        pieces = [("reasoning_content", THOUGHT), ("content", ANSWER)]

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base = {"id": "x", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            msg: dict[str, Any] = {"role": "assistant"}
            for k, p in pieces:
                msg[k] = msg.get(k, "") + p
            return web.json_response({**base, "object": "chat.completion", "choices": [{
                "index": 0, "finish_reason": "stop", "message": msg, "token_ids": list(range(len(pieces))),
                "logprobs": {"content": [t for _, p in pieces for t in _lp(p)["content"]]}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n, (k, p) in enumerate(pieces):
            c = {"index": 0, "delta": {k: p}, "logprobs": _lp(p), "token_ids": [n], "finish_reason": None}
            await resp.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [c]})}\n\n"
                             .encode())
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await resp.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [end]})}\n\n"
                         .encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _choices(gw: Any, client: str, stream: bool) -> list[dict[str, Any]]:
    req = {"model": "sim", "messages": [{"role": "user", "content": "Which laptop?"}], "logprobs": True,
           "top_logprobs": 1, "stream": stream}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", json=req,
            headers={"Authorization": f"Bearer {gw.token(client)}"}) as r:
        assert r.status == 200
        if not stream:
            return list((await r.json())["choices"])
        out: list[dict[str, Any]] = []
        for line in (await r.text()).splitlines():
            if line.startswith("data: {"):
                out.extend(json.loads(line[6:]).get("choices") or [])
        return out


def _served_tokens(choices: list[dict[str, Any]]) -> str:
    toks = []
    for c in choices:
        lp = c.get("logprobs")
        for t in (lp or {}).get("content") or []:
            toks.append(t["token"])
            toks.extend(a["token"] for a in t.get("top_logprobs") or [])
    return "".join(toks)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["think", "prefilled", "field"])
async def test_a_stripped_chain_of_thought_is_not_served_in_logprobs_or_token_ids(stream: bool, mode: str) -> None:
    async with app_backend(_backend(mode)) as url:
        cfg = gateway_config(url)  # watermarking off: logprobs are otherwise served as the backend wrote them
        cfg["models"][0]["backends"][0]["think_prefilled"] = mode == "prefilled"
        async with running_gateway(cfg) as gw:
            async with aiohttp.ClientSession() as s, s.put(
                    gw.admin_url + "/admin/clients/carol/override", json={"tier": "throttle"},
                    headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 200
            carol = await _choices(gw, "carol", stream)
            alice = await _choices(gw, "alice", stream)
    assert "Secret plan" in _served_tokens(alice)  # below throttle: served as the backend wrote it
    text = "".join(str((c.get("message") or c.get("delta") or {}).get("content") or "") for c in carol)
    assert text == ANSWER
    assert "Secret plan" not in _served_tokens(carol) and "Secret plan" not in json.dumps(carol)
    # token_ids number the stripped tokens for the public tokenizer: gone with the text they spell
    served_ids = {i for c in carol for i in c.get("token_ids") or []}
    thought_ids = {"think": {0, 1, 2}, "prefilled": {0, 1}, "field": {0}}[mode]  # pieces of the thought
    assert not served_ids & thought_ids
