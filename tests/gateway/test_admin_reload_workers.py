"""``POST /admin/routing/reload`` under ``ipgate serve --workers N`` reloads only the worker the request
reached (SO_REUSEPORT hands the connection to one of them): the others keep serving the old models."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess

ADMIN = "s14-admin-token-0123456789"


def _get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Connection": "close"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


async def test_an_admin_reload_reaches_every_worker(tmp_path: Path) -> None:
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, admin={"token_env": "S14_ADMIN"})
        with GatewayProcess(cfg, tmp_path, workers=2, env={"S14_ADMIN": ADMIN}) as gw:
            cfg["models"].append({"name": "sim2", "backends": [{"name": "c0", "url": sim.url}]})
            gw.write_config(cfg)
            req = urllib.request.Request(gw.admin_url + "/admin/routing/reload", method="POST",
                                         headers={"Authorization": f"Bearer {ADMIN}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
            # the other workers reload when the supervisor's SIGHUP reaches them (asynchronously, within
            # moments): wait for that, then every worker must serve the new file
            deadline = time.monotonic() + 10.0
            while True:
                seen = {tuple(m["id"] for m in _get(gw.url + "/v1/models", gw.token("alice"))["data"])
                        for _ in range(24)}
                if seen == {("sim", "sim2")} or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert seen == {("sim", "sim2")}
