"""Review of ``refuse_unwatermarkable``: tool-call arguments are never watermarked (the gateway relays them as the
backend wrote them, so that the client's code can parse them), so a throttled client that declares a tool and
asks the model to "answer by calling it" gets the model's free text unwatermarked, whatever ``tool_choice`` says
(``auto``, the default when tools are given, lets the model call one). The throttle tier must refuse that as it
refuses JSON mode — unless ``tool_choice: "none"`` rules tool calls out, or the engine watermarks the tokens.

And the other way round: an answer that must stay verbatim (JSON mode, a forced tool call) from a reasoning
model still has a chain of thought beside it that no format constrains; it gets the client's watermark.

Real aiohttp backends (one answering with a tool call carrying free text, one a reasoning model in JSON mode),
the official openai client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, running_gateway
from tests.support.lexical import ANSWER
from tests.support.reasoning import reasoning_app
from watermark.keys import KeyRing, parse_master_secret
from watermark.lexical import LexicalScheme
from watermark.verify import candidate_keys, verify

SECRET = "review-unwatermarkable-secret-0123456789abcdef"
TOOL = {"type": "function", "function": {"name": "write_answer", "description": "Give the whole answer here.",
                                         "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}
FUNCTION = TOOL["function"]


class ToolBackend:
    """Answers every chat request with a call of the first declared tool, its argument the model's free text."""

    def __init__(self) -> None:
        self.requests = 0

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.Response:
            body = await request.json()
            self.requests += 1
            msg: dict[str, Any] = {"role": "assistant", "content": ANSWER}
            tools = body.get("tools") or []
            if tools and body.get("tool_choice") != "none":
                call = {"id": "c1", "type": "function",
                        "function": {"name": tools[0]["function"]["name"], "arguments": json.dumps({"text": ANSWER})}}
                msg = {"role": "assistant", "content": None, "tool_calls": [call]}
            functions = body.get("functions") or []
            if functions and body.get("function_call") != "none":
                msg = {"role": "assistant", "content": None, "function_call": {
                    "name": functions[0]["name"], "arguments": json.dumps({"text": ANSWER})}}
            return web.json_response({"id": "x", "object": "chat.completion", "created": int(time.time()),
                                      "model": body["model"], "choices": [{"index": 0, "message": msg,
                                      "finish_reason": "tool_calls" if msg["content"] is None else "stop"}],
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 300, "total_tokens": 305}})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app


async def _throttle(gw: Any, client: str) -> None:
    async with aiohttp.ClientSession() as s, s.put(
            gw.admin_url + f"/admin/clients/{client}/override", json={"tier": "throttle"},
            headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        assert r.status == 200, await r.text()


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [TOOL]}, "tools"),  # tool_choice defaults to auto
    ({"tools": [TOOL], "tool_choice": "auto"}, "tools"),
    ({"functions": [FUNCTION]}, "functions"),  # the legacy form
    ({"functions": [FUNCTION], "function_call": "auto"}, "functions"),
])
async def test_the_throttle_tier_refuses_tool_calls_whose_arguments_it_cannot_watermark(
        tmp_path: Path, extra: dict[str, Any], param: str) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    backend = ToolBackend()
    async with app_backend(backend.app()) as url, running_gateway(
            gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)})) as gw:
        await _throttle(gw, "mallory")
        msgs: Any = [{"role": "user", "content": "Which laptop should I buy? Answer by calling write_answer."}]
        client = gw.openai_client("mallory")
        try:
            with pytest.raises(openai.PermissionDeniedError) as refused:
                await client.chat.completions.create(model="sim", messages=msgs, **extra)
        finally:
            await client.close()
        # below the throttle tier the call is served as the backend wrote it
        client = gw.openai_client("alice")
        try:
            served = await client.chat.completions.create(model="sim", messages=msgs, **extra)
        finally:
            await client.close()
        sent = backend.requests
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "unwatermarkable_output" and body["param"] == param, body
    assert sent == 1  # the refused request never reached the backend
    message = served.choices[0].message
    if message.tool_calls:
        call = message.tool_calls[0]
        assert call.type == "function"
        arguments = call.function.arguments
    else:
        assert message.function_call is not None
        arguments = message.function_call.arguments
    assert json.loads(arguments)["text"] == ANSWER  # what the throttled client would have had, unwatermarked


async def test_tools_the_model_may_not_call_and_plain_requests_are_still_served(tmp_path: Path) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    backend = ToolBackend()
    async with app_backend(backend.app()) as url, running_gateway(
            gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)})) as gw:
        await _throttle(gw, "mallory")
        client = gw.openai_client("mallory")
        msgs: Any = [{"role": "user", "content": "Which laptop should I buy?"}]
        try:
            none = await client.chat.completions.create(model="sim", messages=msgs, tools=[TOOL], tool_choice="none")
            plain = await client.chat.completions.create(model="sim", messages=msgs, tools=[])
        finally:
            await client.close()
    for r in (none, plain):
        text = r.choices[0].message.content
        assert text is not None and text != ANSWER  # served, watermarked


def _reasoning_json_backend() -> web.Application:
    """A reasoning model in JSON mode, as vLLM serves it: the grammar constrains the answer only (it applies
    after the reasoning ends), so the chain of thought beside it is free text."""
    return reasoning_app(ANSWER, '{"laptop": "a mid-range one with a good keyboard"}', piece=9, choice_extra={
        "logprobs": {"content": [{"token": "It", "logprob": -0.1}]}, "token_ids": [7]})


@pytest.mark.parametrize("stream", [False, True])
async def test_in_json_mode_the_answer_is_verbatim_but_the_chain_of_thought_is_watermarked(
        tmp_path: Path, stream: bool) -> None:
    """The answer must stay as the grammar made it; the reasoning beside it is free text the format does not
    cover, the output distillation wants most, and was relayed unwatermarked with it. Its tokens (logprobs,
    token_ids) would spell the original, so they are withheld as for any watermarked choice."""
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    scheme, ring = LexicalScheme(parse_master_secret(SECRET)), KeyRing(parse_master_secret(SECRET), 1)
    async with app_backend(_reasoning_json_backend()) as url, running_gateway(
            gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)})) as gw:
        body = {"model": "sim", "messages": [{"role": "user", "content": "Which laptop? Answer in JSON."}],
                "response_format": {"type": "json_object"}, "logprobs": True, "stream": stream}
        async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", json=body, headers={
                "Authorization": f"Bearer {gw.token('alice')}"}) as r:
            assert r.status == 200
            raw = await r.read()
        skipped = gw.ctx.metrics.registry.get_sample_value("ipgate_watermark_skipped_total",
                                                           {"reason": "response_format"})
    if stream:
        thought = answer = ""
        for event in raw.split(b"\n\n"):
            if event.startswith(b"data: {"):
                for c in json.loads(event[6:])["choices"]:
                    assert "token_ids" not in c and c.get("logprobs") is None
                    thought += c["delta"].get("reasoning") or ""
                    answer += c["delta"].get("content") or ""
    else:
        choice = json.loads(raw)["choices"][0]
        assert choice["logprobs"] is None
        thought, answer = choice["message"]["reasoning"], choice["message"]["content"]
    assert answer == '{"laptop": "a mid-range one with a good keyboard"}'  # verbatim
    emb = scheme.embedder(ring.key("alice"))
    assert thought == emb.feed(ANSWER) + emb.finish() != ANSWER
    v = verify(thought, candidate_keys(ring, ["alice", "bob"]), [scheme], fpr=1e-6)
    assert v.watermarked and v.client == "alice"
    assert skipped == 1  # the answer itself is still counted as not watermarked
