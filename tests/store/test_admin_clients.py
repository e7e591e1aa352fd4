"""Admin client API (read record, allow/deny, pin tier, clear) over a real aiohttp server, on both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import ClientSession, web

from gateway.admin.clients import routes
from gateway.app import openai_errors
from gateway.auth.authenticator import Authenticator
from gateway.config import StoreConfig, parse_config
from gateway.policy import Policy
from gateway.store.base import AdmitRequest, StateStore
from gateway.store.redis import RedisStore
from gateway.store.resilient import ResilientStore

CFG = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}]}, env={})
POLICY = Policy.from_config(CFG)


async def serve(store: StateStore) -> tuple[web.AppRunner, str]:
    app = web.Application(middlewares=[openai_errors])
    auth = Authenticator(jwt=None, api_keys=None)  # no credentials: no known limit classes
    app.add_routes(routes(SimpleNamespace(store=store, policy=POLICY, config=CFG, auth=auth,
                                         detection=None)))  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/admin/clients/"


@pytest.fixture
async def api(store: StateStore) -> AsyncIterator[tuple[str, ClientSession, StateStore]]:
    runner, base = await serve(store)
    async with ClientSession() as http:
        yield base, http, store
    await runner.cleanup()


async def call(http: ClientSession, method: str, url: str, body: Any = None, raw: bytes | None = None
               ) -> tuple[int, dict[str, Any]]:
    kw: dict[str, Any] = {"data": raw} if raw is not None else {"json": body} if body is not None else {}
    async with http.request(method, url, **kw) as r:
        return r.status, await r.json()


async def test_read_unknown_then_deny_pin_allow_clear(api: tuple[str, ClientSession, StateStore]) -> None:
    base, http, store = api
    status, rec = await call(http, "GET", base + "alice")
    assert status == 200 and rec["known"] is False and rec["tier_name"] == "normal" and rec["override"] is None
    assert rec["limits"]["requests_per_minute"] == 600 and rec["blocked"] is False

    status, rec = await call(http, "PUT", base + "alice/override", {"override": "deny", "ttl_s": 3600})
    assert status == 200 and rec["override"] == "deny" and rec["blocked"] and 3590 < rec["override_ttl_s"] <= 3600
    assert not (await store.hot_path(AdmitRequest("alice", 1, POLICY.limits_by_tier))).allowed

    status, rec = await call(http, "PUT", base + "alice/override", {"tier": "throttle"})
    assert status == 200 and (rec["tier"], rec["tier_name"], rec["pinned_tier_name"]) == (2, "throttle", "throttle")
    assert rec["override"] is None and rec["limits"]["requests_per_minute"] == 30
    assert rec["override_ttl_s"] > 89 * 24 * 3600, "the default TTL is 90 days"
    assert (await store.hot_path(AdmitRequest("alice", 1, POLICY.limits_by_tier))).tier == 2

    status, rec = await call(http, "PUT", base + "alice/override", {"override": None, "tier": 3})  # dashboard form
    assert status == 200 and rec["tier_name"] == "block" and rec["blocked"]

    await store.save_client_state("alice", b"s", tier=3, score=0.97, ttl_s=60)
    status, rec = await call(http, "PUT", base + "alice/override", {"override": "allow"})
    assert status == 200 and (rec["tier"], rec["detector_tier_name"], rec["score"]) == (0, "block", 0.97)
    assert not rec["blocked"]

    # a pin is a floor: pinning "watch" on a client that detection has blocked keeps it blocked, and the view
    # says so (the pinned tier sets its limits; the applied tier, the higher one, its hardening and block)
    status, rec = await call(http, "PUT", base + "alice/override", {"override": None, "tier": "watch"})
    assert status == 200 and (rec["tier_name"], rec["applied_tier_name"], rec["blocked"]) == ("watch", "block", True)

    status, rec = await call(http, "DELETE", base + "alice/override")
    assert status == 200 and rec["override"] is None and rec["tier_name"] == "block" and rec["known"]
    assert rec["applied_tier_name"] == "block" and rec["blocked"]
    await call(http, "PUT", base + "alice/override", {"override": "deny"})
    status, rec = await call(http, "PUT", base + "alice/override", {"override": None, "tier": None})  # clear
    assert status == 200 and rec["override"] is None and rec["pinned_tier"] is None


async def test_ids_with_slashes_and_unicode(api: tuple[str, ClientSession, StateStore]) -> None:
    base, http, store = api
    status, rec = await call(http, "PUT", base + "tenant%2Fbob%20%C3%BC/override", {"override": "deny"})
    assert status == 200 and rec["client_id"] == "tenant/bob ü"
    assert (await store.get_client("tenant/bob ü")) is not None


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"override": "block"}, "override", 'override must be "allow", "deny" or null'),
        ({"tier": "nope"}, "tier", "unknown tier 'nope'"),
        ({"tier": 9}, "tier", "index 0-3"),
        ({"tier": True}, "tier", "tier must be"),
        ({"override": "allow", "tier": "watch"}, "tier", "pins tier 0"),
        ({"override": "deny", "ttl_s": 0}, "ttl_s", "ttl_s must be"),
        ({"override": "deny", "ttl_s": "1h"}, "ttl_s", "ttl_s must be"),
        ({"override": "deny", "ttl_s": 10**9}, "ttl_s", "ttl_s must be"),
        ({"override": "deny", "reason": "x"}, "reason", "unknown field 'reason'"),
        ([1, 2], None, "must be a JSON object"),
    ],
)
async def test_bad_bodies_name_the_field(api: tuple[str, ClientSession, StateStore], body: Any,
                                         param: str | None, fragment: str) -> None:
    base, http, store = api
    status, err = await call(http, "PUT", base + "carol/override", body)
    assert status == 400 and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param and fragment in err["error"]["message"]
    assert await store.get_client("carol") is None, "nothing was written"


async def test_malformed_json_and_bad_id(api: tuple[str, ClientSession, StateStore]) -> None:
    base, http, _ = api
    status, err = await call(http, "PUT", base + "carol/override", raw=b"{nope")
    assert status == 400 and "not valid JSON" in err["error"]["message"]
    status, err = await call(http, "GET", base + "x" * 300)
    assert status == 400 and err["error"]["param"] == "client_id"


async def test_store_down_answers_503(redis_process: Any) -> None:
    store = ResilientStore(RedisStore.from_config(StoreConfig(kind="redis", url=redis_process.url, timeout_ms=50)),
                           failure_mode="open", timeout_ms=50, health_interval_s=0.05)
    runner, base = await serve(store)
    redis_process.kill()
    try:
        async with ClientSession() as http:
            status, err = await call(http, "PUT", base + "dave/override", {"override": "deny"})
            assert status == 503 and "NOT saved" in err["error"]["message"]
            status, err = await call(http, "GET", base + "dave")
            assert status == 503 and err["error"]["code"] == "store_unavailable"
    finally:
        await runner.cleanup()
        await store.close()
