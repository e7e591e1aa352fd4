"""A second ``ipgate serve`` on a port a running gateway holds fails start-up (exit 2, one line on stderr).

The workers bind with ``SO_REUSEPORT`` (``--workers N``), which used to let a second, unrelated gateway bind the
same port silently and receive a share of the connections. ``gateway.portclaim`` claims the listen addresses
first. Unit tests drive ``claim_ports`` with real sockets; the end-to-end tests start real ``ipgate serve``
processes (one worker and ``--workers 2``) against a running gateway.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.portclaim import LOCK_NAME, PortInUse, claim_ports
from tests.support.harness import JWT_SECRET, free_port, gateway_config
from tests.support.process import GatewayProcess, child_pids


def _listener(host: str = "127.0.0.1", port: int = 0, family: int = socket.AF_INET) -> socket.socket:
    """A socket bound like a gateway worker's listener (asyncio: SO_REUSEADDR, plus SO_REUSEPORT), listening."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen()
    return s


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- claim_ports, with real sockets ------------------------------------------------------------------------


def test_a_running_reuseport_listener_is_in_use() -> None:
    # exactly what a running gateway holds: before the fix a second gateway bound beside it
    with _listener() as running:
        port = running.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"^\[Errno {errno.EADDRINUSE}\] port {port} on 127\.0\.0\.1 is "
                                            r"already in use$") as e:
            claim_ports({"listen": ("127.0.0.1", port)})
        assert e.value.errno == errno.EADDRINUSE
        assert e.value.strerror == f"port {port} on 127.0.0.1 is already in use"


def test_a_claim_admits_our_workers_and_refuses_other_gateways_even_between_worker_restarts() -> None:
    port = free_port()
    with claim_ports({"listen": ("127.0.0.1", port)}) as claim:
        assert claim.addresses == [("127.0.0.1", port)]
        with pytest.raises(PortInUse):  # nothing listens yet: the placeholder alone holds the port
            claim_ports({"listen": ("127.0.0.1", port)})
        workers = [_listener(port=port), _listener(port=port)]  # our workers bind beside the placeholder
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the kernel hands connections to the listening workers only
        with pytest.raises(PortInUse):
            claim_ports({"listen": ("127.0.0.1", port)})
        for w in workers:
            w.close()
        with pytest.raises(PortInUse):  # every worker dead, restarts pending: still ours
            claim_ports({"listen": ("127.0.0.1", port)})
        with _listener(port=port):  # a restarted worker binds again
            pass
    with claim_ports({"listen": ("127.0.0.1", port)}) as again:  # released by close()
        assert again.addresses == [("127.0.0.1", port)]


def test_connections_left_in_time_wait_by_an_earlier_run_do_not_count() -> None:
    with _listener() as old:
        port = old.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=2)
        conn, _ = old.accept()
        conn.close()  # the server side closes first: its end of the connection sits in TIME_WAIT
        client.recv(1)
        client.close()
    with claim_ports({"listen": ("127.0.0.1", port)}):
        pass


@pytest.mark.parametrize(("held", "claimed"), [("127.0.0.1", "0.0.0.0"), ("0.0.0.0", "127.0.0.1")])
def test_a_wildcard_and_a_specific_address_overlap_either_way(held: str, claimed: str) -> None:
    port = free_port()
    with _listener(held, port), pytest.raises(PortInUse, match=f"port {port} on {claimed} is already in use"):
        claim_ports({"listen": (claimed, port)})
    # and a claim (nothing listens yet) blocks the other the same way
    with claim_ports({"listen": (held, port)}), pytest.raises(PortInUse):
        claim_ports({"listen": (claimed, port)})


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_ipv6_addresses_are_claimed_and_named_in_brackets() -> None:
    with _listener("::1", family=socket.AF_INET6) as running:
        port = running.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"port {port} on \[::1\] is already in use"):
            claim_ports({"listen": ("::1", port)})
        with pytest.raises(PortInUse, match=rf"port {port} on \[::\] is already in use"):
            claim_ports({"listen": ("::", port)})
        with claim_ports({"listen": ("127.0.0.1", port)}):  # IPv4 is another address (V6ONLY, as asyncio)
            pass


def test_a_host_name_is_claimed_on_every_address_it_resolves_to() -> None:
    # asyncio binds every address getaddrinfo returns ("localhost": 127.0.0.1, and ::1 where configured)
    with _listener("127.0.0.1") as running:
        port = running.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"port {port} on localhost \(127\.0\.0\.1\) is already in use"):
            claim_ports({"listen": ("localhost", port)})


def test_listen_and_admin_listen_on_one_address_is_refused() -> None:
    port = free_port()
    with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is already in use .by this "
                                        "configuration's listen."):
        claim_ports({"listen": ("127.0.0.1", port), "admin_listen": ("127.0.0.1", port)})
    with claim_ports({"listen": ("127.0.0.1", port)}):  # the failed claim let go of what it had taken
        pass


def test_an_address_the_host_does_not_have_is_not_reported_as_in_use() -> None:
    port = free_port()
    with pytest.raises(OSError, match=f"192.0.2.1:{port}: ") as e:  # TEST-NET-1: never a local address
        claim_ports({"listen": ("192.0.2.1", port)})
    assert not isinstance(e.value, PortInUse) and e.value.errno == errno.EADDRNOTAVAIL


def test_port_zero_is_not_claimed() -> None:
    with claim_ports({"listen": ("127.0.0.1", 0), "admin_listen": ("127.0.0.1", 0)}) as claim:
        assert claim.addresses == []


def test_claims_wait_for_the_start_up_lock() -> None:
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(LOCK_NAME)  # another ipgate between its check and its placeholder
    except OSError:
        lock.close()
        pytest.skip("the start-up lock is held by another process right now")
    done: list[float] = []
    t0 = time.monotonic()

    def claim() -> None:
        with claim_ports({"listen": ("127.0.0.1", free_port())}):
            done.append(time.monotonic() - t0)

    thread = threading.Thread(target=claim)
    thread.start()
    time.sleep(0.2)
    assert done == []
    lock.close()
    thread.join(5)
    assert len(done) == 1 and 0.2 <= done[0] < 2.0


# --- ipgate serve, end to end -------------------------------------------------------------------------------


def _second_serve(tmp_path: Path, name: str, listen: str, admin_listen: str, *extra: str) -> tuple[int, str]:
    """Start another ``ipgate serve``; its exit code and output (a gateway still running after 15 s shares the
    port: it is stopped and reported as such)."""
    cfg = gateway_config("http://127.0.0.1:1", listen=listen, admin_listen=admin_listen)
    cfg["auth"]["jwt"]["secret_env"] = "IPGATE_JWT_SECRET"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "IPGATE_JWT_SECRET": JWT_SECRET})
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
        return -1, f"{name}: a second gateway started and shared the port:\n{err[-3000:]}"
    return proc.returncode, out + err


@pytest.fixture(params=[1, 2], ids=["running-1-worker", "running-2-workers"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(gateway_config("http://127.0.0.1:1"), tmp_path, workers=request.param).start()
    try:
        yield gw
    finally:
        gw.stop()


def test_a_second_serve_on_a_running_gateways_ports_exits_2(running: GatewayProcess, tmp_path: Path) -> None:
    p, a = running.port, running.admin_port
    cases: list[tuple[str, str, str, tuple[str, ...], str]] = [
        ("public", f"127.0.0.1:{p}", f"127.0.0.1:{free_port()}", (), f"port {p} on 127.0.0.1"),
        ("admin", f"127.0.0.1:{free_port()}", f"127.0.0.1:{a}", (), f"port {a} on 127.0.0.1"),
        ("workers", f"127.0.0.1:{p}", f"127.0.0.1:{free_port()}", ("--workers", "2"), f"port {p} on 127.0.0.1"),
        ("wildcard", f"0.0.0.0:{p}", f"127.0.0.1:{free_port()}", (), f"port {p} on 0.0.0.0"),
    ]
    for name, listen, admin, extra, where in cases:
        rc, output = _second_serve(tmp_path, name, listen, admin, *extra)
        assert rc == 2, (name, output)
        lines = [ln for ln in output.splitlines() if ln.startswith("ipgate serve:")]
        assert lines == [f"ipgate serve: cannot listen: {where} is already in use"], (name, output)
        assert "Traceback" not in output and "restarting" not in output, (name, output)
    assert running.ready() == 200 and running.proc is not None and running.proc.poll() is None
    assert "Traceback" not in running.output()


def test_workers_still_restart_and_serve_beside_the_claim(tmp_path: Path) -> None:
    # the supervisor holds the claim; its workers (and a restarted one) bind beside it
    cfg: dict[str, Any] = gateway_config("http://127.0.0.1:1")
    with GatewayProcess(cfg, tmp_path, workers=2) as gw:
        assert gw.proc is not None
        deadline = time.monotonic() + 20
        while gw.output().count("ipgate serving on") < 2:  # both workers bound (ready() answers after one)
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.05)
        pids = child_pids(gw.proc.pid)
        assert len(pids) == 2
        os.kill(pids[0], 9)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = child_pids(gw.proc.pid)
            if len(now) == 2 and pids[0] not in now and gw.output().count("ipgate serving on") >= 3:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the killed worker was not restarted:\n{gw.output()}")
        assert gw.ready() == 200
        assert "cannot listen" not in gw.output() and "Traceback" not in gw.output()

