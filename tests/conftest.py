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
