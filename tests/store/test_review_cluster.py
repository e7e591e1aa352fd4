"""Adversarial review of the Redis Cluster path (``gateway/store/cluster.py``) on the real 3-primary fixture.

- odd client ids keep a client's keys in one slot (``CLUSTER KEYSLOT``), never shared between two clients;
- the multiplexing hazard: a node SIGSTOPped with calls in flight (timed out, or cancelled by their caller),
  then resumed: every later reply belongs to its own request;
- a pipeline whose keys of one slot are split by a migration (one key moved, one not) is redirected per
  command, never re-run whole on the target (which would create a second copy of a key and block the
  migration with BUSYKEY);
- a seed that answers an empty ``CLUSTER SLOTS`` (a node not, or no longer, in the cluster) does not blank the
  slot map;
- a failover away from a hung seed primary (a private cluster with one replica, ``CLUSTER FAILOVER TAKEOVER``):
  the probe loads the new map without spending its budget on the hung node;
- a primary answering CLUSTERDOWN keeps the store degraded until it serves again (no probe/request flapping);
- ``MULTI``/``EXEC`` blocks and scripts follow ASK to a target that has no scripts loaded, never writing on the
  source;
- ``SCRIPT FLUSH`` on one primary under concurrent traffic; a huge ``LRANGE`` reply interleaved with small
  calls on the same connection; our connections killed by the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.cluster import ClusterMux
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from tests.conftest import RedisClusterProcess, RedisProcess, _cluster_port
from tests.support.stall import OwnClock

SLOW = Limits(requests_per_minute=1, tokens_per_minute=1e9, burst_requests=6, burst_tokens=10**9)  # T = 60 s
TIERS = (SLOW, SLOW, SLOW)


def cluster_store(url: str, timeout_ms: float = 2000) -> RedisStore:
    return RedisStore.from_config(StoreConfig(kind="redis", url=url, cluster=True, timeout_ms=timeout_ms))


def mux_of(store: RedisStore) -> ClusterMux:
    mux = store.connection
    assert isinstance(mux, ClusterMux)
    return mux


def keys_on_node(cluster: Any, node: int, n: int, prefix: str) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < n:
        k = f"{prefix}{i}"
        if cluster.node_of_slot(int(key_slot(k.encode()))) == node:
            out.append(k)
        i += 1
    return out


def fill(r: redis.Redis, values: dict[str, str]) -> None:
    """SET each key on one node (its keys span several slots: no MSET)."""
    with r.pipeline(transaction=False) as p:
        for k, v in values.items():
            p.set(k, v)
        p.execute()


@pytest.fixture
async def cstore(redis_cluster_url: str) -> AsyncIterator[RedisStore]:
    s = cluster_store(redis_cluster_url)
    yield s
    await s.close()


ODD_IDS = ["{}", "a{}b", "{", "}", "}{", "{a}", "a{b}c", ":", "a:b", "{a}:rl", "%", "%7B%7D", "%25",
           " ", "ünï©ødé🙂{x}", "x" * 5000, "{" * 300 + "}" * 300]


async def test_odd_client_ids_keep_one_slot_and_never_share_keys(cstore: RedisStore, redis_cluster: Any) -> None:
    with redis_cluster.client(0) as r:
        for cid in ODD_IDS:
            slots = {r.execute_command("CLUSTER", "KEYSLOT", k) for k in cstore.client_keys(cid)}
            assert len(slots) == 1, f"client {cid!r}: its keys span slots {slots} (CROSSSLOT on the hot path)"
    assert len({cstore.client_keys(c) for c in ODD_IDS}) == len(ODD_IDS), "two ids share keys"
    # every per-client operation runs on the cluster (a CROSSSLOT would raise here)
    for i, cid in enumerate(ODD_IDS):
        assert (await cstore.hot_path(AdmitRequest(cid, 1, TIERS, 60.0))).requests.remaining == 5
        await cstore.reconcile_tokens(cid, 1, 3, SLOW)
        await cstore.save_client_state(cid, f"s{i}".encode(), 1, 0.5, ttl_s=60)
        await cstore.set_override(cid, None, 2, ttl_s=60)
        rec = await cstore.get_client(cid)
        assert rec is not None and rec.pinned_tier == 2 and rec.detector_tier == 1
        await cstore.add_recipient(cid, 1, ttl_s=60)
        assert await cstore.acquire_lease(f"canary:{cid}", "me", ttl_s=60)
        await cstore.set_blob(f"canary:{cid}:state", b"v", ttl_s=60)
    for i, cid in enumerate(ODD_IDS):  # each id sees only its own state
        r2 = await cstore.hot_path(AdmitRequest(cid, 1, TIERS, 60.0))
        assert (r2.requests.remaining, r2.detector_state, r2.tier) == (4, f"s{i}".encode(), 2), cid
        assert await cstore.get_blob(f"canary:{cid}:state") == b"v"
    assert set(await cstore.recipients()) == set(ODD_IDS)


async def test_empty_client_id_keeps_one_slot(cstore: RedisStore, redis_cluster: Any) -> None:
    with redis_cluster.client(0) as r:
        assert len({r.execute_command("CLUSTER", "KEYSLOT", k) for k in cstore.client_keys("")}) == 1


async def _gets(mux: ClusterMux, keys: list[str]) -> list[Any]:
    return await asyncio.gather(*(mux.execute("GET", k) for k in keys), return_exceptions=True)


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_late_replies_of_a_hung_node_never_answer_later_requests(how: str, redis_cluster_url: str,
                                                                       redis_cluster: Any) -> None:
    """The classic multiplexing bug: requests in flight to a SIGSTOPped primary time out (or their caller gives
    up first); the node resumes and sends their replies. Every later reply must belong to its own request."""
    timeout = 0.3
    mux = ClusterMux([redis_cluster_url], timeout_s=timeout)
    try:
        await mux.ping()
        hung = 1
        keys = {n: keys_on_node(redis_cluster, n, 40, f"late{n}-") for n in range(3)}
        for n, ks in keys.items():
            with redis_cluster.client(n) as r:
                fill(r, {k: f"value-of-{k}" for k in ks})
        node = redis_cluster.nodes[hung]
        node.pause()
        try:
            calls = [asyncio.ensure_future(mux.execute("GET", k)) for k in keys[hung][:20]]
            healthy = await _gets(mux, keys[0][:10])  # other primaries are unaffected meanwhile
            assert healthy == [f"value-of-{k}".encode() for k in keys[0][:10]]
            if how == "cancel":  # the caller's own deadline (ResilientStore's backstop) fires first
                await asyncio.sleep(0.05)
                for c in calls:
                    c.cancel()
            results = await asyncio.gather(*calls, return_exceptions=True)
            # timed out; or failed by the reset of the connection that the first call to time out made
            expected = (asyncio.CancelledError,) if how == "cancel" else (TimeoutError, redis.ConnectionError)
            assert all(isinstance(r, expected) for r in results), results
        finally:
            node.resume()
        await asyncio.sleep(0.05)  # the resumed node writes the stale replies now
        for _ in range(3):
            all_keys = [k for ks in keys.values() for k in ks]
            got = await _gets(mux, all_keys)
            assert got == [f"value-of-{k}".encode() for k in all_keys], "a reply was matched to the wrong request"
    finally:
        await mux.close()


def _same_slot_sketches() -> tuple[int, int]:
    seen: dict[int, int] = {}
    for n in range(100_000):
        s = int(key_slot(f"ipgate:sk:{n}".encode()))
        if s in seen:
            return seen[s], n
        seen[s] = n
    raise AssertionError("no two sketch keys share a slot")


async def test_pipeline_split_by_a_migration_is_redirected_per_command(cstore: RedisStore,
                                                                       redis_cluster: Any) -> None:
    """``link_sketches`` with two sketches in one slot, that slot MIGRATING, one sketch key already moved to the
    target and the other not: the moved key's commands must follow ASK, the other's must stay on the source.
    Sent again whole, the unmoved key would be read empty and created a second time on the target, and the
    migration of the real one would then fail with BUSYKEY."""
    a, b = _same_slot_sketches()
    ka, kb = f"ipgate:sk:{a}".encode(), f"ipgate:sk:{b}".encode()
    assert await cstore.link_sketches("first", [a, b], ttl_s=60) == {}
    slot = int(key_slot(ka))
    src = redis_cluster.node_of_slot(slot)
    dst = (src + 1) % 3
    with redis_cluster.client(src) as s, redis_cluster.client(dst) as d:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", redis_cluster.node_id(src))
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", redis_cluster.node_id(dst))
        try:
            s.execute_command("MIGRATE", "127.0.0.1", redis_cluster.nodes[dst].port, "", 0, 5000, "KEYS", kb)
            assert await cstore.link_sketches("second", [a, b], ttl_s=60) == {"first": 2}, "both links seen"
            assert s.exists(ka) == 1, "the unmoved key is still on the source"
            # the migration can finish: the key was not also created on the target (MIGRATE would fail: BUSYKEY)
            s.execute_command("MIGRATE", "127.0.0.1", redis_cluster.nodes[dst].port, "", 0, 5000, "KEYS", ka)
        finally:
            for i in (dst, src, 3 - src - dst):
                with redis_cluster.client(i) as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", redis_cluster.node_id(dst))
        assert sorted(d.zrange(ka, 0, -1)) == sorted(d.zrange(kb, 0, -1)) == [b"first", b"second"]
        assert d.pttl(ka) > 0 and d.pttl(kb) > 0


async def test_a_seed_with_an_empty_slot_map_does_not_blank_the_map(redis_cluster_url: str) -> None:
    """A node not (or no longer) part of the cluster — a replacement that lost its nodes.conf, a node after
    CLUSTER RESET — answers CLUSTER SLOTS with an empty list. Listed first, it must not win."""
    port = _cluster_port()
    lone = RedisProcess(port, extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")).start()
    try:
        s = RedisStore.from_config(StoreConfig(kind="redis", url=f"redis://127.0.0.1:{port}", cluster=True,
                                               cluster_seeds=[redis_cluster_url], timeout_ms=1000))
        try:
            await s.ping()
            assert (await s.hot_path(AdmitRequest("seeded", 1, (SLOW,), 60.0))).allowed
            assert len(mux_of(s).primaries()) == 3
            await mux_of(s).refresh()  # a refresh asks the seeds too: the map stays whole
            await s.ping()
        finally:
            await s.close()
    finally:
        lone.stop()


async def test_script_flush_on_one_primary_under_concurrent_traffic(cstore: RedisStore, redis_cluster: Any) -> None:
    clients = [c for n in range(3) for c in keys_on_node(redis_cluster, n, 5, f"fl{n}-")]
    first = await asyncio.gather(*(cstore.hot_path(AdmitRequest(c, 1, (SLOW,), 60.0)) for c in clients))
    assert [r.requests.remaining for r in first] == [5] * len(clients)
    with redis_cluster.client(1) as r:
        r.script_flush()
    again = await asyncio.gather(*(cstore.hot_path(AdmitRequest(c, 1, (SLOW,), 60.0)) for c in clients * 2))
    assert sorted(r.requests.remaining for r in again) == sorted([4, 3] * len(clients))


async def test_huge_reply_interleaved_with_small_calls(cstore: RedisStore, redis_cluster: Any) -> None:
    big = "x" * 200_000
    for i in range(30):
        await cstore.append_alert(f'{{"i": {i}, "pad": "{big}"}}', max_len=1000)
    slot = int(key_slot(b"ipgate:alerts"))
    node = redis_cluster.node_of_slot(slot)
    small = keys_on_node(redis_cluster, node, 50, "small-")
    mux = mux_of(cstore)
    with redis_cluster.client(node) as r:
        fill(r, {k: k for k in small})
    results = await asyncio.gather(cstore.recent_alerts(100), *(mux.execute("GET", k) for k in small),
                                   cstore.recent_alerts(100))
    for alerts in (results[0], results[-1]):
        assert [json.loads(a)["i"] for a in alerts] == list(range(29, -1, -1))
        assert all(len(a) > 200_000 for a in alerts)
    assert results[1:-1] == [k.encode() for k in small]


async def test_connections_killed_by_the_server_fail_fast_then_reconnect(cstore: RedisStore,
                                                                         redis_cluster: Any) -> None:
    mux = mux_of(cstore)
    keys = {n: keys_on_node(redis_cluster, n, 5, f"kill{n}-") for n in range(3)}
    for n, ks in keys.items():
        with redis_cluster.client(n) as r:
            fill(r, {k: k for k in ks})
    assert await _gets(mux, keys[2]) == [k.encode() for k in keys[2]]
    with redis_cluster.client(2) as r:
        r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await asyncio.sleep(0.05)
    clock = OwnClock()  # a busy host's CPU waits taken off
    first = await _gets(mux, keys[2])
    assert clock.elapsed() < 1.0
    assert all(isinstance(x, (redis.ConnectionError, bytes)) for x in first), first
    assert await _gets(mux, keys[2]) == [k.encode() for k in keys[2]], "reconnected, replies in order"


def _owner_port(cluster: Any, asker: int, slot: int) -> int:
    with cluster.client(asker) as r:
        for row in r.execute_command("CLUSTER", "SLOTS"):
            if row[0] <= slot <= row[1]:
                return int(row[2][1])
    raise LookupError(slot)


@pytest.mark.slow  # a private cluster with a replica: ~5 s, most of it redis-cli --cluster create
async def test_failover_away_from_a_hung_seed_primary_recovers(redis_cluster: Any) -> None:
    """A private cluster whose first node (the seed, first in the store's node order) has a replica. The
    primary hangs (SIGSTOP: connections stay open, nothing answers) and the replica takes over. The store must
    find the promoted primary and recover while the old one is still hung: a slot-map refresh that asks the
    nodes one after the other spends the probe's whole budget on the hung node, for ever."""
    cluster = RedisClusterProcess()
    args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
    replica = RedisProcess(_cluster_port(), extra_args=args)
    store: ResilientStore | None = None
    try:
        cluster.start()
        replica.start()
        # join as a replica of the seed (CLUSTER MEET + REPLICATE: redis-cli --cluster add-node polls per second)
        primary_id = cluster.node_id(0)
        with cluster.client(0) as r0:
            r0.config_set("repl-diskless-sync-delay", 0)  # default 5 s: waits for more replicas to come
        with redis.Redis(port=replica.port, socket_timeout=5) as rr:
            rr.execute_command("CLUSTER", "MEET", "127.0.0.1", cluster.nodes[0].port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    rr.execute_command("CLUSTER", "REPLICATE", primary_id)
                    break
                except redis.ResponseError:  # "Unknown node" until the handshake is done
                    assert time.monotonic() < deadline, "the replica did not join"
                    await asyncio.sleep(0.05)
        deadline = time.monotonic() + 10
        with redis.Redis(port=replica.port, socket_timeout=5) as rr:
            while rr.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                await asyncio.sleep(0.05)
        for i in (1, 2):  # the others must know the replica, or they ignore its takeover for a while
            with cluster.client(i) as ri:
                while f":{replica.port}@".encode() not in ri.execute_command("CLUSTER", "NODES"):
                    assert time.monotonic() < deadline, "the other primaries did not meet the replica"
                    await asyncio.sleep(0.05)
        # and the replica must know them (gossip through the seed): otherwise, promoted after the seed hangs, it
        # knows a third of the slots only and answers cluster_state:fail (this test was flaky without the wait)
        with redis.Redis(port=replica.port, socket_timeout=5) as rr:
            while int(rr.cluster("info")["cluster_known_nodes"]) < 4:
                assert time.monotonic() < deadline, "the replica did not learn of the other primaries"
                await asyncio.sleep(0.05)
        inner = cluster_store(cluster.url, timeout_ms=400)
        store = ResilientStore(inner, failure_mode="closed", timeout_ms=400, health_interval_s=0.05)
        await store.start()
        client = next(f"fo{i}" for i in range(10_000)
                      if _owner_port(cluster, 1, int(key_slot(inner.client_keys(f"fo{i}")[0].encode())))
                      == cluster.nodes[0].port)
        slot = int(key_slot(inner.client_keys(client)[0].encode()))
        assert (await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).requests.remaining == 5
        # replication is asynchronous: the write must have reached the replica before the primary hangs, or the
        # promoted replica rightly has the older bucket (this test was flaky without the wait)
        with cluster.client(0) as r0, redis.Redis(port=replica.port, socket_timeout=5) as rr:
            written = int(r0.info("replication")["master_repl_offset"])
            while int(rr.info("replication")["slave_repl_offset"]) < written:
                assert time.monotonic() < deadline + 10, "the replica did not catch up"
                await asyncio.sleep(0.01)
        cluster.nodes[0].pause()
        assert (await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).unavailable and store.degraded
        await asyncio.sleep(0.5)  # the store's own refreshes have run and found the old map
        with redis.Redis(port=replica.port, socket_timeout=5) as rr:
            rr.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        deadline = time.monotonic() + 10
        while not all(_owner_port(cluster, i, slot) == replica.port for i in (1, 2)):
            assert time.monotonic() < deadline, "the other primaries did not learn of the failover"
            await asyncio.sleep(0.05)
        clock = OwnClock()  # a busy host's CPU waits taken off (this thread's: the live nodes' answers count)
        await inner.ping()  # the probe's work: it must not wait for the hung node that left the map
        assert clock.elapsed() < 0.2, "the probe spent its budget on the hung ex-primary"
        deadline = time.monotonic() + 5
        while store.degraded:
            assert time.monotonic() < deadline, "the store did not follow the failover to the promoted replica"
            await asyncio.sleep(0.05)
        after = await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))
        assert after.allowed and after.requests.remaining == 4, "served by the promoted replica, its data intact"
    finally:
        if store is not None:
            await store.close()
        if cluster.nodes[0].paused:
            cluster.nodes[0].resume()
        replica.stop()
        cluster.stop()


async def test_clusterdown_on_one_primary_is_an_outage_until_it_ends(redis_cluster_url: str, redis_cluster: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """One primary loses a slot (CLUSTER DELSLOTS: with full coverage required it answers CLUSTERDOWN for every
    key it serves). The store degrades at once (no redirect loop, bounded by the timeout), stays degraded while
    that primary cannot serve — a probe that only PINGs it and writes its health key elsewhere would declare
    the store healthy and let the next request to that primary flip it down again — and recovers after."""
    caplog.set_level(logging.INFO, logger="gateway.store.resilient")
    inner = cluster_store(redis_cluster_url, timeout_ms=200)
    store = ResilientStore(inner, failure_mode="closed", timeout_ms=200, health_interval_s=0.05)
    await store.start()
    health_node = redis_cluster.node_of_slot(int(key_slot(b"ipgate:health")))
    victim = (health_node + 1) % 3
    client = next(f"cd{i}" for i in range(10_000)
                  if redis_cluster.node_of_slot(int(key_slot(inner.client_keys(f"cd{i}")[0].encode()))) == victim)
    client_slot = int(key_slot(inner.client_keys(client)[0].encode()))
    with redis_cluster.client(victim) as r:
        owned = [int(row[0]) for row in r.execute_command("CLUSTER", "SLOTS")
                 if int(row[2][1]) == redis_cluster.nodes[victim].port]
    lost = next(s for s in owned if s != client_slot)
    assert (await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).allowed
    try:
        with redis_cluster.client(victim) as r:
            r.execute_command("CLUSTER", "DELSLOTS", lost)
            deadline = time.monotonic() + 5
            while r.cluster("info")["cluster_state"] != "fail":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        clock = OwnClock()  # a busy host's CPU waits taken off
        first = await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))
        assert clock.elapsed() < 0.2 + 0.1 and first.unavailable and store.degraded
        for _ in range(20):  # requests keep coming while the primary is down; the probe runs meanwhile
            await asyncio.sleep(0.05)
            assert (await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).unavailable
        recovered = [r for r in caplog.records if "available again" in r.getMessage()]
        assert recovered == [], "the probe declared the store healthy while a primary answers CLUSTERDOWN"
    finally:
        with redis_cluster.client(victim) as r:
            r.execute_command("CLUSTER", "ADDSLOTS", lost)
        redis_cluster.wait_ok()
    deadline = time.monotonic() + 5
    while store.degraded:
        assert time.monotonic() < deadline, "no recovery once the primary serves again"
        await asyncio.sleep(0.02)
    assert (await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).requests.remaining == 4
    await store.close()


async def test_transactions_and_scripts_follow_ask_on_a_target_without_scripts(cstore: RedisStore,
                                                                               redis_cluster: Any) -> None:
    """Keys already moved to the importing node: ``MULTI``/``EXEC`` blocks (alerts, overrides) need one
    ``ASKING`` before ``MULTI``; a script the target has never seen answers NOSCRIPT under ASKING and its
    ``EVAL`` fallback must meet the ASK again rather than run on the source (a silent wrong-node write)."""
    client = "asked"
    await cstore.append_alert('{"n": 0}', max_len=10)
    await cstore.set_override(client, None, 0, ttl_s=60)
    await cstore.save_client_state(client, b"S", 0, 0.0, ttl_s=60)
    await cstore.renew_leases([(client, "running")], 60)  # all four keys exist (else TRYAGAIN while migrating)
    assert (await cstore.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).requests.remaining == 5
    moves = []
    for key in (b"ipgate:alerts", cstore.client_keys(client)[0].encode()):
        slot = int(key_slot(key))
        src = redis_cluster.node_of_slot(slot)
        moves.append((slot, src, (src + 1) % 3))
    try:
        for slot, src, dst in moves:
            with redis_cluster.client(dst) as d:
                d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", redis_cluster.node_id(src))
                d.script_flush()
            with redis_cluster.client(src) as s:
                s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", redis_cluster.node_id(dst))
                names = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                s.execute_command("MIGRATE", "127.0.0.1", redis_cluster.nodes[dst].port, "", 0, 5000, "KEYS", *names)
        await cstore.append_alert('{"n": 1}', max_len=10)
        assert await cstore.recent_alerts(10) == ['{"n": 1}', '{"n": 0}']
        await cstore.set_override(client, "deny", None, ttl_s=60)
        r = await cstore.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))
        assert r.override == "deny" and not r.allowed and r.detector_state == b"S"
        assert mux_of(cstore).redirects["ASK"] >= 4 and mux_of(cstore).redirects["MOVED"] == 0
    finally:
        for slot, src, dst in moves:
            for i in (dst, src, 3 - src - dst):
                with redis_cluster.client(i) as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", redis_cluster.node_id(dst))
    for slot, src, _ in moves:
        with redis_cluster.client(src) as s:
            assert s.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0, "nothing was written on the source"
    rec = await cstore.get_client(client)
    assert rec is not None and rec.override == "deny"
