"""Review of the proxy's request path (session 14): each test reproduces a defect found in review (it failed
before its fix) and pins the fixed behaviour. Real parts: the in-process gateway of ``tests/support/harness.py``,
real aiohttp servers as backends, raw sockets and aiohttp clients where the wire matters, the official ``openai``
client where the API surface does."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import zlib
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, running_gateway, settled
from tests.support.responses_events import response_body

MSGS: list[Any] = [{"role": "user", "content": "hi"}]
BODY = {"model": "sim", "messages": MSGS, "max_tokens": 4}
# long enough that the lexical watermark always changes it: finding it verbatim means an unwatermarked answer
ANSWER = ("The quick brown fox jumps over the lazy dog while the careful reviewer reads every single line of "
          "the long and winding answer that the model produced for this rather ordinary question today.")


def _completion(content: str = "hello") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "sim",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def _chunk(content: str, finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "sim",
           "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _vllm_like(seen: list[dict[str, Any]]) -> web.Application:
    """An engine that does what vLLM's API server does with a request's body: aiohttp decodes a Content-Encoding
    (as any server honouring it), and only ``application/json`` is accepted (vLLM's ``validate_json_request``:
    "Unsupported Media Type: Only 'application/json' is allowed")."""

    async def chat(request: web.Request) -> web.Response:
        entry: dict[str, Any] = {"headers": dict(request.headers)}
        seen.append(entry)
        if request.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            return web.json_response({"error": {"message": "Unsupported Media Type: Only 'application/json' is "
                                                "allowed", "type": "BadRequestError", "param": None, "code": 400}},
                                     status=400)
        entry["body"] = json.loads(await request.read())  # a body it cannot decode: aiohttp's 500 (as before)
        return web.json_response(_completion())

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


# --- 1. a list or an object where a role or a type belongs: 500 -------------------------------------------------

@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"model": "sim", "messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"model": "sim", "messages": [{"role": {}, "content": "hi"}]}, "messages[0].role"),
    ("/v1/responses", {"model": "sim", "input": [{"role": ["user"], "content": "hi"}]}, "input[0].role"),
    ("/v1/responses", {"model": "sim", "input": [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]},
     "input[0].content[0].type"),
    ("/v1/responses", {"model": "sim", "input": "hi", "text": {"format": {"type": ["json_object"]}}},
     "text.format.type"),
])
async def test_an_unhashable_role_or_type_is_a_400_naming_it(path: str, body: dict[str, Any], param: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Defect: ``role not in ROLES`` (a frozenset) raised TypeError for a list or an object: the client got a 500
    ``internal_error`` and the log a traceback, where every other wrong type is a 400 naming the field."""
    seen: list[dict[str, Any]] = []
    async with app_backend(_vllm_like(seen)) as url, running_gateway(gateway_config(url)) as gw, \
            aiohttp.ClientSession() as s, \
            s.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
        assert r.status == 400, await r.text()
        err = (await r.json())["error"]
    assert err["param"] == param and err["message"].startswith(param + ":")
    assert not seen
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


# --- 2. a compressed request body -------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_request_body_reaches_the_backend_decoded(encoding: str) -> None:
    """Defect: aiohttp decodes a gzip/deflate request body for the gateway, which validated and forwarded the
    decoded JSON, but with the client's ``Content-Encoding``. A backend that honours the header decoded it again
    and failed (aiohttp: 500), which the gateway counted against the backend and retried: any client could
    eject every backend of a pool by compressing its requests."""
    seen: list[dict[str, Any]] = []
    raw = json.dumps(BODY).encode()
    data = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    async with app_backend(_vllm_like(seen)) as url, running_gateway(gateway_config(url)) as gw, \
            aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/chat/completions", data=data, headers={
                "Authorization": f"Bearer {gw.token('a')}", "Content-Type": "application/json",
                "Content-Encoding": encoding}) as r:
            assert r.status == 200, await r.text()
        backend = gw.ctx.router.pool("sim").backends[0]
        assert backend.failures == 0
    assert len(seen) == 1
    assert "Content-Encoding" not in seen[0]["headers"] and seen[0]["body"] == BODY


@pytest.mark.parametrize(("encoding", "data"), [
    ("gzip", b"this is not gzip"),
    ("deflate", b"nor is this deflate"),
])
async def test_a_request_body_that_does_not_decode_is_a_400(encoding: str, data: bytes,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Defect: aiohttp's ``RequestPayloadError`` (a Content-Encoding that does not decode: the client's bytes)
    escaped ``read_body``: a 500 ``internal_error`` with a logged traceback, and aiohttp logged it once more at
    ERROR when it read the unread rest of the body."""
    async with app_backend(_vllm_like([])) as url, running_gateway(gateway_config(url)) as gw, \
            aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions", data=data, headers={
                "Authorization": f"Bearer {gw.token('a')}", "Content-Encoding": encoding}) as r:
        assert r.status == 400
        err = (await r.json())["error"]
    assert err["param"] == "body" and err["code"] == "invalid_request"
    assert "could not be read" in err["message"] and encoding in err["message"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


# --- 3. the backend gets application/json, whatever the client called its body -------------------------------

@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "text/plain; charset=utf-8", None])
async def test_the_backend_gets_a_json_content_type_whatever_the_client_sent(ctype: str | None) -> None:
    """Defect: the gateway takes a JSON body under any Content-Type (documented: "clients differ"; ``curl -d``
    sends a form type), then forwarded the client's type, or none, for which aiohttp sent
    ``application/octet-stream``. vLLM refuses every type but ``application/json``: the request was admitted,
    charged and counted by the gateway, then refused by the engine."""
    seen: list[dict[str, Any]] = []
    async with app_backend(_vllm_like(seen)) as url, running_gateway(gateway_config(url)) as gw, \
            aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as s:
        headers = {"Authorization": f"Bearer {gw.token('a')}"}
        if ctype is not None:
            headers["Content-Type"] = ctype
        async with s.post(gw.url + "/v1/chat/completions", data=json.dumps(BODY).encode(), headers=headers) as r:
            assert r.status == 200, await r.text()
    assert seen[0]["headers"]["Content-Type"] == "application/json"


# --- 4. a client that stops reading a stream ----------------------------------------------------------------------

def _endless_stream(state: dict[str, Any], chunks: int) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(chunks):
                await resp.write(_chunk("x" * 2000))
            await resp.write(_chunk("", "stop") + b"data: [DONE]\n\n")
            state["completed"] = True
        except BaseException as e:
            state["gone"] = type(e).__name__
            raise
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _open_stream(gw_url: str, token: str, rcvbuf: int) -> socket.socket:
    """A raw client with a small receive window that sends a streaming request (and reads nothing yet)."""
    port = int(gw_url.rsplit(":", 1)[1])
    body = json.dumps({**BODY, "max_tokens": 100000, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}"
                                   f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                                   ).encode() + body)
    return sock


async def test_a_client_that_stops_reading_a_stream_releases_the_backend() -> None:
    """Defect: a client that stops reading (its receive window at zero) left the gateway waiting in ``write``
    for ever. aiohttp stops the upstream's read timer while the gateway does not read, so ``idle_timeout_s``
    never fired: the backend's stream and a slot of its ``max_concurrency`` stayed taken (here 8 s after the
    backend stalled, before the fix). Any client could fill a pool (503 ``pool_saturated`` for everyone) with
    streams it never reads. Now a write that waits ``idle_timeout_s`` for the client ends the stream."""
    state: dict[str, Any] = {}
    async with app_backend(_endless_stream(state, 20000)) as url:
        cfg = gateway_config(url)
        cfg["models"][0]["backends"][0]["idle_timeout_s"] = 1.0
        async with running_gateway(cfg) as gw:
            sock = await _open_stream(gw.url, gw.token("a"), 4096)
            try:
                backend = gw.ctx.router.pool("sim").backends[0]
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if backend.in_flight:
                        break
                assert backend.in_flight == 1
                for _ in range(200):  # the client reads nothing: released within idle_timeout_s (+ slack)
                    if not backend.in_flight:
                        break
                    await asyncio.sleep(0.05)
                assert backend.in_flight == 0 and backend.failures == 0  # the client's doing, not the backend's
                for _ in range(100):
                    if "gone" in state:
                        break
                    await asyncio.sleep(0.02)
                assert state.get("gone") == "CancelledError" and "completed" not in state  # the backend saw it
                err = gw.ctx.metrics.stream_errors_total.labels(model="sim", reason="client_disconnect")
                assert err._value.get() == 1
            finally:
                sock.close()


async def test_a_slow_reader_still_gets_the_whole_stream() -> None:
    """The bound is on a client that takes nothing for ``idle_timeout_s``, not on a slow one: a small window read
    4 KB at a time gets every chunk and the clean end."""
    state: dict[str, Any] = {}
    async with app_backend(_endless_stream(state, 300)) as url:
        cfg = gateway_config(url)
        cfg["models"][0]["backends"][0]["idle_timeout_s"] = 1.0
        async with running_gateway(cfg) as gw:
            sock = await _open_stream(gw.url, gw.token("a"), 4096)
            loop = asyncio.get_running_loop()
            got = b""
            try:
                while not got.endswith(b"0\r\n\r\n"):  # the chunked body's end
                    part = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                    if not part:
                        break
                    got += part
                    await asyncio.sleep(0.005)
            finally:
                sock.close()
            assert state.get("completed") and b"data: [DONE]" in got and b'"error"' not in got
            assert got.count(b'"content": "' + b"x" * 10) == 300


# --- 5. a 2xx other than 200 ------------------------------------------------------------------------------------

def _answers_201() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        if (await request.json()).get("stream"):
            return web.Response(status=201, body=_chunk(ANSWER, "stop") + b"data: [DONE]\n\n",
                                content_type="text/event-stream")
        return web.json_response(_completion(ANSWER), status=201)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("stream", [False, True])
async def test_a_2xx_other_than_200_is_not_relayed_unwatermarked(stream: bool, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """Defect: only a 200 went through the watermark and usage steps; a 201 (or 203, 206, ...) was relayed as
    the backend wrote it, a stream as one body: the whole answer reached the client without its watermark. Such
    an answer is now a 502 ``upstream_malformed`` (the openai client raises), like an unusable 200."""
    monkeypatch.setenv("IPGATE_TEST_WM_SECRET", "w" * 48)
    cfg = gateway_config("http://127.0.0.1:1", watermark={"enabled": True, "scheme": "lexical",
                                                          "secret_env": "IPGATE_TEST_WM_SECRET"})
    async with app_backend(_answers_201()) as url:
        cfg["models"][0]["backends"][0]["url"] = url
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("a")
            with pytest.raises(openai.APIStatusError) as e:
                if stream:
                    async for _ in await client.chat.completions.create(model="sim", messages=MSGS, stream=True):
                        pass
                else:
                    await client.chat.completions.create(model="sim", messages=MSGS)
            await client.close()
    assert e.value.status_code == 502 and e.value.code == "upstream_malformed"
    assert ANSWER[:40] not in e.value.response.text


# --- 6. a Connection header split over several lines ----------------------------------------------------------

async def test_every_connection_line_names_hop_by_hop_headers() -> None:
    """Defect: only the first ``Connection`` line was read; a header named on a second line (the field is a list
    that may be split over lines, RFC 9110 §5.3) reached the backend."""
    seen: list[dict[str, Any]] = []
    async with app_backend(_vllm_like(seen)) as url, running_gateway(gateway_config(url)) as gw:
        body = json.dumps(BODY).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
        writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.token('a')}\r\n"
                      "Connection: keep-alive\r\nConnection: X-Hop-Secret\r\nX-Hop-Secret: for the gateway only\r\n"
                      "X-Custom: kept\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()
        status = await reader.readline()
        writer.close()
    assert status.startswith(b"HTTP/1.1 200")
    assert "X-Hop-Secret" not in seen[0]["headers"] and seen[0]["headers"]["X-Custom"] == "kept"


# --- 7. tool-call arguments streamed to a client that leaves before the usage chunk ------------------------------

def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chat_call_stream(pieces: int) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "sim",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    head = chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                       "function": {"name": "save", "arguments": ""}}]})
    args = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ab"}}]}) for _ in range(pieces)]
    return [head, *args, chunk({}, "tool_calls"), b"USAGE"]


def _responses_call_stream(pieces: int) -> list[bytes]:
    call = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "save", "arguments": "",
            "status": "in_progress"}
    done = {**call, "arguments": "ab" * pieces, "status": "completed"}
    evs: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**response_body("sim", ""), "output": [], "usage": None}},
        {"type": "response.output_item.added", "output_index": 0, "item": call},
        *({"type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1", "delta": "ab"}
          for _ in range(pieces)),
        {"type": "response.function_call_arguments.done", "output_index": 0, "item_id": "fc_1",
         "arguments": "ab" * pieces},
        {"type": "response.output_item.done", "output_index": 0, "item": done}]
    completed = {"type": "response.completed", "response": {**response_body("sim", ""), "output": [done]}}
    return [_sse({**e, "sequence_number": i}) for i, e in enumerate(evs)] + [b"USAGE", _sse(completed)]


def _slow_calls(frames: list[bytes]) -> web.Application:
    """Streams ``frames`` a few ms apart, then waits before the usage (``USAGE``): what a client that leaves as
    soon as it has the whole call never waits for."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for frame in frames:
            if frame == b"USAGE":
                await asyncio.sleep(0.5)
                if request.path.endswith("/chat/completions"):
                    await resp.write(_sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "sim",
                                           "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 101,
                                                                    "total_tokens": 110}}))
                continue
            await resp.write(frame)
            await asyncio.sleep(0.002)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/responses", handler)
    return app


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
async def test_tool_call_arguments_a_client_leaves_with_are_charged(endpoint: str, tmp_path: Any) -> None:
    """Defect: an aborted stream is charged its prompt plus the pieces it streamed, but with detection on (every
    chunk decoded) only text and reasoning pieces were counted, not tool-call arguments (nor Responses
    ``function_call_arguments.delta``). A client that left as soon as it had the whole call, before the usage
    chunk, got any amount of output for 0 completion tokens (the token limit did not hold; detection saw
    none). The fast path (detection off) counted the same chunks: 101 here."""
    log = tmp_path / "access.log"
    chat = endpoint == "chat"
    frames = _chat_call_stream(100) if chat else _responses_call_stream(100)
    cfg = gateway_config("http://127.0.0.1:1", detection={"enabled": True},
                         telemetry={"access_log_file": str(log)})
    tools: list[dict[str, Any]] = [{"type": "function", "function": {"name": "save", "parameters": {}}}] if chat \
        else [{"type": "function", "name": "save", "parameters": {}}]
    body = {"model": "sim", "stream": True, "tools": tools, "tool_choice": "required", "max_tokens": 1000,
            **({"messages": MSGS} if chat else {"input": "hi"})}
    end = b'"finish_reason": "tool_calls"' if chat else b"response.output_item.done"
    async with app_backend(_slow_calls(frames)) as url:
        cfg["models"][0]["backends"][0]["url"] = url
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            path = "/v1/chat/completions" if chat else "/v1/responses"
            async with s.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
                got = b""
                while end not in got:
                    got += await r.content.readany()
            # the client is gone with the whole call; the usage was still to come
            for _ in range(100):
                if log.exists() and log.read_text():
                    break
                await asyncio.sleep(0.02)
            await settled(gw)
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["error_type"] == "client_disconnect" and line["prompt_tokens"] is None
    assert line["completion_tokens"] >= 100


# --- 8. a stream the backend ends with its own error event ------------------------------------------------------

async def test_a_stream_the_backend_ends_with_an_error_event_counts_as_a_stream_error(tmp_path: Any) -> None:
    """Defect: a backend's error event (vLLM writes one, then ``[DONE]``, when a generation fails mid-stream) was
    relayed, but the stream counted as a clean success: not in ``ipgate_stream_errors_total`` ("streams ended
    with an error event"), no ``error_type`` in the access log, and the whole reservation (prompt estimate +
    1 024) charged for two streamed pieces, where a failed request is charged its prompt estimate."""
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        err = {"error": {"message": "generation failed", "type": "InternalServerError", "param": None, "code": 500}}
        await resp.write(_chunk("Hi") + _chunk(" there") + _sse(err) + b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    log = tmp_path / "access.log"
    async with app_backend(app) as url, running_gateway(gateway_config(
            url, telemetry={"access_log_file": str(log)})) as gw:
        client = gw.openai_client("a")
        got = []
        with pytest.raises(openai.APIError, match="generation failed"):
            async for chunk in await client.chat.completions.create(model="sim", messages=MSGS, stream=True):
                got.append(chunk.choices[0].delta.content)
        await client.close()
        await settled(gw)
        assert got == ["Hi", " there"]
        counted = gw.ctx.metrics.stream_errors_total.labels(model="sim", reason="upstream_error")
        assert counted._value.get() == 1
        assert gw.ctx.router.pool("sim").backends[0].failures == 0  # a request can cause one: not for health
    line = json.loads(log.read_text().splitlines()[-1])
    assert line["error_type"] == "upstream_error" and line["completion_tokens"] == 2


# --- the lead's fix of finding A: answers without usage are charged what was generated, not the reservation ----

@pytest.mark.parametrize("detection", [True, False])
@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_the_backend_sends_without_usage_is_charged_what_it_generated(stream: bool,
                                                                                   detection: bool) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not stream:
            return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "sim",
                                      "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                          "role": "assistant", "content": "Hi there, all good."}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk("Hi") + _chunk(" there.", "stop") + b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    limits = {"requests_per_minute": 600, "tokens_per_minute": 60, "burst_tokens": 100000}
    wm = {"enabled": True, "scheme": "none"}
    async with app_backend(app) as url, running_gateway(gateway_config(
            url, limits={"default": limits, "suspicious": limits}, detection={"enabled": detection},
            watermark=wm)) as gw, aiohttp.ClientSession() as s:
        body = {**BODY, "stream": stream}
        del body["max_tokens"]
        remaining = []
        for _ in range(2):
            async with s.post(gw.url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
                assert r.status == 200
                remaining.append(int(r.headers["x-ratelimit-remaining-tokens"]))
                await r.read()
            await settled(gw)
    charged_first = remaining[0] - remaining[1]  # both reserved the same; refill ≈ 1 token/s
    assert charged_first < 50, charged_first  # before: 1029 (the whole reservation: 1 024 without max_tokens)
