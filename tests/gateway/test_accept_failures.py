"""A gateway at its open-file limit: the failed accepts are counted and logged once, not one traceback each.

Defect: at the process's ``RLIMIT_NOFILE`` every ``accept()`` of either listener fails with EMFILE, and asyncio
reported each to the loop's default exception handler (ERROR with a traceback), retrying the rest of the
listener's backlog after the first failure: 46 369 ERROR tracebacks in about 5 s from one worker whose 128
descriptors were held by idle connections. Anyone able to open connections could flood the log and page whoever
alerts on ERROR lines. Real parts: ``ipgate serve`` in a child process, its limit lowered with ``prlimit``, raw
idle connections, /metrics read over HTTP once they are gone."""

from __future__ import annotations

import resource
import socket
import time
import urllib.request
from pathlib import Path

from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess


async def test_accepts_failing_at_the_open_file_limit_are_counted_and_logged_once(tmp_path: Path) -> None:
    async with sim_backend() as sim:
        with GatewayProcess(gateway_config(sim.url), tmp_path) as gw:
            assert gw.proc is not None
            resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (128, 128))
            conns = []
            try:
                for _ in range(200):  # more than the limit: the rest wait in the listen backlog
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", gw.port))
                    conns.append(s)
                time.sleep(3)
            finally:
                for s in conns:
                    s.close()
            deadline = time.monotonic() + 10
            while gw.ready() != 200 and time.monotonic() < deadline:  # it accepts again once they are gone
                time.sleep(0.1)
            assert gw.ready() == 200
            with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5) as r:
                metrics = r.read().decode()
            out = gw.output()
    assert out.count("out of system resource") == 0 and "Traceback" not in out, \
        out.count("out of system resource")  # before: tens of thousands of each
    failed = next(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("ipgate_accept_failures_total "))
    assert failed >= 1
    lines = [ln for ln in out.splitlines() if "cannot accept connections" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0] and "open-file limit 128" in lines[0], lines
