"""A reload that adds the first fingerprint reference to a gateway that had no alert dispatcher (detection off,
no sinks, no reference at start-up): its mismatch must still raise an alert (it was dropped, so the dashboard
and ``/admin/alerts`` never showed it while the backend was quarantined)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.admin.routing import reload_from_config
from gateway.config import parse_config
from gateway.fingerprint_client import probe_backend
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import gateway_config, running_gateway


async def test_a_reference_added_by_a_reload_alerts_on_a_mismatch(tmp_path: Path) -> None:
    srv = ModelServer()
    await srv.start()
    try:
        ref = tmp_path / "ref.json"
        ref.write_text((await probe_backend(srv.url, "sim")).dumps(), encoding="utf-8")
        cfg = gateway_config(srv.url)  # detection off, no alert sinks, no reference
        async with running_gateway(cfg) as gw:
            assert gw.ctx.alerts is not None and gw.ctx.fingerprint is not None
            cfg["models"][0]["backends"][0]["fingerprint_reference"] = str(ref)
            reload_from_config(gw.ctx, parse_config(cfg))
            srv.weights = "swapped"  # the backend now serves another model
            (check,) = await gw.ctx.fingerprint.check_now()
            assert check.quarantined
            assert await gw.ctx.alerts.flush(10.0)
            alerts = [json.loads(a) for a in await gw.ctx.store.recent_alerts(10)]
    finally:
        await srv.close()
    assert any("fingerprint" in json.dumps(a) for a in alerts), alerts
