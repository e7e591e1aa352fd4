"""Bulk admin reads against a real Redis: the watermark recipients (``POST /admin/watermark/verify`` without
``clients``, ``ipgate verify --config``) and the audit list (``GET /admin/audit/verify``). Read as one reply,
~100 000 recipients or ~50 000 audit records outlasted the store's 50 ms per-call deadline, and that timeout
declared the store unavailable: every request of the gateway went under the failure mode (``closed``: all
refused) for an administrator's read, which itself answered 503. They are read page by page now, and a failed
bulk read fails only itself."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis

from gateway.audit.chain import Chain, canonical, verify_lines
from gateway.config import StoreConfig
from gateway.store.factory import open_store
from gateway.store.paging import BULK_PAGE, overlap
from tests.support.harness import gateway_config, running_gateway, sim_backend
from tests.support.lexical import ANSWER

RECIPIENTS = 120_000
AUDIT_RECORDS = 60_000


def _audit_lines(n: int, writer: str = "elsewhere:1:0123abcd") -> list[str]:
    chain = Chain(writer)
    return [canonical(chain.seal({"ts": 1.0 + i, "action": "client.override.set", "target": f"c{i}",
                                  "status": 200})) for i in range(n)]


def _record(url: str, recipients: int = 0, audit: list[str] | None = None) -> None:
    """What the gateway writes (recipient.lua: member "version:client", score = expiry in ms; append_audit:
    LPUSH, newest first), written in bulk."""
    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    expiry = int(time.time() * 1000) + 3_600_000
    for i in range(0, recipients, 10_000):
        pipe.zadd("ipgate:wm:recipients", {f"1:client-{j}": expiry for j in range(i, min(recipients, i + 10_000))})
    pipe.zadd("ipgate:wm:recipients", {"1:gone": int(time.time() * 1000) - 1})  # expired: not a recipient
    for i in range(0, len(audit or ()), 1000):
        pipe.lpush("ipgate:audit", *(audit or [])[i:i + 1000])
    pipe.execute()


async def test_verify_among_many_recorded_recipients_keeps_the_store_up(redis_url: str, tmp_path: object) -> None:
    _record(redis_url, recipients=RECIPIENTS)
    from pathlib import Path

    secret = Path(str(tmp_path)) / "wm.secret"
    secret.write_text("bulk-reads-watermark-secret-0123456789\n")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, store={"kind": "redis", "url": redis_url}, telemetry={"access_log": False},
                             watermark={"enabled": True, "scheme": "lexical", "secret_file": str(secret)})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            async with s.post(gw.admin_url + "/admin/watermark/verify", json={"text": ANSWER},
                              headers={"Authorization": "Bearer " + gw.admin_token}) as r:
                body = await r.json()
            assert r.status == 200, body
            assert body["watermarked"] is False and body["candidates"]
            assert not gw.ctx.store.degraded  # type: ignore[attr-defined]
            recorded = await gw.ctx.store.recipients()
            assert len(recorded) == RECIPIENTS and "gone" not in recorded and recorded["client-7"] == [1]


async def test_the_audit_chain_check_of_a_long_list_keeps_the_store_up(redis_url: str) -> None:
    _record(redis_url, audit=_audit_lines(AUDIT_RECORDS))
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, store={"kind": "redis", "url": redis_url}, telemetry={"access_log": False},
                             admin={"audit_max_records": AUDIT_RECORDS})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            async with s.get(gw.admin_url + "/admin/audit/verify",
                             headers={"Authorization": "Bearer " + gw.admin_token}) as r:
                body = await r.json()
            assert r.status == 200 and body["intact"] and body["records"] == AUDIT_RECORDS, body
            assert not gw.ctx.store.degraded  # type: ignore[attr-defined]


async def test_records_pushed_while_the_list_is_read_are_neither_doubled_nor_skipped(redis_url: str) -> None:
    old = _audit_lines(20 * BULK_PAGE)
    _record(redis_url, audit=old)
    store = await open_store(StoreConfig(kind="redis", url=redis_url), None)
    try:
        newer = iter(_audit_lines(2000, writer="writer-two:2:4567cdef"))
        pushed = 0

        async def push() -> None:
            nonlocal pushed
            for line in newer:
                await store.append_audit(line, 1_000_000)
                pushed += 1

        pusher = asyncio.create_task(push())
        await asyncio.sleep(0.01)
        at_start = pushed
        got = await store.recent_audit(len(old) + 2000)
        during = pushed - at_start
        pusher.cancel()
        assert during > 0  # the list grew while it was read (each push moved every page's items)
        report = verify_lines(reversed(got), partial_start=True)
        assert report.intact, report.problems[:3]  # a page overlap read twice would be a "duplicated" record
        assert len(got) == len(set(got)) and set(old) <= set(got)
    finally:
        await store.close()


@pytest.mark.parametrize("before, page, dropped", [
    ([], ["a"], 0),
    (["a", "b", "c"], ["d", "e"], 0),
    (["a", "b", "c"], ["c", "d"], 1),  # one item pushed between the pages
    (["a", "b", "c"], ["b", "c", "d"], 2),
    (["a", "b", "c"], ["a", "b", "c"], 3),  # as many pushed as the page holds
    (["a", "b", "c"], ["b", "x"], 0),  # not a shift: kept whole
])
def test_page_overlap(before: list[str], page: list[str], dropped: int) -> None:
    assert overlap(before, page) == dropped


async def test_a_failed_bulk_read_fails_itself_only_counted_and_logged_once(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.errors import ServiceUnavailable
    from gateway.telemetry.metrics import Metrics

    redis.Redis.from_url(redis_url).set("ipgate:alerts", "not a list")  # every read of it: WRONGTYPE
    metrics = Metrics(CollectorRegistry())
    store = await open_store(StoreConfig(kind="redis", url=redis_url), metrics)
    try:
        for _ in range(3):  # detection reads the alert list for every alert it builds
            with pytest.raises(ServiceUnavailable):
                await store.recent_alerts(200)
        assert not store.degraded  # type: ignore[attr-defined]
        assert await store.recent_audit(10) == []  # the store serves on
        said = [r for r in caplog.records if "recent_alerts read failed" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        body = metrics.render()[0].decode()
        assert 'ipgate_store_failures_total{op="recent_alerts"} 3.0' in body
    finally:
        await store.close()
