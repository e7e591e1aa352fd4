"""``GatewayDetection`` on the real engine and the real memory store: tiers, state, alerts, fail policy."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import CollectorRegistry

from detectors.base import AnyDetector
from detectors.combiner import CombinerParams
from detectors.engine import Engine
from detectors.registry import REGISTRY
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.sinks import build_sinks
from gateway.config import AlertSinkConfig, ConfigError, GatewayConfig, parse_config
from gateway.detection import GatewayDetection
from gateway.hooks import ResponseFacts
from gateway.policy import Policy
from gateway.principal import Principal
from gateway.store.base import AdmitRequest
from gateway.store.memory import MemoryStore
from gateway.telemetry.metrics import Metrics

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CHAT = "/v1/chat/completions"

# Hand-set weights: these tests check the gateway's plumbing, not the fitted combiner (the detectors
# helper's evaluation covers that), so they must not move when the combiner is refitted.
PARAMS = CombinerParams(
    intercept=-6.0,
    weights={"logit_probing": 14.0, "templates": 10.0, "coverage": 4.0, "volume": 4.0, "timing": 3.0,
             "reasoning": 6.0, "linking": 8.0},
)


def gateway_config(**extra: Any) -> GatewayConfig:
    return parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}], **extra},
                        env={})


def probe(i: int) -> dict[str, Any]:
    """One step of a Carlini-style logit sweep: same prompt, 50 new biased tokens, top logprobs, 1 token."""
    return {"model": "sim", "messages": [{"role": "user", "content": "Say hi to order 1234"}], "max_tokens": 1,
            "logprobs": True, "top_logprobs": 20, "logit_bias": {str(1000 + 50 * i + j): 100 for j in range(50)}}


def benign_prompts(n: int, seed: int = 7) -> list[str]:
    rows = [json.loads(x) for x in (DATA / "prompts.jsonl").read_text(encoding="utf-8").split("\n") if x]
    texts = [r["turns"][0] for r in rows if r["category"] != "harmless-redteam"]
    return random.Random(seed).sample(texts, n)


class Harness:
    """Drives the pipeline's detection steps in order: hot_path -> observe -> account."""

    def __init__(self, det: GatewayDetection, store: MemoryStore, policy: Policy) -> None:
        self.det, self.store, self.policy = det, store, policy

    async def send(self, client: str, body: dict[str, Any], now: float, rid: str = "") -> tuple[int, float]:
        res = await self.store.hot_path(AdmitRequest(client, 10, self.policy.limits_by_tier))
        s = self.det.observe(Principal(client, tenant="acme"), CHAT, body, res.detector_state, res.tier, now,
                             override=res.override, request_id=rid or None)
        await s.account(self.store, ResponseFacts(status=200, prompt_tokens=9, completion_tokens=1))
        return s.outcome.tier, s.outcome.score


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


async def make(
    metrics: Metrics, tmp_path: Path, engine: Engine | None = None, **cfg_extra: Any
) -> tuple[Harness, AlertDispatcher]:
    cfg = gateway_config(**cfg_extra)
    policy = Policy.from_config(cfg)
    store = MemoryStore()
    sinks = build_sinks([AlertSinkConfig(kind="jsonl", path=str(tmp_path / "alerts.jsonl"))], default_redis_url="")
    alerts = AlertDispatcher(cfg.alerts, sinks, store=store, metrics=metrics)
    await alerts.start()
    det = GatewayDetection(engine or Engine.from_params(PARAMS), policy, cfg.detection, metrics=metrics,
                           alerts=alerts)
    return Harness(det, store, policy), alerts


async def test_prober_rises_through_tiers_with_alerts_and_shared_state(metrics: Metrics, tmp_path: Path) -> None:
    h, alerts = await make(metrics, tmp_path)
    tiers = [(await h.send("att", probe(i), 1000.0 + i, rid=f"req-{i}"))[0] for i in range(25)]
    assert tiers[0] == 0 and max(tiers[:5]) == 2, tiers  # throttled within a few probes
    assert tiers[-1] == 3, tiers  # then blocked
    assert tiers == sorted(tiers), "within a burst of probes the tier never goes down"
    rec = await h.store.get_client("att")
    assert rec is not None and rec.tier == 3 and rec.score > 0.9  # what every replica's hot_path now reads
    await alerts.flush()
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [a["tier"] for a in lines] == ["throttle", "block"]  # one alert per rise into an alerting tier
    blk = lines[-1]
    assert blk["client"] == "att" and blk["tenant"] == "acme" and blk["previous_tier"] == "throttle"
    assert "logit_probing" in blk["detectors"]
    assert any("logit_bias" in r for r in blk["reasons"])
    k = tiers.index(3)  # the request that raised the block: the evidence ends with it
    assert blk["evidence"]["request_ids"] == [f"req-{i}" for i in range(k - 4, k + 1)]
    assert blk["evidence"]["examples"] == ["Say hi to order ####"]  # redacted
    stored = [json.loads(x) for x in await h.store.recent_alerts(10)]
    assert [a["tier"] for a in stored] == ["block", "throttle"]  # newest first, shared across replicas
    assert metrics.registry.get_sample_value("ipgate_detection_tier_total", {"tier": "block"}) == 25 - k
    await alerts.close()


async def test_benign_real_prompts_stay_normal(metrics: Metrics, tmp_path: Path) -> None:
    h, alerts = await make(metrics, tmp_path)
    rnd = random.Random(3)
    t = 1000.0
    for text in benign_prompts(60):
        t += rnd.uniform(20, 240)  # a person reading, thinking, typing
        body = {"model": "sim", "messages": [{"role": "user", "content": text}], "max_tokens": 400}
        tier, _ = await h.send("human", body, t)
        assert tier == 0
    assert h.det.recent.of("human") == ((), (), ())  # nothing suspicious was kept about them
    await alerts.flush()
    assert not (tmp_path / "alerts.jsonl").exists()
    await alerts.close()


async def test_allow_override_pins_tier_and_silences_alerts(metrics: Metrics, tmp_path: Path) -> None:
    h, alerts = await make(metrics, tmp_path)
    await h.store.set_override("trusted-lab", "allow", None, 3600)
    tiers = [(await h.send("trusted-lab", probe(i), 1000.0 + i))[0] for i in range(25)]
    assert set(tiers) == {0}
    await alerts.flush()
    assert await h.store.recent_alerts(10) == []
    await alerts.close()


async def test_when_an_allow_ends_the_next_request_is_judged_on_what_was_observed_and_alerts(
        metrics: Metrics, tmp_path: Path) -> None:
    """Under ``allow`` the evidence counts but the stored tier is held. Before, detection raised the stored tier
    all along (silently: alerts are suppressed under allow), so when the allow ended the client was blocked on
    its next request and nobody was told."""
    h, alerts = await make(metrics, tmp_path)
    await h.store.set_override("lab", "allow", None, 3600)
    for i in range(25):
        assert (await h.send("lab", probe(i), 1000.0 + i))[0] == 0
    rec = await h.store.get_client("lab")
    assert rec is not None and rec.detector_tier == 0 and rec.score > 0.9  # held tier, full evidence
    await h.store.set_override("lab", None, None, 3600)  # the evaluation is over
    tier, _ = await h.send("lab", probe(25), 1026.0)
    assert tier == 3  # judged on the 26 probes at once (a climb is immediate)
    await alerts.flush()
    (alert,) = [json.loads(a) for a in await h.store.recent_alerts(10)]
    assert alert["client"] == "lab" and alert["tier"] == "block" and alert["previous_tier"] == "normal"
    await alerts.close()


class Exploding:
    """A detector plug-in with a bug: the engine must isolate it and the gateway must apply the fail policy."""

    name: ClassVar[str] = "exploding"
    state_bytes: ClassVar[int] = 16

    def new_state(self) -> dict[str, int]:
        return {}

    def load(self, data: bytes) -> dict[str, int]:
        return {}

    def dump(self, state: dict[str, int]) -> bytes:
        return b""

    def observe(self, state: Any, feats: Any, now: float) -> Any:
        raise ZeroDivisionError("bug in a detector")

    def score(self, state: Any, now: float) -> Any:
        raise ZeroDivisionError("bug in a detector")

    def observe_response(self, state: Any, resp: Any, now: float) -> None:
        return None


def engine_with_exploding() -> Engine:
    dets: list[AnyDetector] = [REGISTRY["logit_probing"](), Exploding()]
    return Engine(PARAMS, dets, {"logit_probing": 14.0, "exploding": 1.0}, PARAMS.tiers, 0.9)


@pytest.mark.parametrize(("policy", "expected_tier"), [("allow", 0), ("block", 3)])
async def test_failing_detector_fail_policy(
    metrics: Metrics, tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str, expected_tier: int
) -> None:
    h, alerts = await make(metrics, tmp_path, engine_with_exploding(), detection={"fail_policy": policy})
    benign = {"model": "sim", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    with caplog.at_level(logging.ERROR):
        for i in range(3):
            res = await h.store.hot_path(AdmitRequest("c", 10, h.policy.limits_by_tier))
            s = h.det.observe(Principal("c"), CHAT, benign, res.detector_state, res.tier, 1000.0 + i)
            assert s.outcome.unscored and s.outcome.tier == expected_tier
    assert sum("exploding" in r.getMessage() for r in caplog.records) == 1  # logged once, not per request
    assert metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "exploding"}) == 3
    await alerts.close()


class BrokenEngine(Engine):
    """Fault injection below the detectors: the engine itself raises."""

    def fold_request(self, pending: Any, feats: Any, now: float, hold: bool = False, weights: Any = None,
                     plan: Any = None) -> Any:
        raise MemoryError("engine bug")


async def test_engine_failure_is_unscored_and_keeps_state(metrics: Metrics, tmp_path: Path) -> None:
    base = Engine.from_params(PARAMS)
    broken = BrokenEngine(PARAMS, base.detectors, base.weights, base.tiers, base.inherit)
    h, alerts = await make(metrics, tmp_path, broken, detection={"fail_policy": "allow"})
    await h.store.save_client_state("c", b"old-state", 1, 0.6, 3600)
    res = await h.store.hot_path(AdmitRequest("c", 10, h.policy.limits_by_tier))
    s = h.det.observe(Principal("c"), CHAT, probe(0), res.detector_state, res.tier, 1000.0)
    assert s.outcome.unscored and s.outcome.tier == 1 and s.outcome.reasons == ("unscored: engine failed",)
    await s.account(h.store, ResponseFacts(status=200))
    res2 = await h.store.hot_path(AdmitRequest("c", 10, h.policy.limits_by_tier))
    assert res2.detector_state == b"old-state"  # an unscored request never overwrites what the store holds
    assert metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "engine"}) == 1
    await alerts.close()


class UnserialisableEngine(Engine):
    """Fault injection after the response: serialising the state (deferred to ``account``) fails."""

    def snapshot(self, pending: Any) -> bytes:
        raise MemoryError("serialisation bug")


async def test_account_failure_keeps_the_stored_state_and_session_is_used_once(
    metrics: Metrics, tmp_path: Path
) -> None:
    base = Engine.from_params(PARAMS)
    h, alerts = await make(metrics, tmp_path, detection={"fail_policy": "allow"})
    first = h.det.observe(Principal("c"), CHAT, probe(0), None, 0, 1000.0)
    await first.account(h.store, ResponseFacts(status=200))
    saved = (await h.store.hot_path(AdmitRequest("c", 10, h.policy.limits_by_tier))).detector_state
    assert saved
    await first.account(h.store, ResponseFacts(status=200))  # a second call is a no-op: state used once
    assert (await h.store.hot_path(AdmitRequest("c", 10, h.policy.limits_by_tier))).detector_state == saved

    broken = UnserialisableEngine(PARAMS, base.detectors, base.weights, base.tiers, base.inherit)
    h2, alerts2 = await make(metrics, tmp_path, broken, detection={"fail_policy": "allow"})
    await h2.store.save_client_state("c", saved, 0, 0.0, 3600)
    res = await h2.store.hot_path(AdmitRequest("c", 10, h2.policy.limits_by_tier))
    s = h2.det.observe(Principal("c"), CHAT, probe(1), res.detector_state, res.tier, 1001.0)
    assert not s.outcome.unscored  # scored on the request path; only the deferred serialisation fails
    await s.account(h2.store, ResponseFacts(status=200))
    assert (await h2.store.hot_path(AdmitRequest("c", 10, h2.policy.limits_by_tier))).detector_state == saved
    assert metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "engine"}) == 1
    await alerts.close()
    await alerts2.close()


def test_from_config_errors_name_the_field(tmp_path: Path) -> None:
    cfg = gateway_config(detection={"detectors": {"nope": {"enabled": True}},
                                    "combiner_file": str(tmp_path / "missing.json")})
    with pytest.raises(ConfigError, match=r"detection\.combiner_file"):
        GatewayDetection.from_config(cfg, Policy.from_config(cfg))
    (tmp_path / "c.json").write_text(PARAMS.to_json())
    cfg = gateway_config(detection={"detectors": {"nope": {"enabled": True}},
                                    "combiner_file": str(tmp_path / "c.json")})
    with pytest.raises(ConfigError, match=r"detection.detectors: unknown detector\(s\) \['nope'\]"):
        GatewayDetection.from_config(cfg, Policy.from_config(cfg))
    cfg = gateway_config(detection={"detectors": {"semantic": {"enabled": True}},
                                    "combiner_file": str(tmp_path / "c.json")})
    with pytest.raises(ConfigError, match=r"detection\.detectors\.semantic needs detection\.embedder: minilm"):
        GatewayDetection.from_config(cfg, Policy.from_config(cfg))


async def test_hydra_accounts_are_linked_through_the_store_and_named_in_alerts(
    metrics: Metrics, tmp_path: Path
) -> None:
    """Three accounts run one template campaign next to a benign user: the sketch table in the store links
    the three (each block alert names the other two), and the benign user is linked to nobody."""
    h, alerts = await make(metrics, tmp_path)
    topics = ["rivers", "mountains", "cities", "love", "time", "the sea", "autumn", "robots", "bread", "trains"]
    poets = ["Frost", "Dickinson", "Whitman", "Basho", "Neruda", "Angelou"]
    rnd = random.Random(1)
    humans = iter(benign_prompts(40, seed=5))
    t = 1000.0
    for i in range(40):
        for c in ("hydra-1", "hydra-2", "hydra-3"):
            t += rnd.uniform(1, 3)
            text = (f"Write a short poem about {rnd.choice(topics)} in the style of {rnd.choice(poets)}, "
                    f"with {rnd.randint(2, 9)} stanzas and a title in quotes.")
            await h.send(c, {"model": "sim", "messages": [{"role": "user", "content": text}]}, t, rid=f"{c}-{i}")
        tier, _ = await h.send("human", {"model": "sim", "messages": [{"role": "user", "content": next(humans)}]}, t)
        assert tier == 0
    await alerts.flush()
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    blocks = {a["client"]: a for a in lines if a["tier"] == "block"}
    assert set(blocks) == {"hydra-1", "hydra-2", "hydra-3"}
    for member, a in blocks.items():
        assert set(a["evidence"]["cluster"]) == {"hydra-1", "hydra-2", "hydra-3"} - {member}
        assert "linking" in a["detectors"]
        assert a["evidence"]["examples"][0].startswith("Write a short poem about")
        assert "#" in a["evidence"]["examples"][0]  # digits redacted
    assert all("human" not in a["evidence"]["cluster"] and a["client"] != "human" for a in lines)
    await alerts.close()


class StateChokingEngine(Engine):
    """Fault injection: the engine raises on one stored state it cannot fold into, but works from a fresh one."""

    def open(self, state: bytes | None) -> Any:
        if state == b"poison":
            raise OverflowError("a stored value the engine chokes on")
        return super().open(state)


async def test_a_stored_state_the_engine_chokes_on_restarts_the_client_fresh(metrics: Metrics,
                                                                            tmp_path: Path) -> None:
    """Not unscored for good: the request is scored from a fresh state, which replaces the stored one."""
    base = Engine.from_params(PARAMS)
    choking = StateChokingEngine(PARAMS, base.detectors, base.weights, base.tiers, base.inherit)
    h, alerts = await make(metrics, tmp_path, choking, detection={"fail_policy": "allow"})
    await h.store.save_client_state("c", b"poison", 1, 0.6, 3600)
    res = await h.store.hot_path(AdmitRequest("c", 10, h.policy.limits_by_tier))
    s = h.det.observe(Principal("c"), CHAT, probe(0), res.detector_state, res.tier, 1000.0)
    assert not s.outcome.unscored
    await s.account(h.store, ResponseFacts(status=200))
    res2 = await h.store.hot_path(AdmitRequest("c", 10, h.policy.limits_by_tier))
    assert res2.detector_state not in (None, b"poison")
    assert metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "engine"}) == 1
    await alerts.close()


async def test_unreadable_stored_states_are_counted(metrics: Metrics, tmp_path: Path) -> None:
    h, alerts = await make(metrics, tmp_path, Engine.from_params(PARAMS), detection={"fail_policy": "allow"})
    for i, junk in enumerate((b"\x00garbage", b"\xff" * 40)):
        s = h.det.observe(Principal(f"c{i}"), CHAT, probe(0), junk, 0, 1000.0)
        assert not s.outcome.unscored  # started fresh
    assert metrics.registry.get_sample_value("ipgate_detector_state_errors_total") == 2
    await alerts.close()
