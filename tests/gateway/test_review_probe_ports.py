"""Review of the port claim (``gateway/portclaim.py``, ``ipgate serve --workers N``): defects found by an
adversarial pass.

The supervisor claims ``listen``/``admin_listen`` once, at start-up, and its workers bind beside the claim
without claiming (``--supervised``). A worker that dies is restarted and re-reads the config file; if the
file's ``listen`` was edited in between (an operator preparing a move, a config-management run), the new worker
bound the *new* address unclaimed, with ``SO_REUSEPORT``: beside another gateway already serving there, which
then silently lost a share of its connections -- the very failure the claim exists to prevent. The restarted
worker now serves the addresses the supervisor holds (and says that the change needs a restart).

Also: a slow name lookup held the host-wide start-up lock for its whole duration."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.portclaim import claim_ports
from tests.support.harness import free_port, gateway_config
from tests.support.process import GatewayProcess, child_pids
from tests.support.stall import OwnClock


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes against /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m[1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # state LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _wait(cond: Any, what: str, gw: GatewayProcess, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what}:\n{gw.output()}"
        time.sleep(0.05)


def test_a_restarted_worker_keeps_the_claimed_address_when_the_file_moved_listen(tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with GatewayProcess(gateway_config("http://127.0.0.1:1"), other_dir) as other, \
            GatewayProcess(gateway_config("http://127.0.0.1:1"), tmp_path, workers=2) as gw:
        assert gw.proc is not None and other.proc is not None
        _wait(lambda: gw.output().count("ipgate serving on") >= 2, "both workers bound", gw)
        pids = child_pids(gw.proc.pid)
        assert len(pids) == 2
        # the file now names the other gateway's port (and a new admin port)
        cfg: dict[str, Any] = yaml.safe_load(gw.config_path.read_text())
        new_admin = free_port()
        cfg["listen"], cfg["admin_listen"] = f"127.0.0.1:{other.port}", f"127.0.0.1:{new_admin}"
        gw.config_path.write_text(yaml.safe_dump(cfg))
        os.kill(pids[0], 9)
        _wait(lambda: len(child_pids(gw.proc.pid)) == 2 and pids[0] not in child_pids(gw.proc.pid)
              and gw.output().count("ipgate serving on") >= 3, "the killed worker was restarted", gw)
        new = next(p for p in child_pids(gw.proc.pid) if p not in pids)
        _wait(lambda: len(_listening_ports(new)) >= 2, "the new worker listens", gw)
        ports = _listening_ports(new)
        # the other gateway's port is not shared with it; the new worker serves what the supervisor claimed
        assert other.port not in ports and new_admin not in ports, (ports, gw.output())
        assert ports == {gw.port, gw.admin_port}, (ports, gw.output())
        assert "restart ipgate serve" in gw.output()
        assert gw.ready() == 200 and other.ready() == 200


def test_a_slow_name_lookup_does_not_hold_the_host_wide_start_up_lock(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """``listen: some.host:8080`` needs a DNS answer, which can take seconds (a resolver timing out). The lock
    every ipgate on the host takes to claim its ports is meant to be held for microseconds; a lookup inside it
    made a gateway starting at the same moment wait 2 s, then claim *without* the lock and blame "another
    process" in a WARNING. Names are resolved before the lock is taken."""
    import socket as socket_mod

    real = socket_mod.getaddrinfo
    looking_up = threading.Event()

    def slow_dns(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "slow-dns.test":
            looking_up.set()
            time.sleep(2.5)  # the resolver's timeout
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket_mod, "getaddrinfo", slow_dns)
    slow_port, fast_port = free_port(), free_port()
    claims: list[Any] = []
    slow = threading.Thread(target=lambda: claims.append(claim_ports({"listen": ("slow-dns.test", slow_port)})))
    slow.start()
    try:
        assert looking_up.wait(5)
        clock = OwnClock()  # waiting for the lock counts; waiting for a CPU on a busy host does not
        with caplog.at_level(logging.WARNING, logger="gateway.portclaim"), \
                claim_ports({"listen": ("127.0.0.1", fast_port)}):
            waited = clock.elapsed()
        assert waited < 1.0, f"the other gateway waited {waited:.1f} s for the lock"
        assert not [r for r in caplog.records if "start-up lock" in r.getMessage()]
        slow.join(10)
        assert len(claims) == 1 and claims[0].addresses == [("127.0.0.1", slow_port)]
    finally:
        slow.join(10)
        for c in claims:
            c.close()
