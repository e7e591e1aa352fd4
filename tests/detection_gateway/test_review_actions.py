"""Adversarial review of how the gateway ACTS on detection: hardening cannot be bypassed by alternative
spellings, overrides act on the next request, a failing detector is isolated, alerts follow the documented
rules, ``ipgate replay`` handles bad traces. Through the real gateway (sim backend, real sockets) where the
behaviour is end to end.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.hardening import harden
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, settled, sim_backend

THROTTLE = 2  # index of the default "throttle" tier
BIAS = {str(100 + i): 100 for i in range(50)}


async def _post(gw: GatewayHandle, client: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(
        gw.url + path, json=body, headers={"Authorization": "Bearer " + gw.token(client)}
    ) as r:
        return r.status, await r.json()


# --- 1. hardening: alternative spellings ------------------------------------------------------------------


async def test_legacy_completion_with_stray_messages_key_is_hardened_as_legacy() -> None:
    """A /v1/completions body carrying an extra ``messages`` key (ignored by the backend) used to be hardened
    by the CHAT rules: legacy ``logprobs: 20`` and the 50-entry bias went upstream untouched at throttle."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        await gw.ctx.store.set_override("eve", None, THROTTLE, 3600)
        body = {"model": "sim", "prompt": "Say hi", "messages": [], "logprobs": 20, "logit_bias": BIAS,
                "max_tokens": 1}
        status, resp = await _post(gw, "eve", "/v1/completions", body)
        assert status == 200
        sent = sim.stats.last_body
        assert sent["logprobs"] == 1, sent
        assert "logit_bias" not in sent, sent
        assert len(resp["choices"][0]["logprobs"]["top_logprobs"][0]) <= 1


@pytest.mark.parametrize("value", [20.0, "20", True, -1, 20])
async def test_prompt_logprobs_any_spelling_is_refused_or_capped_and_drops_the_bias(value: Any) -> None:
    """vLLM coerces 20.0/"20"/true to an int and reads -1 as the whole vocabulary. The parse step refuses every
    spelling but a plain integer (400 naming the field, nothing sent upstream); at throttle the integer goes
    upstream capped at 1, and a bias sent along is dropped (logprobs XOR logit_bias)."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        await gw.ctx.store.set_override("eve", None, THROTTLE, 3600)
        body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": value,
                "logit_bias": BIAS, "max_tokens": 1}
        status, resp = await _post(gw, "eve", "/v1/chat/completions", body)
        if type(value) is not int or value < 0:
            assert status == 400 and resp["error"]["param"] == "prompt_logprobs", resp
            assert sim.stats.requests == 0
            return
        assert status == 200
        sent = sim.stats.last_body
        pl = sent.get("prompt_logprobs")
        assert pl is None or (type(pl) is int and 0 <= pl <= 1), sent
        assert "logit_bias" not in sent, sent


@pytest.mark.parametrize("value", [20.0, "20", True, -1])
def test_hardening_caps_prompt_logprobs_in_any_spelling(value: Any) -> None:
    """Defence in depth behind the parse step: hardening alone never lets an odd spelling through uncapped."""
    cfg = parse_config(gateway_config("http://127.0.0.1:9"), source="<t>", env={}).policy.tiers[THROTTLE].hardening
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "prompt_logprobs": value,
            "logit_bias": BIAS}
    out, changes = harden(body, cfg, chat=True)
    pl = out.get("prompt_logprobs")
    assert (pl is None or (type(pl) is int and 0 <= pl <= 1)) and "logit_bias" not in out and changes


@pytest.mark.parametrize("value", [4.0, "4"])
def test_unvalidated_best_of_on_chat_cannot_pass_the_n_cap(value: Any) -> None:
    cfg = parse_config(gateway_config("http://127.0.0.1:9"), source="<t>", env={}).policy.tiers[THROTTLE].hardening
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "best_of": value}
    out, changes = harden(body, cfg, chat=True)
    assert "best_of" not in out and changes
    assert body["best_of"] == value  # the caller's dict is never mutated


def _greedy_backend() -> aiohttp.web.Application:
    """A backend that ignores the request's caps: 5 top logprobs per token, streamed or not, both shapes."""
    from aiohttp import web

    tops = [{"token": t, "logprob": -0.1 * (i + 1), "bytes": list(t.encode())} for i, t in enumerate("abcde")]

    def choice(chat: bool, delta: bool) -> dict[str, Any]:
        if chat:
            lp = {"content": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": [dict(x) for x in tops]}]}
            msg = {"delta": {"content": "a"}} if delta else {"message": {"role": "assistant", "content": "a"}}
            return {"index": 0, **msg, "logprobs": lp, "finish_reason": None if delta else "length"}
        lp2 = {"tokens": ["a"], "token_logprobs": [-0.1], "text_offset": [0],
               "top_logprobs": [{x["token"]: x["logprob"] for x in tops}]}
        return {"index": 0, "text": "a", "logprobs": lp2, "finish_reason": None if delta else "length"}

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        base = {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 1, "model": "sim"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        if not body.get("stream"):
            return web.json_response({**base, "choices": [choice(chat, False)], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        import json as _json
        await resp.write(b"data: " + _json.dumps({**base, "choices": [choice(chat, True)]}).encode() + b"\n\n")
        await resp.write(b"data: " + _json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_post("/v1/completions", handle)
    return app


async def _sse_choices(gw: GatewayHandle, client: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    import json as _json
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s, s.post(
        gw.url + path, json=body, headers={"Authorization": "Bearer " + gw.token(client)}
    ) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {"):
                out.extend(_json.loads(line[6:])["choices"])
    return out


@pytest.mark.parametrize("stream", [False, True])
async def test_response_side_caps_a_backend_that_ignores_the_request_cap(stream: bool) -> None:
    from tests.support.harness import app_backend

    async with app_backend(_greedy_backend()) as url, running_gateway(gateway_config(url)) as gw:
        await gw.ctx.store.set_override("eve", None, THROTTLE, 3600)
        chat_body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                     "top_logprobs": 5, "max_tokens": 1, "stream": stream}
        legacy_body = {"model": "sim", "prompt": "hi", "logprobs": 5, "max_tokens": 1, "stream": stream}
        if stream:
            chat = [c for c in await _sse_choices(gw, "eve", "/v1/chat/completions", chat_body) if c.get("logprobs")]
            legacy = [c for c in await _sse_choices(gw, "eve", "/v1/completions", legacy_body) if c.get("logprobs")]
        else:
            chat = (await _post(gw, "eve", "/v1/chat/completions", chat_body))[1]["choices"]
            legacy = (await _post(gw, "eve", "/v1/completions", legacy_body))[1]["choices"]
        assert chat and legacy
        for c in chat:
            entry = c["logprobs"]["content"][0]
            assert len(entry["top_logprobs"]) == 1 and entry["logprob"] != -0.1  # capped and noised
        for c in legacy:
            assert len(c["logprobs"]["top_logprobs"][0]) == 1


# --- 2. overrides act on the next request, on every replica --------------------------------------------------


async def _admin(gw: GatewayHandle, method: str, client: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.request(
        method, f"{gw.admin_url}/admin/clients/{client}/override", json=body,
        headers={"Authorization": "Bearer " + gw.admin_token},
    ) as r:
        return r.status, await r.json()


async def test_admin_overrides_on_replica_a_act_on_the_next_request_on_replica_b(redis_url: str) -> None:
    chat = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 20,
            "max_tokens": 1, "seed": 7, "n": 3}
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, store={"kind": "redis", "url": redis_url, "failure_mode": "closed"},
                             detection={"enabled": True})
        async with running_gateway(cfg) as a, running_gateway(cfg) as b:
            cid = "review-override-client"
            assert (await _post(b, cid, "/v1/chat/completions", chat))[0] == 200
            assert sim.stats.last_body["top_logprobs"] == 20

            assert (await _admin(a, "PUT", cid, {"override": "deny", "ttl_s": 600}))[0] == 200
            status, err = await _post(b, cid, "/v1/chat/completions", chat)
            assert status == 403 and err["error"]["type"] == "permission_error", err
            assert set(err["error"]) >= {"message", "type", "code"}

            assert (await _admin(a, "PUT", cid, {"override": None, "tier": "throttle", "ttl_s": 600}))[0] == 200
            assert (await _post(b, cid, "/v1/chat/completions", chat))[0] == 200
            sent = sim.stats.last_body
            assert sent["top_logprobs"] == 1 and "seed" not in sent and sent["n"] == 1, sent

            # the client is blocked by detection's stored tier; ``allow`` on A lifts it on B at once. The last
            # request's accounting saves its state in the background: let it land first, or it overwrites this
            await settled(b)
            await b.ctx.store.save_client_state(cid, b"", 3, 0.99, 600)
            assert (await _admin(a, "DELETE", cid))[0] == 200
            assert (await _post(b, cid, "/v1/chat/completions", chat))[0] == 403
            assert (await _admin(a, "PUT", cid, {"override": "allow", "ttl_s": 600}))[0] == 200
            assert (await _post(b, cid, "/v1/chat/completions", chat))[0] == 200
            assert sim.stats.last_body["top_logprobs"] == 20  # tier 0: unhardened


# --- 5. ipgate replay / ipgate traffic: bad input is one line and exit 2, never a traceback -------------------

OK_LINE = ('{"ts": 1000, "client": "a", "endpoint": "/v1/chat/completions", '
           '"body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}')


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\n\n" + OK_LINE.encode() + b"\n\n" + b'{"ts": "x", "client": "a", "endpoint": "/v1/completions", '
         b'"body": {}}\n', "record 5: field 'ts'"),  # blank lines do not shift the line number reported
        (OK_LINE.encode() + b'\n{"ts": NaN, "client": "a", "endpoint": "/v1/completions", "body": {}}\n',
         "record 2: field 'ts'"),
        (OK_LINE.encode() + b'\n{"ts": Infinity, "client": "a", "endpoint": "/v1/completions", "body": {}}\n',
         "record 2: field 'ts'"),
        (OK_LINE.encode() + b'\n{"ts": 1' + b"0" * 400 + b', "client": "a", "endpoint": "/v1/completions", '
         b'"body": {}}\n', "record 2: field 'ts'"),
        (OK_LINE.encode() + b'\n{"ts": 1, "client": "a\xff", "endpoint": "/v1/completions", "body": {}}\n',
         "record 2: not valid UTF-8"),
        (OK_LINE.encode() + b"\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n", "record 2: nested too deeply"),
    ],
    ids=["blank-lines", "nan", "infinity", "huge-int", "not-utf8", "deep-nesting"],
)
def test_replay_bad_trace_names_the_line_and_exits_2(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    from gateway.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    assert main(["replay", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert expected in err and "Traceback" not in err and out == "", err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--benign", "-3"], "--benign must be >= 0"),
        (["--benign", "0", "--requests", "0", "--attack", "template=1"], "--requests must be >= 1"),
        (["--benign", "0", "--hydra", "1"], "--hydra"),
        (["--benign", "0", "--attack", "nope=1"], "unknown kind(s) ['nope']"),
        (["--benign", "0", "--mixed", "1.5=1"], "--mixed"),
    ],
)
def test_traffic_rejects_bad_arguments_naming_them(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    from gateway.cli import main

    assert main(["traffic", "-o", str(tmp_path / "t.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "t.jsonl").exists()


def test_traffic_repeated_kinds_get_distinct_clients_and_unwritable_output_exits_2(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from gateway.cli import main

    out = tmp_path / "t.jsonl"
    assert main(["traffic", "-o", str(out), "--benign", "0", "--requests", "10", "--attack", "cot=1",
                 "--attack", "cot=1", "--mixed", "0.25=1", "--mixed", "0.251=1"]) == 0
    counts: dict[str, int] = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        c = json.loads(line)["client"]
        counts[c] = counts.get(c, 0) + 1
    assert sorted(counts) == ["cot-0", "cot-1", "mixed25-0", "mixed25-1"], counts
    assert counts["cot-0"] == counts["cot-1"] == 10
    capsys.readouterr()
    assert main(["traffic", "-o", str(tmp_path / "missing" / "t.jsonl"), "--benign", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


def _probe_records(n: int) -> list[dict[str, Any]]:
    return [{"ts": 1000.0 + i, "client": "p", "endpoint": "/v1/chat/completions",
             "body": {"model": "m", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1,
                      "logprobs": True, "top_logprobs": 20,
                      "logit_bias": {str(1000 + 50 * i + j): 100 for j in range(50)}}}
            for i in range(n)]


def test_replay_streams_a_sorted_trace_and_sorts_an_unsorted_one(tmp_path: Any, capsys: pytest.CaptureFixture[str]
                                                                 ) -> None:
    """Memory: a trace in timestamp order is consumed one record at a time (it used to be loaded whole, ~7x
    its size in RAM); an unsorted trace is still sorted first and gives the same result."""
    import json

    from detectors.combiner import CombinerParams, default_combiner_path
    from detectors.engine import Engine
    from detectors.replay import TraceError, replay
    from gateway.cli import main

    params = CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))
    pulled = 0

    def gen() -> Any:
        nonlocal pulled
        for r in _probe_records(30):
            pulled += 1
            yield r

    seen: list[tuple[int, int]] = []
    replay(gen(), Engine.from_params(params), presorted=True, on_verdict=lambda c, i, v, r: seen.append((i, pulled)))
    assert seen[:3] == [(1, 1), (2, 2), (3, 3)]  # record k is scored before record k+1 is read
    with pytest.raises(TraceError, match="record 2: field 'ts' goes back"):
        replay(reversed(_probe_records(2)), Engine.from_params(params), presorted=True)

    recs = _probe_records(30)
    sorted_path, shuffled_path = tmp_path / "sorted.jsonl", tmp_path / "shuffled.jsonl"
    sorted_path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    shuffled_path.write_text("".join(json.dumps(r) + "\n" for r in recs[::-1]), encoding="utf-8")
    capsys.readouterr()
    assert main(["replay", str(sorted_path), "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["replay", str(shuffled_path), "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b
    c = a["clients"][0]
    assert c["flagged"] is True and 1 <= c["first_flag_index"] <= 30 and a["summary"]["records"] == 30


# --- 4. alerts: a hanging webhook never slows the request path ------------------------------------------------


async def test_hanging_webhook_does_not_slow_requests() -> None:
    import time

    from aiohttp import web

    from tests.support.harness import app_backend

    hits = 0

    async def hang(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        await asyncio.sleep(30)
        return web.Response(status=204)

    hook = web.Application()
    hook.router.add_post("/hook", hang)
    async with sim_backend() as sim, app_backend(hook) as hook_url:
        cfg = gateway_config(
            sim.url, detection={"enabled": True},
            limits={"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
                    "suspicious": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}},
            alerts={"sinks": [{"kind": "webhook", "url": hook_url + "/hook", "timeout_s": 0.3, "max_retries": 1,
                               "backoff_base_s": 0.05, "backoff_max_s": 0.1}]},
        )
        async with running_gateway(cfg) as gw:
            slowest, statuses = 0.0, []
            for rec in _probe_records(60):
                t = time.perf_counter()
                status, _ = await _post(gw, "mallory", "/v1/chat/completions", dict(rec["body"], model="sim"))
                slowest = max(slowest, time.perf_counter() - t)
                statuses.append(status)
                if status == 403:
                    break
                await asyncio.sleep(0.01)  # let the background accounting raise the stored tier
            assert statuses[-1] == 403, statuses
            assert slowest < 1.0, slowest  # the webhook hangs for 30 s per attempt
            assert gw.ctx.alerts is not None
            for _ in range(100):
                if hits:
                    break
                await asyncio.sleep(0.02)
            assert hits >= 1  # the alert did go to the (hanging) webhook
            t = time.perf_counter()
        assert time.perf_counter() - t < 8.0  # shutdown flushes for at most 5 s, then gives up


# --- 3. fail policy: a bug in the detection adapter itself ---------------------------------------------------


async def test_adapter_bug_is_unscored_logged_once_and_spares_allowlisted_clients(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: any exception of ``GatewayDetection.observe`` outside its feature/engine guards reached the
    pipeline, which logged a traceback per request and, under ``fail_policy: block``, refused even an
    ``allow``-listed client ("screening_failed")."""
    import logging

    import gateway.detection

    real = gateway.detection.DetectionSession

    def broken(det: Any, principal: Any, outcome: Any, verdict: Any, *args: Any) -> Any:
        if verdict is not None:  # a scored request: the adapter's own code fails after the engine ran
            raise KeyError("adapter bug")
        return real(det, principal, outcome, verdict, *args)

    monkeypatch.setattr(gateway.detection, "DetectionSession", broken)
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
    async with sim_backend() as sim, running_gateway(
        gateway_config(sim.url, detection={"enabled": True, "fail_policy": "block"})
    ) as gw:
        await gw.ctx.store.set_override("trusted", "allow", None, 3600)
        with caplog.at_level(logging.ERROR):
            for _ in range(2):
                assert (await _post(gw, "trusted", "/v1/chat/completions", body))[0] == 200
                status, err = await _post(gw, "other", "/v1/chat/completions", body)
                assert status == 403 and err["error"]["type"] == "permission_error"
        assert sum(1 for r in caplog.records
                   if "adapter bug" in r.getMessage() or (r.exc_info and "adapter bug" in str(r.exc_info[1]))) == 1
        value = gw.ctx.metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "adapter"})
        assert value == 4


async def test_pipeline_last_line_of_defence_spares_allowlisted_clients_and_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If detection itself raises (past its own guards), ``fail_policy: block`` refuses the request, but never
    an ``allow``-listed client's, and the traceback is logged once, not per request (the metric counts each)."""
    import logging

    import gateway.admit

    monkeypatch.setattr(gateway.admit, "_pipeline_failure_logged", False)
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
    async with sim_backend() as sim, running_gateway(
        gateway_config(sim.url, detection={"enabled": True, "fail_policy": "block"})
    ) as gw:
        assert gw.ctx.detection is not None

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise KeyError("detection bug")

        monkeypatch.setattr(gw.ctx.detection, "observe", broken)
        await gw.ctx.store.set_override("trusted", "allow", None, 3600)
        with caplog.at_level(logging.ERROR):
            for _ in range(2):
                assert (await _post(gw, "trusted", "/v1/chat/completions", body))[0] == 200
                status, err = await _post(gw, "other", "/v1/chat/completions", body)
                assert status == 403 and err["error"]["code"] == "screening_failed"
        assert sum(1 for r in caplog.records if r.exc_info and "detection bug" in str(r.exc_info[1])) == 1
        value = gw.ctx.metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "pipeline"})
        assert value == 4
