"""The dashboard lists the latest audit records, as text (rendered by headless Chromium from the real admin
listener; the record's fields arrive escaped, never as markup)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest
from aiohttp import ClientSession

from tests.support.harness import ADMIN_TOKEN, gateway_config, running_gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
async def test_dashboard_shows_the_latest_admin_actions_as_text() -> None:
    async with running_gateway(gateway_config("http://127.0.0.1:9")) as gw, ClientSession() as s:
        async with s.put(gw.admin_url + "/admin/client/override?client_id=%3Cb%3Emallory%3C%2Fb%3E",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                         data=json.dumps({"override": "deny"})) as r:
            assert r.status == 200
        dom = await asyncio.to_thread(dump_dom, f"{gw.admin_url}/admin/dashboard#token={ADMIN_TOKEN}")
    assert 'class="audit-row" data-audit-action="client.override.set"' in dom
    assert "&lt;b&gt;mallory&lt;/b&gt;" in dom and "<b>mallory</b>" not in dom  # text, not markup
    assert "admin-token" in dom
