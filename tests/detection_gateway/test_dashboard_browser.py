"""The dashboard driven like a person would, in headless Chromium over the DevTools protocol: open it from the
real admin listener, click the attacker's alert, read the client panel, pin a tier with the button, and
check the store now holds that pin (the dashboard -> admin API -> store loop, end to end)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from detectors.combiner import CombinerParams
from gateway.store.base import ClientRecord
from tests.support.harness import gateway_config, running_gateway, sim_backend

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PARAMS = CombinerParams(intercept=-6.0, weights={"logit_probing": 14.0})


class Page:
    """A minimal Chrome DevTools Protocol client for one page target (aiohttp websocket)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 20)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    async def eval(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, js_condition: str, timeout_s: float = 10.0) -> Any:
        ms, what = int(timeout_s * 1000), json.dumps(js_condition)
        return await self.eval(
            f"""new Promise((ok, fail) => {{ const t0 = Date.now(); (function poll() {{
                  const v = ({js_condition}); if (v) return ok(v);
                  if (Date.now() - t0 > {ms}) return fail(new Error("timeout: " + {what}));
                  setTimeout(poll, 50); }})(); }})""")


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="ipgate-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            port = None
            while port is None:
                line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
                assert line, "chromium exited before opening its DevTools port"
                m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                port = int(m.group(1)) if m else None
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = await r.json()
                page = next(t for t in targets if t["type"] == "page")
                async with s.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    yield Page(ws)
        finally:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
async def test_dashboard_click_alert_and_pin_tier(tmp_path: Path) -> None:
    combiner = tmp_path / "combiner.json"
    combiner.write_text(PARAMS.to_json())
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True, "combiner_file": str(combiner)},
                             limits={"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
                                     "suspicious": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("mallory")
            for i in range(3):  # enough to reach the throttle tier (an alert), not a block
                await client.chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": "Say hi to 555-0100"}], max_tokens=1,
                    logprobs=True, top_logprobs=20, logit_bias={str(1000 + 50 * i + j): 100 for j in range(50)})
            await client.close()
            await asyncio.sleep(0.1)
            assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()

            async with browser_page() as page:
                await page.call("Page.enable")
                await page.call("Page.navigate", url=f"{gw.admin_url}/admin/dashboard#token={gw.admin_token}")
                await page.wait_for("document.querySelector('tr.alert-row[data-client=\"mallory\"]')")
                assert "#token" not in await page.eval("location.href")  # the token left the address bar
                await page.eval("document.querySelector('tr.alert-row[data-client=\"mallory\"]').click(), true")
                panel = await page.wait_for(
                    "document.querySelector('#detail button[data-action=pin]') && "
                    "document.getElementById('detail').innerText")
                assert "Client mallory" in panel and "throttle" in panel
                assert "Say hi to ###-####" in panel  # the example, redacted
                assert "555-0100" not in panel
                assert "addresses" in panel and "127.0.0.1" in panel  # the evidence's client addresses
                await page.eval("document.querySelector('#detail select').value = '3', true")
                await page.eval("document.querySelector('#detail button[data-action=pin]').click(), true")
                status = await page.wait_for(
                    "document.getElementById('status').textContent.startsWith('override saved') && "
                    "document.getElementById('status').textContent")
                assert status == "override saved for mallory"

            rec = await gw.ctx.store.get_client("mallory")
            assert isinstance(rec, ClientRecord) and rec.pinned_tier == 3 and rec.tier == 3
