"""End to end through the real gateway to the real sim backend, with the official openai client."""

from __future__ import annotations

import json
import re

import aiohttp
import openai
import pytest

from tests.support.harness import gateway_config, running_gateway, sim_backend

MSG = [{"role": "user", "content": "Explain what a reverse proxy does."}]


async def test_chat_non_stream_and_stream_match() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client("alice")
        r = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=12)
        text = r.choices[0].message.content
        assert text and r.choices[0].finish_reason == "length"
        assert r.usage is not None and r.usage.completion_tokens == 12
        stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=12, stream=True)
        parts, finish, usage_chunks = [], None, 0
        async for chunk in stream:
            if not chunk.choices:
                usage_chunks += 1
                continue
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        assert "".join(parts) == text and finish == "length"
        assert usage_chunks == 0  # the gateway asked upstream for usage, and stripped it for this client
        assert sim.stats.last_body["stream_options"] == {"include_usage": True}
        await client.close()


async def test_usage_chunk_kept_and_spec_compliant_when_asked() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=5, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 5
        assert all(c.choices for c in chunks[:-1])
        await client.close()


async def test_completions_embeddings_models() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        r = await client.completions.create(model="sim", prompt="Once upon a time", max_tokens=6, logprobs=2)
        assert r.choices[0].text and r.usage is not None and r.usage.completion_tokens == 6
        assert r.choices[0].logprobs is not None and len(r.choices[0].logprobs.tokens or []) == 6
        s = await client.completions.create(model="sim", prompt="Once upon a time", max_tokens=6, stream=True)
        assert "".join([c.choices[0].text async for c in s if c.choices]) == r.choices[0].text
        e = await client.embeddings.create(model="sim", input=["one", "two"], dimensions=8)
        assert [len(d.embedding) for d in e.data] == [8, 8] and e.usage.prompt_tokens == 2
        models = await client.models.list()
        assert [m.id for m in models.data] == ["sim"]
        await client.close()


async def test_chat_logprobs_shape() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        r = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4, logprobs=True,
                                                 top_logprobs=3)
        lp = r.choices[0].logprobs
        assert lp is not None and lp.content is not None and len(lp.content) == 4
        assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp.content)
        await client.close()


async def test_headers_not_forwarded_and_response_headers() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        headers = {
            "Authorization": f"Bearer {gw.token('alice')}", "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1", "Keep-Alive": "timeout=5", "TE": "trailers", "Upgrade": "h2c",
            "Proxy-Authorization": "Basic abc", "Cookie": "session=1", "X-Api-Key": "k", "X-Custom": "kept",
            "X-Request-Id": "req-123",
        }
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/chat/completions", headers=headers,
                              json={"model": "sim", "messages": MSG, "max_tokens": 3}) as r:
                assert r.status == 200
                assert r.headers["X-Request-Id"] == "req-123"
                assert float(r.headers["x-ipgate-overhead-ms"]) >= 0
                assert int(r.headers["x-ratelimit-remaining-requests"]) >= 0
            async with s.post(gw.url + "/v1/chat/completions", headers=headers,
                              json={"model": "sim", "messages": MSG, "max_tokens": 3, "stream": True}) as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                assert r.headers["X-Accel-Buffering"] == "no"
                assert (await r.read()).endswith(b"data: [DONE]\n\n")
        seen = {k.lower() for k in sim.stats.last_headers}
        for h in ("authorization", "x-drop-me", "keep-alive", "te", "upgrade", "proxy-authorization", "cookie",
                  "x-api-key"):
            assert h not in seen, h
        assert sim.stats.last_headers["X-Custom"] == "kept"
        # the caller's id, made unique for the engine (which keys its request state by it)
        assert re.fullmatch(r"req-123-[0-9a-f]{12}", sim.stats.last_headers["X-Request-Id"])


async def test_backend_credential_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPGATE_TEST_BACKEND_KEY", "sk-backend-secret")
    async with sim_backend() as sim:
        cfg = gateway_config()
        cfg["models"] = [{"name": "sim", "backends": [
            {"name": "b0", "url": sim.url, "api_key_env": "IPGATE_TEST_BACKEND_KEY"}]}]
        async with running_gateway(cfg) as gw:
            client = gw.openai_client()
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=2)
            await client.close()
        assert sim.stats.last_headers["Authorization"] == "Bearer sk-backend-secret"


async def _post(url: str, body: bytes | str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, json.loads(await r.read())


async def test_error_shapes() -> None:
    async with sim_backend() as sim, running_gateway(
            gateway_config(sim.url, server={"max_body_bytes": 2000, "max_header_bytes": 3000})) as gw:
        url = gw.url + "/v1/chat/completions"
        auth = {"Authorization": f"Bearer {gw.token('alice')}", "Content-Type": "application/json"}
        cases = [
            ({"Content-Type": "application/json"}, json.dumps({"model": "sim", "messages": MSG}), 401,
             "authentication_error", None),
            ({**auth, "Authorization": "Bearer not.a.jwt"}, json.dumps({"model": "sim", "messages": MSG}), 401,
             "authentication_error", None),
            (auth, "{bad json", 400, "invalid_request_error", "body: is not valid JSON"),
            (auth, json.dumps({"model": "sim", "messages": [{"role": "robot", "content": "x"}]}), 400,
             "invalid_request_error", "messages[0].role: must be one of"),
            (auth, json.dumps({"model": "nope", "messages": MSG}), 404, "not_found_error", "model: 'nope'"),
            (auth, json.dumps({"model": "sim", "messages": [{"role": "user", "content": "x" * 5000}]}), 413,
             "invalid_request_error", "body:"),
            ({**auth, "X-Big": "y" * 4000}, json.dumps({"model": "sim", "messages": MSG}), 431,
             "invalid_request_error", "headers:"),
        ]
        for headers, body, status, etype, message in cases:
            got, err = await _post(url, body, headers)
            assert got == status, (status, err)
            e = err["error"]
            assert isinstance(e, dict) and e["type"] == etype and set(e) >= {"message", "type", "code"}
            if message:
                assert str(e["message"]).startswith(message), e
            assert "Traceback" not in str(e["message"])
        got, err = await _post(gw.url + "/v1/nothing", "{}", auth)
        assert got == 404 and err["error"]["type"] == "not_found_error"  # type: ignore[index]
        assert sim.stats.requests == 0  # nothing invalid reached the backend


async def test_openai_client_raises_typed_errors() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        bad = gw.openai_client(api_key="wrong")
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="sim", messages=MSG)
        client = gw.openai_client()
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="other", messages=MSG)
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="sim", messages=MSG, temperature=9)
        assert "temperature" in str(info.value)
        await bad.close()
        await client.close()


async def test_tier_logprob_hardening_on_both_sides() -> None:
    policy = {"tiers": [{"name": "normal", "hardening": {"max_top_logprobs": 2, "logprob_noise": 0.5}},
                        {"name": "throttle", "limits": "suspicious"}], "flag_tier": "throttle"}
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, policy=policy)) as gw:
        client = gw.openai_client()
        kw: dict[str, object] = {"model": "sim", "messages": MSG, "max_tokens": 6, "logprobs": True,
                                 "top_logprobs": 5}
        r = await client.chat.completions.create(**kw)  # type: ignore[call-overload]
        assert sim.stats.last_body["top_logprobs"] == 2  # request side: capped before the backend
        async with aiohttp.ClientSession() as s, s.post(sim.url + "/v1/chat/completions",
                                                        json={**kw, "top_logprobs": 2}) as direct:
            raw = (await direct.json())["choices"][0]["logprobs"]["content"]
        got = r.choices[0].logprobs.content  # type: ignore[union-attr]
        assert got is not None and [t.token for t in got] == [t["token"] for t in raw]
        assert all(len(t.top_logprobs) <= 2 and t.logprob <= 0 for t in got)
        assert [t.logprob for t in got] != [t["logprob"] for t in raw]  # response side: noise added
        stream = await client.chat.completions.create(**kw, stream=True)  # type: ignore[call-overload]
        streamed = [c.choices[0].logprobs.content[0].logprob async for c in stream
                    if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content]
        assert len(streamed) == 6 and streamed != [t["logprob"] for t in raw]
        await client.close()
