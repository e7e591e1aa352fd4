"""Review session 15 (rate limits): each test failed on the code before its fix (see
/work/team/docs/review-session15-ratelimit.md)."""

from __future__ import annotations

import asyncio
import math
import random

import aiohttp
import pytest
import redis.asyncio as aredis

from gateway.config import ConfigError, StoreConfig, parse_config
from gateway.ratelimit import MAX_AHEAD_US, admit, estimate_tokens, interval_us, reconcile_tat
from gateway.store.base import AdmitRequest, Limits, RateDecision, StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, settled, sim_backend

# --- 1. a completions batch reserves max_tokens for every prompt ------------------------------------------


def test_a_completions_batch_reserves_its_completion_budget_for_every_prompt() -> None:
    # vLLM generates n completions per prompt of a batch: 1 000 prompts x 50 tokens is 50 000 tokens, not the
    # 128 x 50 that capping the whole multiplier at MAX_N reserved (an unbounded under-reservation: the batch
    # length is bounded only by the body size)
    body = {"prompt": ["ab"] * 1000, "max_tokens": 50}
    # (the prompt part: a token per prompt at least, 1 000 here, more than "ab" x 1 000 / 4 characters)
    assert estimate_tokens("/v1/completions", body) == 1000 + 50 * 1000
    assert estimate_tokens("/v1/completions", {**body, "n": 2}) == 1000 + 50 * 1000 * 2
    ids = {"prompt": [[1, 2]] * 300, "max_tokens": 10, "best_of": 3}
    assert estimate_tokens("/v1/completions", ids) == 300 * 2 + 10 * 300 * 3
    # vLLM's best_of is forwarded on chat too and generates best_of sequences there as well
    chat = {"messages": [{"role": "user", "content": "abcd"}], "max_tokens": 10, "best_of": 4, "n": 2}
    assert estimate_tokens("/v1/chat/completions", chat) == 1 + 4 + 10 * 4


async def test_a_completions_batch_is_admitted_against_its_whole_budget() -> None:
    limits = {"requests_per_minute": 6000, "tokens_per_minute": 6000, "burst_tokens": 20_000}
    async with sim_backend() as sim, running_gateway(
            gateway_config(sim.url, limits={"default": limits, "suspicious": limits})) as gw:
        body = {"model": "sim", "prompt": ["ab"] * 300, "max_tokens": 50}  # 15 000 completion tokens at most
        async with aiohttp.ClientSession() as s, s.post(
                gw.url + "/v1/completions", json=body,
                headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
            await r.read()
            assert r.status == 200
            remaining = int(r.headers["x-ratelimit-remaining-tokens"])
        assert remaining <= 20_000 - 15_000, remaining  # was 13 450: only 128 x 50 reserved


# --- 2. a request refused because screening failed gives its reservation back ----------------------------


async def _chat(gw: GatewayHandle, max_tokens: int) -> int:
    body = {"model": "sim", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
        await r.read()
        return r.status


async def test_a_request_refused_because_screening_failed_gives_its_reservation_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"requests_per_minute": 6000, "tokens_per_minute": 12_000, "burst_tokens": 10_000}  # 5 ms/token
    cfg = gateway_config("http://127.0.0.1:9", limits={"default": limits, "suspicious": limits},
                         detection={"enabled": True, "fail_policy": "block"})
    async with sim_backend() as sim:
        cfg["models"][0]["backends"][0]["url"] = sim.url
        async with running_gateway(cfg) as gw:
            assert gw.ctx.detection is not None

            def broken(*args: object, **kwargs: object) -> None:
                raise MemoryError("detection bug")  # fault injection: a failure detection did not isolate

            with monkeypatch.context() as m:
                m.setattr(gw.ctx.detection, "observe", broken)
                assert await _chat(gw, 9_000) == 403  # fail_policy block: screening_failed
            await settled(gw)
            # the refused request generated nothing: without the refund its 9 000-token reservation holds the
            # bucket for ~45 s and this request is a 429
            assert await _chat(gw, 9_000) == 200


# --- 3. an absurd usage is charged (capped), not an exception, on every store -----------------------------

SLOW = Limits(requests_per_minute=60, tokens_per_minute=60, burst_requests=10, burst_tokens=3000)  # T = 1 s


@pytest.mark.parametrize("usage", [10**400, -(10**400)], ids=["huge", "huge-negative"])
async def test_an_absurd_usage_is_charged_capped_on_every_store(store: StateStore, usage: int) -> None:
    # A backend's usage is any JSON integer (usage.Usage keeps ints of up to 4 300 digits). The Lua port reads
    # it as an infinite double and caps the debt at MAX_AHEAD_US; the memory store (and failure mode `local`)
    # raised OverflowError from int * float, so the usage was never charged there, and settle logged a traceback.
    assert (await store.hot_path(AdmitRequest("huge", 10, (SLOW,), 60.0))).allowed
    await store.reconcile_tokens("huge", 10, usage, SLOW)
    res = await store.hot_path(AdmitRequest("huge", 1, (SLOW,), 60.0))
    if usage > 0:
        assert not res.tokens.allowed and res.tokens.retry_after_s > MAX_AHEAD_US / 1e6 / 2  # ≈ 35.7 years
    else:  # a negative usage counts as 0: the 10 reserved are given back, nothing more
        assert res.tokens.allowed and res.tokens.remaining == 3000 - 1


# --- parity: the memory store and the Lua scripts on one sequence, reconciliations included --------------

PARITY_TIERS = (
    Limits(requests_per_minute=6000, tokens_per_minute=60_000, burst_requests=3, burst_tokens=200),  # 10 ms, 1 ms
    Limits(requests_per_minute=700, tokens_per_minute=7_000, burst_requests=2, burst_tokens=50),  # fractional T
)


def _same(a: RateDecision, b: RateDecision) -> None:
    assert (a.allowed, a.limit, a.remaining) == (b.allowed, b.limit, b.remaining)
    # the script reports whole microseconds: reset floored, retry-after rounded up
    assert a.reset_s == pytest.approx(math.floor(b.reset_s * 1e6 + 1e-6) / 1e6, abs=1.5e-6)
    assert a.retry_after_s == pytest.approx(math.ceil(b.retry_after_s * 1e6 - 1e-6) / 1e6, abs=1.5e-6)


@pytest.mark.parametrize("seed", [7, 8])
async def test_memory_and_redis_agree_on_admissions_and_reconciliations(redis_url: str, seed: int) -> None:
    """The memory store runs at the Redis clock readings (its clock is injected): the same decisions and
    numbers request by request, with give-backs, extra charges, negative usage and tier switches between."""
    rng = random.Random(seed)
    rs = RedisStore.from_config(StoreConfig(kind="redis", url=redis_url, timeout_ms=2000))
    raw = aredis.Redis.from_url(redis_url)
    clock = [0]
    mem = MemoryStore(clock=lambda: clock[0])
    cid, gen, tier = f"parity-{seed}-0", 0, 0
    tat_r = tat_k = 0.0  # the TATs as the Python GCRA has them (for the reconciliation bracket)
    pending: list[tuple[int, int]] = []  # (reserved, tier admitted at)
    kinds = set()

    async def redis_now() -> int:
        s, us = await raw.time()
        return int(s) * 1_000_000 + int(us)

    try:
        for i in range(160):
            if i % 50 == 25:
                tier = 1 - tier
                for st in (rs, mem):
                    await st.save_client_state(cid, b"", tier, 0.0, 60)
            if pending and rng.random() < 0.4:
                reserved, at = pending.pop(rng.randrange(len(pending)))
                actual = rng.choice([0, reserved // 2, reserved, reserved * 3 + 7, -5])
                lim = PARITY_TIERS[at]
                t0 = await redis_now()
                await rs.reconcile_tokens(cid, reserved, actual, lim)
                t1 = await redis_now()
                got = await raw.hget(rs.client_keys(cid)[0], "k")
                delta = max(0, actual) - reserved
                lo = reconcile_tat(tat_k, t0, delta, interval_us(lim.tokens_per_minute))
                hi = reconcile_tat(tat_k, t1, delta, interval_us(lim.tokens_per_minute))
                if got is None:  # the bucket had expired: a give-back is a no-op on both stores
                    assert delta <= 0 and hi <= t1
                    kinds.add("expired")
                    continue
                k = float(got)
                assert lo <= k <= hi, (lo, k, hi)
                if lo == hi:  # independent of the clock reading: the memory store must land on the same TAT
                    clock[0] = t1
                    await mem.reconcile_tokens(cid, reserved, actual, lim)
                    tat_k = k
                    kinds.add("exact")
                else:  # clamped at "now", a reading the test cannot match exactly: go on with a fresh client
                    gen += 1
                    cid, tat_r, tat_k, pending = f"parity-{seed}-{gen}", 0.0, 0.0, []
                    for st in (rs, mem):
                        await st.save_client_state(cid, b"", tier, 0.0, 60)
                    kinds.add("clamped")
                continue
            tokens = rng.choice([1, 5, 40, 120, 260])  # 260 exceeds both token bursts
            res = await rs.hot_path(AdmitRequest(cid, tokens, PARITY_TIERS, 60.0))
            clock[0] = round(res.now * 1e6)
            m = await mem.hot_path(AdmitRequest(cid, tokens, PARITY_TIERS, 60.0))
            assert (m.allowed, m.tier) == (res.allowed, res.tier) == (res.allowed, tier)
            _same(res.requests, m.requests)
            _same(res.tokens, m.tokens)
            py = admit(tat_r, tat_k, clock[0], tokens, PARITY_TIERS[tier])
            assert py.allowed == res.allowed
            if res.allowed:
                tat_r, tat_k = py.tat_requests_us, py.tat_tokens_us
                pending.append((tokens, tier))
            kinds.add("admit" if res.allowed else "reject")
            if rng.random() < 0.3:
                await asyncio.sleep(rng.choice([0.001, 0.004, 0.012]))
    finally:
        await rs.close()
        await raw.aclose()
    assert {"admit", "reject", "exact"} <= kinds, kinds


# --- 4. a non-finite rate is a configuration error, not a crash at start-up or a 500 per request ----------


DEFAULT = {"requests_per_minute": 600, "tokens_per_minute": 200_000}
MODELS = [{"name": "sim", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]


@pytest.mark.parametrize(("field", "extra"), [
    ("requests_per_minute", {}), ("requests_per_minute", {"burst_requests": 5}),
    ("tokens_per_minute", {"burst_tokens": 1000})])
def test_a_non_finite_rate_is_refused_naming_the_field(field: str, extra: dict[str, int]) -> None:
    # `.inf` is YAML's way to say "unlimited". Without a burst the policy crashed at start-up (int(inf):
    # `ipgate check` said "internal error: OverflowError"); with one, T = 0 and every request of the class was
    # a 500 (ZeroDivisionError in gcra).
    plan = {"requests_per_minute": 600, "tokens_per_minute": 200_000, **extra, field: float("inf")}
    with pytest.raises(ConfigError, match=rf"limits\.enterprise\.{field}: .*finite"):
        parse_config({"limits": {"default": DEFAULT, "enterprise": plan}, "models": MODELS})
    with pytest.raises(ConfigError, match=rf"limits\.enterprise\.{field}"):
        parse_config({"limits": {"default": DEFAULT, "enterprise": {**plan, field: float("nan")}}, "models": MODELS})


# --- 5. tool definitions and tool-call arguments are prompt too ------------------------------------------


def test_tool_definitions_and_tool_call_arguments_count_as_prompt() -> None:
    # The estimate is what an aborted stream or a failed request is charged for its prompt ("huge prompts must
    # not cost next to nothing"): the same text moved from a message into a tool description cost nothing.
    text = "x" * 40_000
    in_message = {"messages": [{"role": "user", "content": text}], "max_tokens": 1}
    tool = {"type": "function", "function": {"name": "f", "description": text, "parameters": {"type": "object"}}}
    in_tools = {"messages": [{"role": "user", "content": "hi"}], "tools": [tool], "max_tokens": 1}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": text}}
    in_call = {"messages": [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": None, "tool_calls": [call]},
                            {"role": "tool", "tool_call_id": "c1", "content": "ok"}], "max_tokens": 1}
    full = estimate_tokens("/v1/chat/completions", in_message)
    assert estimate_tokens("/v1/chat/completions", in_tools) >= full
    assert estimate_tokens("/v1/chat/completions", in_call) >= full
    # the legacy `functions` field too, and a schema nested deeper than the recursion limit does not raise
    deep: object = "y" * 400
    for _ in range(5000):
        deep = {"p": deep}
    legacy = {"messages": [], "functions": [{"name": "f", "parameters": deep}], "max_tokens": 1}
    assert estimate_tokens("/v1/chat/completions", legacy) >= 100


async def test_a_stream_cut_mid_way_is_charged_the_prompt_in_its_tool_definitions() -> None:
    # tests/gateway/test_soak_findings.py's cut stream, with the ~10 000-token prompt in a tool description
    limits = {"requests_per_minute": 6000, "tokens_per_minute": 600, "burst_tokens": 40_000}  # 10 tokens/s
    tool = {"type": "function", "function": {"name": "f", "description": "word " * 8000,
                                             "parameters": {"type": "object", "properties": {}}}}
    body = {"model": "sim", "stream": True, "max_tokens": 50, "tools": [tool],
            "messages": [{"role": "user", "content": "hi"}]}
    async with sim_backend(cut_after=3) as sim, running_gateway(
            gateway_config(sim.url, limits={"default": limits, "suspicious": limits})) as gw:
        remaining = []
        for _ in range(2):
            async with aiohttp.ClientSession() as s, s.post(
                    gw.url + "/v1/chat/completions", json=body,
                    headers={"Authorization": f"Bearer {gw.token('alice')}"}) as r:
                assert r.status == 200
                remaining.append(int(r.headers["x-ratelimit-remaining-tokens"]))
                assert b"[DONE]" not in await r.read()  # the cut reached the client
            await settled(gw)
        charged = remaining[0] - remaining[1]  # what the first request finally cost (minus a few refilled)
        assert charged >= 9_900, charged  # was 9: "hi" and the streamed pieces


def test_responses_tool_definitions_count_as_prompt() -> None:
    """A prompt moved into a Responses request's tool definitions is charged like one in chat's ``tools``."""
    from gateway.proxy.responses_request import responses_view
    from gateway.ratelimit import estimate_tokens

    tool = {"type": "function", "name": "f", "description": "x" * 40_000, "parameters": {"type": "object"}}
    body = {"model": "m", "input": "hi", "tools": [tool], "max_output_tokens": 1}
    assert estimate_tokens("/v1/responses", responses_view(body)) >= 10_000


def test_every_input_of_a_batch_reserves_at_least_one_token() -> None:
    """Characters / 4 over a whole batch reserved 1 token for 2 048 empty embeddings inputs (the backend
    embeds every one, special tokens included): a client's burst queued far more work than it was charged."""
    from gateway.ratelimit import estimate_parts

    assert estimate_parts("/v1/embeddings", {"input": [""] * 2048})[0] == 2048
    assert estimate_parts("/v1/embeddings", {"input": ["a"] * 2048})[0] == 2048
    assert estimate_parts("/v1/embeddings", {"input": [[1, 2]] * 10})[0] == 20  # token ids: counted exactly
    assert estimate_parts("/v1/completions", {"prompt": ["a"] * 100, "max_tokens": 1})[0] == 100
    assert estimate_parts("/v1/embeddings", {"input": "x" * 4000}) == (1000, 0)
    assert estimate_parts("/v1/embeddings", {"input": [1, 2, 3]}) == (3, 0)
