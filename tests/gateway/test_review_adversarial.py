"""Adversarial review of request validation and the streaming relay, through the real gateway HTTP server
with real aiohttp backends. Every case here failed (500, a corrupted stream, or input reaching the backend)
before the fix it guards, or covers a path no other test reaches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.proxy.parse import Endpoint, parse_request
from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway, sim_backend
from tests.support.stall import OwnClock

BASE = b'"model":"sim","messages":[{"role":"user","content":"hi"}]'


def _body(extra: bytes = b"") -> bytes:
    return b"{" + BASE + extra + b"}"


async def _post(gw: GatewayHandle, body: bytes, path: str = "/v1/chat/completions",
                headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    h = {"Authorization": f"Bearer {gw.token('alice')}", "Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(gw.url + path, data=body, headers=h) as r:
        raw = await r.read()
    try:
        return r.status, json.loads(raw), raw
    except ValueError:
        return r.status, None, raw


def _assert_openai_error(status: int, err: Any, want_status: int, field: str) -> None:
    assert status == want_status, (status, err)
    assert isinstance(err, dict) and set(err["error"]) == {"message", "type", "param", "code"}, err
    assert err["error"]["type"] == "invalid_request_error"
    assert field in err["error"]["message"] and err["error"]["param"] == field, err
    assert "Traceback" not in err["error"]["message"]


# ---------------------------------------------------------------------------------------------------------
# 1. Bad input: every case is a 400 naming the field, and the backend is never called.

BAD_BODIES: list[tuple[str, bytes, str]] = [
    # Python's int() refuses > 4300 digits with ValueError (not JSONDecodeError): was a bare 500.
    ("huge-int-literal", _body(b',"seed":' + b"9" * 5000), "body"),
    ("huge-int-unknown-field", _body(b',"x":' + b"9" * 5000), "body"),
    # RecursionError inside json.loads: was a bare 500.
    ("deep-nesting", _body(b',"x":' + b"[" * 100_000 + b"]" * 100_000), "body"),
    # NaN / Infinity are not JSON (RFC 8259); they were accepted and forwarded to the backend as is.
    ("nan-literal", _body(b',"x":NaN'), "body"),
    ("infinity-literal", _body(b',"x":-Infinity'), "body"),
    # json.loads(bytes) silently accepts UTF-16/32; the raw UTF-16 bytes were then forwarded upstream.
    ("utf-16", ("{" + BASE.decode() + "}").encode("utf-16-le"), "body"),
    ("utf-32-bom", ("{" + BASE.decode() + "}").encode("utf-32"), "body"),
    ("latin-1", _body(b',"user":"caf\xe9"'), "body"),
    # An unpaired surrogate escape decodes to a str that cannot be encoded as UTF-8: re-encoding crashed.
    ("lone-surrogate", b'{"model":"sim","messages":[{"role":"user","content":"\\ud800"}]}', "body"),
    # Duplicate keys: the gateway validated the last value while the raw bytes (with both) went upstream,
    # where a first-wins parser would act on the unvalidated one.
    ("duplicate-key", _body(b',"logit_bias":{"1":100},"logit_bias":null'), "body"),
    ("duplicate-nested-key", b'{"model":"sim","messages":[{"role":"user","role":"tool","content":"x"}]}',
     "body"),
    # logit_bias keys are token ids.
    ("logit-bias-word-key", _body(b',"logit_bias":{"hello":5}'), "logit_bias"),
    ("logit-bias-negative-key", _body(b',"logit_bias":{"-3":5}'), "logit_bias"),
    ("logit-bias-padded-key", _body(b',"logit_bias":{"007":5}'), "logit_bias"),
    # Commonly used fields that were not type-checked at all.
    ("tools-string", _body(b',"tools":"x"'), "tools"),
    ("tools-item-no-type", _body(b',"tools":[{"function":{"name":"f"}}]'), "tools[0].type"),
    ("tools-function-no-name", _body(b',"tools":[{"type":"function","function":{}}]'), "tools[0].function.name"),
    ("tool-choice-int", _body(b',"tool_choice":5'), "tool_choice"),
    ("response-format-string", _body(b',"response_format":"json"'), "response_format"),
    ("response-format-no-type", _body(b',"response_format":{}'), "response_format.type"),
    ("user-int", _body(b',"user":5'), "user"),
    ("parallel-tool-calls-string", _body(b',"parallel_tool_calls":"yes"'), "parallel_tool_calls"),
]


@pytest.fixture
async def gw_and_sim() -> AsyncIterator[tuple[GatewayHandle, Any]]:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        yield gw, sim


@pytest.mark.parametrize(("name", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_body_is_a_named_400_and_never_reaches_the_backend(
        gw_and_sim: tuple[GatewayHandle, Any], name: str, body: bytes, field: str) -> None:
    gw, sim = gw_and_sim
    status, err, _ = await _post(gw, body)
    _assert_openai_error(status, err, 400, field)
    # the same body as a stream: the stream path re-encodes the body for include_usage
    if body.rstrip().endswith(b"}") and name not in ("utf-16", "utf-32-bom"):
        status, err, _ = await _post(gw, body[:-1] + b',"stream":true}')
        _assert_openai_error(status, err, 400, field)
    assert sim.stats.requests == 0


async def test_valid_edge_bodies_still_pass(gw_and_sim: tuple[GatewayHandle, Any]) -> None:
    """What the new checks must not refuse: a paired surrogate escape (an emoji), a key that merely looks
    like an escape, token-id bias keys, well-formed tools/response_format, a body led by whitespace."""
    gw, sim = gw_and_sim
    tools = (b',"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],'
             b'"tool_choice":{"type":"function","function":{"name":"f"}},"parallel_tool_calls":true')
    bodies = [
        b'{"model":"sim","messages":[{"role":"user","content":"\\ud83d\\ude00 and \\\\ud800"}]}',
        _body(b',"logit_bias":{"0":-100,"50256":100},"user":"u-1"'),
        _body(tools),
        _body(b',"response_format":{"type":"json_object"},"tool_choice":"auto"'),
        b"  \n" + _body(b',"stream":true'),
    ]
    for b in bodies:
        status, _, raw = await _post(gw, b)
        assert status == 200, raw[:300]
    assert sim.stats.requests == len(bodies)
    assert sim.stats.last_body is not None and sim.stats.last_body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("depth", [500, 900, 990, 2000])
async def test_nesting_near_the_recursion_limit_is_never_a_500(gw_and_sim: tuple[GatewayHandle, Any],
                                                               depth: int) -> None:
    """Just under the decoder's recursion limit, a later step (re-encoding for include_usage, hardening)
    runs deeper in the stack than the parser did: it must still be a clean answer, never a 500."""
    gw, _ = gw_and_sim
    nested = b"[" * depth + b"]" * depth
    for extra in (b',"x":' + nested, b',"x":' + nested + b',"stream":true'):
        status, err, raw = await _post(gw, _body(extra))
        assert status in (200, 400), raw[:300]
        if status == 400:
            _assert_openai_error(status, err, 400, "body")


# ---------------------------------------------------------------------------------------------------------
# 2. The streaming relay against a misbehaving upstream.

def _chunk(content: str, **extra: Any) -> bytes:
    c = {"id": "x", "object": "chat.completion.chunk", "model": "sim",
         "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], **extra}
    return b"data: " + json.dumps(c).encode() + b"\n\n"


def _scripted(parts: list[bytes], end: str = "eof", status: int = 200,
              ctype: str = "text/event-stream") -> web.Application:
    """A backend that writes ``parts`` and then ends: "eof" (clean close), "abort" (RST) or "stall"."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=status, headers={"Content-Type": ctype})
        await resp.prepare(request)
        for p in parts:
            await resp.write(p)
        if end == "abort" and request.transport is not None:
            request.transport.abort()
        elif end == "stall":
            await asyncio.sleep(3600)
        else:
            await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def _stream_raw(gw: GatewayHandle) -> bytes:
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
        assert r.status == 200
        return await r.read()


def _last_event(raw: bytes) -> Any:
    last = raw.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: "), raw[-300:]
    return json.loads(last[len(b"data: "):])


async def test_cut_after_a_chunk_with_error_null_still_ends_in_an_error() -> None:
    """Some servers put ``"error": null`` on normal chunks. That is not an upstream error event: a cut after
    it must still reach the client as an error, not as a silent end (the openai client does not notice a
    missing [DONE])."""
    for end in ("eof", "abort"):
        app = _scripted([_chunk("a", error=None), _chunk("b", error=None)], end=end)
        async with app_backend(app) as url, running_gateway(gateway_config(url)) as gw:
            raw = await _stream_raw(gw)
        assert b'"content": "b"' in raw and b"[DONE]" not in raw
        assert _last_event(raw)["error"]["code"] == "stream_interrupted", end


async def test_upstream_error_event_then_eof_is_not_doubled() -> None:
    """A real upstream error event is relayed, and no second (gateway) error follows it."""
    err = b'data: {"error": {"message": "engine overloaded", "type": "server_error"}}\n\n'
    async with app_backend(_scripted([_chunk("a"), err])) as url, running_gateway(gateway_config(url)) as gw:
        raw = await _stream_raw(gw)
    assert _last_event(raw)["error"]["message"] == "engine overloaded"
    assert raw.count(b'"error"') == 1


@pytest.mark.parametrize("bad", [
    b'data: {"choices": 7, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n',
    b'data: {"choices": "abc", "finish_reason": "stop"}\n\n',
    b'data: {"choices": [{"index": 0, "delta": "oops", "finish_reason": "stop"}], "usage": 5}\n\n',
], ids=["choices-int", "choices-string", "delta-string"])
async def test_odd_upstream_chunk_is_relayed_not_fatal(bad: bytes) -> None:
    """Odd shapes from the upstream are relayed; ``"choices": 7`` used to raise inside the relay after the
    headers were sent, and the pipeline's 500 handler then wrote a second HTTP response into the body."""
    async with app_backend(_scripted([_chunk("a"), bad, b"data: [DONE]\n\n"])) as url, \
            running_gateway(gateway_config(url)) as gw:
        raw = await _stream_raw(gw)
    assert b"HTTP/1.1" not in raw and raw.endswith(b"data: [DONE]\n\n"), raw[-300:]


async def test_relay_failure_after_headers_ends_with_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything the relay cannot handle (here: an unhashable choice index meeting the per-choice watermark
    embedders) ends the stream with a terminating error event, never a half-written or doubled response."""
    monkeypatch.setenv("WM_SECRET_TEST", "watermark-test-secret-0123456789abcdef")
    bad = b'data: {"choices": [{"index": [], "delta": {"content": "x"}, "finish_reason": null}]}\n\n'
    cfg = gateway_config(watermark={"enabled": True, "scheme": "lexical", "secret_env": "WM_SECRET_TEST"})
    async with app_backend(_scripted([_chunk("Hello there. "), bad, b"data: [DONE]\n\n"])) as url:
        cfg["models"] = [{"name": "sim", "backends": [{"name": "b0", "url": url}]}]
        async with running_gateway(cfg) as gw:
            assert gw.ctx.watermarking is not None
            raw = await _stream_raw(gw)
            backend = gw.ctx.router.pool("sim").backends[0]
            assert backend.in_flight == 0
    assert b"HTTP/1.1" not in raw and b"[DONE]" not in raw
    assert _last_event(raw)["error"]["code"] == "internal_error"


async def test_non_json_data_lines_pass_through_and_done_ends_clean() -> None:
    """Not ours to judge: a data line that is not JSON is relayed as is; framing stays intact."""
    parts = [_chunk("a"), b"data: not json at all\n\n", b": keep-alive\n\n", _chunk("b"), b"data: [DONE]\n\n"]
    async with app_backend(_scripted(parts)) as url, running_gateway(gateway_config(url)) as gw:
        raw = await _stream_raw(gw)
    assert b"data: not json at all\n\n" in raw and b": keep-alive\n\n" in raw
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_giant_unterminated_line_is_bounded() -> None:
    """An upstream that sends one endless line: the gateway must not buffer it without bound (memory, and the
    decoder rescanning its buffer made it quadratic CPU on the event loop). It ends the stream with an error."""
    parts = [_chunk("a"), b"data: " + b"x" * 65536] + [b"x" * 65536] * 200  # ~13 MB, no newline, then a stall
    async with app_backend(_scripted(parts, end="stall")) as url, running_gateway(gateway_config(url)) as gw:
        raw = await asyncio.wait_for(_stream_raw(gw), 10)  # the default idle timeout is far longer
    assert len(raw) < 1_000_000, len(raw)
    assert _last_event(raw)["error"]["code"] == "upstream_malformed"


# ---------------------------------------------------------------------------------------------------------
# 3. Upstream answers that are not OpenAI-shaped errors, and redirects.

def _answer(status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, headers={"Content-Type": ctype, **(headers or {})})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


@pytest.mark.parametrize(("status", "body", "ctype", "want_status", "want_type"), [
    (400, b"<html><body>Bad Request</body></html>", "text/html", 400, "invalid_request_error"),
    (422, b'{"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}', "application/json", 422,
     "invalid_request_error"),
    (501, b"Not Implemented", "text/plain", 502, "upstream_error"),
    # the BACKEND's credential was refused: relaying 401 would tell the client its own key is bad, and the
    # backend's message can quote a fragment of the gateway's backend key
    (401, b'{"error": {"message": "Incorrect API key provided: sk-back***1234", "type": "auth"}}',
     "application/json", 502, "upstream_error"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_error_without_openai_shape_is_normalised(status: int, body: bytes, ctype: str,
                                                                 want_status: int, want_type: str,
                                                                 stream: bool) -> None:
    async with app_backend(_answer(status, body, ctype)) as url, running_gateway(gateway_config(url)) as gw:
        got, err, raw = await _post(gw, _body(b',"stream":true' if stream else b""))
    assert got == want_status, raw[:300]
    assert isinstance(err, dict) and set(err["error"]) == {"message", "type", "param", "code"}, raw[:300]
    assert err["error"]["type"] == want_type and f"status {status}" in err["error"]["message"]
    assert b"<html>" not in raw and b"sk-back" not in raw


async def test_upstream_redirect_is_not_followed() -> None:
    """A backend's 3xx must not send the client's prompt on to wherever Location points (a 307 re-POSTs the
    body; a 302 turned it into a GET whose answer was relayed as a 200)."""
    elsewhere_hits = 0

    async def elsewhere(request: web.Request) -> web.Response:
        nonlocal elsewhere_hits
        elsewhere_hits += 1
        return web.json_response({"choices": [], "object": "chat.completion"})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", elsewhere)
    async with app_backend(other) as other_url:
        for code in (302, 307):
            app = _answer(code, b"", "text/plain", {"Location": other_url + "/steal"})
            async with app_backend(app) as url, running_gateway(gateway_config(url)) as gw:
                got, err, raw = await _post(gw, _body())
            assert got == 502, (code, raw[:300])
            assert err["error"]["type"] == "upstream_error"
    assert elsewhere_hits == 0


COMPLETION = {"id": "c", "object": "chat.completion", "model": "sim", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}


@pytest.mark.parametrize(("stream", "body", "ctype"), [
    (True, json.dumps(COMPLETION).encode(), "application/json"),  # a backend that ignored stream: true
    (False, b"<html>maintenance</html>", "text/html"),
    (False, b'{"choices": [', "application/json"),
    (False, b"data: {}\n\ndata: [DONE]\n\n", "text/event-stream"),
], ids=["stream-got-json", "html-200", "truncated-json-200", "sse-for-non-stream"])
async def test_unusable_200_from_upstream_is_a_502(stream: bool, body: bytes, ctype: str) -> None:
    """Relayed as is, these skipped watermarking and usage accounting; a streaming client got an empty
    stream that looks finished."""
    async with app_backend(_answer(200, body, ctype)) as url, running_gateway(gateway_config(url)) as gw:
        got, err, raw = await _post(gw, _body(b',"stream":true' if stream else b""))
    assert got == 502, raw[:300]
    assert err["error"]["type"] == "upstream_error" and err["error"]["code"] == "upstream_malformed"


async def test_unpaired_surrogate_from_upstream_with_watermark_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON allows ``\\ud800`` escapes; re-encoding such text as UTF-8 after watermarking raised, a 500
    (non-stream) or a broken stream. (The logprobs make the body change for sure: a watermarked choice is
    served with ``logprobs: null``.)"""
    monkeypatch.setenv("WM_SECRET_TEST", "watermark-test-secret-0123456789abcdef")
    text = "Here is a quick answer to your question about the big dog. \\ud800 It runs fast."
    done = b'{"id":"c","object":"chat.completion","model":"sim","choices":[{"index":0,"message":{"role":' \
           b'"assistant","content":"' + text.encode() + b'"},"finish_reason":"stop","logprobs":{"content":[]}}]}'
    chunk = b'data: {"id":"c","object":"chat.completion.chunk","model":"sim","choices":[{"index":0,"delta":' \
            b'{"content":"' + text.encode() + b'"},"finish_reason":"stop","logprobs":{"content":[]}}]}\n\n'

    async def handler(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(chunk + b"data: [DONE]\n\n")
            return resp
        return web.Response(body=done, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    cfg = gateway_config(watermark={"enabled": True, "scheme": "lexical", "secret_env": "WM_SECRET_TEST"})
    async with app_backend(app) as url:
        cfg["models"] = [{"name": "sim", "backends": [{"name": "b0", "url": url}]}]
        async with running_gateway(cfg) as gw:
            got, body, raw = await _post(gw, _body())
            assert got == 200, raw[:300]
            assert body["choices"][0]["message"]["content"].endswith("It runs fast.")
            assert body["choices"][0]["logprobs"] is None
            streamed = await _stream_raw(gw)
            assert streamed.endswith(b"data: [DONE]\n\n"), streamed[-300:]


# ---------------------------------------------------------------------------------------------------------
# 4. Client disconnects and stalls: nothing leaks.

async def test_many_client_disconnects_leak_no_tasks_or_upstream_connections() -> None:
    """20 clients drop mid-stream: each upstream request is closed at the backend (it sees the disconnect),
    the lease is released, and the gateway's task count returns to where it was."""
    released = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal released
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(_chunk("tok "))
                await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            released += 1
            raise

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    async with app_backend(app) as url, running_gateway(gateway_config(url)) as gw:
        await asyncio.sleep(0.05)
        baseline = len(asyncio.all_tasks())
        body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        for _ in range(20):
            async with aiohttp.ClientSession() as s:
                r = await s.post(gw.url + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {gw.token('alice')}"})
                await r.content.readuntil(b"\n\n")
                r.close()
        for _ in range(100):
            if released == 20 and len(asyncio.all_tasks()) <= baseline:
                break
            await asyncio.sleep(0.02)
        assert released == 20
        assert len(asyncio.all_tasks()) <= baseline
        backend = gw.ctx.router.pool("sim").backends[0]
        assert backend.in_flight == 0 and backend.failures == 0
        assert not gw.ctx.inflight


async def test_upstream_stalling_before_headers_is_a_504_within_the_idle_timeout() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(COMPLETION)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow)
    async with app_backend(app) as url:
        cfg = gateway_config()
        cfg["models"] = [{"name": "sim", "backends": [
            {"name": "b0", "url": url, "idle_timeout_s": 0.3, "first_byte_timeout_s": 0.3}]}]
        async with running_gateway(cfg) as gw:
            for stream in (True, False):
                clock = OwnClock()  # the 0.3 s timers count in full, a busy host's CPU waits do not
                got, err, raw = await _post(gw, _body(b',"stream":true' if stream else b""))
                assert got == 504 and err["error"]["type"] == "timeout", raw[:200]
                assert clock.elapsed() < 2


# ---------------------------------------------------------------------------------------------------------
# 5. Property: parse_request either returns or raises a GatewayError (a 4xx), whatever the body.

_FIELDS = ["model", "messages", "max_tokens", "n", "temperature", "stream", "stream_options", "logit_bias",
           "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "user", "stop", "seed",
           "prompt", "input", "role", "content", "type", "function", "name", "include_usage"]
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["sim", "user", "function", "0", "x"]),
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=4), kids, max_size=5),
    max_leaves=25)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=8), endpoint=st.sampled_from(
    ["chat", "completions", "embeddings"]))
def test_parse_request_only_raises_gateway_errors(body: dict[str, Any], endpoint: Endpoint) -> None:
    raw = json.dumps(body).encode()
    try:
        parse_request(endpoint, raw, {"sim"})
    except GatewayError as e:
        assert 400 <= e.status < 500 and e.param and e.message.startswith(e.param.split("[")[0].split(".")[0])


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_parse_request_on_arbitrary_bytes(raw: bytes) -> None:
    try:
        parse_request("chat", raw, {"sim"})
    except GatewayError as e:
        assert 400 <= e.status < 500


@pytest.mark.parametrize(("status", "body", "ctype", "fault"), [
    (302, b"", "text/plain", True),
    (401, b'{"error": {"message": "bad backend key", "type": "auth"}}', "application/json", True),
    (200, b"<html>maintenance</html>", "text/html", True),
    (200, b'{"choices": [', "application/json", True),
    (400, b'{"error": {"message": "max_tokens too large", "type": "invalid_request_error"}}', "application/json",
     False),
], ids=["redirect", "backend-key-refused", "html-200", "truncated-200", "client-error"])
async def test_an_unusable_answer_counts_against_the_backend(status: int, body: bytes, ctype: str,
                                                             fault: bool) -> None:
    """Health and canary analysis see the backend's own faults; a request the backend rightly refused is not
    one (it was released as a success before the answer was classified)."""
    async with app_backend(_answer(status, body, ctype)) as url, running_gateway(gateway_config(url)) as gw:
        for _ in range(2):
            await _post(gw, _body())
        snap = gw.ctx.router.snapshot()
    (backend,) = next(iter(snap["models"].values()))["backends"]
    assert backend["in_flight"] == 0
    assert backend["consecutive_failures"] == (2 if fault else 0), backend


async def test_a_cut_stream_still_delivers_the_words_the_watermark_held_back(tmp_path: Any) -> None:
    """The embedder holds back a word that may start a phrase ("It" of "It is"); when the upstream is cut
    those words were generated (and are charged) and must reach the client before the error event."""
    secret = tmp_path / "wm.secret"
    secret.write_text("0123456789abcdef0123456789abcdef")
    parts = [_chunk("Sure. I think"), _chunk(" it")]  # "it" may begin "it is": held back
    cfg_extra = {"watermark": {"enabled": True, "secret_file": str(secret)}}
    async with app_backend(_scripted(parts, end="eof")) as url, running_gateway(gateway_config(url, **cfg_extra)) as gw:
        raw = await _stream_raw(gw)
    text = ""
    for event in raw.strip().split(b"\n\n"):
        obj = json.loads(event[len(b"data: "):])
        for choice in obj.get("choices") or ():
            text += choice["delta"].get("content") or ""
    assert text.endswith(" it"), text
    assert _last_event(raw)["error"]["code"] == "stream_interrupted"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gateway_bug_after_routing_gives_the_backend_slot_back(monkeypatch: pytest.MonkeyPatch,
                                                                       stream: bool) -> None:
    """A failure between routing and relaying (building the watermark embedder here) is a 500, and the
    backend's concurrency slot is handed back without a verdict on the backend (it had answered fine)."""
    import gateway.pipeline

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("embedder bug")

    monkeypatch.setattr(gateway.pipeline, "embedder_factory", broken)
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        for _ in range(3):
            got, _, _ = await _post(gw, _body(b',"stream":true' if stream else b""))
            assert got == 500
        (backend,) = gw.ctx.router.snapshot()["models"]["sim"]["backends"]
    assert backend["in_flight"] == 0 and backend["consecutive_failures"] == 0, backend


@pytest.mark.parametrize(("path", "extra", "field"), [
    ("/v1/chat/completions", b',"prompt_logprobs":"20"', "prompt_logprobs"),
    ("/v1/chat/completions", b',"prompt_logprobs":-1', "prompt_logprobs"),
    ("/v1/chat/completions", b',"prompt_logprobs":true', "prompt_logprobs"),
    ("/v1/chat/completions", b',"best_of":"4"', "best_of"),
    ("/v1/chat/completions", b',"best_of":4.5', "best_of"),
])
async def test_vllm_logprob_extensions_are_checked_by_name(path: str, extra: bytes, field: str) -> None:
    """vLLM coerces these, so an unchecked spelling could pass the hardening caps: refused with a 400."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        got, err, _ = await _post(gw, _body(extra), path)
        _assert_openai_error(got, err, 400, field)
        assert sim.stats.requests == 0


def _refusing_directives(seen: list[dict[str, Any]]) -> web.Application:
    """An engine whose plugin refuses the gateway's directive (its 400 names the field) and serves requests
    that carry none; ``seen`` records what it received."""
    refusal = json.dumps({"error": {"message": "ipgate_kgw_tag: does not match the directive",
                                    "type": "BadRequestError"}}).encode()

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if "vllm_xargs" in body:
            return web.Response(status=400, body=refusal, content_type="application/json")
        text = "It is a good choice, and it is easy to use. " * 8
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 80, "total_tokens": 85}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


async def test_a_watermarking_backend_that_refuses_our_directive_serves_the_request_without_it(
        tmp_path: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's plugin answered 400 to the gateway's own vllm_xargs (a spec mismatch, a missing secret or a
    tag mismatch on the engine host): a deployment fault, so the same request goes again at once without the
    directive and is watermarked post hoc; the engine's message never reaches the client, the backend is not
    counted as failing (it serves fine without a directive), and the operator reads why in one ERROR line.
    With ``kgw_probe`` off nothing re-probes the plugin, so every request pays the refused try."""
    import logging

    import gateway.route

    monkeypatch.setattr(gateway.route, "_REFUSALS_LOGGED", {})  # once per process: forget other tests' lines
    secret = tmp_path / "wm.secret"
    secret.write_text("0123456789abcdef0123456789abcdef")
    seen: list[dict[str, Any]] = []
    async with app_backend(_refusing_directives(seen)) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "kgw", "secret_file": str(secret)})
        cfg["models"][0]["backends"][0]["watermark_capable"] = True
        # probe off: the gateway trusts the flag, so the per-request path is the only defence here
        cfg["models"][0]["backends"][0]["kgw_probe"] = False
        async with running_gateway(cfg) as gw:
            with caplog.at_level(logging.ERROR, logger="gateway.route"):
                for _ in range(2):
                    got, body, raw = await _post(gw, _body())
                    assert got == 200, raw[:300]
                    assert b"ipgate_kgw" not in raw
            refusals = gw.ctx.metrics.registry.get_sample_value(
                "ipgate_watermark_directive_refusals_total", {"model": "sim", "backend": "b0"})
            watermarked = gw.ctx.metrics.registry.get_sample_value(
                "ipgate_watermark_responses_total", {"scheme": "lexical"})
            (backend,) = gw.ctx.router.snapshot()["models"]["sim"]["backends"]
    assert ["vllm_xargs" in b for b in seen] == [True, False, True, False]
    assert refusals == 2 and watermarked == 2
    assert body["choices"][0]["message"]["content"] != "It is a good choice, and it is easy to use. " * 8
    assert backend["consecutive_failures"] == 0
    assert sum("refused the watermark directive" in r.getMessage() for r in caplog.records) == 1
