"""``swap_client_state``: the compare-and-swap save of detector states, on every store (memory, a real
redis-server, a real Redis Cluster). A state is written only over the state its writer derived it from;
otherwise the store's state comes back for the writer to merge with (gateway/detection_live.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.base import AdmitRequest, Limits, StateStore

LIMITS = (Limits(requests_per_minute=6000, tokens_per_minute=10**6, burst_requests=100, burst_tokens=10**6),) * 3


async def stored(store: StateStore, client: str) -> bytes | None:
    return (await store.hot_path(AdmitRequest(client, 1, LIMITS, 3600.0))).detector_state


async def test_swap_writes_over_the_expected_state_only(store: StateStore) -> None:
    assert await store.swap_client_state("c1", None, b"first", 1, 0.4, 60) == (True, None)
    assert await stored(store, "c1") == b"first"
    rec = await store.get_client("c1")
    assert rec is not None and (rec.detector_tier, rec.score) == (1, 0.4)
    # a writer that derived its state from nothing (or from an older state) meets the newer one
    assert await store.swap_client_state("c1", None, b"lost", 2, 0.9, 60) == (False, b"first")
    assert await store.swap_client_state("c1", b"older", b"lost", 2, 0.9, 60) == (False, b"first")
    assert await stored(store, "c1") == b"first"
    rec = await store.get_client("c1")
    assert rec is not None and rec.detector_tier == 1, "a refused swap changes nothing"
    # the writer that read "first" writes
    assert await store.swap_client_state("c1", b"first", b"second", 2, 0.8, 60) == (True, None)
    assert await stored(store, "c1") == b"second"
    rec = await store.get_client("c1")
    assert rec is not None and (rec.detector_tier, rec.score) == (2, 0.8)


async def test_swap_binary_state_and_expiry(store: StateStore) -> None:
    blob = bytes(range(256)) * 30  # every byte value, ~7.5 KB like a real state
    assert await store.swap_client_state("c2", None, blob, 0, 0.0, 0.3) == (True, None)
    assert await store.swap_client_state("c2", blob, blob + b"\x00", 0, 0.1, 0.3) == (True, None)
    assert await store.swap_client_state("c2", blob, b"y", 0, 0.0, 60) == (False, blob + b"\x00")
    await asyncio.sleep(0.45)  # the TTL of the last write (a hot path would extend it: none ran)
    assert await store.get_client("c2") is None
    # expired: the state a writer expected is gone, and an expectation of "none" now holds
    assert await store.swap_client_state("c2", blob, b"x", 0, 0.0, 60) == (False, None)
    assert await store.swap_client_state("c2", None, b"x", 0, 0.0, 60) == (True, None)


async def test_swap_checks_size_and_tier(store: StateStore) -> None:
    with pytest.raises(ValueError, match="32768-byte limit"):
        await store.swap_client_state("c3", None, b"x" * (32 * 1024 + 1), 0, 0.0, 60)
    with pytest.raises(ValueError, match="tier"):
        await store.swap_client_state("c3", None, b"x", -1, 0.0, 60)
    assert await store.get_client("c3") is None


async def test_concurrent_swaps_exactly_one_wins(store: StateStore) -> None:
    await store.swap_client_state("c4", None, b"base", 0, 0.0, 60)
    results = await asyncio.gather(*(store.swap_client_state("c4", b"base", b"w%d" % i, 0, 0.0, 60)
                                     for i in range(8)))
    winners = [i for i, (ok, _) in enumerate(results) if ok]
    assert len(winners) == 1
    won = b"w%d" % winners[0]
    assert all(cur == won for ok, cur in results if not ok), "every loser is handed the winner's state"
    assert await stored(store, "c4") == won
