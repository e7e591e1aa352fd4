"""A probe must not be told from a proxied request by how the gateway itself writes requests upstream: the
order of the headers it sets, the JSON encoding of the body, and the fields it adds to every body (a
backend's ``cache_salt``). Each of these was a tell a dishonest backend could key on with no false positive:
answer those requests with the genuine model and every other one with a cheaper one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fingerprint import Signature
from gateway.cli import main
from gateway.config import parse_config
from gateway.fingerprint_client import probe_backend
from gateway.preflight import offline
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import gateway_config, running_gateway


def _names(headers: dict[str, str]) -> list[str]:
    return [k.lower() for k in headers]


def _compact(body: dict[str, Any]) -> int:
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


async def test_a_probe_is_written_like_a_proxied_request(tmp_path: Path) -> None:
    srv = ModelServer()
    srv.api_key = "backend-key"
    await srv.start()
    try:
        ref = tmp_path / "ref.json"
        ref.write_text((await probe_backend(srv.url, "upstream-x", api_key="backend-key")).dumps(),
                       encoding="utf-8")
        key = tmp_path / "key"
        key.write_text("backend-key", encoding="utf-8")
        cfg = gateway_config(srv.url)
        b = cfg["models"][0]["backends"][0]
        b.update(api_key_file=str(key), upstream_model="upstream-x", cache_salt="client",
                 fingerprint_reference=str(ref))
        async with running_gateway(cfg) as gw:
            # a raw client that sends none of its own headers but the credential: what is left is the gateway's
            body = {"model": "sim", "temperature": 0, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "héllo, wörld"}]}
            async with aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept")) as s, \
                    s.post(gw.url + "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
                assert r.status == 200, await r.text()
            assert gw.ctx.fingerprint is not None
            (check,) = await gw.ctx.fingerprint.check_now()
            assert check.verdict == "match", check
    finally:
        await srv.close()
    (proxied,) = [(h, b) for h, b in srv.requests if b["messages"][0]["content"] == "héllo, wörld"]
    probes = [(h, b) for h, b in srv.requests if (h, b) is not proxied][-3:]
    for headers, body in probes:
        assert _names(headers) == _names(proxied[0])
        assert headers["X-Forwarded-For"] == proxied[0]["X-Forwarded-For"]  # a recent proxied request's value
        assert int(headers["Content-Length"]) == _compact(body)  # the gateway's own encoding
        assert body.keys() - {"logprobs", "top_logprobs"} == proxied[1].keys()
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body["cache_salt"])
    assert int(proxied[0]["Content-Length"]) == _compact(proxied[1])
    assert len({b["cache_salt"] for _, b in probes}) == len(probes)  # a fresh client each time, never one "prober"


async def test_an_echo_of_the_utf8_probe_body_does_not_leak_the_private_prompt() -> None:
    """Probes now go as UTF-8 JSON (non-ASCII as is, a newline as ``\\n``): a backend error that echoes the raw
    request body holds that form, which is neither the prompt as written nor its ASCII-escaped form."""
    from aiohttp import web

    from fingerprint import Probe
    from gateway.fingerprint_client import probe_backend_partial
    from tests.support.harness import app_backend

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        return web.Response(status=400, body=b'{"error": "bad request: ' + raw[:180] + b'"}',
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    prompt = "Décris\nla cité ésotérique\nen détail\ns'il te plaît\nvraiment"  # every line under 24 chars
    async with app_backend(app) as url:
        run = await probe_backend_partial(url, "m", probes=(Probe("p1", prompt, 8),), logprobs=False)
    assert len(run.failures) == 1
    assert "withheld" in run.failures[0], run.failures[0]
    assert "sot" not in run.failures[0]


NESTED = "[" * 100_000
BAD_MAX_TOKENS = [True, -3, 100_000_000]


def _ref_with(max_tokens: object) -> str:
    answers = [{"probe_id": f"p{i}", "text": f"answer {i}", "prompt": f"question {i}", "max_tokens": 16}
               for i in range(8)]
    answers[3]["max_tokens"] = max_tokens
    return json.dumps({"model": "m", "answers": answers})


@pytest.mark.parametrize("text", [NESTED, *(_ref_with(v) for v in BAD_MAX_TOKENS)],
                         ids=["nested", "max-tokens-true", "max-tokens-negative", "max-tokens-huge"])
def test_a_malformed_reference_is_named_not_an_internal_error(tmp_path: Path, text: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``ipgate fingerprint check`` exits 2 naming the reference (a nested file was "internal error:
    RecursionError"), and ``ipgate check`` reports an error finding for the backend (it raised out of the
    preflight); a max_tokens a probe file could never hold was sent to the backend every round."""
    ref = tmp_path / "ref.json"
    ref.write_text(text, encoding="utf-8")
    rc = main(["fingerprint", "check", "--url", "http://127.0.0.1:9", "--model", "m", "--reference", str(ref)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "internal error" not in err and f"reference {ref}" in err, err
    cfg = gateway_config("http://127.0.0.1:9")
    cfg["models"][0]["backends"][0]["fingerprint_reference"] = str(ref)
    findings = offline(parse_config(cfg, source="<test>", env={}), env={})
    (bad,) = [f for f in findings if "fingerprint_reference" in f.message]
    assert bad.level == "error" and "not a fingerprint signature" in bad.message, bad


def test_a_reference_without_max_tokens_still_loads() -> None:
    ref = json.loads(_ref_with(0))
    del ref["answers"][5]["max_tokens"]
    sig = Signature.loads(json.dumps(ref))
    assert [a.max_tokens for a in sig.answers][3:6] == [0, 16, 0]


@pytest.mark.parametrize("logprobs", [True, False])
async def test_a_probe_body_is_laid_out_as_the_official_sdk_writes_it(tmp_path: Path, logprobs: bool) -> None:
    """Same fields, same key order, same encoding as the openai SDK's request for the same parameters,
    relayed by the gateway (a probe's body was ordered model, messages, temperature, ... and ASCII-escaped)."""
    srv = ModelServer()
    await srv.start()
    try:
        ref = tmp_path / "ref.json"
        ref.write_text((await probe_backend(srv.url, "sim")).dumps(), encoding="utf-8")
        cfg = gateway_config(srv.url, fingerprint={"logprobs": logprobs})
        cfg["models"][0]["backends"][0]["fingerprint_reference"] = str(ref)
        async with running_gateway(cfg) as gw:
            assert gw.ctx.fingerprint is not None
            await gw.ctx.fingerprint.check_now()
            n = len(srv.requests)
            client = gw.openai_client("alice")
            extra: dict[str, Any] = {"logprobs": True, "top_logprobs": 5} if logprobs else {}
            await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "héllo"}],
                                                 temperature=0, max_tokens=8, **extra)
            await client.close()
    finally:
        await srv.close()
    sdk_headers, sdk = srv.requests[n]
    probe_headers, probe = srv.requests[n - 1]
    assert list(probe) == list(sdk)
    assert int(probe_headers["Content-Length"]) == _compact(probe)
    assert int(sdk_headers["Content-Length"]) == _compact(sdk)
