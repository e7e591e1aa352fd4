"""Answers whose format the request constrains (JSON mode, a schema, a grammar, a regex, fixed choices, a forced
tool call) must come back exactly as the backend wrote them — a post-hoc rewrite could break the format — so they
carry no lexical watermark. That is also a way around the watermark: each such answer is counted by field, and
the throttle tier refuses such requests unless the backend watermarks in its engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.watermarking import unwatermarkable
from tests.support.harness import gateway_config, running_gateway, sim_backend
from watermark.keys import parse_master_secret

SECRET = "unwatermarkable-test-secret-0123456789abcdef"


@pytest.mark.parametrize(("extra", "field"), [
    ({}, None),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ({"response_format": {"type": "grammar", "grammar": "root ::= \"yes\""}}, "response_format"),
    ({"guided_choice": ["It is", "It's"]}, "guided_choice"),  # vLLM < 0.10.2
    ({"guided_regex": "[^']*"}, "guided_regex"),
    ({"guided_json": {"type": "object"}}, "guided_json"),
    ({"guided_grammar": "root ::= x"}, "guided_grammar"),
    ({"structured_outputs": {"choice": ["It is", "It's"]}}, "structured_outputs"),  # vLLM >= 0.10.2
    ({"regex": "[a-z ]+"}, "regex"),  # SGLang
    ({"ebnf": "root ::= x"}, "ebnf"),
    ({"grammar": "root ::= \"yes\" | \"no\""}, "grammar"),  # llama.cpp server (GBNF)
    ({"guided_choice": None}, None),
    ({"tool_choice": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}, None),
    ({"tool_choice": "none"}, None),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"function_call": "auto"}, None),
])
def test_which_requests_cannot_be_watermarked_post_hoc(extra: dict[str, Any], field: str | None) -> None:
    assert unwatermarkable({"model": "m", "messages": [], **extra}) == field


def _config(url: str, secret: Path, **backend: Any) -> dict[str, Any]:
    cfg = gateway_config(url, watermark={"enabled": True, "secret_file": str(secret)})
    cfg["models"][0]["backends"][0].update(backend)
    return cfg


async def _chat(gw: Any, client: str, **extra: Any) -> tuple[int, Any]:
    body = {"model": "sim", "messages": [{"role": "user", "content": "Which laptop should I buy?"}],
            "max_tokens": 64, **extra}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {gw.token(client)}"}) as r:
        return r.status, await r.json()


async def _throttle(gw: Any, client: str) -> None:
    async with aiohttp.ClientSession() as s, s.put(
            gw.admin_url + f"/admin/clients/{client}/override", json={"tier": "throttle"},
            headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        assert r.status == 200, await r.text()


async def test_constrained_answers_are_relayed_verbatim_and_counted(tmp_path: Path) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with sim_backend() as sim, running_gateway(_config(sim.url, secret)) as gw:
        plain_status, plain = await _chat(gw, "alice", seed=1)
        status, got = await _chat(gw, "alice", seed=1, structured_outputs={"regex": ".*"})
        skipped = gw.ctx.metrics.registry.get_sample_value("ipgate_watermark_skipped_total",
                                                           {"reason": "structured_outputs"})
        watermarked = gw.ctx.metrics.registry.get_sample_value("ipgate_watermark_responses_total",
                                                               {"scheme": "lexical"})
    assert (plain_status, status) == (200, 200)
    async with sim_backend() as direct, aiohttp.ClientSession() as s, s.post(
            direct.url + "/v1/chat/completions",
            json={"model": "sim", "messages": [{"role": "user", "content": "Which laptop should I buy?"}],
                  "max_tokens": 64, "seed": 1}) as r:
        raw = (await r.json())["choices"][0]["message"]["content"]
    assert got["choices"][0]["message"]["content"] == raw  # untouched
    assert plain["choices"][0]["message"]["content"] != raw  # the same answer unconstrained is watermarked
    assert skipped == 1 and watermarked == 1


async def test_the_throttle_tier_refuses_what_it_could_not_watermark(tmp_path: Path) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with sim_backend() as sim, running_gateway(_config(sim.url, secret)) as gw:
        await _throttle(gw, "mallory")
        status, err = await _chat(gw, "mallory", response_format={"type": "json_object"})
        ok_status, _ = await _chat(gw, "mallory")  # plain text still served (watermarked)
        normal_status, _ = await _chat(gw, "alice", response_format={"type": "json_object"})
        sent = sim.stats.requests
    assert status == 403 and err["error"]["code"] == "unwatermarkable_output"
    assert err["error"]["param"] == "response_format" and "response_format" in err["error"]["message"]
    assert (ok_status, normal_status, sent) == (200, 200, 2)  # the refused request never reached the backend


async def test_a_backend_that_watermarks_in_its_engine_serves_structured_output_to_every_tier(
        tmp_path: Path) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with sim_backend(kgw_plugin=True, kgw_secret=parse_master_secret(SECRET)) as sim, \
            running_gateway(_config(sim.url, secret, watermark_capable=True)) as gw:
        await _throttle(gw, "mallory")
        status, _ = await _chat(gw, "mallory", response_format={"type": "json_object"})
        xargs = sim.stats.last_body.get("vllm_xargs")
    assert status == 200 and xargs is not None and xargs["ipgate_kgw_client"] == "mallory"


async def test_in_a_mixed_pool_a_throttled_clients_structured_output_goes_to_the_engine_watermarking_backend(
        tmp_path: Path) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with sim_backend() as lex, \
            sim_backend(kgw_plugin=True, kgw_secret=parse_master_secret(SECRET)) as kgw:
        cfg = gateway_config(lex.url, kgw.url, watermark={"enabled": True, "secret_file": str(secret)})
        cfg["models"][0]["backends"][0]["weight"] = 9
        cfg["models"][0]["backends"][1].update(watermark_capable=True)
        async with running_gateway(cfg) as gw:
            clients = [f"mallory-{i}" for i in range(12)]
            for c in clients:
                await _throttle(gw, c)
            got = [await _chat(gw, c, response_format={"type": "json_object"}) for c in clients]
            to_kgw, to_lex = kgw.stats.requests, lex.stats.requests
            plain = [await _chat(gw, c) for c in clients]  # text: the weighted split as before
            plain_to_lex = lex.stats.requests - to_lex
    assert [status for status, _ in got] == [200] * len(clients)  # never refused by the backend picked
    assert to_lex == 0 and to_kgw >= len(clients)  # (+ the plugin probe's own requests)
    assert [status for status, _ in plain] == [200] * len(clients) and plain_to_lex > 0
