"""``ipgate serve`` as a child process, for tests of signals, workers and shared state.

    with GatewayProcess(config_dict, tmp_path) as gw:   # writes the YAML, starts, waits for /readyz
        gw.url, gw.admin_url, gw.token("alice"), gw.proc
        gw.signal(signal.SIGTERM); gw.wait(timeout=10) -> exit code
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.harness import JWT_SECRET, free_port, mint_token


def child_pids(pid: int) -> list[int]:
    """The live (not zombie) children of ``pid``, from ``/proc`` (the workers of a supervising gateway)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                out.append(int(d.name))
    return out


class GatewayProcess:
    def __init__(self, config: dict[str, Any], workdir: Path, *, workers: int = 1, port: int | None = None,
                 admin_port: int | None = None, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), tls_ca: Path | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.extra_args = extra_args
        self.preexec = preexec  # run in the child before ipgate starts (e.g. a resource limit)
        # server.tls in the config: the listeners speak https, verified against this CA
        self.tls = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca is not None else None
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        cfg = dict(config)
        cfg["listen"] = f"127.0.0.1:{self.port}"
        cfg["admin_listen"] = f"127.0.0.1:{self.admin_port}"
        cfg.setdefault("auth", {}).setdefault("jwt", {})["secret_env"] = "IPGATE_TEST_JWT_SECRET"
        self.config_path = workdir / f"ipgate-{self.port}.yaml"
        self.write_config(cfg)
        self.env = {**os.environ, "IPGATE_TEST_JWT_SECRET": JWT_SECRET, **(env or {})}
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"ipgate-{self.port}.log"

    def write_config(self, cfg: dict[str, Any]) -> None:
        cfg = dict(cfg)
        cfg["listen"] = f"127.0.0.1:{self.port}"
        cfg["admin_listen"] = f"127.0.0.1:{self.admin_port}"
        cfg.setdefault("auth", {}).setdefault("jwt", {})["secret_env"] = "IPGATE_TEST_JWT_SECRET"
        self.config_path.write_text(yaml.safe_dump(cfg))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.admin_port}"

    def token(self, client_id: str) -> str:
        return mint_token(JWT_SECRET, client_id)

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path),
             "--workers", str(self.workers), *self.extra_args], env=self.env, stdout=self._log,
            stderr=subprocess.STDOUT, preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ipgate serve exited with {self.proc.returncode}:\n{self.output()}")
            if self.ready() == 200:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"ipgate serve did not become ready in {timeout} s:\n{self.output()}")

    def ready(self) -> int | None:
        try:
            with urllib.request.urlopen(self.admin_url + "/readyz", timeout=1, context=self.tls) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
