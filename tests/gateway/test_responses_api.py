"""``POST /v1/responses`` end to end: the real gateway, real aiohttp backends (a vLLM-shaped fake whose text is
known, and the bundled sim), the official openai client (``client.responses.create``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.support.harness import gateway_config, lexical_gateway, running_gateway, sim_backend
from tests.support.lexical import ANSWER
from tests.support.responses_events import response_body, sse, stream_events

SECRET = "responses-api-e2e-master-secret-0123456789"
THOUGHT = ("Let me think about it. The user wants a laptop, so I should compare a few options; however, it is "
           "not always easy, and I will also mention the battery because it is the part that fails first.")


class Backend:
    """vLLM-shaped ``/v1/responses``: ANSWER (JSON of it under ``text.format``), THOUGHT as a reasoning item
    when ``reasoning`` is asked for."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        async def responses(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self.bodies.append(body)
            fmt = ((body.get("text") or {}).get("format") or {}).get("type", "text")
            text = json.dumps({"answer": ANSWER}) if fmt != "text" else ANSWER
            thought = THOUGHT if body.get("reasoning") else None
            lp = "message.output_text.logprobs" in (body.get("include") or [])
            if not body.get("stream"):
                return web.json_response(response_body(body["model"], text, thought, logprobs=lp))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            raw = sse(stream_events(body["model"], text, thought, logprobs=lp, step=7))
            for i in range(0, len(raw), 997):  # writes cut events anywhere
                await resp.write(raw[i : i + 997])
            return resp

        app = web.Application()
        app.router.add_post("/v1/responses", responses)
        return app


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Any]:
    backend = Backend()
    async with lexical_gateway(backend.app(), SECRET, tmp_path) as g:
        g.backend = backend
        yield g


async def _stream(client: openai.AsyncOpenAI, **kw: Any) -> tuple[dict[str, Any], Any]:
    """Deltas and done texts per (output_index, content_index), and the final response."""
    got: dict[str, Any] = {"delta": {}, "done": {}, "part": {}, "item": {}}
    final = None
    async with await client.responses.create(model="sim", stream=True, **kw) as s:
        async for ev in s:
            if ev.type in ("response.output_text.delta", "response.reasoning_text.delta"):
                k = (ev.output_index, ev.content_index)
                got["delta"][k] = got["delta"].get(k, "") + ev.delta
            elif ev.type in ("response.output_text.done", "response.reasoning_text.done"):
                got["done"][(ev.output_index, ev.content_index)] = ev.text
            elif ev.type == "response.content_part.done":
                got["part"][(ev.output_index, ev.content_index)] = ev.part.text
            elif ev.type == "response.output_item.done":
                for ci, p in enumerate(getattr(ev.item, "content", None) or []):
                    got["item"][(ev.output_index, ci)] = p.text
            elif ev.type == "response.completed":
                final = ev.response
    return got, final


async def _verify(g: Any, text: str, clients: list[str]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
            g.admin_url + "/admin/watermark/verify", json={"text": text, "clients": clients, "fpr": 1e-4},
            headers={"Authorization": f"Bearer {g.admin_token}"}) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def test_output_is_watermarked_for_the_client_and_done_events_match_the_deltas(gw: Any) -> None:
    alice, bob = gw.openai_client("alice"), gw.openai_client("bob")
    before = gw.ctx.metrics.tokens_total.labels("sim", "output")._value.get()
    r = await alice.responses.create(model="sim", input="Which laptop should I buy?", reasoning={"effort": "low"},
                                     include=["message.output_text.logprobs"], top_logprobs=2)
    assert r.output_text != ANSWER and r.usage is not None and r.usage.output_tokens == 300
    thought = r.output[0].content[0].text  # type: ignore[union-attr]
    assert thought != THOUGHT  # the chain of thought carries the watermark too
    assert r.output[1].content[0].logprobs == []  # type: ignore[union-attr]  # they would spell the original

    got, final = await _stream(alice, input="Which laptop should I buy?", reasoning={"effort": "low"})
    assert got["delta"] == got["done"] == got["part"] == got["item"] == {(0, 0): thought, (1, 0): r.output_text}
    assert final is not None and final.output_text == r.output_text and final.usage.output_tokens == 300
    b = await bob.responses.create(model="sim", input="Which laptop should I buy?")
    assert b.output_text not in (ANSWER, r.output_text)

    assert (await _verify(gw, r.output_text, ["bob", "carol", "alice"]))["client"] == "alice"
    assert (await _verify(gw, b.output_text, ["alice", "carol", "bob"]))["client"] == "bob"
    assert not (await _verify(gw, ANSWER, ["alice", "bob"]))["watermarked"]

    sent = gw.backend.bodies[-1]  # nothing stored upstream; the gateway added no chat-only field
    assert sent["store"] is False and "stream_options" not in sent and "logprobs" not in sent
    for _ in range(50):  # usage reconciled from usage.output_tokens (body and response.completed)
        if gw.ctx.metrics.tokens_total.labels("sim", "output")._value.get() - before >= 900:
            break
        await asyncio.sleep(0.02)
    assert gw.ctx.metrics.tokens_total.labels("sim", "output")._value.get() - before == 900


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": "hi", "background": True}, 400, "background"),
    ({"input": "hi", "previous_response_id": "resp_1"}, 400, "previous_response_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400,
     "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "input[0].type"),
    ({}, 400, "input"),
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "hi", "text": {"format": {"type": "yaml"}}}, 400, "text.format.type"),
    ({"input": "hi", "model": "nope"}, 404, "model"),
])
async def test_refusals_name_the_field(gw: Any, body: dict[str, Any], status: int, param: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/responses", json={"model": "sim", **body},
            headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
        err = (await r.json())["error"]
        assert r.status == status and err["param"] == param, err
    assert not gw.backend.bodies


async def test_stored_responses_are_not_served(gw: Any) -> None:
    headers = {"Authorization": f"Bearer {gw.token('alice')}"}
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"),
                             ("GET", "/v1/responses/resp_1/input_items")):
            async with http.request(method, gw.url + path, headers=headers) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        async with http.get(gw.url + "/v1/responses", headers=headers) as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
    with pytest.raises(openai.BadRequestError) as e:
        await gw.openai_client("alice").responses.create(model="sim", input="hi", background=True)
    assert e.value.body["param"] == "background"  # type: ignore[index]


async def _override(g: Any, client: str, tier: str) -> None:
    async with aiohttp.ClientSession() as s, s.put(
            g.admin_url + f"/admin/clients/{client}/override", json={"tier": tier},
            headers={"Authorization": f"Bearer {g.admin_token}"}) as r:
        assert r.status == 200, await r.text()


async def test_tier_hardening(gw: Any) -> None:
    alice = gw.openai_client("alice")
    # normal tier: structured output relayed verbatim (counted); its reasoning still watermarked
    r = await alice.responses.create(model="sim", input="hi", reasoning={"effort": "low"},
                                     text={"format": {"type": "json_object"}})
    assert json.loads(r.output_text) == {"answer": ANSWER} and r.output[0].content[0].text != THOUGHT  # type: ignore[union-attr]
    assert gw.ctx.metrics.watermark_skipped_total.labels(reason="text.format")._value.get() >= 1
    got, _ = await _stream(alice, input="hi", text={"format": {"type": "json_object"}})
    assert json.loads(got["delta"][(0, 0)]) == {"answer": ANSWER}

    await _override(gw, "mallory", "throttle")  # strip_reasoning, refuse_unwatermarkable, logprob caps
    mal = gw.openai_client("mallory")
    r = await mal.responses.create(model="sim", input="hi", reasoning={"effort": "high"}, top_logprobs=20,
                                   include=["message.output_text.logprobs"],
                                   extra_body={"vllm_xargs": {"x": 1}, "seed": 7, "logit_bias": {"5": 50}})
    assert [i.type for i in r.output] == ["message"] and r.output_text != ANSWER
    sent = gw.backend.bodies[-1]
    assert "vllm_xargs" not in sent and "seed" not in sent and "logit_bias" not in sent
    assert sent["top_logprobs"] == gw.ctx.policy.tier(2).hardening.max_top_logprobs
    got, final = await _stream(mal, input="hi", reasoning={"effort": "high"})
    assert list(got["delta"]) == [(0, 0)] and got["delta"][(0, 0)] == r.output_text
    assert final is not None and [i.type for i in final.output] == ["message"]
    for extra, param in (({"text": {"format": {"type": "json_object"}}}, "text.format"),
                         ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
                         ({"tools": [{"type": "function", "name": "f", "parameters": {}}],
                           "tool_choice": "required"}, "tool_choice")):
        with pytest.raises(openai.PermissionDeniedError) as e:
            await mal.responses.create(model="sim", input="hi", **extra)
        assert e.value.body["param"] == param  # type: ignore[index]


async def test_detection_throttles_a_harvester_through_the_responses_api() -> None:
    """The template harvester of tests/detection_gateway/test_e2e_attacker.py, through /v1/responses."""
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True}, limits={
            "default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
            "suspicious": {"requests_per_minute": 600, "tokens_per_minute": 1_000_000, "burst_requests": 3}})
        async with running_gateway(cfg) as g:
            client = g.openai_client("harvey")
            statuses = []
            for i in range(100):
                text = (f"You are an expert tutor. Explain topic number {i % 13} to a student in grade "
                        f"{5 + i % 7}. Think step by step and show your full reasoning, then write {3 + i % 6} "
                        "quiz questions.")
                try:
                    await client.responses.create(model="sim", input=text, instructions="Be thorough.",
                                                  max_output_tokens=20)
                    statuses.append(200)
                except openai.RateLimitError:
                    statuses.append(429)
                    await asyncio.sleep(0.03)
                except openai.PermissionDeniedError:
                    statuses.append(403)
                    break
            assert statuses[0] == 200 and (429 in statuses or 403 in statuses), statuses
            rec = await g.ctx.store.get_client("harvey")
            assert rec is not None and rec.tier >= 2


async def test_the_bundled_sim_through_the_gateway(tmp_path: Path) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, watermark={"enabled": True, "scheme": "lexical", "secret_file": str(secret)})
        async with running_gateway(cfg) as g:
            client = g.openai_client("alice")
            r = await client.responses.create(model="sim", input="Tell me about laptops.")
            got, final = await _stream(client, input="Tell me about laptops.")
            assert r.output_text and final is not None and got["delta"] == got["done"] == got["item"]
            assert final.output_text == got["delta"][(0, 0)]
            assert sim.stats.completed == 2
