"""The dashboard in headless Chromium with an alert the shared list holds in an odd shape (another version's
writer, a damaged entry): a time that is no number, reasons that are no list, evidence that is no object.
Before, the first such alert threw in the table's render (``toISOString`` of an invalid date), the whole table
stayed empty and the status line said only "cannot load alerts: Invalid time value": one entry hid every alert."""

from __future__ import annotations

import json

import pytest

from tests.detection_gateway.test_dashboard_browser import CHROMIUM, browser_page
from tests.support.harness import gateway_config, running_gateway, sim_backend

GOOD = {"id": "a-good", "ts": 1_795_000_000.0, "client": "mallory", "tenant": None, "tier": "throttle",
        "tier_index": 2, "previous_tier": "watch", "score": 0.91, "reasons": ["logit probing"],
        "detectors": ["logit_probing"], "evidence": {"examples": ["Say hi to ###-####"], "redacted": True}}
ODD = {"id": "a-odd", "ts": "soon", "client": "odd-one", "tier": "watch", "tier_index": 1, "score": "high",
       "reasons": "not a list", "detectors": "x", "evidence": "nope"}


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
async def test_an_odd_alert_does_not_hide_the_others() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        await gw.ctx.store.append_alert(json.dumps(GOOD), 100)
        await gw.ctx.store.append_alert(json.dumps(ODD), 100)  # the newest: rendered first
        async with browser_page() as page:
            await page.call("Page.enable")
            await page.call("Page.navigate", url=f"{gw.admin_url}/admin/dashboard#token={gw.admin_token}")
            await page.wait_for("document.querySelector('tr.alert-row[data-client=\"mallory\"]')")
            rows = await page.eval("Array.from(document.querySelectorAll('tr.alert-row')).map(r => r.innerText)")
            assert len(rows) == 2 and "odd-one" in rows[0] and "—" in rows[0] and "mallory" in rows[1], rows
            assert "2 alerts" in await page.eval("document.getElementById('status').textContent")
            await page.eval("document.querySelector('tr.alert-row[data-client=\"odd-one\"]').click(), true")
            panel = await page.wait_for("document.querySelector('#detail button[data-action=pin]') && "
                                        "document.getElementById('detail').innerText")
            assert "Client odd-one" in panel
