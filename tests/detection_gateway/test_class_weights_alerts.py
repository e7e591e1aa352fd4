"""An alert on a client judged under a detection profile (``detection.class_weights``) names the detectors
behind its verdict: a detector the client's plan mutes scores (its evidence is kept) but is not one of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from detectors.engine import Engine
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.sinks import build_sinks
from gateway.config import AlertSinkConfig
from gateway.detection import GatewayDetection
from gateway.hooks import ResponseFacts
from gateway.policy import Policy
from gateway.principal import Principal
from gateway.store.base import AdmitRequest
from gateway.store.memory import MemoryStore
from gateway.telemetry.metrics import Metrics
from tests.detection_gateway.test_class_weights import body as template_body
from tests.detection_gateway.test_class_weights import customer_messages
from tests.detection_gateway.test_detection import PARAMS, gateway_config

CHAT = "/v1/chat/completions"


def probing(i: int, message: str) -> dict[str, Any]:
    """A template application's request that also sweeps logits (the logit-probing detector's evidence)."""
    return {**template_body(message), "max_tokens": 1, "logprobs": True, "top_logprobs": 20,
            "logit_bias": {str(1000 + 50 * i + j): 100 for j in range(50)}}


async def test_an_alert_under_a_profile_names_only_the_detectors_that_weigh_in_it(tmp_path: Path) -> None:
    cfg = gateway_config()
    policy = Policy.from_config(cfg)
    store = MemoryStore()
    metrics = Metrics(CollectorRegistry())
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(tmp_path / "alerts.jsonl"))], default_redis_url="")
    alerts = AlertDispatcher(cfg.alerts, sinks, store=store, metrics=metrics)
    await alerts.start()
    engine = Engine.from_params(PARAMS)
    det = GatewayDetection(engine, policy, cfg.detection, metrics=metrics, alerts=alerts,
                           class_weights={"apps": engine.weights_for({"templates": 0})})
    try:
        who = Principal("support-bot", tenant="acme", limit_class="apps")
        templates_scored = False
        for i, m in enumerate(customer_messages(25)):
            now = 1000.0 + i
            res = await store.hot_path(AdmitRequest(who.client_id, 10, policy.limits_by_tier))
            s = det.observe(who, CHAT, probing(i, m), res.detector_state, res.tier, now, override=res.override)
            v = s._verdict
            templates_scored = templates_scored or (v is not None and v.detector_scores.get("templates", 0) >= 0.3)
            await s.account(store, ResponseFacts(status=200, prompt_tokens=9, completion_tokens=1))
        await alerts.flush()
        lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        assert templates_scored, "the muted detector still records its evidence (the premise)"
        assert lines, "the logit sweep raises the client under its profile too"
        for a in lines:
            assert "logit_probing" in a["detectors"], a
            assert "templates" not in a["detectors"], a["detectors"]
    finally:
        await alerts.close()


async def test_the_alert_on_a_client_seen_with_two_plans_names_the_detector_one_of_them_mutes(tmp_path: Path
                                                                                               ) -> None:
    """Judged by the strictest of its plans, the client's harvest on the muted plan's credential is alerted on,
    and the alert names the templates detector (it weighs in the profile the client is judged with)."""
    cfg = gateway_config()
    policy = Policy.from_config(cfg)
    store = MemoryStore()
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(tmp_path / "alerts.jsonl"))], default_redis_url="")
    alerts = AlertDispatcher(cfg.alerts, sinks, store=store, metrics=Metrics(CollectorRegistry()))
    await alerts.start()
    engine = Engine.from_params(PARAMS)
    det = GatewayDetection(engine, policy, cfg.detection, alerts=alerts,
                           class_weights={"apps": engine.weights_for({"templates": 0})})
    try:
        steps = [(Principal("mixed", limit_class="default"), {"model": "sim", "messages": [
            {"role": "user", "content": "Say hello."}]})]
        steps += [(Principal("mixed", limit_class="apps"), template_body(m)) for m in customer_messages(40)]
        for i, (who, req) in enumerate(steps):
            res = await store.hot_path(AdmitRequest(who.client_id, 10, policy.limits_by_tier))
            s = det.observe(who, CHAT, req, res.detector_state, res.tier, 1000.0 + 7.3 * i, override=res.override)
            await s.account(store, ResponseFacts(status=200, prompt_tokens=9, completion_tokens=100))
        await alerts.flush()
        lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        assert lines and all("templates" in a["detectors"] for a in lines), lines
    finally:
        await alerts.close()
