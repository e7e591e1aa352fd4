"""Review session 14c (operations fixes): the supervisor's back-off after a worker refuses a configuration broken
since start-up is a deadline, not a sleep -- a SIGTERM during it ends ``ipgate serve`` at once, and another
slot's crashed worker is restarted meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess, child_pids

# ``ipgate serve`` with the start-up window closed at once: a worker exiting 2 is then backed off, not fatal
DRIVER = ("import sys, gateway.supervisor as s; s.STARTUP_REFUSAL_S = 0.0; from gateway.cli import main; "
          "sys.exit(main(sys.argv[1:]))")


class _Driven(GatewayProcess):
    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, "serve", "--config", str(self.config_path), "--workers",
             str(self.workers)], env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while self.ready() != 200:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.05)
        return self


def _wait_for(pred, timeout: float, what: str, gw: GatewayProcess) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what}:\n{gw.output()}"
        time.sleep(0.05)


@pytest.mark.slow
async def test_back_off_neither_delays_sigterm_nor_other_restarts(tmp_path: Path) -> None:
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url)
        with _Driven(cfg, tmp_path, workers=2) as gw:
            assert gw.proc is not None
            # both workers must have read the good file: one still starting when it breaks refuses it and is gone
            # before the test kills it (ready() answers as soon as one of them serves)
            _wait_for(lambda: gw.output().count("ipgate serving on") >= 2, 60, "the second worker never served", gw)
            first, second = child_pids(gw.proc.pid)
            gw.config_path.write_text(gw.config_path.read_text() + "\nmodels: not-a-list\n")  # broken from now
            os.kill(first, signal.SIGKILL)  # restarted in 1 s, refuses the file (exit 2): back-off 2 s, 4 s
            # (each refusal is a worker start-up: seconds each on a loaded 2-core host, hence the long bound)
            _wait_for(lambda: "restarting it in 4 s" in gw.output(), 60, "no 4 s back-off", gw)
            # during the back-off the other slot's worker dies: it is restarted after its own 1 s
            os.kill(second, signal.SIGKILL)
            _wait_for(lambda: "exited with -9; restarting it in 1 s" in gw.output().split(
                "restarting it in 4 s", 1)[1], 3, "the second worker's exit unnoticed during the back-off", gw)
            gw.signal(signal.SIGTERM)
            t0 = time.monotonic()
            gw.wait(timeout=10)
            assert time.monotonic() - t0 < 2.0, gw.output()


ADMIN = "s14c-admin-token-0123456789"


async def test_a_sighup_during_start_up_is_applied_once_started(tmp_path: Path) -> None:
    """The worker read its file before start-up; a SIGHUP (an operator's, or the supervisor forwarding an admin
    reload) while it is still starting (here: a JWKS fetch that hangs) used to be dropped, and the worker served
    the models of the old file until the next reload."""
    import asyncio
    import json
    import socket
    import urllib.request

    idp = socket.socket()
    idp.bind(("127.0.0.1", 0))
    idp.listen(8)  # accepts, never answers: start-up waits for jwks_timeout_s
    idp.settimeout(20)
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, admin={"token_env": "S14C_ADMIN"})
        cfg["auth"]["jwt"] = {"algorithms": ["RS256"], "jwks_timeout_s": 2.0,
                              "jwks_url": f"http://127.0.0.1:{idp.getsockname()[1]}/jwks"}
        gw = GatewayProcess(cfg, tmp_path, env={"S14C_ADMIN": ADMIN})
        starting = asyncio.create_task(asyncio.to_thread(gw.start))
        try:
            conn, _ = await asyncio.to_thread(idp.accept)  # the worker is starting, its file read
            cfg["models"].append({"name": "sim2", "backends": [{"name": "c0", "url": sim.url}]})
            gw.write_config(cfg)
            gw.signal(signal.SIGHUP)
            await starting
            req = urllib.request.Request(gw.admin_url + "/admin/routing", headers={"Authorization": f"Bearer {ADMIN}"})
            deadline = time.monotonic() + 5
            while True:
                with urllib.request.urlopen(req, timeout=5) as r:
                    models = sorted(json.loads(r.read())["models"])
                if models == ["sim", "sim2"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert models == ["sim", "sim2"], gw.output()
            conn.close()
        finally:
            if not starting.done():
                await asyncio.wait([starting], timeout=25)
            gw.stop()
            idp.close()


async def test_a_first_worker_refusing_the_file_ends_serve_after_a_slow_start_up(tmp_path: Path) -> None:
    """A first worker exiting 2 refused the file ipgate serve started with, however long its start-up took:
    with the 30 s window alone, a start-up slower than it (here: the window closed at once) was restarted with
    a growing back-off for ever, never serving and never exiting."""
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, admin={"token_env": "S14C_ADMIN"})
        gw = _Driven(cfg, tmp_path, workers=2, env={"S14C_ADMIN": "short"})  # refused by the worker only
        gw._log = gw.log_path.open("wb")
        gw.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, "serve", "--config", str(gw.config_path), "--workers", "2"],
            env=gw.env, stdout=gw._log, stderr=subprocess.STDOUT)
        try:
            assert gw.wait(timeout=20) == 2, gw.output()
            assert "refused the configuration at start-up" in gw.output()
        finally:
            gw.stop()
