"""A SIGHUP that reaches ``ipgate serve`` while it stops must not kill it: a reload forwarded (or sent by a config
management run) during a rolling restart would otherwise turn a clean exit into a death by signal, which a
process manager reports as a failure (and the supervisor as a crashed worker)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess


@pytest.mark.parametrize("workers", [1, 2])
async def test_hang_ups_through_the_whole_stop_leave_a_clean_exit(tmp_path: Path, workers: int) -> None:
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, server={"drain_timeout_s": 0.2})
        cfg["auth"]["jwt"].pop("secret_file", None)
        for attempt in range(3):  # each attempt hangs up every millisecond from SIGTERM to the exit
            gw = GatewayProcess(cfg, tmp_path, workers=workers).start()
            assert gw.proc is not None
            try:
                gw.signal(signal.SIGTERM)
                deadline = time.monotonic() + 20
                while gw.proc.poll() is None and time.monotonic() < deadline:
                    gw.signal(signal.SIGHUP)
                    time.sleep(0.001)
                code = gw.wait(timeout=5)
            finally:
                gw.stop()
            assert code == 0, f"attempt {attempt}: exit {code}\n{gw.output()[-3000:]}"
