"""The alerts admin API and the dashboard page (served by a real aiohttp server; rendered by headless Chromium)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp import ClientSession, web

from gateway.admin.alerts import routes
from gateway.admin.clients import routes as client_routes
from gateway.alerts.model import Alert
from gateway.app import openai_errors
from gateway.config import parse_config
from gateway.policy import Policy
from gateway.store.memory import MemoryStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def alert(i: int, client: str) -> Alert:
    return Alert(
        id=f"a{i}", ts=1_790_000_000.0 + i, client=client, tenant="acme", tier="throttle", tier_index=2,
        previous_tier="watch", score=0.93, reasons=(f"<b>{i}</b> of the last 250 prompts fill 3 templates",),
        detectors=("templates",), request_ids=(f"req-{i}",), examples=("Write 10 questions about 1234",),
    )


@pytest.fixture
async def admin() -> AsyncIterator[tuple[str, MemoryStore]]:
    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "a", "url": "http://x"}]}]}, env={})
    store = MemoryStore()
    ctx = SimpleNamespace(store=store, policy=Policy.from_config(cfg), config=cfg)
    app = web.Application(middlewares=[openai_errors])
    # The real route modules on a real store; only the AppContext is reduced to what they read. (The full
    # admin listener, with its auth, is exercised in test_dashboard_browser.py and test_e2e_attacker.py.)
    app.add_routes(routes(ctx))  # type: ignore[arg-type]
    app.add_routes(client_routes(ctx))  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        await runner.cleanup()


async def test_alerts_api_limit_filter_and_errors(admin: tuple[str, MemoryStore]) -> None:
    base, store = admin
    for i in range(5):
        await store.append_alert(alert(i, "c-even" if i % 2 == 0 else "c-odd").to_json(), 100)
    async with ClientSession() as s:
        async with s.get(f"{base}/admin/alerts?limit=2") as r:
            body = await r.json()
        assert r.status == 200 and body["count"] == 2
        assert [a["id"] for a in body["alerts"]] == ["a4", "a3"]  # newest first
        assert body["tiers"] == ["normal", "watch", "throttle", "block"]
        async with s.get(f"{base}/admin/alerts?client=c-odd") as r:
            assert [a["id"] for a in (await r.json())["alerts"]] == ["a3", "a1"]
        for bad in ("0", "abc", "100000"):
            async with s.get(f"{base}/admin/alerts?limit={bad}") as r:
                err = await r.json()
            assert r.status == 400 and err["error"]["param"] == "limit" and "limit" in err["error"]["message"]


async def test_dashboard_page_is_self_contained(admin: tuple[str, MemoryStore]) -> None:
    base, _ = admin
    async with ClientSession() as s, s.get(f"{base}/admin/dashboard") as r:
        html = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "/admin/alerts" in html and "/override" in html
    assert "http://" not in html and "https://" not in html  # no CDN, nothing external
    assert "innerHTML" not in html  # alert fields are data: rendered with textContent only


def dump_dom(url: str) -> str:
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
async def test_dashboard_renders_alert_rows_in_headless_chromium(admin: tuple[str, MemoryStore]) -> None:
    base, store = admin
    await store.append_alert(alert(1, "harvester-7").to_json(), 100)
    dom = await asyncio.to_thread(dump_dom, f"{base}/admin/dashboard")
    assert 'data-client="harvester-7"' in dom and 'class="alert-row' in dom
    assert "Write ## questions about ####" not in dom  # examples live in the detail panel, not the table
    # the reason text arrives escaped, as text: the markup in it was not interpreted
    assert "&lt;b&gt;1&lt;/b&gt; of the last 250 prompts" in dom
    assert "1 alerts" in dom

