"""Review session 15 (kgw-sim): the simulated model server answers as vLLM 0.33 does where the gateway's
behaviour depends on it — batched legacy prompts, streamed logprob offsets, bad input.

Every test drives a real sim over loopback (raw aiohttp for framing and error bodies, the official ``openai``
client where the SDK's parsing matters). vLLM references: ``vllm/entrypoints/openai/completion/serving.py``
(0.33.0), ``vllm/sampling_params.py``, ``chat_completion/protocol.py``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import openai
import pytest

from gateway.sim.corpus import count_tokens, pick, tokenize
from tests.support.harness import sim_backend


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for e in raw.strip().split(b"\n\n"):
        data = e[len(b"data: "):]
        if data != b"[DONE]":
            out.append(json.loads(data))
    return out


# --- 1. legacy completions: a list of prompts is a batch (one choice per prompt and n) -----------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_batch_of_prompts_gets_n_choices_per_prompt(stream: bool) -> None:
    prompts = ["The capital of France is", "Write a haiku about rain"]
    async with sim_backend() as sim:
        client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
        try:
            texts: dict[int, str] = {}
            finish: dict[int, str | None] = {}
            if stream:
                usage = None
                async for c in await client.completions.create(model="sim", prompt=prompts, n=2, max_tokens=6,
                                                               stream=True, stream_options={"include_usage": True}):
                    for ch in c.choices:
                        texts[ch.index] = texts.get(ch.index, "") + ch.text
                        finish[ch.index] = ch.finish_reason or finish.get(ch.index)
                    usage = c.usage or usage
            else:
                r = await client.completions.create(model="sim", prompt=prompts, n=2, max_tokens=6)
                texts = {ch.index: ch.text for ch in r.choices}
                finish = {ch.index: ch.finish_reason for ch in r.choices}
                usage = r.usage
        finally:
            await client.close()
    # vLLM: choice index = prompt index * n + sequence index (completion/serving.py)
    want = {p * 2 + j: "".join(pick(prompts[p], j).tokens[:6]) for p in range(2) for j in range(2)}
    assert texts == want and set(finish) == set(want)
    assert usage is not None and usage.completion_tokens == 24
    assert usage.prompt_tokens == sum(count_tokens(p) + 3 for p in prompts)


# --- 2. streamed legacy logprobs: text_offset continues across chunks -----------------------------------------


async def test_streamed_text_offsets_continue_where_the_previous_chunk_ended() -> None:
    body = {"model": "sim", "prompt": "Tell me about tides", "max_tokens": 8, "logprobs": 1}
    async with sim_backend() as sim, aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/v1/completions", json=body) as r:
            whole = (await r.json())["choices"][0]["logprobs"]
        async with s.post(sim.url + "/v1/completions", json={**body, "stream": True}) as r:
            events = _events(await r.read())
    offsets = [o for e in events for c in e["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    assert offsets == whole["text_offset"]
    assert offsets == [sum(len(t) for t in whole["tokens"][:i]) for i in range(len(whole["tokens"]))]


# --- 3. bad input: vLLM's 400 JSON naming the field, never a 500 or a silently changed request --------------

_CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
_CMPL = {"model": "sim", "prompt": "hi"}


_BAD = [
    ("chat/completions", {"model": "sim", "messages": 5}, "body.messages"),
    ("chat/completions", {"model": "sim", "messages": [3]}, "body.messages.0"),
    ("chat/completions", {"model": "sim"}, "body.messages"),
    ("chat/completions", {"model": "sim", "messages": [{"role": "user", "content": 5}]}, "body.messages.0.content"),
    ("chat/completions", {"model": "sim", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "body.messages.0.content.0"),
    ("chat/completions", {**_CHAT, "n": "x"}, "body.n"),
    ("chat/completions", {**_CHAT, "n": 0}, "n"),
    ("chat/completions", {**_CHAT, "n": -2}, "n"),
    ("chat/completions", {**_CHAT, "max_tokens": "x"}, "body.max_tokens"),
    ("chat/completions", {**_CHAT, "max_tokens": 0}, "max_tokens"),
    ("chat/completions", {**_CHAT, "max_completion_tokens": -3}, "max_tokens"),
    ("chat/completions", {**_CHAT, "stream": True, "stream_options": "x"}, "body.stream_options"),
    ("chat/completions", {**_CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ("chat/completions", {**_CHAT, "logprobs": True, "top_logprobs": "x"}, "top_logprobs"),
    ("chat/completions", {**_CHAT, "logprobs": True, "top_logprobs": 21}, "logprobs"),
    ("chat/completions", {**_CHAT, "logprobs": True, "top_logprobs": -1}, "logprobs"),
    ("chat/completions", {**_CHAT, "logprobs": True, "top_logprobs": -2}, "top_logprobs"),
    ("chat/completions", {**_CHAT, "top_logprobs": 3}, "top_logprobs"),
    ("completions", {"model": "sim", "prompt": 5}, "body.prompt"),
    ("completions", {"model": "sim", "prompt": []}, "body.prompt"),
    ("completions", {"model": "sim", "prompt": [1, "a"]}, "body.prompt"),
    ("completions", {**_CMPL, "logprobs": "x"}, "body.logprobs"),
    ("completions", {**_CMPL, "logprobs": 21}, "logprobs"),
    ("completions", {**_CMPL, "n": 0}, "n"),
    ("completions", {**_CMPL, "max_tokens": -1}, "max_tokens"),
    ("embeddings", {"model": "sim", "input": 5}, "body.input"),
    ("embeddings", {"model": "sim", "input": []}, "body.input"),
    ("embeddings", {"model": "sim"}, "body.input"),
    ("embeddings", {"model": "sim", "input": "a", "dimensions": "x"}, "body.dimensions"),
    ("embeddings", {"model": "sim", "input": "a", "dimensions": 0}, "dimensions"),
    ("embeddings", {"model": "sim", "input": "a", "dimensions": -5}, "dimensions"),
]


@pytest.mark.parametrize(("path", "body", "param", "stream"), [
    (*case, stream) for case in _BAD for stream in ((False,) if case[0] == "embeddings" else (False, True))])
async def test_bad_input_is_a_400_in_vllms_error_shape(path: str, body: dict[str, Any], param: str,
                                                       stream: bool) -> None:
    if path != "embeddings" and "stream_options" not in body:
        body = {**body, "stream": body.get("stream", stream)}
    async with sim_backend() as sim, aiohttp.ClientSession() as s, s.post(
            f"{sim.url}/v1/{path}", json=body) as r:
        assert r.status == 400, await r.text()
        assert r.content_type == "application/json"
        err = (await r.json())["error"]
    assert err["code"] == 400 and err["param"] == param and isinstance(err["message"], str)
    assert err["type"] in ("Bad Request", "BadRequestError")
    assert sim.stats.completed == 0


# --- 4. legacy logprobs=0: the sampled token's own logprob is still returned ----------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_logprobs_zero_still_returns_the_sampled_token(stream: bool) -> None:
    # vLLM returns the first ``logprobs + 1`` candidates of each position (completion_top_logprobs_limit), the
    # sampled token among them: with logprobs=0, a one-entry dict naming the sampled token (OpenAI's convention)
    body = {"model": "sim", "prompt": "Tell me about tides", "max_tokens": 4, "logprobs": 0, "stream": stream}
    async with sim_backend() as sim, aiohttp.ClientSession() as s, s.post(sim.url + "/v1/completions",
                                                                          json=body) as r:
        if stream:
            lps = [c["logprobs"] for e in _events(await r.read()) for c in e["choices"] if c["logprobs"]]
            tokens = [t for lp in lps for t in lp["tokens"]]
            tops = [t for lp in lps for t in lp["top_logprobs"]]
            values = [v for lp in lps for v in lp["token_logprobs"]]
        else:
            lp = (await r.json())["choices"][0]["logprobs"]
            tokens, tops, values = lp["tokens"], lp["top_logprobs"], lp["token_logprobs"]
    assert len(tokens) == 4
    assert tops == [{t: v} for t, v in zip(tokens, values, strict=True)]


# --- 5. legacy echo: the prompt comes back before the completion ---------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_echo_returns_each_prompt_before_its_completion(stream: bool) -> None:
    prompts = ["Tell me about tides.", "Name a prime"]
    async with sim_backend() as sim:
        client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
        try:
            texts: dict[int, str] = {}
            lps: dict[int, dict[str, list[Any]]] = {}
            if stream:
                async for c in await client.completions.create(model="sim", prompt=prompts, max_tokens=5,
                                                               echo=True, logprobs=1, stream=True):
                    for ch in c.choices:
                        texts[ch.index] = texts.get(ch.index, "") + ch.text
                        acc = lps.setdefault(ch.index, {})
                        for k, v in (ch.logprobs.model_dump() if ch.logprobs else {}).items():
                            acc[k] = acc.get(k, []) + (v or [])
            else:
                r = await client.completions.create(model="sim", prompt=prompts, max_tokens=5, echo=True, logprobs=1)
                texts = {ch.index: ch.text for ch in r.choices}
                lps = {ch.index: ch.logprobs.model_dump() for ch in r.choices if ch.logprobs}
                assert r.usage is not None and r.usage.completion_tokens == 10  # the echo is not generated
        finally:
            await client.close()
    for i, p in enumerate(prompts):
        answer = pick(p).tokens[:5]
        assert texts[i] == p + "".join(answer)  # vLLM: prompt text + output text
        lp = lps[i]
        assert lp["tokens"] == [*tokenize(p), *answer]
        assert lp["token_logprobs"][0] is None and None not in lp["token_logprobs"][1:]  # the first has no context
        assert lp["text_offset"] == [sum(map(len, lp["tokens"][:k])) for k in range(len(lp["tokens"]))]


# --- 6. forced tool calls: finish_reason as vLLM 0.33's resolve_finish_reason --------------------------------

_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("choice", "max_tokens", "want"), [
    ("required", 200, "tool_calls"),  # a call the model ended on its own
    ({"type": "function", "function": {"name": "get_weather"}}, 200, "stop"),  # OpenAI: "stop" for a named tool
    ("required", 2, "length"),  # a cut call stays visible as cut
])
async def test_a_forced_tool_call_finishes_as_vllm_reports_it(choice: Any, max_tokens: int, want: str,
                                                              stream: bool) -> None:
    body = {"model": "sim", "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [_TOOL],
            "tool_choice": choice, "max_tokens": max_tokens, "stream": stream}
    async with sim_backend() as sim, aiohttp.ClientSession() as s, s.post(
            sim.url + "/v1/chat/completions", json=body) as r:
        if stream:
            finish = [c["finish_reason"] for e in _events(await r.read()) for c in e["choices"]
                      if c["finish_reason"]]
        else:
            doc = await r.json()
            assert doc["choices"][0]["message"]["tool_calls"]
            finish = [doc["choices"][0]["finish_reason"]]
    assert finish == [want]


# --- 7. the emulated KGW plugin says that its answers carry no watermark --------------------------------------


async def test_the_emulated_kgw_plugin_warns_that_its_text_is_not_watermarked(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.sim.server")
    async with sim_backend(kgw_plugin=True):
        pass
    async with sim_backend():
        pass
    warned = [r for r in caplog.records if "NO watermark" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING


# --- 8. vllm_xargs that is not an object: vLLM's schema refuses it, the emulated plugin must not crash ---------


@pytest.mark.parametrize("kgw_plugin", [False, True])
@pytest.mark.parametrize("xargs", [["ipgate_kgw_client"], "ipgate_kgw_probe", 5])
async def test_vllm_xargs_that_is_not_an_object_is_a_400(kgw_plugin: bool, xargs: Any) -> None:
    body = {**_CHAT, "vllm_xargs": xargs}
    async with sim_backend(kgw_plugin=kgw_plugin) as sim, aiohttp.ClientSession() as s, s.post(
            sim.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 400 and r.content_type == "application/json", await r.text()
        err = (await r.json())["error"]
    assert err["param"] == "body.vllm_xargs" and err["code"] == 400


# --- 9. a reasoning model's logprobs cover its chain of thought too (vLLM: every generated token) --------------


async def test_chat_logprobs_cover_the_chain_of_thought_streamed_and_not() -> None:
    body = {"model": "sim", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 6,
            "logprobs": True, "top_logprobs": 2}
    async with sim_backend(reasoning=True) as sim, aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/v1/chat/completions", json=body) as r:
            doc = await r.json()
        async with s.post(sim.url + "/v1/chat/completions", json={**body, "stream": True}) as r:
            events = _events(await r.read())
    msg = doc["choices"][0]["message"]
    whole = doc["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in whole) == msg["reasoning"] + (msg["content"] or "")
    streamed = [e for c in events for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]]
    assert streamed == whole  # each reasoning delta carries its token's logprobs, as each content delta does
    thought_deltas = [ch for c in events for ch in c["choices"] if ch["delta"].get("reasoning")]
    assert thought_deltas and all(ch["logprobs"] for ch in thought_deltas)


MSGS = [{"role": "user", "content": "Explain how a bicycle stays upright."}]
PROMPT = "\n".join(m["content"] for m in MSGS)


# --- 10. a reasoning model's chain of thought counts against max_tokens --------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_chain_of_thought_and_the_answer_share_max_tokens(stream: bool) -> None:
    thought = pick(PROMPT + "\x1fthink").tokens
    answer = pick(PROMPT).tokens
    assert len(thought) > 8 and len(answer) > 8
    for mt in (5, len(thought) + 3):  # the budget ends inside the thought / inside the answer
        body = {"model": "sim", "messages": MSGS, "max_tokens": mt, "stream": stream,
                **({"stream_options": {"include_usage": True}} if stream else {})}
        async with sim_backend(reasoning=True) as sim, aiohttp.ClientSession() as s, s.post(
                sim.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            if stream:
                events = _events(await r.read())
                reasoning = "".join(c["choices"][0]["delta"].get("reasoning") or "" for c in events if c["choices"])
                content = "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"])
                finish = [c["choices"][0]["finish_reason"] for c in events if c["choices"]][-1]
                usage = events[-1]["usage"]
            else:
                doc = await r.json()
                msg = doc["choices"][0]["message"]
                reasoning, content = msg["reasoning"] or "", msg["content"] or ""
                finish, usage = doc["choices"][0]["finish_reason"], doc["usage"]
        kept = min(mt, len(thought))
        assert reasoning == "".join(thought[:kept])
        assert content == "".join(answer[: mt - kept])  # vLLM's max_tokens caps every generated token
        assert usage["completion_tokens"] == mt and finish == "length"


async def test_the_chain_of_thought_leaves_no_content_when_it_uses_the_whole_budget() -> None:
    # vLLM's reasoning parsers return content None when the end-of-thinking marker was never generated
    async with sim_backend(reasoning=True) as sim:
        client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
        try:
            r = await client.chat.completions.create(model="sim", messages=MSGS, max_tokens=5)  # type: ignore[arg-type]
        finally:
            await client.close()
    assert r.choices[0].message.content is None and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5
