"""The whole-answer transform (gateway/proxy/body.py): chat's top-level ``prompt_logprobs`` (vLLM) get the tier's
cap and noise like a completions choice's, and an answer of many small choices is watermarked in slices with the
event loop running in between (128 000 one-token choices held it for 6.3 s)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.proxy.body import transform_steps
from tests.support.harness import app_backend, gateway_config, running_gateway
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme

RAW = [None, {"9906": {"logprob": -7.25, "rank": 812, "decoded_token": " quick"},
              "279": {"logprob": -1.5, "rank": 1, "decoded_token": " the"},
              "264": {"logprob": -2.0, "rank": 2, "decoded_token": " a"}}]


async def test_chat_prompt_logprobs_get_the_tiers_cap_and_noise() -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "sim",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "logprobs": None, "finish_reason": "stop"}],
                                  "prompt_logprobs": RAW,
                                  "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    policy = {"tiers": [{"name": "normal", "hardening": {"max_top_logprobs": 1, "logprob_noise": 0.5}},
                        {"name": "throttle", "limits": "suspicious"}], "flag_tier": "throttle"}
    body = {"model": "sim", "messages": [{"role": "user", "content": "the quick"}], "prompt_logprobs": 1}
    async with app_backend(app) as url, running_gateway(gateway_config(url, policy=policy)) as gw, \
            aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", json=body,
                                                 headers={"Authorization": "Bearer " + gw.token("a")}) as r:
        got = (await r.json())["prompt_logprobs"]
    assert got[0] is None and list(got[1]) == ["9906", "279"]  # the prompt's token and the best other one
    assert got[1]["9906"]["logprob"] != -7.25 and got[1]["279"]["logprob"] != -1.5  # noised


def _yields(body: dict[str, object], slice_chars: int | None) -> int:
    master = b"m" * 32
    wm, key = LexicalScheme(master), KeyRing(master).key("alice")
    steps = transform_steps("completions", body, lambda: wm.embedder(key, "normal"), slice_chars=slice_chars)
    n = 0
    try:
        while True:
            next(steps)
            n += 1
    except StopIteration:
        return n


def test_many_small_choices_are_watermarked_in_slices() -> None:
    words = {"choices": [{"index": i, "text": " It is a fine day", "finish_reason": "length"} for i in range(2000)]}
    assert _yields(words, 8192) >= 3  # 34 000 characters of text: about 4 slices of 8 192 (0 before)
    tokens = {"choices": [{"index": i, "text": "x", "finish_reason": "length"} for i in range(2000)]}
    assert _yields(tokens, 8192) >= 10  # one-token choices count 64 characters each
    assert _yields(tokens, None) == 0  # a small body is transformed at once
