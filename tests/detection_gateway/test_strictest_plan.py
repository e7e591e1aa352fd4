"""A client id whose credentials name several plans is judged by the strictest detection profile among every
plan it was seen with, on every replica: through the real gateway, the official openai client, API keys of two
plans (the memory store) and JWTs with two plan claims served by two gateways sharing a real Redis.

Before, each request was judged by the plan of the credential it came with: an attacker holding a key of the
plan whose profile mutes ``templates`` (template applications) and one other key sent its template harvest on
the first and was never flagged, while the second key's requests fed the same state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from detectors.profiles import MAX_PLANS
from gateway.auth.apikeys import format_line, hash_key
from gateway.cli import main as cli_main
from gateway.config import parse_config
from gateway.preflight import offline
from tests.detection_gateway.test_class_weights import CHAT, LIMITS, body, customer_messages, send
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, settled, sim_backend

KEYS = {("mixed", "apps"): "sk-mixed-apps-0001", ("mixed", "default"): "sk-mixed-default-0001",
        ("support-bot", "apps"): "sk-support-apps-0001"}


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text("".join(format_line(hash_key(k), client, None, frozenset(), plan) + "\n"
                            for (client, plan), k in KEYS.items()))
    return path


def config(url: str, **over: Any) -> dict[str, Any]:
    """Detection on, the `apps` plan's profile muting the templates detector, JWTs naming their plan in `plan`."""
    return gateway_config(url, **{
        "limits": LIMITS,
        "auth": {"jwt": {"algorithms": ["HS256"], "audience": "ipgate", "secret_env": None, "limits_claim": "plan"}},
        "detection": {"enabled": True, "class_weights": {"apps": {"templates": 0}}}, **over})


def client(gw: GatewayHandle, credential: str) -> openai.AsyncOpenAI:
    return gw.openai_client(api_key=credential)


async def view(gw: GatewayHandle, client_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.admin_token}"}) as s, \
            s.get(f"{gw.admin_url}/admin/clients/{client_id}") as r:
        assert r.status == 200
        out: dict[str, Any] = await r.json()
        return out


async def test_a_harvest_on_the_muted_plans_key_is_flagged_once_the_client_used_another_key(tmp_path: Path
                                                                                           ) -> None:
    messages = customer_messages(40)
    keys = {"file": str(key_file(tmp_path)), "reload_interval_s": 0}
    async with sim_backend() as sim, running_gateway(config(sim.url, auth={"api_keys": keys})) as gw:
        mixed_default, mixed_apps = client(gw, KEYS["mixed", "default"]), client(gw, KEYS["mixed", "apps"])
        app_only = client(gw, KEYS["support-bot", "apps"])
        assert await send(mixed_default, ["Say hello."]) == [200]  # the other key, once
        got_mixed = await send(mixed_apps, messages)  # the harvest, on the apps key
        got_app = await send(app_only, messages)  # the same traffic from a client only ever on apps
        for c in (mixed_default, mixed_apps, app_only):
            await c.close()
        await settled(gw)
        assert got_app == [200] * len(messages), got_app
        assert got_mixed[-1] in (429, 403), got_mixed  # throttled, then blocked: a harvester
        mixed, app = await view(gw, "mixed"), await view(gw, "support-bot")
    assert mixed["tier_name"] != "normal", mixed
    assert mixed["detection"]["plans"] == ["apps", "default"], mixed
    assert mixed["detection"]["weights"]["templates"] > 0, mixed  # judged with the templates detector
    assert app["tier_name"] == "normal" and app["detection"]["plans"] == ["apps"], app
    assert app["detection"]["weights"]["templates"] == 0.0, app


async def test_a_second_replica_judges_by_the_plan_the_first_one_recorded(redis_url: str) -> None:
    """Replica A serves the client's token without a plan claim (plan `default`); replica B, a gateway of its
    own (its own engine, token cache and decoded-state cache), serves its `apps` tokens only. The plan A saw
    reaches B through the client's state in Redis, and B flags the harvest."""
    messages = customer_messages(40)
    store = {"kind": "redis", "url": redis_url}
    async with sim_backend() as sim, running_gateway(config(sim.url, store=store)) as a, \
            running_gateway(config(sim.url, store=store)) as b:
        on_a = a.openai_client("mixed")
        assert await send(on_a, ["Say hello."]) == [200]
        await on_a.close()
        await settled(a)
        assert b.ctx.auth.limit_classes("mixed") == frozenset()  # B never saw the client's other credential
        on_b = b.openai_client(api_key=b.token("mixed", plan="apps"))
        app_only = b.openai_client(api_key=b.token("support-bot", plan="apps"))
        got_mixed, got_app = await send(on_b, messages), await send(app_only, messages)
        await on_b.close()
        await app_only.close()
        await settled(b)
        assert got_app == [200] * len(messages), got_app
        assert got_mixed[-1] in (429, 403), got_mixed
        assert b.ctx.auth.limit_classes("mixed") == frozenset({"apps"})
        seen_on_a = await view(a, "mixed")  # either replica's admin view reads the shared record
        assert seen_on_a["detection"]["plans"] == ["apps", "default"], seen_on_a
        assert seen_on_a["tier_name"] != "normal", seen_on_a


def test_check_reports_the_profiles_and_the_plans_a_state_cannot_record(tmp_path: Path) -> None:
    many = {**LIMITS, **{f"plan{i}": LIMITS["apps"] for i in range(MAX_PLANS)}}
    for limits, warned in ((LIMITS, False), (many, True)):
        cfg = config("http://127.0.0.1:9", limits=limits)
        cfg.pop("auth")
        findings = offline(parse_config(cfg, env={}), env={})
        said = [f.message for f in findings if f.area == "detection"]
        assert any("detection profiles apps: templates 0;" in m and "judged by the strictest" in m for m in said), said
        assert any(f.level == "warning" and f"more than {MAX_PLANS} of them" in f.message for f in findings) is warned


def test_replay_judges_a_client_by_every_plan_of_its_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    trace = tmp_path / "trace.jsonl"
    rows: list[dict[str, Any]] = [{"ts": 999.0, "client": "mixed", "endpoint": CHAT,
                                   "body": {"model": "sim", "messages": [{"role": "user", "content": "Hi."}]}}]
    for i, m in enumerate(customer_messages(30)):
        for who in ("mixed", "support-bot"):
            rows.append({"ts": 1000.0 + 7.3 * i, "client": who, "endpoint": CHAT, "body": body(m),
                         "limit_class": "apps"})
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(config("http://127.0.0.1:9")), encoding="utf-8")
    assert cli_main(["replay", str(trace), "--config", str(path), "--json"]) == 0
    out = {c["client"]: c for c in json.loads(capsys.readouterr().out)["clients"]}
    assert out["mixed"]["flagged"] and not out["support-bot"]["flagged"], out
