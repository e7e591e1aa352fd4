"""Detection profiles per plan (``detection.class_weights``): the clients of a limit class are judged with
their own combiner weights. A support application that sends one fixed instruction before every customer
message is a template harvester to the default weights (throttled within a few requests, then blocked); under
a plan whose profile mutes the templates detector it is served, while every other detector still scores it.

Checked on the real gateway with the official openai client, in the engine (the profile changes the verdict,
never the evidence), in a working copy merged with another replica's save (the merge replays the unsaved
steps with the profile they were judged with), in ``ipgate replay`` (a record's ``limit_class``) and in the
config's errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.features import extract
from gateway.cli import main as cli_main
from gateway.config import ConfigError, parse_config
from gateway.detection import GatewayDetection
from gateway.detection_live import LiveStates
from gateway.policy import Policy
from tests.support.harness import gateway_config, running_gateway, sim_backend

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CHAT = "/v1/chat/completions"
INSTRUCTION = ("You are the support assistant of Acme Cloud. Answer the customer's message below politely and "
               "briefly, in the customer's language, and never mention internal tools or pricing that is not "
               "public.\n\nCustomer message:\n")
LIMITS = {"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
          "apps": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
          "suspicious": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}}


def customer_messages(n: int, seed: int = 5) -> list[str]:
    rows = [json.loads(x) for x in (DATA / "prompts.jsonl").read_text(encoding="utf-8").split("\n") if x]
    texts = [r["turns"][0] for r in rows if r["category"] != "harmless-redteam" and 20 < len(r["turns"][0]) < 600]
    return random.Random(seed).sample(texts, n)


def body(message: str) -> dict[str, Any]:
    return {"model": "sim", "messages": [{"role": "user", "content": INSTRUCTION + message}], "max_tokens": 200}


def engine() -> Engine:
    return Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8")))


def config(url: str, **detection: Any) -> dict[str, Any]:
    return gateway_config(url, limits=LIMITS, auth={"jwt": {"algorithms": ["HS256"], "audience": "ipgate",
                                                            "secret_env": None, "limits_claim": "plan"}},
                          detection={"enabled": True, "class_weights": {"apps": {"templates": 0}}, **detection})


async def send(client: openai.AsyncOpenAI, messages: list[str]) -> list[int]:
    out = []
    for m in messages:
        try:
            await client.chat.completions.create(**body(m))
            out.append(200)
        except openai.RateLimitError:
            out.append(429)
        except openai.PermissionDeniedError:
            out.append(403)
            break
    return out


async def test_a_template_application_on_its_plan_is_served_while_the_same_traffic_is_blocked_by_default() -> None:
    messages = customer_messages(40)
    async with sim_backend() as sim, running_gateway(config(sim.url)) as gw:
        known = gw.openai_client(api_key=gw.token("support-bot", plan="apps"))
        unknown = gw.openai_client("other-bot")
        got_known, got_unknown = await send(known, messages), await send(unknown, messages)
        await known.close()
        await unknown.close()
        assert got_known == [200] * len(messages)
        assert got_unknown[0] == 200 and got_unknown[-1] == 403, got_unknown  # the default weights: a harvester
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gw.admin_token}"}) as s, \
                s.get(f"{gw.admin_url}/admin/clients/support-bot") as r:
            view = await r.json()
        assert view["tier_name"] == "normal", view
        assert view["limit_classes"] == ["apps"], view


def test_the_profile_changes_the_verdict_not_the_evidence() -> None:
    eng = engine()
    app = eng.weights_for({"templates": 0})
    assert app["templates"] == 0.0 and {k: v for k, v in app.items() if k != "templates"} == \
        {k: v for k, v in eng.weights.items() if k != "templates"}
    plain: bytes | None = None
    profiled: bytes | None = None
    for i, m in enumerate(customer_messages(30)):
        t = 1000.0 + 7.3 * i
        o1 = eng.observe(plain, extract(CHAT, body(m), t), t)
        o2 = eng.observe(profiled, extract(CHAT, body(m), t), t, weights=app)
        plain, profiled = o1.state, o2.state
        # the same evidence, folded alike (up to the rounding of a state read back from its bytes)
        assert o1.verdict.detector_scores == pytest.approx(o2.verdict.detector_scores, abs=1e-6)
    assert o1.verdict.tier >= 2 and any("template" in r for r in o1.verdict.reasons), o1.verdict
    assert o2.verdict.tier == 0 and o2.verdict.score < 0.3, o2.verdict
    assert not any("template" in r for r in o2.verdict.reasons)  # a muted detector gives no reasons
    # the same stored evidence, judged both ways
    now = 1000.0 + 7.3 * 30
    assert eng.peek(profiled, now).detector_scores == pytest.approx(eng.peek(plain, now).detector_scores, abs=1e-6)
    assert eng.peek(profiled, now, app).score < 0.3 < eng.peek(profiled, now).score


@pytest.mark.parametrize(("overrides", "message"), [
    ({"nosuch": 1.0}, "'nosuch' is not enabled here"),
    ({"semantic": 1.0}, "'semantic' is not enabled here"),  # registered, but off without the MiniLM embedder
    ({"templates": float("nan")}, "weight must be a finite number"),
    ({"templates": float("inf")}, "weight must be a finite number"),
    ({"templates": True}, "weight must be a finite number"),
])
def test_weights_for_refuses_what_it_cannot_apply(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine().weights_for(overrides)


def test_a_merge_replays_the_unsaved_steps_with_their_profile() -> None:
    """Another replica saved the client meanwhile: the copy's unsaved steps are folded into that state again.
    Replayed with the default weights, the known application's merged state said block."""
    eng = engine()
    app = eng.weights_for({"templates": 0})
    lives = LiveStates(eng, 3600.0)
    live = lives.begin("support-bot", None)
    for i, m in enumerate(customer_messages(30)):
        t = 1000.0 + 7.3 * i
        v = lives.fold_request(live, extract(CHAT, body(m), t), t, weights=app)
    assert v.tier == 0
    lives._rebase(live, None)  # the other replica's state (none here): the logged steps replayed into it
    assert live.pending.tier_score()[0] == 0


@pytest.mark.parametrize(("class_weights", "message"), [
    ({"enterprise": {"templates": 0}}, "detection.class_weights: limit class 'enterprise' is not defined"),
    ({"apps": {"templates": -1}}, "greater than or equal to 0"),
    ({"apps": {"nosuch": 0}}, "detection.class_weights.apps: detector 'nosuch' is not enabled"),
    ({"apps": {"templates": 0}, "default": {"timing": 0}}, None),
])
def test_config_errors_name_the_field(class_weights: dict[str, Any], message: str | None) -> None:
    raw = gateway_config("http://127.0.0.1:9", limits=LIMITS,
                         detection={"enabled": True, "class_weights": class_weights})
    try:
        cfg = parse_config(raw)
        det = GatewayDetection.from_config(cfg, Policy.from_config(cfg))
    except (ConfigError, ValueError) as e:
        assert message is not None and message in str(e), str(e)
        return
    assert message is None
    assert det.class_weights["apps"]["templates"] == 0.0 and det.class_weights["default"]["timing"] == 0.0


def test_replay_judges_a_record_by_its_limit_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    with trace.open("w", encoding="utf-8") as f:
        for i, m in enumerate(customer_messages(30)):
            for client, plan in (("support-bot", "apps"), ("other-bot", None)):
                rec: dict[str, Any] = {"ts": 1000.0 + 7.3 * i, "client": client, "endpoint": CHAT, "body": body(m)}
                if plan:
                    rec["limit_class"] = plan
                f.write(json.dumps(rec) + "\n")
    cfg = tmp_path / "ipgate.yaml"
    cfg.write_text(yaml.safe_dump(config("http://127.0.0.1:9")), encoding="utf-8")
    assert cli_main(["replay", str(trace), "--config", str(cfg), "--json"]) == 0
    out = {c["client"]: c for c in json.loads(capsys.readouterr().out)["clients"]}
    assert out["other-bot"]["flagged"] and not out["support-bot"]["flagged"], out
    assert cli_main(["replay", str(trace), "--json"]) == 0  # no config: no profiles, both judged alike
    out = {c["client"]: c for c in json.loads(capsys.readouterr().out)["clients"]}
    assert out["other-bot"]["flagged"] and out["support-bot"]["flagged"], out
