"""``gateway.store.inflight``: the lease rules, table-driven (no store, no clock)."""

from __future__ import annotations

import pytest

from gateway.store.inflight import LeaseBook, SlotDecision, prune, release, renew, renew_every_s, take

L = 100.0  # lease length, µs


@pytest.mark.parametrize(("leases", "now", "cap", "expected", "after"), [
    ({}, 0, 2, SlotDecision(True, 1), {"new": 100}),
    ({"a": 50}, 0, 2, SlotDecision(True, 2), {"a": 50, "new": 100}),
    ({"a": 50, "b": 60}, 0, 2, SlotDecision(False, 2), {"a": 50, "b": 60}),  # full: nothing recorded
    ({"a": 50, "b": 60}, 50, 2, SlotDecision(True, 2), {"b": 60, "new": 150}),  # a deadline at now has passed
    ({"a": 5, "b": 6}, 10, 2, SlotDecision(True, 1), {"new": 110}),  # every lease expired: pruned first
    ({"a": 5}, 10, 2, SlotDecision(True, 2), {"a": 5, "new": 110}),  # below the cap nothing is pruned
    ({"a": 50}, 0, 0, SlotDecision(True, 0), {"a": 50}),  # cap 0: no limit, nothing recorded or pruned
    ({"a": 50, "b": 60, "c": 70}, 0, 2, SlotDecision(False, 3), {"a": 50, "b": 60, "c": 70}),  # over (cap lowered)
])
def test_take(leases: dict[str, float], now: float, cap: int, expected: SlotDecision,
              after: dict[str, float]) -> None:
    got = dict(leases)
    assert take(got, "new", now, cap, L) == expected
    assert got == after


def test_take_without_a_lease_id_records_nothing() -> None:
    got: dict[str, float] = {}
    assert take(got, "", 0, 1, L) == SlotDecision(True, 0) and got == {}


@pytest.mark.parametrize(("leases", "lease", "released", "after"), [
    ({"a": 5, "b": 6}, "a", True, {"b": 6}),
    ({"a": 5}, "zz", False, {"a": 5}),  # gone already (expired, released, never taken): no error
    ({}, "a", False, {}),
])
def test_release(leases: dict[str, float], lease: str, released: bool, after: dict[str, float]) -> None:
    got = dict(leases)
    assert release(got, lease) is released and got == after


@pytest.mark.parametrize(("leases", "now", "after"), [
    ({"a": 50}, 10, {"a": 110}),  # pushed forward
    ({}, 10, {"a": 110}),  # expired meanwhile (pruned): recorded again, the request still runs
    ({"a": 500}, 10, {"a": 500}),  # never shortened (a longer lease from another replica's config)
])
def test_renew(leases: dict[str, float], now: float, after: dict[str, float]) -> None:
    got = dict(leases)
    renew(got, "a", now, L)
    assert got == after



@pytest.mark.parametrize(("leases", "now", "after"), [
    ({"a": 5, "b": 10, "c": 11}, 10, {"c": 11}),
    ({}, 10, {}),
])
def test_prune(leases: dict[str, float], now: float, after: dict[str, float]) -> None:
    got = dict(leases)
    prune(got, now)
    assert got == after


def test_renewal_leaves_room_for_two_failed_rounds() -> None:
    assert renew_every_s(120.0) == 40.0


def test_lease_book_ids_are_unique_and_held_leases_grouped_by_client() -> None:
    a, b = LeaseBook(), LeaseBook()
    ids = {a.new_id() for _ in range(1000)} | {b.new_id() for _ in range(1000)}
    assert len(ids) == 2000, "ids are unique per process and across processes (random prefix)"
    book = LeaseBook(prefix="p:")
    assert [book.new_id(), book.new_id()] == ["p:1", "p:2"]
    book.hold("p:1", "alice")
    book.hold("p:2", "bob")
    book.hold("p:3", "alice")
    assert len(book) == 3 and "p:2" in book
    assert dict(book.by_client()) == {"alice": ["p:1", "p:3"], "bob": ["p:2"]}
    book.drop("p:1")
    book.drop("p:1")  # twice: no error
    assert book.held() == [("bob", "p:2"), ("alice", "p:3")]
