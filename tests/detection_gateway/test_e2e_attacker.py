"""End to end through the REAL gateway with the official ``openai`` client: a scripted logit-bias prober and a
template harvester are hardened, throttled (429) and then blocked (403), while a concurrent benign client on
real prompts is untouched; the alerts reach every sink (JSONL file, Redis stream, webhook that fails twice
first), the shared alert list read by the admin API, and the metrics. A second test runs two gateways on one
Redis and checks that decisions and the alert rate limit are shared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from pathlib import Path

import openai
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession

from detectors.combiner import CombinerParams, default_combiner_path
from gateway.alerts.model import Alert
from tests.support.harness import gateway_config, running_gateway, sim_backend

from .conftest import WebhookReceiver

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# These tests run the SHIPPED detector configuration (detectors/data/combiner.json, all detectors on): what a user
# gets. Their assertions are about the gateway's actions (served, hardened, 429, 403, alerts), with bounds
# loose enough (blocked within 60 requests) that a refit of the combiner does not break them.


def benign_prompts(n: int, seed: int = 11) -> list[str]:
    rows = [json.loads(x) for x in (DATA / "prompts.jsonl").read_text(encoding="utf-8").split("\n") if x]
    texts = [r["turns"][0] for r in rows if r["category"] != "harmless-redteam" and len(r["turns"][0]) < 2000]
    return random.Random(seed).sample(texts, n)


async def attacker(client: openai.AsyncOpenAI) -> list[tuple[int, int | None]]:
    """Carlini-style logit sweep: same prompt, 50 new biased tokens per call, top_logprobs=20, max_tokens=1.

    Returns (status, top_logprobs served) per request; stops at the first 403 (or after 150 requests)."""
    out: list[tuple[int, int | None]] = []
    for i in range(150):
        try:
            r = await client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": "Say hi"}], max_tokens=1, logprobs=True,
                top_logprobs=20, logit_bias={str(1000 + 50 * i + j): 100 for j in range(50)},
                extra_headers={"X-Request-Id": f"probe-{i}"},
            )
        except openai.RateLimitError:
            out.append((429, None))
            await asyncio.sleep(0.03)
            continue
        except openai.PermissionDeniedError as e:
            assert e.body is not None and "blocked" in str(e.body)
            out.append((403, None))
            break
        lp = r.choices[0].logprobs
        served = len(lp.content[0].top_logprobs) if lp and lp.content else 0
        out.append((200, served))
    return out


TOPICS = ["photosynthesis", "binary search", "the French revolution", "inflation", "TCP handshakes", "vaccines",
          "black holes", "supply chains", "the immune system", "compilers", "plate tectonics", "jazz"]


async def harvester(client: openai.AsyncOpenAI, seed: int = 3) -> list[int]:
    """A distillation pipeline: one prompt template, slots filled in, long chain-of-thought answers asked for.

    Returns the status of each request; stops at the first 403 (or after 150 requests)."""
    rnd = random.Random(seed)
    out: list[int] = []
    for _ in range(150):
        text = (f"You are an expert tutor. Explain {rnd.choice(TOPICS)} to a student in grade {rnd.randint(5, 12)}."
                f" Think step by step and show your full reasoning, then write {rnd.randint(3, 9)} quiz questions.")
        try:
            await client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": text}], max_tokens=300)
        except openai.RateLimitError:
            out.append(429)
            await asyncio.sleep(0.03)
            continue
        except openai.PermissionDeniedError:
            out.append(403)
            break
        out.append(200)
    return out


async def benign(client: openai.AsyncOpenAI, prompts: list[str]) -> list[tuple[int, str]]:
    out = []
    for p in prompts:
        r = await client.chat.completions.create(
            model="sim", messages=[{"role": "user", "content": p}], max_tokens=200, temperature=0.7)
        out.append((200, r.choices[0].message.content or ""))
        await asyncio.sleep(0.02)
    return out


@pytest.mark.slow
async def test_attacker_hardened_throttled_blocked_benign_untouched_alerts_everywhere(
    tmp_path: Path, redis_url: str, webhook: WebhookReceiver
) -> None:
    webhook.fail_first = 2
    jsonl = tmp_path / "alerts" / "alerts.jsonl"
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url,
            detection={"enabled": True},
            limits={"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
                    # throttle/block tiers: 10 requests/s sustained, a burst of 3
                    "suspicious": {"requests_per_minute": 600, "tokens_per_minute": 1_000_000,
                                   "burst_requests": 3}},
            alerts={"min_interval_s": 60, "sinks": [
                {"kind": "jsonl", "path": str(jsonl)},
                {"kind": "redis_stream", "url": redis_url, "stream": "e2e:alerts"},
                {"kind": "webhook", "url": webhook.url, "backoff_base_s": 0.02, "max_retries": 4},
            ]},
        )
        async with running_gateway(cfg) as gw:
            bad, harv, good = gw.openai_client("mallory"), gw.openai_client("harvey"), gw.openai_client("alice")
            att, hv, ben = await asyncio.gather(attacker(bad), harvester(harv), benign(good, benign_prompts(25)))
            for c in (bad, harv, good):
                await c.close()

            # --- what the attacker saw: full service, then hardened, then 429s, then 403 ---------------------
            statuses = [s for s, _ in att]
            served = [n for s, n in att if s == 200]
            assert statuses[0] == 200 and served[0] == 20, att[:3]  # tier 0: the request passes as sent
            assert min(served) <= 1, served  # throttle tier: top_logprobs capped to 1 (request hardening)
            assert 429 in statuses, statuses  # throttle tier: the suspicious tier's limits bind
            assert statuses[-1] == 403, statuses  # block tier
            assert len(statuses) <= 60, f"blocked only after {len(statuses)} requests"

            # --- the template harvester: served, then throttled, then blocked -------------------------------
            assert hv[0] == 200 and 429 in hv and hv[-1] == 403, hv
            assert len(hv) <= 100, f"harvester blocked only after {len(hv)} requests"

            # --- the benign client noticed nothing ---------------------------------------------------------
            assert len(ben) == 25 and all(s == 200 and text for s, text in ben)
            rec = await gw.ctx.store.get_client("alice")
            assert rec is not None and rec.tier == 0
            mal = await gw.ctx.store.get_client("mallory")
            assert mal is not None and mal.tier == 3  # shared through the store: every replica reads this

            # --- alerts reached every sink -------------------------------------------------------------------
            await asyncio.sleep(0.1)  # let the background accounting of the last requests finish
            assert gw.ctx.alerts is not None
            assert await gw.ctx.alerts.flush(10.0)
            lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
            assert {a["client"] for a in lines} == {"mallory", "harvey"}
            assert {(a["client"], a["tier"]) for a in lines} >= {("mallory", "block"), ("harvey", "block")}
            hblk = next(a for a in lines if a["tier"] == "block" and a["client"] == "harvey")
            assert "templates" in hblk["detectors"] and any("template" in r for r in hblk["reasons"])
            assert hblk["evidence"]["examples"][0].startswith("You are an expert tutor. Explain")
            blk = next(a for a in lines if a["tier"] == "block" and a["client"] == "mallory")
            enter = CombinerParams.from_json(default_combiner_path().read_text()).tiers.enter
            assert blk["tenant"] is None and blk["score"] >= enter[-1] and blk["reasons"]  # the block threshold
            assert any("logit_bias" in r for r in blk["reasons"])
            assert blk["evidence"]["examples"] == ["Say hi"] and blk["evidence"]["redacted"] is True
            rids = blk["evidence"]["request_ids"]  # the caller's X-Request-Id, kept as evidence
            assert 1 <= len(rids) <= 5 and all(r.startswith("probe-") for r in rids)
            # The last one is the request that raised the block. Every later request was refused: 429 while
            # the (blocked) client's bucket was empty — the rate limit answers first — then 403.
            k = int(rids[-1].removeprefix("probe-"))
            assert rids == [f"probe-{i}" for i in range(k - len(rids) + 1, k + 1)]
            assert set(statuses[k + 1:]) <= {429, 403}, (k, statuses)

            r = aioredis.Redis.from_url(redis_url)
            try:
                entries = await r.xrange("e2e:alerts")
            finally:
                await r.aclose()
            assert [json.loads(f[b"alert"])["id"] for _, f in entries] == [a["id"] for a in lines]

            assert webhook.attempts == len(lines) + 2  # the first two POSTs failed and were retried
            assert [a["id"] for a in webhook.received] == [a["id"] for a in lines]

            async with ClientSession() as s:
                h = {"Authorization": f"Bearer {gw.admin_token}"}
                async with s.get(f"{gw.admin_url}/admin/alerts?limit=50", headers=h) as resp:
                    api = await resp.json()
                assert resp.status == 200
                assert {a["client"] for a in api["alerts"]} == {"mallory", "harvey"}
                assert [a["id"] for a in api["alerts"]] == [a["id"] for a in reversed(lines)]  # newest first
                async with s.get(f"{gw.admin_url}/admin/alerts") as resp:
                    assert resp.status == 401  # the admin API is not public
                async with s.get(f"{gw.admin_url}/metrics") as resp:
                    metrics = await resp.text()
            for sink in ("jsonl", "redis_stream", "webhook"):
                assert f'ipgate_alerts_total{{outcome="delivered",sink="{sink}"}}' in metrics
            assert 'ipgate_alerts_total{outcome="retried",sink="webhook"} 2.0' in metrics
            assert 'ipgate_detection_tier_total{tier="block"}' in metrics

            # --- an administrator allowlists the client: the block lifts at once ------------------------------
            await gw.ctx.store.set_override("mallory", "allow", None, 3600)
            again = gw.openai_client("mallory")
            r2 = await again.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": "Say hi"}], max_tokens=1, logprobs=True,
                top_logprobs=20, logit_bias={"5": 100})
            await again.close()
            lp = r2.choices[0].logprobs
            assert lp is not None and lp.content and len(lp.content[0].top_logprobs) == 20  # tier 0: unhardened


@pytest.mark.slow
async def test_decisions_are_shared_across_replicas_on_one_redis(tmp_path: Path, redis_url: str) -> None:
    """Two gateway processes' worth of state (two contexts, two listeners) on one Redis: the attacker probes
    replica A until it is blocked; replica B refuses it from its very first request, and each replica's
    dispatcher respects the other's per-client alert rate limit (one alert per tier in all)."""
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url,
            store={"kind": "redis", "url": redis_url, "failure_mode": "closed"},
            detection={"enabled": True},
            limits={"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
                    "suspicious": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}},
            alerts={"min_interval_s": 600, "sinks": []},
        )
        async with running_gateway(cfg) as a, running_gateway(cfg) as b:
            ca, cb = a.openai_client("mallory"), b.openai_client("mallory")
            att = await attacker(ca)
            assert att[-1][0] == 403, att
            await asyncio.sleep(0.1)  # the last request's accounting runs in the background
            with pytest.raises(openai.PermissionDeniedError):
                await cb.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hello"}])
            # B's own view of the client, through the shared store: same tier, and its dispatcher would be
            # rate limited for an alert A already sent.
            rec = await b.ctx.store.get_client("mallory")
            assert rec is not None and rec.tier == 3
            assert b.ctx.alerts is not None and a.ctx.alerts is not None
            await a.ctx.alerts.flush()
            alerts = [json.loads(x) for x in await b.ctx.store.recent_alerts(10)]
            assert alerts[0]["tier"] == "block"
            assert len({x["tier"] for x in alerts}) == len(alerts)  # one alert per tier, not one per replica
            dup = dataclasses.replace(Alert.from_dict(alerts[0]), id=Alert.new_id(), detectors=("other",))
            assert not await b.ctx.alerts.submit(dup)  # replica B: A holds the (client, block) alert lease
            await ca.close()
            await cb.close()

