"""The dashboard's ``#token=`` link in headless Chromium (DevTools protocol) against a real gateway: the token
leaves the address bar and the tab's session history at once, the page loads its data with it from
sessionStorage, and a reload (no fragment any more) still does."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.detection_gateway.test_dashboard_browser import CHROMIUM, Page, browser_page
from tests.support.harness import ADMIN_TOKEN, gateway_config, running_gateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh)"),
]
LOADED = ("document.getElementById('status') && document.getElementById('status').textContent.includes('updated')"
          " && document.querySelector('tr.audit-row[data-audit-action=\"client.override.set\"]') && !window.__old")


async def _settle(page: Page, condition: str, timeout_s: float = 15.0) -> Any:
    """``page.wait_for`` across a navigation: an evaluation in the document being replaced fails; retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await page.wait_for(condition, timeout_s=max(0.5, deadline - time.monotonic()))
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _history(page: Page) -> list[str]:
    entries = (await page.call("Page.getNavigationHistory"))["entries"]
    return [e["url"] for e in entries]


async def test_the_token_leaves_the_url_and_history_and_the_page_still_loads_after_a_reload() -> None:
    token = ADMIN_TOKEN
    async with running_gateway(gateway_config("http://127.0.0.1:9")) as gw, aiohttp.ClientSession() as s:
        # one audit record, so "loaded its data" means an authenticated read rendered something
        async with s.put(gw.admin_url + "/admin/client/override?client_id=mallory",
                         headers={"Authorization": f"Bearer {token}"}, data=json.dumps({"override": "deny"})) as r:
            assert r.status == 200
        async with browser_page() as page:
            await page.call("Page.enable")
            await page.call("Page.navigate", url=f"{gw.admin_url}/admin/dashboard?interval=1#token={token}")
            status = await _settle(page, LOADED + " && document.getElementById('status').textContent")
            assert "cannot load" not in status, status
            assert await page.eval("location.hash") == ""
            assert await page.eval("location.href") == f"{gw.admin_url}/admin/dashboard?interval=1"
            assert not [u for u in await _history(page) if token in u or "#" in u], await _history(page)
            assert await page.eval("sessionStorage.getItem('ipgate-admin-token')") == token

            await page.eval("window.__old = 1, true")  # tells the reloaded document from this one
            await page.call("Page.reload", ignoreCache=True)
            status = await _settle(page, LOADED + " && document.getElementById('status').textContent")
            assert "cannot load" not in status, status
            assert await page.eval("location.hash") == ""
            assert await page.eval("document.getElementById('token').value") == token  # from sessionStorage

            # a link pasted into the open tab is a same-document fragment navigation (no page load): the
            # token is taken and removed all the same, and used at once
            await page.eval("sessionStorage.setItem('ipgate-admin-token', 'stale-token-0123456789'), true")
            await page.call("Page.navigate", url=f"{gw.admin_url}/admin/dashboard?interval=1#token={token}")
            await _settle(page, "location.hash === '' && document.getElementById('token').value === "
                                f"{json.dumps(token)}")
            assert await page.eval("window.__old") is None  # still the reloaded document: no new page load
            assert not [u for u in await _history(page) if token in u or "#" in u], await _history(page)
            # an empty "#token=" is taken off the URL too, and keeps the stored token
            await page.call("Page.navigate", url=f"{gw.admin_url}/admin/dashboard?interval=1#token=")
            await _settle(page, "location.hash === ''")
            assert await page.eval("sessionStorage.getItem('ipgate-admin-token')") == token
            status = await _settle(page, "document.getElementById('status').textContent.includes('updated') && "
                                         "document.getElementById('status').textContent")
            assert "cannot load" not in status, status
            assert not [u for u in await _history(page) if token in u or "#" in u], await _history(page)
