"""``ipgate serve`` raises its open-file limit to the hard limit. Every client and backend connection holds a
descriptor and the soft limit is the gateway's only cap on them: started from a shell whose soft limit is 1 024
(the hard limit far above), the gateway stopped accepting connections at about a thousand, logging a failed
accept for each try, while the hard limit allowed raising it without any privilege."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import fdlimit
from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess

LOW = 256


def _soft_limit(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files"))
    return int(line.split()[3])


async def test_serve_raises_its_soft_open_file_limit_to_the_hard_limit(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = fdlimit.MAX_NOFILE if hard == resource.RLIM_INFINITY else hard
    if want <= LOW:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise to")

    def low_soft_limit() -> None:  # as a shell with `ulimit -Sn 256` would start it
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, hard))

    async with sim_backend() as sim:
        with GatewayProcess(gateway_config(sim.url), tmp_path, workers=2, preexec=low_soft_limit) as gw:
            assert gw.proc is not None
            assert _soft_limit(gw.proc.pid) == want
            assert f"open-file limit raised from {LOW} to {want}" in gw.output()


def test_a_low_hard_limit_is_said_once() -> None:
    # in a child: the hard limit, once lowered, cannot be raised again without privilege
    code = (
        "import logging, resource; logging.basicConfig(level='INFO', format='%(levelname)s %(message)s');"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300));"
        "from gateway.fdlimit import raise_open_file_limit; print('->', raise_open_file_limit())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert "-> 300" in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING open-file limit 300 (hard limit 300)"), out.stderr
