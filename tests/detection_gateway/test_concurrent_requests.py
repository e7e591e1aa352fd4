"""A client's overlapping requests are all scored: one working copy per client and replica, merged across
replicas by compare-and-swap (gateway/detection_live.py).

Before: each request folded itself into its own copy of the state read before it was served, and the last
save won. A template harvester running 16 requests at a time reached the state with 4 of its 60 requests and
was never throttled; sequentially it was throttled after 11.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from aiohttp import ClientSession

from detectors import state as envelope
from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.features import extract, seed_batch_pick, seeded_draws
from detectors.types import DetectorScore, ResponseFeatures
from gateway.detection_live import LiveStates
from gateway.store.memory import MemoryStore
from tests.detection_gateway.test_detection import Exploding
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, settled, sim_backend

TOPICS = ["photosynthesis", "binary search", "the French revolution", "inflation", "TCP handshakes", "vaccines",
          "black holes", "supply chains", "the immune system", "compilers", "plate tectonics", "jazz"]
LIMITS = {"default": {"requests_per_minute": 600_000, "tokens_per_minute": 10**9},
          "suspicious": {"requests_per_minute": 600_000, "tokens_per_minute": 10**9}}


def fill(rnd: random.Random) -> str:
    return (f"You are an expert tutor. Explain {rnd.choice(TOPICS)} to a student in grade {rnd.randint(5, 12)}. "
            f"Think step by step and show your full reasoning, then write {rnd.randint(3, 9)} quiz questions.")


async def harvest(clients: list[openai.AsyncOpenAI], n: int, concurrency: int, seed: int = 3) -> list[int]:
    """``n`` template fills, ``concurrency`` at a time, taking turns over ``clients`` (gateways)."""
    rnd = random.Random(seed)
    prompts = [fill(rnd) for _ in range(n)]
    sem = asyncio.Semaphore(concurrency)
    statuses: list[int] = []

    async def one(i: int) -> None:
        async with sem:
            try:
                await clients[i % len(clients)].chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": prompts[i]}], max_tokens=40)
                statuses.append(200)
            except openai.RateLimitError:
                statuses.append(429)
            except openai.PermissionDeniedError:
                statuses.append(403)

    await asyncio.gather(*(one(i) for i in range(n)))
    return statuses


async def requests_seen(gw: GatewayHandle, client: str) -> int:
    await settled(gw)
    res = await gw.ctx.store.hot_path(_probe(client))
    assert res.detector_state
    return envelope.decode(res.detector_state).requests_seen


def _probe(client: str):  # type: ignore[no-untyped-def]
    from gateway.store.base import AdmitRequest, Limits
    lim = Limits(requests_per_minute=10**6, tokens_per_minute=10**9, burst_requests=10**6, burst_tokens=10**9)
    return AdmitRequest(client, 0, (lim,) * 4, 3600.0)


@pytest.mark.parametrize("concurrency", [1, 16])
async def test_overlapping_requests_all_reach_the_state(concurrency: int) -> None:
    async with sim_backend(latency_ms=150) as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True}, limits=LIMITS)
        async with running_gateway(cfg) as gw:
            c = gw.openai_client("harvey")
            statuses = await harvest([c], 48, concurrency)
            await c.close()
            assert await requests_seen(gw, "harvey") == 48, "every request, served or refused, is evidence"
            rec = await gw.ctx.store.get_client("harvey")
            assert rec is not None and rec.tier >= 2, rec  # throttled or blocked: the template was seen
            assert statuses.count(200) < 48
            assert gw.ctx.detection is not None
            await settled(gw)
            assert len(gw.ctx.detection.live) == 0, "a copy with nothing in flight leaves the table"  # type: ignore[attr-defined]


async def test_two_replicas_on_one_redis_merge_their_evidence(redis_url: str) -> None:
    async with sim_backend(latency_ms=100) as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True}, limits=LIMITS,
                             store={"kind": "redis", "url": redis_url, "failure_mode": "closed", "timeout_ms": 1000})
        async with running_gateway(cfg) as a, running_gateway(cfg) as b:
            ca, cb = a.openai_client("hydra"), b.openai_client("hydra")
            await harvest([ca, cb], 40, 8)
            await ca.close()
            await cb.close()
            await settled(a)
            assert await requests_seen(b, "hydra") == 40, "no replica's save erased the other's evidence"
            async with ClientSession() as s:
                texts = []
                for gw in (a, b):
                    async with s.get(f"{gw.admin_url}/metrics") as r:
                        texts.append(await r.text())
            merged = [_counter(t, 'ipgate_detection_state_merges_total{outcome="merged"}') for t in texts]
            assert sum(merged) > 0, "the replicas' saves met and were merged"
            assert all(_counter(t, 'ipgate_detection_state_merges_total{outcome="dropped"}') == 0 for t in texts)


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# --- the working copies without HTTP: same results as the plain engine, merges exact -------------------------

def engine() -> Engine:
    return Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text()))


def chat(text: str, history: tuple[str, ...] = ()) -> dict[str, object]:
    msgs: list[dict[str, str]] = []
    for h in history:
        msgs += [{"role": "user", "content": h}, {"role": "assistant", "content": "Sure."}]
    return {"model": "sim", "messages": [*msgs, {"role": "user", "content": text}], "max_tokens": 50}


RESP = ResponseFeatures(status=200, prompt_tokens=30, completion_tokens=50, finish_reasons=("length",),
                        logprobs_returned=0, max_tokens=50)


async def test_requests_that_do_not_overlap_are_scored_exactly_as_before() -> None:
    """The working copy runs the same engine steps as the plain path: byte-identical states and verdicts."""
    rnd = random.Random(5)
    plain, live_engine = engine(), engine()
    store = MemoryStore()
    lives = LiveStates(live_engine, 3600.0)
    state: bytes | None = None
    for i in range(40):
        now = 1_800_000_000.0 + 7 * i
        body = chat(fill(rnd)) if i % 3 else chat("Go ahead.", history=(fill(rnd),))
        feats = extract("/v1/chat/completions", body, now)
        seed_batch_pick(i)  # the turn draw (detectors.features.draw) sees the same generator in both paths
        v1, pending = plain.observe_pending(state, feats, now)
        state = plain.observe_response(pending, RESP, now + 1)
        if v1.sketches and i % 4 == 0:
            state = plain.apply_links(state, {"peer": 3}, now + 1, {"peer": 0.5}).state

        stored = (await store.hot_path(_probe("c"))).detector_state
        seed_batch_pick(i)
        live = lives.begin("c", stored)
        v2 = lives.fold_request(live, feats, now)
        lives.fold_response(live, RESP, now + 1)
        if v2.sketches and i % 4 == 0:
            lives.fold_links(live, {"peer": 3}, now + 1, {"peer": 0.5})
        await lives.done(store, live, 3)
        assert (v2.score, v2.tier, v2.reasons) == (v1.score, v1.tier, v1.reasons), i
        assert (await store.hot_path(_probe("c"))).detector_state == state, i
    assert lives.merges == 0 and len(lives) == 0


@pytest.fixture(autouse=True)
def _restore_draws() -> Iterator[None]:
    with seeded_draws(0):  # the tests reseed the process's draw: put the process's own generator back after
        yield


async def test_two_replicas_overlapping_lose_nothing() -> None:
    """Replica A and replica B (two engines) serve one client's overlapping requests over one store: every
    request is in the final state exactly once, whatever the order the saves land in."""
    rnd = random.Random(9)
    store = MemoryStore()
    a, b = LiveStates(engine(), 3600.0), LiveStates(engine(), 3600.0)
    now = 1_800_000_000.0
    for round_ in range(10):
        # each replica folds two overlapping requests before either is answered; B's copy is older than A's saves
        stored = (await store.hot_path(_probe("c"))).detector_state
        la = [a.begin("c", stored) for _ in range(2)]
        lb = [b.begin("c", stored) for _ in range(2)]
        for live, lv in [(a, la[0]), (a, la[1]), (b, lb[0]), (b, lb[1])]:
            now += 1
            live.fold_request(lv, extract("/v1/chat/completions", chat(fill(rnd)), now), now)
        for live, lv in ([(b, lb[0]), (a, la[0]), (a, la[1]), (b, lb[1])] if round_ % 2 else
                         [(a, la[0]), (b, lb[0]), (b, lb[1]), (a, la[1])]):
            live.fold_response(lv, RESP, now)
            await live.done(store, lv, 3)
    final = (await store.hot_path(_probe("c"))).detector_state
    assert final is not None and envelope.decode(final).requests_seen == 40
    assert a.merges + b.merges > 0 and len(a) == len(b) == 0


async def test_a_save_in_flight_coalesces_the_next_ones() -> None:
    """Requests accounted while a save is on its way are written by that saver (one saver per copy)."""
    rnd = random.Random(2)

    class SlowStore(MemoryStore):
        swaps = 0

        async def swap_client_state(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
            SlowStore.swaps += 1
            await asyncio.sleep(0.05)
            return await super().swap_client_state(*args, **kwargs)

    store = SlowStore()
    lives = LiveStates(engine(), 3600.0)
    copies = [lives.begin("c", None) for _ in range(6)]
    for i, lv in enumerate(copies):
        lives.fold_request(lv, extract("/v1/chat/completions", chat(fill(rnd)), 100.0 + i), 100.0 + i)
    await asyncio.gather(*(lives.done(store, lv, 3) for lv in copies))
    final = (await store.hot_path(_probe("c"))).detector_state
    assert final is not None and envelope.decode(final).requests_seen == 6
    assert SlowStore.swaps == 2, "the first save, then one more for the five accounted meanwhile"
    assert len(lives) == 0


async def test_unsaved_steps_are_bounded_and_counted(tmp_path: Path) -> None:
    """A store that refuses every save (another writer always first) cannot make a copy grow without bound."""
    from gateway import detection_live

    class Contended(MemoryStore):
        async def swap_client_state(self, client_id, expect, state, tier, score, ttl_s):  # type: ignore[no-untyped-def,override]
            await super().save_client_state(client_id, state + b"", tier, score, ttl_s)  # someone else wrote
            return False, None

    lives = LiveStates(engine(), 3600.0)
    rnd = random.Random(1)
    store = Contended()
    for i in range(detection_live.MAX_OPS + 20):
        lv = lives.begin("c", None)
        lives.fold_request(lv, extract("/v1/chat/completions", chat(fill(rnd)), 100.0 + i), 100.0 + i)
        lives.abandon(lv)
    lv = lives.begin("c", None)
    await lives.done(store, lv, 3)
    assert lives.dropped >= 20
    (copy,) = [lives._table["c"]]
    assert len(copy.ops) <= detection_live.MAX_OPS


# --- a detector raising after the verdict (response, links) is counted, not only logged ----------------------

class ExplodingOnResponses(Exploding):
    """Scores fine; raises on every response step (which no verdict reports)."""

    wants_response = True

    def observe(self, state: object, feats: object, now: float) -> DetectorScore:
        return DetectorScore(self.name, 0.0)

    def score(self, state: object, now: float) -> DetectorScore:
        return DetectorScore(self.name, 0.0)

    def observe_response(self, state: object, resp: object, now: float) -> None:
        raise ZeroDivisionError("bug in a detector's response step")


async def test_a_detector_raising_on_the_response_is_counted_every_time(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from detectors.registry import REGISTRY
    from gateway.telemetry.metrics import Metrics
    from tests.detection_gateway.test_detection import PARAMS, make

    metrics = Metrics(CollectorRegistry())
    eng = Engine(PARAMS, [REGISTRY["logit_probing"](), ExplodingOnResponses()],  # type: ignore[list-item]
                 {"logit_probing": 14.0, "exploding": 1.0}, PARAMS.tiers, 0.9)
    h, alerts = await make(metrics, tmp_path, eng)
    body = {"model": "sim", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    for i in range(3):
        await h.send("c", body, 1000.0 + i)
    assert metrics.registry.get_sample_value("ipgate_detector_errors_total", {"detector": "exploding"}) == 3
    await alerts.close()


async def test_steps_trimmed_during_a_save_do_not_cost_unsaved_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The log is trimmed (MAX_OPS) while a save is on its way: the write then removes the steps it saved, not
    the ones folded meanwhile. Before, it cut as many steps as it had saved off the front of the trimmed log,
    which were then missing when another replica's save had to be merged (and were not counted as dropped)."""
    from gateway import detection_live

    monkeypatch.setattr(detection_live, "MAX_OPS", 4)
    rnd = random.Random(4)

    class SlowStore(MemoryStore):
        async def swap_client_state(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
            await asyncio.sleep(0.05)
            return await super().swap_client_state(*args, **kwargs)

    store = SlowStore()
    lives = LiveStates(engine(), 3600.0)
    now = 100.0

    def one() -> object:
        nonlocal now
        now += 1
        lv = lives.begin("c", None)
        lives.fold_request(lv, extract("/v1/chat/completions", chat(fill(rnd)), now), now)
        return lv

    first = [one() for _ in range(3)]
    saver = asyncio.create_task(lives.done(store, first[0], 3))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # the save of 3 steps is on its way
    later = [one() for _ in range(3)]  # 6 steps: the 2 oldest (being saved) are trimmed
    await saver
    # another replica saves its own request on top of what was written
    stored = (await store.hot_path(_probe("c"))).detector_state
    assert stored is not None and envelope.decode(stored).requests_seen == 3
    other = engine().observe(stored, extract("/v1/chat/completions", chat(fill(rnd)), now + 1), now + 1).state
    await store.save_client_state("c", other, 0, 0.0, 3600.0)
    for lv in [*first[1:], *later]:
        await lives.done(store, lv, 3)  # type: ignore[arg-type]
    final = (await store.hot_path(_probe("c"))).detector_state
    assert final is not None and envelope.decode(final).requests_seen == 3 + 1 + 3, "every request once"
    assert lives.merges == 1 and len(lives) == 0


class PoisonRequestEngine(Engine):
    """Fault injection: the engine itself raises on one kind of request (max_tokens=7), whatever the state."""

    def fold_request(self, pending, feats, now, hold=False, weights=None, plan=None):  # type: ignore[no-untyped-def,override]
        if feats.max_tokens == 7:
            raise OverflowError("engine bug on this request")
        return super().fold_request(pending, feats, now, hold, weights, plan)


async def test_a_request_the_engine_fails_on_leaves_the_clients_state_alone(tmp_path: Path) -> None:
    """An unscored request (the engine failed on it, from the client's state and from a fresh one) changes
    nothing: before, the failed restart left a fresh working copy behind, which the client's next request
    folded into and saved over its stored state (a blocked client was reset by one such request)."""
    from prometheus_client import CollectorRegistry

    from gateway.hooks import ResponseFacts
    from gateway.principal import Principal
    from gateway.store.base import AdmitRequest
    from gateway.telemetry.metrics import Metrics
    from tests.detection_gateway.test_detection import CHAT, PARAMS, make, probe

    base = Engine.from_params(PARAMS)
    eng = PoisonRequestEngine(PARAMS, base.detectors, base.weights, base.tiers, base.inherit)
    h, alerts = await make(Metrics(CollectorRegistry()), tmp_path, eng, detection={"fail_policy": "allow"})
    for i in range(25):
        await h.send("att", probe(i), 1000.0 + i)
    rec = await h.store.get_client("att")
    assert rec is not None and rec.tier == 3  # blocked
    res = await h.store.hot_path(AdmitRequest("att", 10, h.policy.limits_by_tier))
    s = h.det.observe(Principal("att"), CHAT, {**probe(0), "max_tokens": 7}, res.detector_state, res.tier, 1030.0)
    assert s.outcome.unscored
    await s.account(h.store, ResponseFacts(status=200))
    assert len(h.det.live) == 0, "no copy left behind"
    tier, _ = await h.send("att", probe(30), 1031.0)
    assert tier == 3
    st = (await h.store.hot_path(AdmitRequest("att", 10, h.policy.limits_by_tier))).detector_state
    assert st is not None and envelope.decode(st).requests_seen == 26, "the history is kept"
    rec = await h.store.get_client("att")
    assert rec is not None and rec.tier == 3, "still blocked"
    await alerts.close()


async def test_two_replicas_random_interleaving_on_a_real_redis(redis_url: str) -> None:
    """Two replicas' working copies over one redis-server, requests overlapping at random (responses and links
    folded after random delays, saves meeting in the Lua compare-and-swap): every request is in the final
    state exactly once and both tables empty."""
    from gateway.config import StoreConfig
    from gateway.store.redis import RedisStore

    cfg = StoreConfig(kind="redis", url=redis_url, timeout_ms=2000)
    sa, sb = RedisStore.from_config(cfg), RedisStore.from_config(cfg)
    reps = [(LiveStates(engine(), 3600.0), sa), (LiveStates(engine(), 3600.0), sb)]
    rnd = random.Random(11)
    n = 120

    async def one(i: int) -> None:
        lives, store = reps[i % 2]
        await asyncio.sleep(rnd.random() * 0.05)
        stored = (await store.hot_path(_probe("cx"))).detector_state
        lv = lives.begin("cx", stored)
        now = 1000.0 + i
        lives.fold_request(lv, extract("/v1/chat/completions", chat(fill(rnd)), now), now)
        await asyncio.sleep(rnd.random() * 0.02)
        lives.fold_response(lv, RESP, now)
        if i % 3 == 0:
            lives.fold_links(lv, {"peer": 3}, now, {"peer": 0.4})
        await lives.done(store, lv, 3)

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
        final = (await sa.hot_path(_probe("cx"))).detector_state
        assert final is not None and envelope.decode(final).requests_seen == n
        assert all(len(lv) == 0 for lv, _ in reps)
        assert sum(lv.merges for lv, _ in reps) > 0, "the replicas' saves met"
    finally:
        await sa.close()
        await sb.close()
