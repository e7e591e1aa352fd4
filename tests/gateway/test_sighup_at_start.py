"""A SIGHUP that reaches ``ipgate serve`` during its start-up is applied once it serves, never lost.

Defect: start-up has its own SIGHUP handler (it notes the hang-up; the serving one reloads), and a hang-up is
run by the loop a turn after it arrives. One that arrived after the listeners' last await but before the serving
handler replaced the start-up one was run by the start-up handler *after* start-up had looked whether one had
come: logged as "the configuration is re-read once started" and never re-read. The worker then served the old
models (beside workers of a supervisor that did reload) until the next hang-up.

Second defect, the same loss earlier: from the moment ``ipgate serve`` had read the file until the worker's
start-up handler was installed (the port claims, the TLS context, the event loop's creation) a hang-up was
ignored (SIG_IGN, so that it could not kill a starting gateway), on the grounds that the file was read after it:
it was read before it.

Real parts: ``ipgate serve`` (the CLI's ``main``) in a child process, a real simulated backend, the metrics and
models read over HTTP. The child changes the file and sends the hang-up to its own process right after reading
the file, or right after its admin listener starts listening (start-up's last await): the deterministic form of
a signal arriving then."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess

_CHILD = """
import os, signal, sys
from pathlib import Path

import yaml

import gateway.server as server
from gateway.cli import main

config_path, when = sys.argv[1:]


def change_and_hang_up():
    # the file changes (a model added) and a reload is asked for
    cfg = yaml.safe_load(Path(config_path).read_text())
    cfg["models"].append({**cfg["models"][0], "name": "added"})
    Path(config_path).write_text(yaml.safe_dump(cfg))
    os.kill(os.getpid(), signal.SIGHUP)


if when == "as start-up ends":  # right after the admin listener starts listening: start-up's last await
    start = server._AdminSite.start

    async def start_then_hang_up(self):
        await start(self)
        change_and_hang_up()

    server._AdminSite.start = start_then_hang_up
else:  # right after ipgate serve read the file, before any handler of its own
    load = server.load_config

    def load_then_hang_up(path):
        cfg = load(path)
        change_and_hang_up()
        return cfg

    server.load_config = load_then_hang_up
sys.exit(main(["serve", "--config", config_path]))
"""


def _get(url: str, token: str | None = None) -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return str(r.read().decode())


@pytest.mark.parametrize("when", ["after the file is read", "as start-up ends"])
async def test_a_hang_up_during_start_up_is_reloaded_once_serving(tmp_path: Path, when: str) -> None:
    async with sim_backend() as sim:
        gw = GatewayProcess(gateway_config(sim.url), tmp_path)
        cfg = yaml.safe_load(gw.config_path.read_text())
        assert [m["name"] for m in cfg["models"]] == ["sim"]
        script = tmp_path / "child.py"
        script.write_text(_CHILD)
        log = gw.log_path.open("wb")
        gw.proc = subprocess.Popen([sys.executable, str(script), str(gw.config_path), when], env=gw.env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while gw.ready() != 200:
                assert gw.proc.poll() is None, gw.output()
                assert time.monotonic() < deadline, gw.output()
                time.sleep(0.05)
            models: list[str] = []
            deadline = time.monotonic() + 10
            while "added" not in models and time.monotonic() < deadline:
                models = [m["id"] for m in json.loads(_get(gw.url + "/v1/models", gw.token("a")))["data"]]
                time.sleep(0.1)
            # before: ['sim'] for good (the hang-up noted by the start-up handler after start-up had looked)
            assert models == ["added", "sim"], gw.output()[-3000:]
            metrics = _get(gw.admin_url + "/metrics")
            assert 'ipgate_config_reloads_total{result="applied",source="signal"} 1.0' in metrics
        finally:
            gw.stop()
            log.close()
