"""Review session 14b, the alert dashboard in a real browser (headless Chromium over the DevTools protocol,
against a real gateway): attacker-controlled alert fields stay text, the ``#token=`` link works for any
token, a slow client record cannot land in another client's panel, and every override button works."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.store.base import ClientRecord
from tests.detection_gateway.test_dashboard_browser import CHROMIUM, PARAMS, Page, browser_page
from tests.support.harness import gateway_config, running_gateway, sim_backend

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
]
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
ROW = "tr.alert-row[data-client=\"{}\"]"


class EventPage(Page):
    """``Page`` that keeps the protocol's events (``Page.call`` drops them) so a test can wait for one."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 20)
            if "method" in msg:
                self.events.append(msg)
            elif msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def event(self, method: str, pred: Callable[[dict[str, Any]], bool] = lambda p: True) -> dict[str, Any]:
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == method and pred(e["params"]):
                    return dict(self.events.pop(i)["params"])
            msg = await asyncio.wait_for(self.ws.receive_json(), 20)
            if "method" in msg:
                self.events.append(msg)


@contextlib.asynccontextmanager
async def event_page() -> AsyncIterator[EventPage]:
    async with browser_page() as page:
        yield EventPage(page.ws)


async def _raise_alert(gw: Any, client_id: str, *, request_id: str | None = None, prompt: str = "Say hi") -> None:
    client = gw.openai_client(client_id)
    try:
        for i in range(3):  # reaches the throttle tier: an alert, not a block
            await client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": prompt}], max_tokens=1, logprobs=True,
                top_logprobs=20, logit_bias={str(1000 + 50 * i + j): 100 for j in range(50)},
                extra_headers={"X-Request-Id": request_id} if request_id else None)
    finally:
        await client.close()


def _config(sim_url: str, tmp_path: Path) -> dict[str, Any]:
    combiner = tmp_path / "combiner.json"
    combiner.write_text(PARAMS.to_json())
    lim = {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}
    return gateway_config(sim_url, detection={"enabled": True, "combiner_file": str(combiner)},
                          limits={"default": lim, "suspicious": lim})


async def _open(page: EventPage, gw: Any, token: str | None = None) -> None:
    await page.call("Page.enable")
    await page.call("Page.navigate", url=f"{gw.admin_url}/admin/dashboard?interval=1#token={token or gw.admin_token}")
    await page.event("Page.loadEventFired")  # else a first poll may run in the old document (no #status yet)


async def test_attacker_request_id_and_prompt_render_as_text(tmp_path: Path) -> None:
    """X-Request-Id (any printable text up to 128 characters) and the prompt reach the analyst's page."""
    async with sim_backend() as sim, running_gateway(_config(sim.url, tmp_path)) as gw:
        await _raise_alert(gw, "mallory", request_id=XSS, prompt=XSS)
        assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()
        async with event_page() as page:
            await _open(page, gw)
            await page.wait_for(f"document.querySelector('{ROW.format('mallory')}')")
            await page.eval(f"document.querySelector('{ROW.format('mallory')}').click(), true")
            panel = await page.wait_for("document.querySelector('#detail button[data-action=pin]') && "
                                        "document.getElementById('detail').innerText")
            assert XSS in panel  # the request id, shown literally
            assert '<img src=x onerror="window.__xss=#">' in panel  # the redacted example, literally
            injected = await page.eval("document.querySelectorAll('#detail img, #detail script, #rows img').length")
            assert injected == 0 and await page.eval("window.__xss === undefined")


async def test_a_token_with_plus_signs_works_in_the_dashboard_link(tmp_path: Path) -> None:
    """``openssl rand -base64 32`` tokens hold '+' about half the time: URLSearchParams read it as a space,
    so the documented ``#token=$IPGATE_ADMIN_TOKEN`` link answered 401 for them."""
    token = "Zm9v+YmFy/YmF6+cXV4=="
    async with sim_backend() as sim, running_gateway(_config(sim.url, tmp_path), admin_token=token) as gw:
        await _raise_alert(gw, "mallory")
        assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()
        async with event_page() as page:
            await _open(page, gw, token)
            status = await page.wait_for("document.getElementById('status').textContent.includes('alerts') && "
                                         "document.getElementById('status').textContent")
            assert "cannot load" not in status, status
            assert await page.eval(f"!!document.querySelector('{ROW.format('mallory')}')")
            assert await page.eval("sessionStorage.getItem('ipgate-admin-token')") == token


async def test_a_slow_client_record_never_lands_in_another_clients_panel(tmp_path: Path) -> None:
    """Click mallory, then eve while mallory's record is still on its way: mallory's late answer appended
    her record and her Allow/Deny buttons under the heading "Client eve"."""
    async with sim_backend() as sim, running_gateway(_config(sim.url, tmp_path)) as gw:
        await _raise_alert(gw, "mallory")
        await _raise_alert(gw, "eve")
        assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()
        async with event_page() as page:
            await _open(page, gw)
            await page.wait_for(f"document.querySelector('{ROW.format('eve')}')")
            await page.call("Fetch.enable", patterns=[{"urlPattern": "*client_id=mallory*"}])
            await page.eval(f"document.querySelector('{ROW.format('mallory')}').click(), true")
            held = await page.event("Fetch.requestPaused")  # mallory's record, held "on the network"
            await page.eval(f"document.querySelector('{ROW.format('eve')}').click(), true")
            await page.wait_for("document.querySelector('#detail button[data-action=pin]')")
            await page.call("Fetch.continueRequest", requestId=held["requestId"])
            await asyncio.sleep(0.5)  # mallory's answer arrives and is handled
            panel = await page.eval("document.getElementById('detail').innerText")
            assert panel.startswith("Client eve")
            assert await page.eval("document.querySelectorAll('#detail button[data-action=Deny]').length") == 1
            assert panel.count("Override") == 1, panel


async def test_every_override_button_works_against_the_gateway(tmp_path: Path) -> None:
    async with sim_backend() as sim, running_gateway(_config(sim.url, tmp_path)) as gw:
        await _raise_alert(gw, "mallory")
        assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()
        async with event_page() as page:
            await _open(page, gw)
            await page.wait_for(f"document.querySelector('{ROW.format('mallory')}')")
            await page.eval(f"document.querySelector('{ROW.format('mallory')}').click(), true")

            async def press(action: str, dialog: bool = False) -> None:
                await page.wait_for(f"document.querySelector('#detail button[data-action={action}]')")
                await page.eval("document.getElementById('status').textContent = ''")
                # click() from a timer: Deny's confirm() blocks the page until the dialog is answered
                await page.eval(f"setTimeout(() => document.querySelector("
                                f"'#detail button[data-action={action}]').click(), 0), true")
                if dialog:
                    d = await page.event("Page.javascriptDialogOpening")
                    assert d["type"] == "confirm" and "mallory" in d["message"]
                    await page.call("Page.handleJavaScriptDialog", accept=True)
                status = await page.wait_for("document.getElementById('status').textContent")
                assert status == "override saved for mallory", status

            async def record() -> ClientRecord:
                rec = await gw.ctx.store.get_client("mallory")
                assert isinstance(rec, ClientRecord)
                return rec

            await press("Deny", dialog=True)
            assert (await record()).override == "deny"
            await press("Allow")
            assert (await record()).override == "allow"
            await press("Clear")
            rec = await record()
            assert rec.override is None and rec.pinned_tier is None
            await page.wait_for("document.querySelector('#detail select')")
            await page.eval("document.querySelector('#detail select').value = '2', true")
            await press("pin")
            assert (await record()).pinned_tier == 2
            audit = await page.wait_for(  # the audit table (polled every second here) lists all four
                "document.querySelectorAll('#audit-rows tr').length >= 4 && "
                "[...document.querySelectorAll('#audit-rows tr')].map(r => r.dataset.auditAction)")
            assert json.dumps(audit).count("client.override") >= 4


async def test_a_slow_override_answer_does_not_pull_the_panel_back(tmp_path: Path) -> None:
    """Allow on mallory, then eve is clicked before the PUT answers: the saved override re-opened mallory's
    panel while eve's row stayed highlighted."""
    async with sim_backend() as sim, running_gateway(_config(sim.url, tmp_path)) as gw:
        await _raise_alert(gw, "mallory")
        await _raise_alert(gw, "eve")
        assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()
        async with event_page() as page:
            await _open(page, gw)
            await page.wait_for(f"document.querySelector('{ROW.format('eve')}')")
            await page.eval(f"document.querySelector('{ROW.format('mallory')}').click(), true")
            await page.wait_for("document.querySelector('#detail button[data-action=Allow]')")
            await page.call("Fetch.enable", patterns=[{"urlPattern": "*/override?client_id=mallory*"}])
            await page.eval("document.querySelector('#detail button[data-action=Allow]').click(), true")
            held = await page.event("Fetch.requestPaused")
            await page.eval(f"document.querySelector('{ROW.format('eve')}').click(), true")
            await page.wait_for("document.querySelector('#detail button[data-action=pin]') && "
                                "document.getElementById('detail').innerText.startsWith('Client eve')")
            await page.call("Fetch.continueRequest", requestId=held["requestId"])
            await page.wait_for("document.getElementById('status').textContent === 'override saved for mallory'")
            await asyncio.sleep(0.5)  # a re-shown panel would have been drawn by now
            assert await page.eval("document.getElementById('detail').innerText.startsWith('Client eve')")
            assert await page.eval("document.querySelector('tr.sel').dataset.client") == "eve"
        rec = await gw.ctx.store.get_client("mallory")
        assert isinstance(rec, ClientRecord) and rec.override == "allow"
