"""Inference-server extension fields that reach engine internals (gateway/proxy/fields.py): refused in requests
(400 naming the field), withheld from answers (bodies and stream chunks of chat, completions and the Responses
API), counted, configurable. Table-driven unit tests of the policy, then the real gateway end to end: the
bundled simulator answering as vLLM 0.33 does, a hand-written Responses backend, and the official openai
client with ``extra_body``/``extra_headers``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import CollectorRegistry

from gateway.config import ConfigError, parse_config
from gateway.errors import InvalidRequest
from gateway.preflight import offline
from gateway.proxy.body import transform_body
from gateway.proxy.field_catalogue import REFUSED_FIELDS, REFUSED_HEADERS, WITHHELD_RESPONSE_FIELDS
from gateway.proxy.fields import FieldPolicy, weakened
from gateway.proxy.relay import StreamRelay
from gateway.proxy.responses_body import transform_body as responses_transform
from gateway.proxy.responses_relay import ResponsesRelay
from gateway.telemetry.metrics import Metrics
from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway, sim_backend
from tests.support.responses_events import parse_sse, response_body, sse, stream_events

MODELS = [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}]
MSGS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about rivers."}]


def _policy(**overrides: Any) -> tuple[FieldPolicy, Metrics]:
    cfg = parse_config({"models": MODELS, **({"proxy": overrides} if overrides else {})}, env={}).proxy
    m = Metrics(CollectorRegistry())
    return FieldPolicy(cfg.refused_fields, cfg.refused_headers, cfg.withheld_response_fields,
                       refused_metric=m.request_fields_refused_total,
                       withheld_metric=m.response_fields_withheld_total), m


def _count(registry: CollectorRegistry, metric: str, name: str) -> float:
    return registry.get_sample_value(metric, {"field": name}) or 0.0


def _nest(name: str, value: Any) -> dict[str, Any]:
    parent, _, child = name.partition(".")
    return {parent: {child: value}} if child else {name: value}


@contextmanager
def _refused(name: str) -> Iterator[None]:
    with pytest.raises(InvalidRequest) as e:
        yield
    assert e.value.status == 400 and e.value.param == name and e.value.code == "field_not_accepted"
    assert e.value.message.startswith(f"{name}: ") and "not accepted by this gateway" in e.value.message


# --- the request check --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "refused"), [
    ({"kv_transfer_params": {"remote_host": "10.0.0.9", "remote_block_ids": [1, 2]}}, "kv_transfer_params"),
    ({"priority": 0}, "priority"),  # 0 is vLLM's default but a value all the same (only null/false are absent)
    ({"priority": -100}, "priority"),
    ({"priority": None}, None),
    ({"return_prompt_text": False}, None),  # clients that serialize every default still pass
    ({"return_prompt_text": True}, "return_prompt_text"),
    ({"return_hidden_states": "last"}, "return_hidden_states"),
    ({"chat_template": "{{ messages }}"}, "chat_template"),
    ({"chat_template_kwargs": {"enable_thinking": False}}, None),  # the common, legitimate use
    ({"chat_template_kwargs": {"chat_template": "{{ x }}"}}, "chat_template_kwargs.chat_template"),
    ({"chat_template_kwargs": {"chat_template": None}}, None),
    ({"cache_salt": "per-client-salt"}, None),  # salts only the client's own prefix cache: passes
    ({"return_token_ids": True}, None),  # token ids: withheld with the watermark (relay), not refused
    ({"temperature": 0.2, "priority": 1, "kv_transfer_params": {}}, "priority"),  # the first one, in body order
])
def test_request_check(body: dict[str, Any], refused: str | None) -> None:
    policy, m = _policy()
    full: dict[str, Any] = {"model": "m", "messages": MSGS, **body}
    if refused is None:
        policy.check(full, CIMultiDict())
        return
    with _refused(refused):
        policy.check(full, CIMultiDict())
    assert _count(m.registry, "ipgate_request_fields_refused_total", refused) == 1


@pytest.mark.parametrize("name", sorted(REFUSED_FIELDS))
def test_every_default_refused_field_is_refused_with_its_reason(name: str) -> None:
    policy, _ = _policy()
    with _refused(name):
        policy.check({"model": "m", **_nest(name, 1)})
    with pytest.raises(InvalidRequest) as e:
        policy.check({"model": "m", **_nest(name, {"x": 1})})
    assert f"({REFUSED_FIELDS[name]}; proxy.refused_fields)" in e.value.message


@pytest.mark.parametrize("header", ["X-Vllm-Priority", "x-data-parallel-rank", "X-Session-ID"])
def test_refused_headers_any_case(header: str) -> None:
    policy, m = _policy()
    with pytest.raises(InvalidRequest) as e:
        policy.check({"model": "m"}, CIMultiDict({header: "-5", "Content-Type": "application/json"}))
    assert e.value.param == header.lower() and "proxy.refused_headers" in e.value.message
    assert REFUSED_HEADERS[header.lower()] in e.value.message
    assert _count(m.registry, "ipgate_request_fields_refused_total", header.lower()) == 1
    policy.check({"model": "m"}, CIMultiDict({"X-Custom-Trace": "1"}))  # other headers pass


def test_configured_lists_replace_the_defaults() -> None:
    cleared, _ = _policy(refused_fields=[], refused_headers=[])
    cleared.check({"model": "m", "kv_transfer_params": {"a": 1}, "priority": 3}, CIMultiDict({"X-Vllm-Priority": "1"}))
    own, _ = _policy(refused_fields=["my_ext", "extra.secret"])
    own.check({"model": "m", "kv_transfer_params": {"a": 1}})  # no longer listed
    with _refused("my_ext"):
        own.check({"model": "m", "my_ext": [1]})
    with pytest.raises(InvalidRequest, match=r"extra\.secret: .*listed by the operator"):
        own.check({"model": "m", "extra": {"secret": "s"}})


@pytest.mark.parametrize(("proxy", "problem"), [
    ({"refused_fields": ["model"]}, "refuses them all"),
    ({"refused_fields": ["a.b.c"]}, "not a field name"),
    ({"refused_fields": ["priority", "priority"]}, "more than once"),
    ({"refused_headers": ["Authorization"]}, "refuses them all"),
    ({"refused_headers": ["bad header"]}, "not a valid HTTP header name"),
    ({"withheld_response_fields": ["choices"]}, "cannot be withheld"),
    ({"withheld_response_fields": ["sglext.routed_experts"]}, "not a field name"),
    ({"bogus": []}, "bogus"),
])
def test_config_validation_names_the_field(proxy: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match="proxy") as e:
        parse_config({"models": MODELS, "proxy": proxy}, source="t.yaml", env={})
    assert problem in str(e.value)


def test_ipgate_check_warns_about_each_dropped_default() -> None:
    assert weakened(REFUSED_FIELDS, REFUSED_HEADERS, WITHHELD_RESPONSE_FIELDS) == []
    cfg = parse_config({"models": MODELS, "proxy": {"refused_fields": ["priority"], "withheld_response_fields": []}},
                       env={})
    warnings = [f.message for f in offline(cfg, env={}) if f.area == "proxy" and f.level == "warning"]
    assert len(warnings) == len(REFUSED_FIELDS) - 1 + len(WITHHELD_RESPONSE_FIELDS)
    assert any("'kv_transfer_params'" in w and "reaches the backend" in w for w in warnings)
    assert any("'routed_experts'" in w and "reaches the client" in w for w in warnings)
    assert not any("'priority'" in w for w in warnings)


# --- the answer scrub ---------------------------------------------------------------------------------------

def _where(name: str, level: str, value: Any) -> dict[str, Any]:
    """A chat answer with ``name`` at ``level``: top, choice or message."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x"}}
    body: dict[str, Any] = {"id": "c", "object": "chat.completion", "model": "m", "choices": [choice]}
    {"top": body, "choice": choice, "message": choice["message"]}[level][name] = value
    return body


@pytest.mark.parametrize("level", ["top", "choice", "message"])
@pytest.mark.parametrize("name", sorted(WITHHELD_RESPONSE_FIELDS))
def test_scrub_removes_every_withheld_field_at_every_level(name: str, level: str) -> None:
    policy, m = _policy()
    body = _where(name, level, {"secret": 1})
    raw = json.dumps(body).encode()
    assert policy.may_hold(raw)
    assert policy.scrub(body)
    assert name.encode() not in json.dumps(body).encode()
    assert body["choices"][0]["message"]["content"] == "x"
    assert _count(m.registry, "ipgate_response_fields_withheld_total", name) == 1


@pytest.mark.parametrize(("raw", "holds"), [
    (b'{"prompt_text": null, "kv_transfer_params":null, "routed_experts" : null}', False),  # vLLM's nulls
    (b'{"choices":[{"delta":{"content":"metrics"}}]}', False),  # a value, not a key
    (b'{"choices":[{"delta":{"content":"say \\"metadata\\": yes"}}]}', False),
    (b'{"prompt_text":"<|im_start|>system"}', True),
    (b'{"choices":[{"weight_versions" :\n[{"version":"canary"}]}]}', True),
    (b'{"sglext":{"routed_experts":"AAA"}}', True),
])
def test_prefilter(raw: bytes, holds: bool) -> None:
    policy, _ = _policy()
    assert policy.may_hold(raw) is holds


def test_nulls_are_relayed_and_not_counted() -> None:
    """vLLM 0.33 writes all its extension keys, null, into every non-streamed answer: nothing to withhold."""
    policy, m = _policy()
    body = _where("prompt_text", "top", None)
    body["choices"][0].update(routed_experts=None, weight_versions=None)
    before = json.dumps(body)
    assert not policy.scrub(body) and json.dumps(body) == before
    assert m.registry.get_sample_value("ipgate_response_fields_withheld_total", {"field": "prompt_text"}) is None


def test_an_empty_withheld_list_scrubs_nothing() -> None:
    policy, _ = _policy(withheld_response_fields=[])
    body = _where("routed_experts", "choice", "AAAA")
    assert not policy.may_hold(json.dumps(body).encode()) and not policy.scrub(body)
    assert body["choices"][0]["routed_experts"] == "AAAA"


def _chunks(*objs: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("details", [False, True])  # False: the relay's fast path (no JSON decoding)
def test_stream_relay_withholds_in_chunks(details: bool) -> None:
    policy, m = _policy()
    base = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    raw = _chunks(
        {**base, "prompt_text": "<|im_start|>system\nSECRET", "kv_transfer_params": None,
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Rivers"}, "finish_reason": None}]},
        {**base, "kv_transfer_params": {"remote_engine_id": "prefill-3"},
         "choices": [{"index": 0, "delta": {"hidden_states": [0.1]}, "finish_reason": "stop",
                      "weight_versions": [{"version": "canary-7", "start": 0, "end": 1}]}]},
    )
    relay = StreamRelay("chat", False, None, details=details, fields=policy)
    out = relay.feed(raw) + relay.finish()
    for secret in (b"SECRET", b"prefill-3", b"canary-7", b"hidden_states", b"prompt_text"):
        assert secret not in out
    assert b'"Rivers"' in out and relay.done and relay.finish_reasons == ["stop"]
    first = json.loads(out.split(b"\n\n")[0][len(b"data: "):])
    assert first["kv_transfer_params"] is None  # the null of the first chunk: relayed as it came
    for name in ("prompt_text", "kv_transfer_params", "weight_versions", "hidden_states"):
        assert _count(m.registry, "ipgate_response_fields_withheld_total", name) == 1
    unguarded = StreamRelay("chat", False, None, details=details)  # the same stream without a policy
    assert b"canary-7" in unguarded.feed(raw)


def test_transform_body_withholds_completions_choice_fields() -> None:
    policy, m = _policy()
    body: dict[str, Any] = {
        "id": "c", "object": "text_completion", "model": "m", "metrics": {"queue_time_ms": 3.0},
        "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "routed_experts": "k05VTVBZ",
                     "prompt_token_ids": [1, 2], "token_ids": [5]}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}
    changed, usage, reasons, *_ = transform_body("completions", body, None, None, policy)
    assert changed and reasons == ["stop"] and usage.completion_tokens == 1
    assert "metrics" not in body and body["choices"][0] == {"index": 0, "text": "hi", "finish_reason": "stop",
                                                            "token_ids": [5]}
    assert _count(m.registry, "ipgate_response_fields_withheld_total", "routed_experts") == 1
    unchanged, *_ = transform_body("completions", body, None, None, policy)
    assert not unchanged


def test_responses_relay_withholds_internal_fields_of_the_response_object() -> None:
    """The Responses relay allowlists items, parts and events, but the response object's own fields were
    relayed as the backend wrote them: vLLM's kv_transfer_params and metrics among them."""
    policy, m = _policy()
    internal = {"kv_transfer_params": {"remote_engine_id": "prefill-3"}, "metrics": {"queue_time_ms": 9.5},
                "sglext": {"cached_tokens_details": {"device": 12}}, "metadata": {"team": "search"}}
    events = stream_events("m", "The river bends twice.")
    for ev in events:
        if "response" in ev:
            ev["response"].update(internal)
    relay = ResponsesRelay(None, fields=policy)
    out = parse_sse(relay.feed(sse(events)) + relay.finish())
    finals = [e["response"] for e in out if "response" in e]
    assert finals and all(set(internal) & set(r) == {"metadata"} for r in finals)
    assert finals[-1]["metadata"] == {"team": "search"}  # the client's own metadata, an OpenAI field here
    assert _count(m.registry, "ipgate_response_fields_withheld_total", "kv_transfer_params") == len(finals)
    body = {**response_body("m", "The river bends twice."), **internal}
    changed, *_ = responses_transform(body, None, None, fields=policy)
    assert changed and set(internal) & set(body) == {"metadata"}
    leaky = {**response_body("m", "x"), **internal}
    responses_transform(leaky, None, None)  # without a policy: what the relay did before
    assert "kv_transfer_params" in leaky


# --- end to end: the real gateway ---------------------------------------------------------------------------

def _registry(gw: GatewayHandle) -> CollectorRegistry:
    return gw.ctx.metrics.registry


async def test_refused_field_is_a_400_naming_it_and_never_reaches_the_backend() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client("alice")
        try:
            with pytest.raises(openai.BadRequestError) as e:
                await client.chat.completions.create(model="sim", messages=MSGS, extra_body={
                    "kv_transfer_params": {"do_remote_prefill": True, "remote_host": "10.0.0.9"}})
            err = e.value.body
            assert isinstance(err, dict) and err["param"] == "kv_transfer_params"
            assert err["message"].startswith("kv_transfer_params: not accepted by this gateway (engine-internal")
            with pytest.raises(openai.BadRequestError, match="priority"):
                await client.completions.create(model="sim", prompt="hi", extra_body={"priority": -10})
            with pytest.raises(openai.BadRequestError, match="request_id"):
                await client.embeddings.create(model="sim", input="hi", extra_body={"request_id": "victim-42"})
            with pytest.raises(openai.BadRequestError, match="return_weight_versions"):
                await client.responses.create(model="sim", input="hi", extra_body={"return_weight_versions": True})
            with pytest.raises(openai.BadRequestError, match="x-vllm-priority"):
                await client.chat.completions.create(model="sim", messages=MSGS,
                                                     extra_headers={"X-Vllm-Priority": "-100"})
            assert sim.stats.requests == 0
            r = await client.chat.completions.create(model="sim", messages=MSGS, extra_body={"cache_salt": "s"})
            assert r.choices[0].message.content and sim.stats.last_body["cache_salt"] == "s"
        finally:
            await client.close()
        reg = _registry(gw)
        assert _count(reg, "ipgate_request_fields_refused_total", "kv_transfer_params") == 1
        assert _count(reg, "ipgate_request_fields_refused_total", "x-vllm-priority") == 1


async def test_a_config_that_clears_the_lists_lets_fields_through() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(
            sim.url, proxy={"refused_fields": [], "refused_headers": []})) as gw:
        client = gw.openai_client("alice")
        try:
            await client.chat.completions.create(model="sim", messages=MSGS, extra_headers={"X-Vllm-Priority": "3"},
                                                 extra_body={"priority": 3, "kv_transfer_params": {"x": 1}})
        finally:
            await client.close()
        assert sim.stats.last_body["priority"] == 3 and sim.stats.last_body["kv_transfer_params"] == {"x": 1}
        assert sim.stats.last_headers["X-Vllm-Priority"] == "3"


def _extras(obj: Any) -> set[str]:
    return set((obj.model_extra or {}) if obj is not None else ())


async def _chat_and_completions(gw: GatewayHandle, extra: dict[str, Any]) -> list[set[str]]:
    """Every extra key the client saw (top level, choices, messages/deltas), non-streamed and streamed."""
    client = gw.openai_client("alice")
    seen: list[set[str]] = []
    try:
        r = await client.chat.completions.create(model="sim", messages=MSGS, max_tokens=6, extra_body=extra)
        seen += [_extras(r), _extras(r.choices[0]), _extras(r.choices[0].message)]
        c = await client.completions.create(model="sim", prompt="hi", max_tokens=6, extra_body=extra)
        seen += [_extras(c), _extras(c.choices[0])]
        async for ch in await client.chat.completions.create(model="sim", messages=MSGS, max_tokens=6, stream=True,
                                                             extra_body=extra):
            seen += [_extras(ch), *(_extras(x) | _extras(x.delta) for x in ch.choices)]
        async for cc in await client.completions.create(model="sim", prompt="hi", max_tokens=6, stream=True,
                                                        extra_body=extra):
            seen += [_extras(cc), *(_extras(x) for x in cc.choices)]
    finally:
        await client.close()
    return seen


@pytest.mark.parametrize("details", [False, True])  # False: no detection, the relay's undecoded fast paths
async def test_deployment_internals_are_withheld_streamed_or_not_and_counted(details: bool) -> None:
    """The request fields pass (refused_fields cleared) so that the simulated vLLM answers them; the answer
    fields are withheld all the same. routed_experts comes from the server flag, whatever the request says."""
    asks = {"return_prompt_text": True, "return_weight_versions": True}
    async with sim_backend(routed_experts=True) as sim, running_gateway(gateway_config(
            sim.url, proxy={"refused_fields": []}, detection={"enabled": details})) as gw:
        seen = set().union(*await _chat_and_completions(gw, asks))
        assert sim.stats.last_body["return_weight_versions"] is True
        assert not seen & {"prompt_text", "weight_versions", "routed_experts"}, seen
        reg = _registry(gw)
        assert _count(reg, "ipgate_response_fields_withheld_total", "prompt_text") == 2  # chat body + first chunk
        assert _count(reg, "ipgate_response_fields_withheld_total", "weight_versions") == 4
        assert _count(reg, "ipgate_response_fields_withheld_total", "routed_experts") == 2  # not streamed (vLLM)


async def test_the_same_backend_without_the_scrub_leaks_them() -> None:
    """What the scrub stops: with withheld_response_fields cleared the client sees all three."""
    async with sim_backend(routed_experts=True) as sim, running_gateway(gateway_config(
            sim.url, proxy={"refused_fields": [], "withheld_response_fields": []})) as gw:
        seen = set().union(*await _chat_and_completions(
            gw, {"return_prompt_text": True, "return_weight_versions": True}))
    assert {"prompt_text", "weight_versions", "routed_experts"} <= seen


def _responses_backend() -> web.Application:
    internal = {"kv_transfer_params": {"remote_engine_id": "prefill-3", "remote_block_ids": [7, 8]},
                "metrics": {"queue_time_ms": 4.0}, "metadata": {"team": "search"}}

    async def create(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({**response_body(body["model"], "The river bends twice."), **internal})
        events = stream_events(body["model"], "The river bends twice.")
        for ev in events:
            if "response" in ev:
                ev["response"].update(internal)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(events))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/responses", create)
    return app


async def test_responses_api_withholds_engine_fields_keeps_metadata() -> None:
    async with app_backend(_responses_backend()) as url, running_gateway(gateway_config(url)) as gw:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.token('alice')}"}) as http:
            async with http.post(gw.url + "/v1/responses", json={"model": "sim", "input": "hi"}) as r:
                assert r.status == 200
                body = await r.json()
            async with http.post(gw.url + "/v1/responses", json={"model": "sim", "input": "hi", "stream": True}) as r:
                assert r.status == 200
                events = parse_sse(await r.read())
        objects = [body, *(e["response"] for e in events if "response" in e)]
        assert len(objects) == 4 and all("kv_transfer_params" not in o and "metrics" not in o for o in objects)
        assert all(o["metadata"] == {"team": "search"} for o in objects)
        assert body["output"][0]["content"][0]["text"] == "The river bends twice."
        assert _count(_registry(gw), "ipgate_response_fields_withheld_total", "kv_transfer_params") == 4
