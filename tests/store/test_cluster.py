"""RedisStore on a real 3-primary Redis Cluster (fixture ``redis_cluster`` in tests/conftest.py).

The StateStore contract itself runs on the cluster too (``store`` fixture, param ``cluster``). Here: keys
spread over the primaries with a TTL each, scripts loaded per node, a live slot migration (ASK, TRYAGAIN,
MOVED) without a lost or double-counted admission, a primary going down under each failure mode, and the
configuration rules.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.crc import key_slot

from gateway.config import ConfigError, StoreConfig, parse_config
from gateway.errors import ServiceUnavailable
from gateway.ratelimit import admission_error
from gateway.store.base import AdmitRequest, AdmitResult, Limits
from gateway.store.cluster import ClusterMux
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore
from gateway.telemetry.metrics import Metrics
from tests.conftest import RedisClusterProcess
from tests.support.stall import OwnClock

SLACK_S = 0.1  # scheduling slack over a timeout on 2 shared CI cores (a real hang would last seconds)
SLOW = Limits(requests_per_minute=1, tokens_per_minute=1e9, burst_requests=6, burst_tokens=10**9)  # T = 60 s


def cluster_store(url: str, timeout_ms: float = 2000) -> RedisStore:
    return RedisStore.from_config(StoreConfig(kind="redis", url=url, cluster=True, timeout_ms=timeout_ms))


def mux_of(store: RedisStore) -> ClusterMux:
    mux = store.connection
    assert isinstance(mux, ClusterMux)
    return mux


def wait_for_redirects(mux: ClusterMux, kind: str, n: int) -> None:
    """In a helper thread: until the calls under test have met ``n`` redirects of ``kind`` (at most 5 s)."""
    deadline = time.monotonic() + 5
    while mux.redirects[kind] < n and time.monotonic() < deadline:
        time.sleep(0.005)


async def burst_while(cstore: RedisStore, client: str, action: Callable[[], None]) -> list[AdmitResult]:
    """Eight concurrent admissions of ``client`` while ``action`` runs in a thread; checks that exactly the
    remaining burst (5 of 6, one used before) was admitted, none lost or doubled."""
    thread = threading.Thread(target=action)
    thread.start()
    try:
        results = await asyncio.gather(*(cstore.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0)) for _ in range(8)))
    finally:
        thread.join()
    assert sum(r.allowed for r in results) == 5, "burst 6, one used before: exactly 5 more, none lost or doubled"
    assert sorted(r.requests.remaining for r in results if r.allowed) == [0, 1, 2, 3, 4]
    return results


def begin_migration(cluster: Any, slot: int, src: int, dst: int) -> None:
    """Mark ``slot`` as moving from node ``src`` to node ``dst`` (IMPORTING on the target, then MIGRATING)."""
    with cluster.client(dst) as d:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(src))
    with cluster.client(src) as s:
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(dst))


def move_keys(cluster: Any, slot: int, src: int, dst: int) -> None:
    """MIGRATE every key of ``slot`` from ``src`` to ``dst``."""
    with cluster.client(src) as s:
        names = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        s.execute_command("MIGRATE", "127.0.0.1", cluster.nodes[dst].port, "", 0, 5000, "KEYS", *names)


def hand_over(cluster: Any, slot: int, src: int, dst: int) -> None:
    """End a slot migration in the order Redis documents (and ``redis-cli --cluster reshard`` uses): the
    target first, then the source, then the others. Source first would leave a window in which each of the
    two answers MOVED to the other."""
    for i in (dst, src, *(n for n in range(len(cluster.nodes)) if n not in (src, dst))):
        with cluster.client(i) as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(dst))


def slot_of_client(store: RedisStore, client: str) -> int:
    return int(key_slot(store.client_keys(client)[0].encode()))


def client_on_node(store: RedisStore, cluster: Any, node: int, prefix: str = "c") -> str:
    """A client id whose keys live on primary ``node``."""
    return next(f"{prefix}{i}" for i in range(10_000)
                if cluster.node_of_slot(slot_of_client(store, f"{prefix}{i}")) == node)


@pytest.fixture
async def cstore(redis_cluster_url: str) -> AsyncIterator[RedisStore]:
    s = cluster_store(redis_cluster_url)
    yield s
    await s.close()


async def test_keys_spread_over_primaries_each_with_a_ttl(cstore: RedisStore, redis_cluster: Any) -> None:
    clients = [client_on_node(cstore, redis_cluster, n) for n in range(3)]
    for c in clients:
        assert (await cstore.hot_path(AdmitRequest(c, 5, (SLOW,), 60.0))).allowed
        await cstore.save_client_state(c, b"s", 1, 0.5, ttl_s=60)
        await cstore.set_override(c, None, 2, ttl_s=60)
    await cstore.reconcile_tokens("late", 0, 50, SLOW)
    assert await cstore.link_sketches("c1", list(range(20)), ttl_s=60) == {}  # 20 keys, several slots
    assert await cstore.link_sketches("c2", [3, 19, 40], ttl_s=60) == {"c1": 2}
    await cstore.append_alert("{}", max_len=10)
    await cstore.add_recipient("c1", 1, ttl_s=60)
    await cstore.acquire_lease("l", "o", ttl_s=60)
    await cstore.set_blob("b", b"v", ttl_s=60)
    per_node = []
    for i in range(3):
        with redis_cluster.client(i) as r:
            keys = list(r.scan_iter("*"))
            per_node.append(len(keys))
            for k in keys:
                assert r.pttl(k) > 0, f"{k!r} has no TTL"
    assert sum(per_node) == 3 * 3 + 1 + 21 + 4 + 1, per_node  # + the override index
    assert all(n >= 3 for n in per_node), f"every primary holds keys: {per_node}"


async def test_scripts_are_loaded_on_each_primary(cstore: RedisStore, redis_cluster: Any) -> None:
    for i in range(3):
        with redis_cluster.client(i) as r:
            r.script_flush()
    clients = [client_on_node(cstore, redis_cluster, n) for n in range(3)]
    for c in clients:  # NOSCRIPT on every node → EVAL there, once
        assert (await cstore.hot_path(AdmitRequest(c, 1, (SLOW,), 60.0))).allowed
    for c in clients:  # now EVALSHA works everywhere
        assert (await cstore.hot_path(AdmitRequest(c, 1, (SLOW,), 60.0))).requests.remaining == 4
    sha = cstore._hot.sha.decode()
    for i in range(3):
        with redis_cluster.client(i) as r:
            assert r.script_exists(sha) == [True], f"hot_path.lua not loaded on primary {i}"


async def test_slot_migration_follows_ask_and_moved_exactly(cstore: RedisStore, redis_cluster: Any) -> None:
    """A client whose four keys all exist: served by the source while migrating, by the target (ASK) once its
    keys moved, by the new owner (MOVED) once the slot is handed over; every admission counted once."""
    mux = mux_of(cstore)
    client = "mover"
    await cstore.save_client_state(client, b"S", tier=0, score=0.1, ttl_s=60)
    await cstore.set_override(client, None, 0, ttl_s=60)  # a pinned tier: the override key exists too
    await cstore.renew_leases([(client, "running")], 60)  # a request in flight: so does the in-flight set
    slot = slot_of_client(cstore, client)
    src = redis_cluster.node_of_slot(slot)
    dst = (src + 1) % 3
    src_id, dst_id = redis_cluster.node_id(src), redis_cluster.node_id(dst)

    async def remaining() -> int:
        r = await cstore.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))
        assert r.allowed and r.detector_state == b"S"
        return r.requests.remaining

    # the target has run the script before (as in a live cluster): otherwise its NOSCRIPT makes the caller's
    # EVAL fallback a second call, which meets the same ASK once more (correct, but not what is counted here)
    await cstore.hot_path(AdmitRequest(client_on_node(cstore, redis_cluster, dst, prefix="warm"), 1, (SLOW,), 60.0))
    assert [await remaining(), await remaining()] == [5, 4]
    with redis_cluster.client(src) as s, redis_cluster.client(dst) as d:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        assert await remaining() == 3, "keys still on the source: served there"
        assert sum(mux.redirects.values()) == 0
        names = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        assert len(names) == 4
        s.execute_command("MIGRATE", "127.0.0.1", redis_cluster.nodes[dst].port, "", 0, 5000, "KEYS", *names)
        assert await remaining() == 2, "keys on the target: ASK followed"
        assert mux.redirects["ASK"] == 1 and mux.redirects["MOVED"] == 0
        hand_over(redis_cluster, slot, src, dst)
        assert await remaining() == 1, "slot handed over: MOVED followed"
        assert mux.redirects["MOVED"] == 1
        assert await remaining() == 0
        assert mux.redirects["MOVED"] == 1, "the slot map was updated: no second redirect"
        assert not (await cstore.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).allowed
        counts = [c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) for c in (s, d)]
        assert counts == [0, 4], "the keys live on the new owner only"


async def test_call_during_migration_waits_for_it(cstore: RedisStore, redis_cluster: Any) -> None:
    """A client without an override (its third key does not exist) cannot run the 4-key script while its slot
    is half-migrated (Redis answers TRYAGAIN): the call waits for the migration and then lands on the new
    owner, charged exactly once."""
    mux = mux_of(cstore)
    client = client_on_node(cstore, redis_cluster, 0, prefix="waiter")
    assert (await cstore.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).requests.remaining == 5
    slot = slot_of_client(cstore, client)
    src, dst = 0, 2
    begin_migration(redis_cluster, slot, src, dst)

    def finish_migration() -> None:
        # finish only once a call has met the half-migrated slot (a fixed sleep raced the calls on a loaded host)
        wait_for_redirects(mux, "TRYAGAIN", 1)
        move_keys(redis_cluster, slot, src, dst)
        hand_over(redis_cluster, slot, src, dst)

    await burst_while(cstore, client, finish_migration)
    assert mux.redirects["TRYAGAIN"] >= 1, "the calls ran into the migration"
    assert redis_cluster.node_of_slot(slot) == dst


async def test_hand_over_told_to_the_source_first_is_waited_out(cstore: RedisStore, redis_cluster: Any) -> None:
    """A migration ended in the other order (the source told first): until the target is told, each of the
    two answers MOVED to the other. Calls in that window wait for the hand-over instead of exhausting their
    redirects (which would mark the whole store down), and every admission is counted once."""
    mux = mux_of(cstore)
    client = client_on_node(cstore, redis_cluster, 1, prefix="pingpong")
    await cstore.set_override(client, None, 0, ttl_s=60)  # every key exists: no TRYAGAIN, only redirects
    await cstore.hot_path(AdmitRequest(client_on_node(cstore, redis_cluster, 0, prefix="warm"), 1, (SLOW,), 60.0))
    assert (await cstore.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))).requests.remaining == 5
    slot = slot_of_client(cstore, client)
    src, dst = 1, 0
    dst_id = redis_cluster.node_id(dst)
    begin_migration(redis_cluster, slot, src, dst)
    move_keys(redis_cluster, slot, src, dst)
    with redis_cluster.client(src) as s:
        s.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)  # the source first

    def tell_the_others() -> None:
        wait_for_redirects(mux, "MOVED", 3)  # a call is bouncing between the two
        for i in (dst, 2):
            with redis_cluster.client(i) as r:
                r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    await burst_while(cstore, client, tell_the_others)
    assert mux.redirects["MOVED"] >= 3, "the calls ran into the MOVED ping-pong"
    assert redis_cluster.node_of_slot(slot) == dst


async def test_tryagain_that_does_not_end_is_a_per_call_fallback(redis_cluster_url: str, redis_cluster: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A slot stuck half-migrated: the call gives up after half its timeout with the error reply, the
    resilient wrapper answers that call by the failure mode and does NOT declare the whole store down."""
    inner = cluster_store(redis_cluster_url, timeout_ms=100)
    store = ResilientStore(inner, failure_mode="closed", timeout_ms=100, health_interval_s=0.05)
    await store.start()
    client = client_on_node(inner, redis_cluster, 1, prefix="stuck")
    slot = slot_of_client(inner, client)
    await inner.save_client_state(client, b"x", 0, 0.0, ttl_s=60)  # one key exists on the source
    with redis_cluster.client(1) as s, redis_cluster.client(0) as d:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", redis_cluster.node_id(1))
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", redis_cluster.node_id(0))
        try:
            clock = OwnClock()  # the timeout counts in full; a busy host's CPU waits do not
            r = await store.hot_path(AdmitRequest(client, 1, (SLOW,), 60.0))
            elapsed, wall = clock.elapsed(), clock.wall()
            assert not r.allowed and r.unavailable and r.degraded
            assert wall > 0.04 and elapsed < 0.1 + SLACK_S  # retried up to the timeout (in wall time), not beyond
            assert not store.degraded, "one migrating slot is not an outage of the store"
            other = client_on_node(inner, redis_cluster, 2, prefix="other")
            assert (await store.hot_path(AdmitRequest(other, 1, (SLOW,), 60.0))).allowed
        finally:
            for i in (0, 1):
                with redis_cluster.client(i) as r2:
                    r2.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            await store.close()
    assert redis_cluster.node_of_slot(slot) == 1


@pytest.mark.parametrize(("mode", "fault"), [("closed", "kill"), ("local", "pause")])
async def test_primary_down_applies_failure_mode_and_recovers(mode: str, fault: str, redis_cluster_url: str,
                                                              redis_cluster: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """One primary crashes (SIGKILL, restarted with its nodes.conf) or hangs (SIGSTOP, shorter than the
    cluster's node timeout): the whole store goes degraded under the failure mode, then recovers."""
    caplog.set_level(logging.INFO, logger="gateway.store.resilient")
    registry = CollectorRegistry()
    inner = cluster_store(redis_cluster_url, timeout_ms=50)
    store = ResilientStore(inner, failure_mode=mode,  # type: ignore[arg-type]
                           timeout_ms=50, health_interval_s=0.05, metrics=Metrics(registry))
    await store.start()
    victim = 1 if mode == "closed" else 2
    doomed = client_on_node(inner, redis_cluster, victim, prefix="doomed")
    assert (await store.hot_path(AdmitRequest(doomed, 1, (SLOW,), 60.0))).allowed and not store.degraded
    node = redis_cluster.nodes[victim]
    if fault == "kill":
        node.kill()
    else:
        node.pause()
    try:
        clock = OwnClock()  # the timeout counts in full; a busy host's CPU waits do not
        first = await store.hot_path(AdmitRequest(doomed, 1, (SLOW,), 60.0))
        assert clock.elapsed() < 0.05 + SLACK_S, "bounded by the timeout"
        assert store.degraded and first.degraded
        assert registry.get_sample_value("ipgate_store_degraded") == 1
        results = [first] + [await store.hot_path(AdmitRequest(doomed, 1, (SLOW,), 60.0)) for _ in range(6)]
        if mode == "closed":
            assert not any(r.allowed for r in results)
            assert isinstance(admission_error(results[0]), ServiceUnavailable)
        else:  # in-process limits: burst 6 for this process
            assert [r.allowed for r in results] == [True] * 6 + [False]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()
        with pytest.raises(ServiceUnavailable):
            await store.get_client(doomed)  # admin reads answer 503
    finally:
        if fault == "kill":
            node.start()  # same port and nodes.conf: it rejoins with its slots (writable after ~2 s)
        else:
            node.resume()
        redis_cluster.wait_ok()
    deadline = time.monotonic() + 5
    while store.degraded:
        assert time.monotonic() < deadline, "the store did not recover once every primary answered"
        await asyncio.sleep(0.02)
    assert registry.get_sample_value("ipgate_store_degraded") == 0
    after = await store.hot_path(AdmitRequest(doomed, 1, (SLOW,), 60.0))
    assert after.allowed and not after.degraded
    assert sum(1 for r in caplog.records if r.levelno == logging.INFO and "available again" in r.getMessage()) == 1
    await store.close()


async def test_seed_list_survives_a_dead_first_seed(redis_cluster: Any, redis_cluster_url: str) -> None:
    dead = "redis://127.0.0.1:1"
    s = RedisStore.from_config(StoreConfig(kind="redis", url=dead, cluster=True,
                                           cluster_seeds=[redis_cluster_url], timeout_ms=500))
    try:
        await s.ping()
        assert (await s.hot_path(AdmitRequest("seeded", 1, (SLOW,), 60.0))).allowed
        assert len(mux_of(s).primaries()) == 3
    finally:
        await s.close()


async def test_no_node_reachable_is_an_outage() -> None:
    s = cluster_store("redis://127.0.0.1:1", timeout_ms=200)
    with pytest.raises(redis.ConnectionError, match="CLUSTER SLOTS"):
        await s.hot_path(AdmitRequest("x", 1, (SLOW,), 60.0))
    await s.close()


async def test_cluster_mode_on_a_standalone_redis_says_so(redis_url: str) -> None:
    s = cluster_store(redis_url.rsplit("/", 1)[0], timeout_ms=500)
    with pytest.raises(redis.ConnectionError, match="cluster support disabled"):
        await s.ping()
    await s.close()


async def test_transaction_across_slots_is_refused(cstore: RedisStore) -> None:
    with pytest.raises(ValueError, match="one slot"):
        await mux_of(cstore).execute_many([("MULTI",), ("SET", "a", 1), ("SET", "b", 2), ("EXEC",)])


@pytest.mark.parametrize(("fields", "message"), [
    ({"url": "redis://h:7000/3"}, "only database 0"),
    ({"url": "unix:///tmp/r.sock"}, "redis://host:port"),
    ({"url": "redis://:s3cret@h:7000", "cluster_seeds": ["http://h2:7001"]}, "redis://host:port"),
])
def test_cluster_config_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as e:
        StoreConfig(kind="redis", cluster=True, **fields)
    assert "s3cret" not in str(e.value), "a password in a URL is never echoed"


@pytest.mark.parametrize(("store", "message"), [
    ({"url": "redis://:s3cret@h:7000", "cluster_seeds": ["http://h2:7001"]}, r"store\.cluster_seeds\[0\]: .*redis://"),
    ({"url": "redis://:s3cret@h:7000/3"}, r"store\.url: .*only database 0"),
    ({"url": "redis://:s3cret@h:abc"}, r"store\.url: .*port"),
    ({"url": "redis://h:7000", "cluster_seeds": ["redis://:s3cret@h2:7001", "redis://:s3cret@h3:99999"]},
     r"store\.cluster_seeds\[1\]: .*port"),
])
def test_cluster_config_errors_name_the_field(store: dict[str, Any], message: str) -> None:
    """What an operator sees at start-up: which URL is wrong (a bad port too, not a crash when connecting),
    never the password in it."""
    models = [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}]
    with pytest.raises(ConfigError, match=message) as e:
        parse_config({"models": models, "store": {"kind": "redis", "cluster": True, **store}}, env={})
    assert "s3cret" not in str(e.value)


def test_cluster_seeds_need_cluster_mode() -> None:
    with pytest.raises(ValidationError, match="cluster is false"):
        StoreConfig(kind="redis", cluster_seeds=["redis://h:7000"])
    with pytest.raises(ValidationError, match="needs kind: redis"):
        StoreConfig(cluster=True)
    assert StoreConfig(kind="redis", cluster=True, url="rediss://user:pw@h:7000").cluster


async def test_pipeline_on_a_migrated_key_follows_ask_for_every_command(cstore: RedisStore,
                                                                        redis_cluster: Any) -> None:
    """``link_sketches`` is a 4-command pipeline on one key. Once that key has moved to the importing node,
    ``ASKING`` must precede EACH command (Redis clears the flag after one command outside MULTI): otherwise the
    second command bounces back with MOVED, the call exhausts its redirects and the whole store looks down."""
    mux = mux_of(cstore)
    assert await cstore.link_sketches("first", [7], ttl_s=60) == {}
    key = b"ipgate:sk:7"
    slot = int(key_slot(key))
    src = redis_cluster.node_of_slot(slot)
    dst = (src + 1) % 3
    src_id, dst_id = redis_cluster.node_id(src), redis_cluster.node_id(dst)
    with redis_cluster.client(src) as s, redis_cluster.client(dst) as d:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        try:
            s.execute_command("MIGRATE", "127.0.0.1", redis_cluster.nodes[dst].port, "", 0, 5000, "KEYS", key)
            assert await cstore.link_sketches("second", [7], ttl_s=60) == {"first": 1}
            assert mux.redirects["ASK"] == 1 and mux.redirects["MOVED"] == 0
        finally:
            hand_over(redis_cluster, slot, src, dst)
        assert sorted(d.zrange(key, 0, -1)) == [b"first", b"second"], "every command ran on the new node"
        assert d.pttl(key) > 0


def _clients_on(redis_cluster: Any) -> int:
    total = 0
    for i in range(3):
        with redis_cluster.client(i) as r:
            total += len(r.client_list()) - 1  # less this counting connection
    return total


@pytest.mark.parametrize("connected", [True, False], ids=["on-the-wire", "connecting"])
async def test_close_with_calls_in_flight_leaves_no_connection_or_refresh(connected: bool, redis_cluster_url: str,
                                                                         redis_cluster: Any) -> None:
    """Closing the mux fails the calls in flight, whether sent or still connecting to their node; neither the
    calls nor a slot-map refresh their failure would start may reconnect to the cluster after close (a leaked
    connection, a task nobody awaits)."""
    before = _clients_on(redis_cluster)
    mux = ClusterMux([redis_cluster_url], timeout_s=2.0)
    if connected:
        await mux.ping()  # connected to every primary
    else:
        await mux.refresh()  # the slot map, from the seed only
    calls = [asyncio.ensure_future(mux.execute("GET", f"k{i}")) for i in range(10)]
    await asyncio.sleep(0)  # the calls are on the wire
    await mux.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, redis.ConnectionError) for r in results), results
    await asyncio.sleep(0.2)  # a refresh, had one been scheduled, has connected by now
    deadline = time.monotonic() + 2.0
    while _clients_on(redis_cluster) > before and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert _clients_on(redis_cluster) == before, "connections opened after close"


class _IPv6Cluster(RedisClusterProcess):
    """A private 3-primary cluster whose nodes know each other as ``::1``: what they announce in CLUSTER SLOTS
    and in MOVED/ASK (``MOVED 3999 ::1:7001``, the address without brackets)."""

    host = "::1"

    def __init__(self) -> None:
        super().__init__()
        for n in self.nodes:
            n.extra_args += ("--bind", "127.0.0.1", "::1")  # 127.0.0.1 too: the fixture's own helpers use it



async def test_moved_to_an_ipv6_node_is_followed() -> None:
    cluster = _IPv6Cluster()
    try:
        cluster.start()
        mux = ClusterMux([f"redis://[::1]:{cluster.nodes[0].port}"], timeout_s=2.0)
        try:
            await mux.ping()  # the slot map, with its nodes as [::1]:port
            slot = int(key_slot(b"k"))
            dst_id = cluster.node_id((cluster.node_of_slot(slot) + 1) % 3)
            for i in range(3):  # the (empty) slot changes owner: our map is stale
                with cluster.client(i) as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            assert await mux.execute("SET", "k", "v") == b"OK"
            assert mux.redirects["MOVED"] == 1
            assert await mux.execute("GET", "k") == b"v" and mux.redirects["MOVED"] == 1
        finally:
            await mux.close()
    finally:
        cluster.stop()
