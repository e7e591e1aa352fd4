"""Defects found by the soak and chaos run (bench/soak.py, /work/team/docs/soak-session6.md), each pinned by a
test that fails without its fix."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from gateway.detection import GatewayDetection
from gateway.store.resilient import ResilientStore
from tests.support.harness import (
    GatewayHandle,
    eventually,
    gateway_config,
    running_gateway,
    settled,
    sim_backend,
)

# 10 tokens/s: the refill between two requests is a few tokens, so the bucket shows what the first one cost
LIMITS = {"requests_per_minute": 6000, "tokens_per_minute": 600, "burst_tokens": 40_000}
PROMPT = "word " * 8000  # ~10 000 tokens by the gateway's estimate (chars / 4)


async def _stream(gw: GatewayHandle) -> tuple[int, bytes]:
    body = {"model": "sim", "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": PROMPT}]}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", data=json.dumps(body),
            headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
        assert r.status == 200
        return int(r.headers["x-ratelimit-remaining-tokens"]), await r.read()


async def test_a_stream_cut_mid_way_is_charged_its_prompt_too() -> None:
    """A stream that ends early (upstream cut, idle timeout, client gone) without a usage chunk was charged
    only the tokens streamed: the prompt the backend had read was refunded. A client could send huge prompts
    and drop each stream after its first chunk for almost nothing."""
    async with sim_backend(cut_after=3) as sim, running_gateway(
            gateway_config(sim.url, limits={"default": LIMITS, "suspicious": LIMITS})) as gw:
        r1, body = await _stream(gw)
        assert b'"error"' in body and b"[DONE]" not in body  # the cut reached the client as an error
        await settled(gw)
        r2, _ = await _stream(gw)  # reserves exactly what the first one reserved
        charged = r1 - r2  # what the first request finally cost (minus a few refilled tokens)
        assert 9_900 <= charged <= 10_100, charged
        assert sim.stats.cut == 2


async def test_watermark_recipients_are_written_again_after_redis_came_back_empty(
        redis_process: Any, tmp_path: Path) -> None:
    """The gateway remembers which clients it has recorded as watermark recipients and writes each once. A
    Redis that comes back from an outage without its data (restarted without persistence) lost them: the
    gateway must record its clients again, or verifying a leak without a client list finds nobody."""
    secret = tmp_path / "wm.secret"
    secret.write_text("soak-watermark-secret-0123456789\n")
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url, store={"kind": "redis", "url": redis_process.url, "failure_mode": "local", "timeout_ms": 100,
                            "health_interval_s": 0.05},
            watermark={"enabled": True, "scheme": "lexical", "secret_file": str(secret)})
        async with running_gateway(cfg) as gw:
            store = gw.ctx.store
            assert isinstance(store, ResilientStore)
            client = gw.openai_client("alice")

            async def ask() -> None:
                await client.chat.completions.create(
                    model="sim", max_tokens=60, messages=[{"role": "user", "content": "Tell me a story."}])

            await ask()
            await settled(gw)
            assert "alice" in await store.recipients()
            redis_process.kill()
            await ask()  # served by failure_mode=local while Redis is away
            redis_process.restart()  # back, empty
            await eventually(lambda: not store.degraded, what="store recovery")
            await ask()
            await settled(gw)
            await eventually(lambda: not store._pending, what="recipient replay")
            assert "alice" in await store.recipients()
            await client.close()


async def test_overlapping_requests_leave_no_dead_entries_in_the_decoded_state_cache() -> None:
    """Two overlapping requests of one client both derive a detector state from the same stored one; only
    one of the two stays in the store. The other's decoded copy used to stay in the engine's cache (16 KB
    each) until 2048 of them filled it: ~32 MB of dead state for a handful of clients in the soak run."""
    async with sim_backend() as sim:
        await _overlapping(sim.url)


async def _overlapping(url: str) -> None:
    big = {"requests_per_minute": 10**6, "tokens_per_minute": 10**9}
    cfg = gateway_config(url, detection={"enabled": True}, limits={"default": big, "suspicious": big},
                         policy={"flag_tier": "normal", "tiers": [{"name": "normal"}]})  # scored; never refused
    async with running_gateway(cfg) as gw:
        assert gw.ctx.detection is not None
        clients = [gw.openai_client(f"c{i}") for i in range(3)]

        async def ask(i: int, k: int) -> None:
            await clients[i].chat.completions.create(
                model="sim", max_tokens=8, messages=[{"role": "user", "content": f"question {k} of {i}"}])

        for k in range(40):
            await asyncio.gather(*(ask(i, 2 * k + j) for i in range(3) for j in range(2)))
            await settled(gw)
        assert isinstance(gw.ctx.detection, GatewayDetection)
        cache = gw.ctx.detection.engine._decoded
        assert len(cache) <= 2 * len(clients), len(cache)  # one live state per client, a late sibling at most
        assert len(cache._heir) <= len(cache) and len(cache._parent_of) <= len(cache)
        for c in clients:
            await c.close()
