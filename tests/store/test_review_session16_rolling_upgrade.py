"""Review session 16 (rolling upgrade): replicas of two builds, or of two configurations, share one Redis for
the minutes of an upgrade. Each test failed on the code before its fix (see
/work/team/docs/review-session16-rolling-upgrade.md)."""

from __future__ import annotations

import asyncio
import base64
import time
import zlib
from typing import Any

import aiohttp
import pytest
import redis

from detectors import state as envelope
from detectors.combiner import CombinerParams, TierThresholds, default_combiner_path
from detectors.engine import Engine
from detectors.features import extract
from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, settled, sim_backend

T0 = 1_790_000_000.0


def _engine(tiers: TierThresholds | None = None) -> Engine:
    return Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text()), tiers=tiers)


def _chat(text: str) -> dict[str, object]:
    return {"model": "sim", "max_tokens": 8, "messages": [{"role": "user", "content": text}]}


def _state(tier: int, version: int = envelope.VERSION, tiers: TierThresholds | None = None) -> bytes:
    """A state as a replica writes it: a few requests folded in, then its tier (and version byte) set."""
    eng, data = _engine(tiers), None
    for i in range(3):
        data = eng.observe(data, extract("/v1/chat/completions", _chat(f"question number {i}"), T0 + i),
                           T0 + i).state
    assert data is not None
    env = envelope.decode(data)
    env.tier = tier
    out = bytearray(envelope.encode(env))
    out[2] = version
    return bytes(out)


async def _ask(gw: GatewayHandle, client: str) -> int:
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions", json=_chat("what is the capital of France?"),
            headers={"Authorization": f"Bearer {gw.token(client)}"}) as r:
        await r.read()
        return r.status


# --- 1. a state this build cannot read keeps its tier --------------------------------------------------------


async def test_a_state_of_a_newer_format_keeps_the_clients_tier(redis_url: str) -> None:
    # The next build writes its envelope as version 2 (every version keeps magic, version, requests seen and
    # tier as its first eight bytes). This build cannot read the rest and starts the evidence afresh; it
    # started the TIER afresh too and saved 0 over the other replica's 2: a throttled client was back to
    # normal after one request served here.
    newer = _state(2, version=envelope.VERSION + 1)
    assert envelope.header_tier(newer) == 2  # what the gateway reports as the detector's own (alerts, merges)
    store = RedisStore(redis_url, timeout_s=2.0)
    try:
        await store.save_client_state("carol", newer, 2, 0.9, 3600)
        cfg = gateway_config("http://127.0.0.1:9", store={"kind": "redis", "url": redis_url, "timeout_ms": 2000},
                             detection={"enabled": True})
        async with sim_backend() as sim:
            cfg["models"][0]["backends"][0]["url"] = sim.url
            async with running_gateway(cfg) as gw:
                assert await _ask(gw, "carol") == 200
                await settled(gw)
                rec = await store.get_client("carol")
                assert rec is not None and rec.detector_tier == 2, rec
                assert await _ask(gw, "carol") == 200
                await settled(gw)
                rec = await store.get_client("carol")
                assert rec is not None and rec.detector_tier == 2, rec
    finally:
        await store.close()


def test_a_tier_above_this_replicas_thresholds_is_clamped_not_reset() -> None:
    # A replica running a refitted combiner with one tier more (combiner_file rolled out replica by replica)
    # wrote tier 4. An engine with three thresholds refused the whole state as garbage and went on at tier 0,
    # which its save stored: the hot path and the policy clamp such a tier to the top one, the engine reset it.
    five = TierThresholds(enter=(0.4, 0.6, 0.8, 0.97))
    eng = _engine()
    obs = eng.observe(_state(4, tiers=five), extract("/v1/chat/completions", _chat("hello"), T0 + 10), T0 + 10)
    assert obs.verdict.tier == eng.tiers.max_tier
    assert envelope.decode(obs.state).tier == eng.tiers.max_tier


# --- 3. a state written by the previous release reads and writes back unchanged ------------------------------

# A template harvester's state after 30 requests (tier 3), as written by commit ac888fc (the build before this
# session: ``Engine.observe`` over the first quarter of ``ipgate traffic --attack template=1 --requests 120
# --seed 3``'s template client), zlib-compressed, base64.
_AC888FC_TEMPLATE_HARVESTER = (
    "eNrtWHs4lGkbf8yMYZhhRk5TGEmSVuWsMO+MSElKir4OIoQyzsfQkSQh+qJ02NWKr2tDqLTtMM5lt6jpsF9yCOVQzDjXbvXZ93ln"
    "Rq626/v+qb2+P/aZ57nf+/jc93s/v5nrfWe1nZQWAAAPsDHMo27O8wjZ1MquT4xC4IJaSmCwX0DEjpCw4J0BQX5BOInPhhPdbPD3"
    "+Ht81UGK8OWEBHpF+IabyUqQ15rbzW4RnMbQJ3d8+zMlmURP1euBeYBffUHWO79cehXhBBXc8pW7pbpUkatSOEdu1VLiHukN+HO2"
    "7VKNKVyV8djlUm8WHlbUa86lvk5JoeQn8IwdJjznlujPkm42qJMpeHZNP/+FjoFBnpbOllGr+WsERarvPA+x/dgFC76nn5Kd3auP"
    "i7a8IJvboYab8lEzNMFpkv2zHYyyL/fJNiuvJ0q9b1Ie7RvSrlhdJq3VmacjbNju0ab0lPD9kJTCz+VpQO1czOp9WRTtwtf1+HUH"
    "PGVCtQ8SHtDeyY51vMZz3xBk91q/Jnr9cEXpsttRmeS9fPUFxjgpY9fzpHSXS4oZN6lExEdLrpPmIP1yZTH4QL2tWFNcR8PX/EIY"
    "+0/n1j2LTZDkRiMDkx2PZ3eaNao/U+OrW3oXctTp4/Nh/m/s7bSKAt3kYgtL6Ju4iRttrnRK18j7UM+2D+Kat3xHKnVlKbxzvCur"
    "/V09HuaP4V6QsssbIJhnJM9frBVFX1dTjnM3OU4g3klyuNBAocj2HiSQC/+Nszt4STrnypNZPhS6nNr+SVyPU6+013pf3LojRvg6"
    "vx+Bsnwc2KbKAG76a+bA/uU87cPD/lnfkiOk3GiSTyPtIJxKNJJT6KdJ2TtvIKtNOEu/sFgoRcmfktr/aBU+PtdrVmknWcbEc8wQ"
    "xl/eH0qC8UP8WwSN+kRAGNYncpdtV8kwtCKOqsQSDNO2qbrcHKb+yFHCh7Z4UusstxDBbjxuJCZLuaLrMVjmsFQJxjN1yinP9WXk"
    "3C5upP5UZkdKzIlQ/KARqwX7v7rUHUxOLaWF6WeSBbxKXPpgKe6haSUu5X0e8f6D57JJ9EkF2+5HCoi5grJloHAnVb4s/m15e85f"
    "+QX5lfJaGubfuKKQ3nRdffntwlSrXo69NW7YCDGtMGU5pw/uuFrr49OTxgsNOtz6fEVVRf+XzM85OyEDewBzHrac5QbzOVmbpt/x"
    "iqj96UFdH8z3lhQpXGzx5N3XuH+YP4idIyc5B1hHtDfV8dqbMeyebQsy4xPZCeVfq///D/f/alkw+dP7jydauHC633pIzn9mPxLu"
    "Hzz1pXryv/D3V+Bfcu+whp1HNunPrCOn+9VnvwtfMv/veRwZeA4vM11Iklq6qC3qp6Nz6LCm4FEPTQ2F/nk+2sa658+l6q2NrjX6"
    "XI22/F+wOm1PzllXvjDJFU/6sAnWXB2wkyN3hB8E6x7QSz+29caV1ILJpOyVBLMcCf5gzoRaumpyZIWmd5zcstnrhcslWMjjhTux"
    "W/Y7H3TT/0d1wJatMzHR21gdAvc932sT/Yj/MBbiY01Gcby7IDQL4gTmgL9px8+7/kvFVuUHj+bIEoid6NTUCseKrHtq7SyqP+NO"
    "Y6V0S1bZpfZJK/Pfp6wKHnvMPVtSctKxxbDBkyPDa7vdbX6clwH75bLWgMOwrPfuR9LOHp3ip8SNsIq+4XYsd0yLWXvDvegCt83U"
    "jrWLG//E0dBVPz+p83hN/AJTKeclqxKsYy08dDm4u6FW2eoXpTRWnmZFfTBlufeWshoqhxH32eEspwUjSIFeCCty9huEQAlDHo3E"
    "I7LewVG+YV5+vqekZz65wuU+EY4MuAuxp9zkND/kc8frqxSCKKzd84ntAFK7dTemWyyMx67Dcf5I5VgCxgfqnMFg/09jDibfGIyc"
    "jk9+IUTuOgsw+UyeDPtRuitz0dtsXkpqD3LkgzxLz9kZyY3OrBoiIDxSWHJ1lq4b62fSANPvWzObdFMHZt9jCsucPYlsCI2qOnHO"
    "Erm20Qkxc7Zg3uSaIgd2zuHZZLzj/T7kxKvcW2bjUjPKc5dfwMubfFMVbMvhDr2UtWkuDqkKZc2qdis6y0vZ9ASJjbzCXPJ0gGlw"
    "KJ83/2oAawnBlsd4mYWMmbUy21oSme67/HhE+YEq45BDzOJFN5n76eNVjXExzPexR1j8wCbmdpscm9K3CdZuzIeVfZF0Ln/5PMRx"
    "8wDTWGd9tWZUZtXJiXtVSfGvmB61zcjurEO8uKT+qrzr+Yjm5bnMUNfcKrQNTHR1MUEXYMCmMGa0ueuTw+hizDRIrOJ4LJTxX+MB"
    "g/GZeIZkZ0bXn8+fgbp1YRRIMqCj9mP8GHxFAn1gbAzQ6YAOxuiQbW0FCKCgDGqnoB59Y+L9mlGJAjVoiOiliwq0nwMquI8JwyiH"
    "qoZRngon5LSp1KWYK5UKjQC6Qg71o0rKfKGBEg0RrzGz/mmhCRJXiTu0vBDxOjSUoEsoRCkNNAPQgQqYTkgDmA7VQCMAxhgVwkmj"
    "6UBH0A+fJsRPFOro7Ec1LSKxX6QzQpc6mPYQ+bZMq4Aeulr1xMyfR6vYS+Sh91EnNvRgH3Rooh84MbFHZNSU6LEl9oejUSxojWgB"
    "xRE4AToVMTqCmVBqjVL4fgy6xbGKiqgaahQx1hqVxscBmTzQjl7JZDIA7YDMJw9gWhhAbgdAbYA8Po5ewbh4F3htH1cjA/44WQw/"
    "DPxdEjBKsNUlgqUEpIwZgJ1WCjBVmxKkIqKkhDK6AtQgEJhDWYDKAiWxK3pV0lUS6Ip4gbhFPZJmiRoobmnPR/XModkDW6qJkQ6g"
    "owMhQaOJQUMTowqKQjiFOiIIYWCiCYW0Dho0QE8ajaZAjAoOjOT4ssCn/ytIfqU1CwdZnslldg1nilZCfUVxP1t9nYnDp1URIwI4"
    "AUF+MdMb+Yc+Y988dowd12uEbfggbfCr/mFBCvP1Cg8OQmtQBp/7k0QmMCBoD2olzah5X0RkWFB4BFj7MvNAj+Wi1My74euX7Wrz"
    "/9V/aMUEXdB0733e3t9Ox4WWWCT42de437B6v2+bxVGTQQt8RaqJU7ZfIaXEvqjp+mjXVNjVZM19aSp2XO5vBygle3yiNn+7mL/t"
    "jPntww3G9dUW9rcY3mpb1eddNA+LTFXPUayzq/4D1Pw4LQ=="
)


def test_the_previous_releases_state_is_read_and_written_back_as_it_was() -> None:
    # Replicas of the previous release share the store during the upgrade: this build must read their states
    # (no detector starting afresh), and a state it re-saves without new evidence must be what they wrote,
    # byte for byte, so that they can read it in turn. A change of the stored layout fails here: it needs a
    # decision on the upgrade order (docs: review-session16-rolling-upgrade.md), not a new literal.
    old = zlib.decompress(base64.b64decode(_AC888FC_TEMPLATE_HARVESTER))
    eng = _engine()
    pending = eng.open(old)
    assert eng.state_errors == 0
    assert pending.tier_score()[0] == 3
    assert eng.snapshot(pending) == old


# --- 4. overrides set by a build without the override index hold during an outage ----------------------------


def _old_build_set_override(url: str, client: str, fields: dict[str, Any], ttl_ms: int) -> None:
    """``RedisStore.set_override`` as every build before commit c6c0320 wrote it: the override hash alone (no
    entry in the index ``ipgate:overrides``, which did not exist yet)."""
    key = RedisStore(url).client_keys(client)[2]
    with redis.Redis.from_url(url) as r, r.pipeline(transaction=True) as p:
        p.delete(key)
        p.hset(key, mapping=fields)
        p.pexpire(key, ttl_ms)
        p.execute()


async def test_overrides_set_by_a_build_before_the_index_hold_during_an_outage(redis_process: Any) -> None:
    # An operator upgrading from a build before the override index (c6c0320) had denied mallory for 90 days.
    # After the upgrade every process is new: none has answered mallory, and the index every process reads
    # for the failure modes did not list her, so during the next Redis outage (failure_mode local, the
    # default) she was served on every process until her override expired.
    url = redis_process.url
    _old_build_set_override(url, "mallory", {"o": "deny"}, 90 * 86400 * 1000)
    _old_build_set_override(url, "pinned{x}%", {"t": "2"}, 3600 * 1000)
    limits = (Limits(requests_per_minute=600, tokens_per_minute=10**6, burst_requests=100,
                     burst_tokens=10**6),) * 4
    cfg = StoreConfig(kind="redis", url=url, failure_mode="local", timeout_ms=100.0, health_interval_s=0.05)
    store = ResilientStore(RedisStore.from_config(cfg), failure_mode="local", timeout_ms=100.0,
                           health_interval_s=0.05, overrides_refresh_s=0.1)
    await store.start()
    try:
        deadline = time.monotonic() + 10
        while {"mallory", "pinned{x}%"} - set(store._overrides):
            assert time.monotonic() < deadline, f"not in the override copy: {store._overrides}"
            await asyncio.sleep(0.02)
        ov = store._overrides["mallory"]
        assert ov[0] == "deny" and ov[2] > time.time() + 89 * 86400, ov  # its own expiry, not a new one
        redis_process.kill()
        res = await store.hot_path(AdmitRequest("mallory", 1, limits))
        assert (res.allowed, res.degraded) == (False, True)
        res = await store.hot_path(AdmitRequest("pinned{x}%", 1, limits))
        assert (res.allowed, res.degraded, res.tier) == (True, True, 2)
    finally:
        await store.close()


@pytest.fixture(params=["redis", "cluster"])
async def redis_store(request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue("redis_cluster_url" if request.param == "cluster" else "redis_url")
    s = RedisStore.from_config(StoreConfig(kind="redis", url=url, cluster=request.param == "cluster",
                                           timeout_ms=2000))
    yield s
    await s.close()


async def _set_like_an_old_build(store: RedisStore, client: str, ttl_ms: int) -> None:
    """The very commands of ``RedisStore.set_override`` before c6c0320 (a deny, no index entry)."""
    ov = store.client_keys(client)[2]
    await store.connection.execute_many([("MULTI",), ("DEL", ov), ("HSET", ov, "o", "deny"), ("PEXPIRE", ov, ttl_ms),
                                         ("EXEC",)])


async def test_unlisted_overrides_are_listed_with_their_own_expiry_on_every_primary(redis_store: RedisStore) -> None:
    clients = ["a", "b{1}", "100%", "", "x:ov", *(f"c{i}" for i in range(40))]  # spread over every primary
    for i, c in enumerate(clients):
        await _set_like_an_old_build(redis_store, c, 3_600_000 + i * 1000)
    await redis_store.set_override("listed", "deny", None, 60.0)  # this build's: in the index already
    got = await redis_store.overrides()  # the first read of this process scans
    assert set(got) == {*clients, "listed"}
    now = time.time()
    for i, c in enumerate(clients):
        assert abs(got[c][2] - (now + 3600 + i)) < 5, (c, got[c])
    assert got["listed"][2] < now + 61, "an entry already listed keeps its score"
    index_ttl = await redis_store.connection.execute("PTTL", "ipgate:overrides")
    assert index_ttl >= (3600 + len(clients) - 2) * 1000, "the index outlives the entries it lists"
    assert 0 < await redis_store.connection.execute("PTTL", "ipgate:overrides:scanned") <= 3600 * 1000
    # one scan per process (and per hour per store): an old replica's later override waits for the next scan
    await _set_like_an_old_build(redis_store, "late", 60_000)
    assert "late" not in await redis_store.overrides()


async def test_a_store_that_refuses_scan_still_reads_the_index(redis_process: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with redis.Redis(port=redis_process.port) as r:
        r.execute_command("ACL", "SETUSER", "noscan", "on", ">pw", "~*", "+@all", "-scan")
    admin = RedisStore(redis_process.url, timeout_s=2.0)
    await admin.set_override("mallory", "deny", None, 3600.0)
    await _set_like_an_old_build(admin, "old", 60_000)
    await admin.close()
    store = RedisStore(redis_process.url.replace("redis://", "redis://noscan:pw@"), timeout_s=2.0)
    try:
        assert set(await store.overrides()) == {"mallory"}
        assert set(await store.overrides()) == {"mallory"}
        assert [r.message for r in caplog.records].count(
            next(r.message for r in caplog.records if "could not be scanned" in r.message)) == 1
    finally:
        await store.close()
