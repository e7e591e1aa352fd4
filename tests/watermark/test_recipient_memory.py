"""Memory of ``GatewayWatermarking.record_recipient`` (found by the soak's heap probe, docs/soak-memory.md): the
set of clients already recorded as watermark recipients grew with every client id the process ever served and
was never trimmed (only cleared after a store outage). It is bounded now; a client pushed out is recorded again."""

from __future__ import annotations

from pathlib import Path

from gateway.config import parse_config
from gateway.principal import Principal
from gateway.store.memory import MemoryStore
from gateway.watermarking import RECORDED_MAX, GatewayWatermarking, key_ring

SECRET = b"unit-test-master-secret-0123"


def _wm(recipients_file: Path, recorded_max: int = RECORDED_MAX) -> GatewayWatermarking:
    cfg = parse_config({
        "models": [{"name": "m1", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
        "watermark": {"scheme": "lexical", "recipients_file": str(recipients_file)},
    }, env={})
    return GatewayWatermarking(cfg, key_ring(cfg.watermark, SECRET), recorded_max=recorded_max)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


async def test_recorded_recipients_stay_bounded_and_a_pushed_out_client_is_recorded_again(tmp_path: Path) -> None:
    f = tmp_path / "recipients.txt"
    wm = _wm(f, recorded_max=50)
    store = MemoryStore()
    for i in range(500):
        await wm.record_recipient(store, Principal(f"client-{i}"))
    assert len(wm._recorded) == 50  # unbounded before: 500
    assert len(_lines(f)) == 500
    await wm.record_recipient(store, Principal("client-499"))  # among the last 50: remembered, no write
    assert len(_lines(f)) == 500
    await wm.record_recipient(store, Principal("client-0"))  # pushed out long ago: written again
    assert _lines(f)[-1] == "client-0" and len(_lines(f)) == 501
    assert set(await store.recipients()) == {f"client-{i}" for i in range(500)}  # every one is in the store


async def test_recorded_recipients_default_bound(tmp_path: Path) -> None:
    cfg = parse_config({"models": [{"name": "m1", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}]}, env={})
    wm = GatewayWatermarking(cfg, key_ring(cfg.watermark, SECRET))
    assert wm._recorded_max == RECORDED_MAX == 100_000


async def test_a_rotated_key_version_is_recorded_for_a_remembered_client(tmp_path: Path) -> None:
    f = tmp_path / "recipients.txt"
    wm = _wm(f)
    store = MemoryStore()
    await wm.record_recipient(store, Principal("alice"))
    wm._recorded["alice"] = wm.ring.current - 1  # as if recorded under the previous key version
    await wm.record_recipient(store, Principal("alice"))
    assert _lines(f) == ["alice", "alice"]


async def test_concurrent_first_answers_record_a_client_once(tmp_path: Path) -> None:
    """A client's answers finishing together (a client with requests in flight at once) each found the client
    unrecorded before the first write landed: one line per answer in flight. Now one line."""
    import asyncio

    class SlowStore(MemoryStore):
        async def add_recipient(self, client_id: str, version: int, ttl_s: float) -> None:
            await asyncio.sleep(0.02)
            await super().add_recipient(client_id, version, ttl_s)

    f = tmp_path / "recipients.txt"
    wm = _wm(f)
    store = SlowStore()
    await asyncio.gather(*(wm.record_recipient(store, Principal(f"load-{i % 4}")) for i in range(40)))
    assert sorted(_lines(f)) == [f"load-{i}" for i in range(4)]
    assert not wm._recording


async def test_the_recipients_file_directory_is_created_on_the_first_write(tmp_path: Path) -> None:
    """As the alert JSONL sink does (and as `ipgate check` expects): a missing directory used to fail every
    append, with the recipients kept in the store only."""
    f = tmp_path / "new" / "deeper" / "recipients.txt"
    wm = _wm(f)
    await wm.record_recipient(MemoryStore(), Principal("alice"))
    assert _lines(f) == ["alice"] and f.stat().st_mode & 0o777 == 0o600
