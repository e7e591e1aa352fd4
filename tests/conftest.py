"""Shared fixtures: a real ``redis-server`` for the whole test session, and private ones for failure tests.

- ``redis_url``: the session's server, flushed before each test (function scope).
- ``redis_process``: a private ``RedisProcess`` for tests that kill, pause (SIGSTOP), resume or restart it.

Nothing is skipped silently: without a ``redis-server`` binary every test that needs one fails with a message
saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_BIN = os.environ.get("IPGATE_TEST_REDIS_SERVER") or shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A ``redis-server`` child process on a loopback port: no persistence, killable, pausable."""

    def __init__(self, port: int | None = None, *, extra_args: tuple[str, ...] = ()) -> None:
        if REDIS_BIN is None:
            pytest.fail(
                "redis-server not found on PATH: the store tests run against a real Redis. Install it "
                "(`sudo apt-get install redis-server`, or `make system-deps`) or point "
                "IPGATE_TEST_REDIS_SERVER at the binary.",
                pytrace=False,
            )
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="ipgate-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.extra_args = extra_args  # e.g. ("--requirepass", "pw") or ("--unixsocket", path)
        self._password = extra_args[extra_args.index("--requirepass") + 1] if "--requirepass" in extra_args else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        assert REDIS_BIN is not None
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir, "--loglevel", "warning", *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited at start-up (port {self.port}): {err}")
            try:
                with redis.Redis(port=self.port, password=self._password, socket_timeout=0.5) as r:
                    r.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.01)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def kill(self) -> None:
        """SIGKILL: the server vanishes, connections are reset, data is gone."""
        if self.proc is not None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port stays open and connections stay up, but nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        self.kill()
        self.start()

    @property
    def dir(self) -> str:
        return self._dir

    def flush(self) -> None:
        with redis.Redis(port=self.port, password=self._password, socket_timeout=5) as r:
            r.flushall()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    rp = RedisProcess().start()
    yield rp
    rp.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """URL of the session's redis-server, emptied before the test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A private redis-server this test may kill, pause, resume and restart."""
    rp = RedisProcess().start()
    yield rp
    rp.stop()


# --- Redis Cluster ---------------------------------------------------------------------------------------------

REDIS_CLI = os.environ.get("IPGATE_TEST_REDIS_CLI") or shutil.which("redis-cli")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisClusterProcess:
    """A real 3-primary Redis Cluster (no replicas) on free loopback ports, built with ``redis-cli --cluster``."""

    host = "127.0.0.1"  # the address the nodes are joined (and announced) by

    def __init__(self, primaries: int = 3) -> None:
        if REDIS_BIN is None or REDIS_CLI is None:
            pytest.skip("Redis Cluster tests need both redis-server and redis-cli on PATH "
                        "(`sudo apt-get install redis-server` installs both)")
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
        self.nodes = [RedisProcess(_cluster_port(), extra_args=args) for _ in range(primaries)]

    @property
    def url(self) -> str:
        return self.nodes[0].url.rsplit("/", 1)[0]

    def client(self, i: int) -> redis.Redis:
        return redis.Redis(port=self.nodes[i].port, socket_timeout=5)

    def start(self) -> RedisClusterProcess:
        for n in self.nodes:
            n.start()
        assert REDIS_CLI is not None
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"{self.host}:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 15.0) -> None:
        """Until every node says cluster_state:ok and agrees that all 16384 slots are served."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                infos = []
                for i in range(len(self.nodes)):
                    with self.client(i) as r:
                        infos.append(r.cluster("info"))
                if all(i["cluster_state"] == "ok" and int(i["cluster_slots_ok"]) == 16384 for i in infos):
                    return
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError("Redis Cluster did not reach cluster_state:ok")

    def node_of_slot(self, slot: int) -> int:
        """Index (in ``nodes``) of the primary serving ``slot``."""
        with self.client(0) as r:
            rows = r.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        for row in rows:
            if row[0] <= slot <= row[1]:
                return next(i for i, n in enumerate(self.nodes) if n.port == int(row[2][1]))
        raise LookupError(slot)

    def node_id(self, i: int) -> str:
        with self.client(i) as r:
            return str(r.execute_command("CLUSTER", "MYID").decode())  # type: ignore[no-untyped-call]

    def flush(self) -> None:
        for i in range(len(self.nodes)):
            with self.client(i) as r:
                r.flushall()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    """A real 3-primary Redis Cluster for the session (skipped only when redis-server/redis-cli are missing)."""
    rc = RedisClusterProcess().start()
    yield rc
    rc.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcess) -> str:
    """Seed URL of the session's cluster, every primary emptied before the test."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the CLI looks for ``/etc/ipgate/ipgate.yaml`` (``gateway/cli/findconfig.py``), moved into
    ``tmp_path`` (absent until a test writes it); no ``$IPGATE_CONFIG``."""
    from gateway.cli import findconfig

    monkeypatch.delenv("IPGATE_CONFIG", raising=False)
    path = tmp_path / "etc" / "ipgate.yaml"
    monkeypatch.setattr(findconfig, "DEFAULT_CONFIG", path)
    return path

