"""Is ipgate a drop-in for the official openai SDK? Each case makes one SDK call twice — directly against the
simulated vLLM 0.33 backend and through the real gateway in front of that same backend — and compares what
the SDK user sees: the returned objects (``model_dump()`` without ids and timestamps), stream chunks and
events, stream-helper events and final objects, raw headers, and the exceptions with their attributes.

A difference that the gateway makes on purpose is written into the case as the transformation of the direct
view into the expected gateway view (``Case.expect``), with the documentation that says so; everything else
must be identical. With the lexical watermark on, text and the logprobs of watermarked choices are masked
(docs/proxy.md, "transform") and everything else must still match; constrained output (JSON mode, forced
tool calls) is never watermarked and must match exactly (but for a reasoning model's chain of thought beside
it). Cases marked ``reasoning`` run against a reasoning model too. Report: /work/team/docs/sdk-differential.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import FunctionToolParam

from gateway.sim.server import SimOptions, build_sim_app
from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway
from tests.support.stall import OwnClock

# the sim answers this in English (the watermark has words to mark)
MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
PROMPT = "Once upon a time"
# ids and timestamps differ between any two calls; nothing else may
VOLATILE = frozenset({"id", "created", "created_at", "item_id", "call_id"})
# masked where the watermark may rewrite text: answers, a reasoning model's chain of thought (chat `reasoning`)
TEXT = frozenset({"content", "text", "delta", "arguments", "reasoning"})
# where it may rewrite text in constrained output: only the chain of thought (chat `reasoning`, Responses
# reasoning parts' `text`/`delta`; the JSON is in `content` and `arguments`)
THOUGHT = frozenset({"reasoning", "text", "delta"})
MASK = "<text>"

View = Any
Call = Callable[[openai.AsyncOpenAI], Awaitable[Any]]


class City(pydantic.BaseModel):
    city: str
    population: int


class Weather(pydantic.BaseModel):
    city: str
    unit: str


WEATHER_TOOL = openai.pydantic_function_tool(Weather, name="get_weather")
RESPONSES_TOOL: FunctionToolParam = {"type": "function", "name": "lookup", "strict": False, "parameters": {
    "type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}
PLAIN_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "lookup", "description": "Look a word up.", "parameters": {
    "type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}


# ------------------------------------------------------------------------------------------------ views

def view(obj: Any) -> View:
    """What the SDK user sees, as plain data without the volatile fields."""
    if isinstance(obj, pydantic.BaseModel):
        # warnings=False: a base64 embedding is a str in a field typed list[float] (the SDK's own choice)
        return view(obj.model_dump(warnings=False))
    if isinstance(obj, dict):
        return {k: view(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [view(v) for v in obj]
    return obj


def differences(direct: View, gateway: View, path: str = "") -> list[str]:
    if isinstance(direct, dict) and isinstance(gateway, dict):
        out = [f"{path}.{k}: only {'through the gateway' if k in gateway else 'direct'}"
               for k in sorted(set(direct) ^ set(gateway))]
        for k in sorted(set(direct) & set(gateway)):
            out += differences(direct[k], gateway[k], f"{path}.{k}")
        return out
    if isinstance(direct, list) and isinstance(gateway, list):
        out = [f"{path}: {len(direct)} items direct, {len(gateway)} through the gateway"] * (
            len(direct) != len(gateway))
        for i, (a, b) in enumerate(zip(direct, gateway, strict=False)):
            out += differences(a, b, f"{path}[{i}]")
        return out
    if type(direct) is not type(gateway) or direct != gateway:
        return [f"{path}: {str(direct)[:80]!r} direct, {str(gateway)[:80]!r} through the gateway"]
    return []


def mask_text(v: View, keys: frozenset[str] = TEXT) -> View:
    """Text and the logprobs that describe it masked: what the lexical watermark may change."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k in keys and isinstance(x, str):  # "" too: a delta whose word the watermark holds back
                out[k] = MASK
            elif k == "content" and x is None and "refusal" in v and v.get("tool_calls") is None:
                # a choice's finish chunk: the word held back to its end is flushed there (docs/watermark.md,
                # "Streaming": the embedder holds back an incomplete word until the next delta or finish())
                out[k] = MASK
            elif k == "logprobs" and x is not None and keys is TEXT:
                out[k] = MASK
            else:
                out[k] = mask_text(x, keys)
        return out
    if isinstance(v, list):
        return [mask_text(x, keys) for x in v]
    return v


def withheld_logprobs(v: View) -> View:
    """docs/proxy.md (transform): logprobs are withheld from watermarked choices (None; ``[]`` in Responses)."""
    if isinstance(v, dict):
        return {k: (([] if isinstance(x, list) else None) if k == "logprobs" and x is not None
                    else withheld_logprobs(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [withheld_logprobs(x) for x in v]
    return v


def thought_flushed(v: View) -> View:
    """docs/watermark.md, Reasoning models: "the word the embedder holds back at the end of the thought is sent
    before the first piece of the answer" — in the delta of the answer's first chunk (its ``reasoning`` beside
    ``content`` or ``tool_calls``), which the direct stream does not have: that key is dropped from such a delta."""
    if isinstance(v, dict):
        d = v.get("delta")
        if isinstance(d, dict) and "reasoning" in d and (isinstance(d.get("content"), str) or d.get("tool_calls")
                                                         or v.get("finish_reason") is not None):
            v = dict(v, delta={k: x for k, x in d.items() if k != "reasoning"})
        return {k: thought_flushed(x) for k, x in v.items()}
    if isinstance(v, list):
        return [thought_flushed(x) for x in v]
    return v


def without_keys(*keys: str) -> Callable[[View], View]:
    def drop(v: View) -> View:
        if isinstance(v, dict):
            return {k: drop(x) for k, x in v.items() if k not in keys}
        if isinstance(v, list):
            return [drop(x) for x in v]
        return v
    return drop


def merge_text_events(v: View) -> View:
    """Consecutive Responses text-delta events as one: the watermark holds back at most one word per part and
    sends it as a synthetic delta event before the part's ``done`` (docs/proxy.md, The Responses API)."""
    if isinstance(v, dict) and "events" in v:  # the responses.stream helper: event type names
        return dict(v, events=merge_text_events(v["events"]))
    out: list[Any] = []
    for ev in v:
        kind = ev.get("type", "") if isinstance(ev, dict) else ev
        last = out[-1].get("type") if out and isinstance(out[-1], dict) else out[-1] if out else None
        if kind.endswith(".delta") and kind == last:
            continue
        out.append(ev)
    return [dict(ev, sequence_number=i) if isinstance(ev, dict) and "sequence_number" in ev else ev
            for i, ev in enumerate(out)]


# ------------------------------------------------------------------------------------------------ calls

async def outcome(call: Call, client: openai.AsyncOpenAI) -> View:
    """The call's result as a view, or the exception the SDK raised with the attributes a user reads."""
    try:
        return view(await call(client))
    except openai.APIStatusError as e:
        return {"raised": type(e).__name__, "status_code": e.status_code, "code": e.code, "param": e.param,
                "type": e.type}
    except (openai.OpenAIError, pydantic.ValidationError, ValueError, RuntimeError) as e:  # parse/helpers
        return {"raised": type(e).__name__}


async def chunks(stream: Awaitable[Any]) -> list[Any]:
    return [c async for c in await stream]


async def chat_helper_events(client: openai.AsyncOpenAI, **kw: Any) -> dict[str, Any]:
    async with client.chat.completions.stream(model="sim", messages=MSG, **kw) as s:
        events = [e.type async for e in s]
        final = await s.get_final_completion()
    return {"events": events, "final": final}


async def beta_helper_events(client: openai.AsyncOpenAI, **kw: Any) -> dict[str, Any]:
    async with client.beta.chat.completions.stream(model="sim", messages=MSG, **kw) as s:
        events = [e.type async for e in s]
        final = await s.get_final_completion()
    return {"events": events, "final": final}


async def responses_helper(client: openai.AsyncOpenAI, **kw: Any) -> dict[str, Any]:
    async with client.responses.stream(model="sim", input="Say hello.", **kw) as s:
        events = [e.type async for e in s]
        final = await s.get_final_response()
    return {"events": events, "final": final}


async def raw_response(client: openai.AsyncOpenAI) -> dict[str, Any]:
    r = await client.chat.completions.with_raw_response.create(model="sim", messages=MSG, max_tokens=6)
    return {"content_type": r.headers.get("content-type"), "status": r.status_code, "parsed": r.parse()}


async def streaming_response(client: openai.AsyncOpenAI) -> dict[str, Any]:
    async with client.chat.completions.with_streaming_response.create(
            model="sim", messages=MSG, max_tokens=6, stream=True) as r:
        events = [c async for c in await r.parse()]
        return {"content_type": r.headers.get("content-type"), "status": r.status_code, "events": events}


@dataclass(frozen=True)
class Case:
    call: Call
    expect: Callable[[View], View] = lambda v: v  # the direct view → the gateway view the docs promise
    reasoning: bool = False  # run it against a reasoning model too (SimOptions.reasoning)


def _chat(**kw: Any) -> Call:
    return lambda c: c.chat.completions.create(model="sim", messages=MSG, **kw)


def _chat_stream(**kw: Any) -> Call:
    return lambda c: chunks(c.chat.completions.create(model="sim", messages=MSG, stream=True, **kw))


def _completion(**kw: Any) -> Call:
    return lambda c: c.completions.create(model="sim", prompt=PROMPT, **kw)


RESPONSE_COPIES = without_keys("input_messages", "output_messages")  # docs/proxy.md: withheld, `response_copy`

CASES: dict[str, Case] = {
    "chat": Case(_chat(max_tokens=40), reasoning=True),
    "chat n=2 logprobs": Case(_chat(max_tokens=30, n=2, logprobs=True, top_logprobs=2), reasoning=True),
    "chat stop/temperature/seed": Case(_chat(max_tokens=20, temperature=0.3, top_p=0.9, seed=7, stop=["\n"])),
    "chat top_logprobs=0 without logprobs": Case(_chat(max_tokens=8, logprobs=False, top_logprobs=0)),
    "chat stream": Case(_chat_stream(max_tokens=30)),
    "chat stream include_usage false": Case(_chat_stream(max_tokens=8, stream_options={"include_usage": False})),
    "chat stream include_usage": Case(_chat_stream(max_tokens=30, stream_options={"include_usage": True}),
                                      reasoning=True),
    "chat stream n=2 logprobs usage": Case(_chat_stream(max_tokens=20, n=2, logprobs=True, top_logprobs=2,
                                                        stream_options={"include_usage": True}), reasoning=True),
    "chat parse (pydantic response_format)": Case(lambda c: c.chat.completions.parse(
        model="sim", messages=MSG, response_format=City), reasoning=True),
    "chat parse (strict tool, required)": Case(lambda c: c.chat.completions.parse(
        model="sim", messages=MSG, tools=[WEATHER_TOOL], tool_choice="required"), reasoning=True),
    "chat tool named": Case(_chat(tools=[PLAIN_TOOL], tool_choice={"type": "function",
                                                                   "function": {"name": "lookup"}})),
    "chat tool auto": Case(_chat(max_tokens=20, tools=[PLAIN_TOOL], tool_choice="auto")),
    "chat tool stream named": Case(_chat_stream(tools=[PLAIN_TOOL], tool_choice={
        "type": "function", "function": {"name": "lookup"}}, stream_options={"include_usage": True}),
        reasoning=True),
    "chat json_object": Case(_chat(max_tokens=30, response_format={"type": "json_object"})),
    "chat.completions.stream helper": Case(lambda c: chat_helper_events(c, max_tokens=20)),
    "chat.completions.stream helper parse": Case(lambda c: chat_helper_events(c, response_format=City),
                                                 reasoning=True),
    "chat.completions.stream helper tools": Case(lambda c: chat_helper_events(
        c, tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})),
    "beta.chat.completions.stream helper": Case(lambda c: beta_helper_events(c, response_format=City)),
    "completions echo logprobs": Case(_completion(max_tokens=30, logprobs=2, echo=True)),
    "completions suffix n=2": Case(_completion(max_tokens=10, suffix=" The end.", n=2)),
    "completions batch prompt": Case(lambda c: c.completions.create(model="sim", prompt=[PROMPT, "Say hello."],
                                                                     max_tokens=8)),
    "completions stream echo": Case(lambda c: chunks(c.completions.create(
        model="sim", prompt=PROMPT, max_tokens=8, stream=True, echo=True))),
    "completions stream logprobs usage": Case(lambda c: chunks(c.completions.create(
        model="sim", prompt=PROMPT, max_tokens=12, stream=True, logprobs=1,
        stream_options={"include_usage": True}))),
    "embeddings (SDK default: base64)": Case(lambda c: c.embeddings.create(model="sim", input=["one", "two"])),
    "embeddings float dimensions": Case(lambda c: c.embeddings.create(
        model="sim", input="one", encoding_format="float", dimensions=8)),
    "embeddings base64 explicit": Case(lambda c: c.embeddings.create(
        model="sim", input="one", encoding_format="base64")),
    "embeddings token ids": Case(lambda c: c.embeddings.create(model="sim", input=[[1, 2, 3]])),
    "responses": Case(lambda c: c.responses.create(model="sim", input="Say hello.", max_output_tokens=40),
                      RESPONSE_COPIES, reasoning=True),
    "responses logprobs": Case(lambda c: c.responses.create(
        model="sim", input="Say hello.", max_output_tokens=20, include=["message.output_text.logprobs"],
        top_logprobs=2), RESPONSE_COPIES, reasoning=True),
    "responses stream": Case(lambda c: chunks(c.responses.create(
        model="sim", input="Say hello.", max_output_tokens=40, stream=True)), RESPONSE_COPIES, reasoning=True),
    "responses tool required": Case(lambda c: c.responses.create(
        model="sim", input="Say hello.", tool_choice="required", tools=[RESPONSES_TOOL]),
        RESPONSE_COPIES, reasoning=True),
    "responses.stream helper": Case(lambda c: responses_helper(c), RESPONSE_COPIES, reasoning=True),
    "with_raw_response": Case(raw_response),
    "with_streaming_response": Case(streaming_response, reasoning=True),
    "extra_body (vLLM sampling extension)": Case(_chat(max_tokens=8, extra_body={"top_k": 5, "min_p": 0.1})),
    "400 relayed from the backend": Case(lambda c: c.responses.create(
        model="sim", input="hi", tools=[{"type": "function", "name": "f", "parameters": {}, "strict": False}],
        tool_choice={"type": "function", "name": "g"})),
}
# in watermark mode, which cases are constrained output (relayed verbatim: must match exactly)
VERBATIM = frozenset({
    "chat parse (pydantic response_format)", "chat parse (strict tool, required)", "chat tool named",
    "chat tool stream named", "chat json_object", "chat.completions.stream helper parse",
    "chat.completions.stream helper tools", "beta.chat.completions.stream helper", "responses tool required",
})


@dataclass
class Pair:
    direct: openai.AsyncOpenAI
    gateway: openai.AsyncOpenAI
    gw: GatewayHandle
    seen: list[web.Request] = field(default_factory=list)  # the requests the backend received, in order


@contextlib.asynccontextmanager
async def pair(tmp_path: Path, *, reasoning: bool = False, watermark: bool = False) -> AsyncIterator[Pair]:
    """One sim backend; an SDK client on it directly and one through a gateway in front of it."""
    app = build_sim_app(SimOptions(reasoning=reasoning))
    seen: list[web.Request] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        seen.append(request)

    app.on_response_prepare.append(record)
    overrides: dict[str, Any] = {}
    if watermark:
        secret = tmp_path / "wm.secret"
        secret.write_text("sdk-differential-watermark-secret-0123456789\n")
        overrides["watermark"] = {"enabled": True, "scheme": "lexical", "secret_file": str(secret)}
    async with app_backend(app) as url, running_gateway(gateway_config(url, **overrides)) as gw:
        direct = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        gateway = gw.openai_client("alice")
        try:
            yield Pair(direct, gateway, gw, seen)
        finally:
            await direct.close()
            await gateway.close()


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[Pair]:
    async with pair(tmp_path) as p:
        yield p


PARAMS = [pytest.param(n, r, id=f"{n}{' (reasoning model)' if r else ''}") for n, c in CASES.items()
          for r in (False, True)[: 1 + c.reasoning]]


@pytest.mark.parametrize(("name", "reasoning"), PARAMS)
async def test_same_through_the_gateway(tmp_path: Path, name: str, reasoning: bool) -> None:
    case = CASES[name]
    async with pair(tmp_path, reasoning=reasoning) as p:
        direct = await outcome(case.call, p.direct)
        through = await outcome(case.call, p.gateway)
    assert differences(case.expect(direct), through) == []


@pytest.mark.parametrize(("name", "reasoning"), PARAMS)
async def test_same_but_the_text_with_the_watermark_on(tmp_path: Path, name: str, reasoning: bool) -> None:
    case = CASES[name]
    async with pair(tmp_path, reasoning=reasoning, watermark=True) as p:
        direct = case.expect(await outcome(case.call, p.direct))
        through = await outcome(case.call, p.gateway)
    if name.startswith(("responses stream", "responses.stream")):
        direct, through = merge_text_events(direct), merge_text_events(through)
    if name in VERBATIM:
        # docs/proxy.md + watermark.md: constrained output (JSON content, tool-call arguments) is relayed
        # verbatim; a reasoning model's chain of thought before it is still watermarked
        assert differences(mask_text(direct, THOUGHT), mask_text(thought_flushed(through), THOUGHT)) == []
        return
    assert differences(mask_text(withheld_logprobs(direct)), mask_text(thought_flushed(through))) == []


# ------------------------------------------------------------------------------ what only one side can show

async def test_extra_headers_reach_the_backend_extra_query_is_refused(plain: Pair) -> None:
    """The SDK's ``extra_headers`` arrive as they do without the gateway. ``extra_query`` is refused with a 400
    naming the parameter (it used to be dropped without a word): forwarding it would steer a backend past the
    parse step, the hardening and the field policy, which read the body; nothing reaches the backend."""
    await plain.direct.chat.completions.create(model="sim", messages=MSG, max_tokens=3,
                                               extra_headers={"X-Custom": "kept"})
    direct_header = plain.seen[-1].headers.get("X-Custom")
    await plain.gateway.chat.completions.create(model="sim", messages=MSG, max_tokens=3,
                                                extra_headers={"X-Custom": "kept"})
    assert plain.seen[-1].headers.get("X-Custom") == direct_header == "kept"
    before = len(plain.seen)
    with pytest.raises(openai.BadRequestError) as e:
        await plain.gateway.chat.completions.create(model="sim", messages=MSG, max_tokens=3,
                                                    extra_query={"api-version": "2024-10-21", "priority": "0"})
    assert e.value.status_code == 400 and isinstance(e.value.body, dict)
    assert e.value.body.get("param") == "priority", e.value.body
    assert "query parameters are not accepted" in str(e.value.body.get("message"))
    assert len(plain.seen) == before
    # Azure's api-version alone (the AzureOpenAI client sends it on every call) is accepted and not forwarded
    await plain.gateway.chat.completions.create(model="sim", messages=MSG, max_tokens=3,
                                                extra_query={"api-version": "2024-10-21"})
    assert len(plain.seen) == before + 1 and not plain.seen[-1].query_string, plain.seen[-1]


async def test_sync_client_sees_the_same(plain: Pair) -> None:
    def run(base_url: str, key: str) -> list[View]:
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as c:
            r = c.chat.completions.create(model="sim", messages=MSG, max_tokens=8, n=2)
            s = list(c.chat.completions.create(model="sim", messages=MSG, max_tokens=8, stream=True,
                                               stream_options={"include_usage": True}))
            e = c.embeddings.create(model="sim", input="one")
            return [view(r), view(s), view(e)]

    direct = await asyncio.to_thread(run, str(plain.direct.base_url), "unused")
    through = await asyncio.to_thread(run, plain.gw.url + "/v1", plain.gw.token("alice"))
    assert differences(direct, through) == []


async def test_models_list_and_retrieve(plain: Pair) -> None:
    """``GET /v1/models`` is the gateway's own model list (docs/proxy.md, Endpoints: owned_by and vLLM's extra
    fields differ); ``retrieve`` is a 404 on both sides (vLLM serves no ``/v1/models/{id}``)."""
    direct = [m.id async for m in plain.direct.models.list()]
    through = [m.id async for m in plain.gateway.models.list()]
    assert direct == through == ["sim"]
    for client in (plain.direct, plain.gateway):
        with pytest.raises(openai.NotFoundError) as e:
            await client.models.retrieve("sim")
        assert e.value.status_code == 404


async def test_request_id_header(plain: Pair) -> None:
    r = await plain.gateway.chat.completions.with_raw_response.create(model="sim", messages=MSG, max_tokens=3)
    assert r.headers.get("x-request-id") and r.headers.get("x-request-id") == plain.seen[-1].headers["X-Request-Id"]
    r = await plain.gateway.chat.completions.with_raw_response.create(
        model="sim", messages=MSG, max_tokens=3, extra_headers={"X-Request-Id": "client-chosen-1"})
    assert r.headers["x-request-id"] == "client-chosen-1"
    assert plain.seen[-1].headers["X-Request-Id"].startswith("client-chosen-1-")  # unique for the engine


ERRORS: dict[str, tuple[dict[str, Any], type[openai.APIStatusError], int, str | None, str | None]] = {
    "bad value": ({"temperature": "hot"}, openai.BadRequestError, 400, "invalid_request", "temperature"),
    "unknown model": ({"model": "nope"}, openai.NotFoundError, 404, "model_not_found", "model"),
    "refused extension": ({"extra_body": {"kv_transfer_params": {"x": 1}}}, openai.BadRequestError, 400,
                          "field_not_accepted", "kv_transfer_params"),
    "bad credential": ({"api_key": "sk-wrong"}, openai.AuthenticationError, 401, "invalid_api_key", None),
}


@pytest.mark.parametrize("name", list(ERRORS))
async def test_gateway_errors_are_sdk_errors(plain: Pair, name: str) -> None:
    """The gateway's own refusals reach the SDK as its error classes, with ``.code``/``.param``/``.body``."""
    kw, cls, status, code, param = ERRORS[name]
    client = plain.gateway.with_options(api_key=kw.pop("api_key")) if "api_key" in kw else plain.gateway
    with pytest.raises(cls) as e:
        await client.chat.completions.create(**{"model": "sim", "messages": MSG, "max_tokens": 3, **kw})
    assert (e.value.status_code, e.value.code, e.value.param) == (status, code, param)
    assert isinstance(e.value.body, dict) and e.value.body["code"] == code and e.value.request_id
    assert param is None or param in e.value.message


async def test_timeout_is_the_sdk_timeout_error_on_both_sides() -> None:
    async with app_backend(build_sim_app(SimOptions(latency_ms=2000))) as url, \
            running_gateway(gateway_config(url)) as gw:
        for client in (openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0),
                       gw.openai_client("alice")):
            clock = OwnClock()  # the 0.2 s timer, not the 2 s answer; a busy host's CPU waits taken off
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3, timeout=0.2)
            assert clock.elapsed() < 1.0
            await client.close()


async def test_429_retry_after_is_honoured_without_hammering() -> None:
    """A 429 carries ``retry-after-ms``; the SDK's ``max_retries`` waits that long and tries once more."""
    limits = {"default": {"requests_per_minute": 60, "tokens_per_minute": 200_000, "burst_requests": 1}}
    async with app_backend(build_sim_app(SimOptions())) as url, \
            running_gateway(gateway_config(url, limits=limits)) as gw:
        client = gw.openai_client("alice").with_options(max_retries=0)
        await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3)
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3)
        assert e.value.code == "rate_limit_exceeded" and e.value.response.headers["retry-after-ms"]
        clock = OwnClock()
        raw = await client.with_options(max_retries=5).chat.completions.with_raw_response.create(
            model="sim", messages=MSG, max_tokens=3)
        assert clock.wall() > 0.5 and clock.elapsed() < 3.0  # (a busy host's CPU waits off the upper bound only)
        # exactly one retry: it waited for the limit to refill instead of spending its five tries
        assert raw.http_request.headers["x-stainless-retry-count"] == "1"


async def test_backend_503_is_an_sdk_503_on_both_sides() -> None:
    """An overloaded backend: the SDK sees ``InternalServerError`` 503 either way; the gateway retries once on
    its own (routing.retries) before answering ``upstream_overloaded`` (docs/proxy.md, route + forward)."""
    async with app_backend(build_sim_app(SimOptions(fail_rate=1.0, fail_status=503))) as url, \
            running_gateway(gateway_config(url, routing={"retries": 0})) as gw:
        for client in (openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0),
                       gw.openai_client("alice")):
            with pytest.raises(openai.InternalServerError) as e:
                await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3)
            assert e.value.status_code == 503
            await client.close()


def test_the_comparison_catches_an_altered_field() -> None:
    """The comparison itself can fail: a changed, missing, extra or retyped field anywhere is reported, and the
    watermark mask hides text only (a changed finish reason or usage under masked text still shows)."""
    base: dict[str, Any] = {"choices": [{"finish_reason": "stop", "message": {"content": "hi", "role": "assistant"}}],
            "usage": {"completion_tokens": 2}, "id": "x"}
    assert differences(view(base), view(base)) == []
    altered = [
        {**base, "usage": {"completion_tokens": 2.0}},
        {**base, "usage": {}},
        {**base, "choices": [*base["choices"], base["choices"][0]]},
        {**base, "choices": [{"finish_reason": "length", "message": {"content": "hi", "role": "assistant"}}]},
        {**base, "system_fingerprint": "other"},
    ]
    for other in altered:
        assert differences(view(base), view(other)), other
    masked = {**base, "choices": [{"finish_reason": "length", "message": {"content": "HI", "role": "assistant"}}]}
    assert differences(mask_text(view(base)), mask_text(view(masked))) == [
        ".choices[0].finish_reason: 'stop' direct, 'length' through the gateway"]


def _overloaded_backend(hits: list[float]) -> web.Application:
    """A backend that answers every call 503 with ``Retry-After: 1`` (as a hosted API or a queueing proxy does)."""
    async def overloaded(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        return web.json_response({"error": {"message": "overloaded", "type": "server_error", "param": None,
                                            "code": None}}, status=503, headers={"Retry-After": "1"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", overloaded)
    return app


async def test_backend_retry_after_is_honoured_through_the_gateway() -> None:
    """The backend's ``Retry-After`` reaches the SDK: its ``max_retries`` waits as long directly as through the
    gateway (the gateway's 503 had none, so the SDK came back after its own ~0.5 s back-off)."""
    waits = []
    for through in (False, True):
        hits: list[float] = []
        async with app_backend(_overloaded_backend(hits)) as url, \
                running_gateway(gateway_config(url, routing={"retries": 0})) as gw:
            client = gw.openai_client("alice") if through else openai.AsyncOpenAI(
                base_url=url + "/v1", api_key="unused", max_retries=0)
            with pytest.raises(openai.InternalServerError) as e:
                await client.with_options(max_retries=1).chat.completions.create(
                    model="sim", messages=MSG, max_tokens=3)
            assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
            assert len(hits) == 2
            waits.append(hits[1] - hits[0])
            await client.close()
    assert all(0.9 < w < 1.5 for w in waits), waits


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
async def test_stream_cut_by_the_backend_raises_after_the_same_events(endpoint: str) -> None:
    """A backend that dies mid-stream: the same events arrive, then an ``openai.APIError`` — directly the
    connection error itself (``APIConnectionError``), through the gateway its terminating error event
    (``stream_interrupted``; docs/proxy.md, Streaming guarantees)."""
    async with app_backend(build_sim_app(SimOptions(cut_after=3))) as url, \
            running_gateway(gateway_config(url)) as gw:
        seen = []
        for client in (openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0),
                       gw.openai_client("alice")):
            events: list[Any] = []
            with pytest.raises(openai.APIError) as e:
                if endpoint == "chat":
                    async for chunk in await client.chat.completions.create(model="sim", messages=MSG, stream=True):
                        events.append(chunk)
                else:
                    async for event in await client.responses.create(model="sim", input="Say hello.", stream=True):
                        events.append(event)
            seen.append((type(e.value), view(events)))
            await client.close()
    (direct_error, direct), (gateway_error, through) = seen
    assert (direct_error, gateway_error) == (openai.APIConnectionError, openai.APIError)
    assert differences(RESPONSE_COPIES(direct), through) == []


async def test_watermarked_text_is_the_same_streamed_or_not(tmp_path: Path) -> None:
    """What the masked comparisons leave out: the watermark does change the text, and a stream (joined from
    the SDK's deltas, or the stream helper's final message) carries exactly the non-streamed text."""
    async with pair(tmp_path, watermark=True) as p:
        direct = await p.direct.chat.completions.create(model="sim", messages=MSG, max_tokens=120)
        marked = await p.gateway.chat.completions.create(model="sim", messages=MSG, max_tokens=120)
        streamed = "".join([c.choices[0].delta.content or "" async for c in await p.gateway.chat.completions.create(
            model="sim", messages=MSG, max_tokens=120, stream=True) if c.choices])
        helper = await chat_helper_events(p.gateway, max_tokens=120)
    assert marked.choices[0].message.content != direct.choices[0].message.content
    assert streamed == marked.choices[0].message.content
    assert helper["final"].choices[0].message.content == streamed
