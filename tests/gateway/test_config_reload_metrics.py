"""A config reload that is not applied keeps the running config, says why once in the log, and shows in the
metrics (``ipgate_config_reloads_total{source,result}``, ``ipgate_config_last_reload_successful``), so the
shipped alert can tell the on-call that the file on disk is not what runs; the SIGHUP and the admin reload
alike, against ``ipgate serve``."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.harness import gateway_config
from tests.support.process import GatewayProcess

ADMIN = "config-reload-metrics-admin-token"


def _metrics(gw: GatewayProcess) -> dict[str, float]:
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("ipgate_config_") and not line.startswith("#") and "_created" not in line}


def _admin_reload(gw: GatewayProcess) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(gw.admin_url + "/admin/routing/reload", method="POST",
                                 headers={"Authorization": "Bearer " + ADMIN})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_for(gw: GatewayProcess, series: str, value: float) -> dict[str, float]:
    deadline = time.monotonic() + 10
    while True:
        m = _metrics(gw)
        if m.get(series) == value or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_a_rejected_reload_is_counted_and_flagged_until_one_is_applied(tmp_path: Path) -> None:
    cfg = gateway_config("http://127.0.0.1:1", admin={"token_env": "RELOAD_TEST_ADMIN"})
    with GatewayProcess(cfg, tmp_path, env={"RELOAD_TEST_ADMIN": ADMIN}) as gw:
        good = gw.config_path.read_bytes()
        assert _metrics(gw)["ipgate_config_last_reload_successful"] == 1.0
        gw.config_path.write_bytes(good + b"routing: {retries: 0}\n")  # a duplicate section: invalid
        gw.signal(signal.SIGHUP)
        m = _wait_for(gw, 'ipgate_config_reloads_total{result="rejected",source="signal"}', 1.0)
        assert m['ipgate_config_reloads_total{result="rejected",source="signal"}'] == 1.0, m
        assert m["ipgate_config_last_reload_successful"] == 0.0, m
        status, body = _admin_reload(gw)
        assert status == 400 and body["error"]["code"] == "invalid_config"  # type: ignore[index]
        m = _metrics(gw)
        assert m['ipgate_config_reloads_total{result="rejected",source="admin"}'] == 1.0, m
        assert m["ipgate_config_last_reload_successful"] == 0.0
        assert gw.output().count("reload ignored") == 1  # logged once per rejected SIGHUP
        gw.config_path.write_bytes(good)
        status, _ = _admin_reload(gw)
        assert status == 200
        m = _metrics(gw)
        assert m['ipgate_config_reloads_total{result="applied",source="admin"}'] == 1.0, m
        assert m["ipgate_config_last_reload_successful"] == 1.0
        gw.signal(signal.SIGHUP)
        m = _wait_for(gw, 'ipgate_config_reloads_total{result="applied",source="signal"}', 1.0)
        assert m['ipgate_config_reloads_total{result="applied",source="signal"}'] == 1.0, m
        assert gw.ready() == 200
