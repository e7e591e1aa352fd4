"""Review session 16 (lifecycle), with real ``ipgate serve`` processes: the exit after a drain with a trace
collector that hangs, a SIGTERM during start-up, workers outliving a killed supervisor, a first worker refusing a
file changed after another one served, the multiprocess metrics directory; and deploy/ (the systemd unit and the
example configuration) against the code they run."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess, child_pids

ROOT = Path(__file__).resolve().parents[2]
MSG = [{"role": "user", "content": "hello"}]


def _config(*urls: str, **over: Any) -> dict[str, Any]:
    cfg = gateway_config(*urls, **over)
    cfg["auth"]["jwt"].pop("secret_file", None)
    return cfg


def _wait_for(pred: Any, timeout: float, what: str, gw: GatewayProcess) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what}:\n{gw.output()}"
        time.sleep(0.05)


STARTUP_S = 90.0  # how long a gateway's start-up may take, 2 workers on a loaded 2-core host: a precondition's
# deadline, never a bound of what is tested (a failing wait reports what the gateway logged)


def _accept(listener: socket.socket, gw: GatewayProcess, proc: subprocess.Popen[bytes] | None = None
            ) -> socket.socket:
    """The next connection to ``listener`` from the gateway starting (``proc``, else ``gw.proc``): within
    STARTUP_S, and failing at once with its output if ipgate serve exits first."""
    listener.settimeout(0.5)
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            return listener.accept()[0]
        except TimeoutError:
            p = proc or gw.proc
            assert (p is None or p.poll() is None) and time.monotonic() < deadline, \
                f"no connection from the gateway:\n{gw.output()}"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """An OTLP endpoint that accepts connections and never answers (a collector that hangs, or a black hole
    behind a load balancer): every export waits out the exporter's 10 s timeout."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)  # never accepted: the kernel completes the handshakes, nobody reads the requests
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


async def test_a_silent_trace_collector_does_not_hold_up_the_exit_after_the_drain(
        tmp_path: Path, silent_collector: str) -> None:
    # Before: the SDK's shutdown waited for its exporter thread, up to 30 s (10 s per queued batch), after the
    # drain -- past a stop timeout set just above drain_timeout_s, the worker was SIGKILLed.
    async with sim_backend() as sim:
        cfg = _config(sim.url, telemetry={"otlp_endpoint": silent_collector, "sample_ratio": 1.0})
        gw = GatewayProcess(cfg, tmp_path).start()
        try:
            async with aiohttp.ClientSession() as s:
                for i in range(3):  # sampled spans, queued for the (silent) collector
                    async with s.post(gw.url + "/v1/chat/completions",
                                      headers={"Authorization": f"Bearer {gw.token(f'c{i}')}"},
                                      json={"model": "sim", "messages": MSG, "max_tokens": 2}) as r:
                        assert r.status == 200
            t0 = time.monotonic()
            gw.signal(signal.SIGTERM)
            assert await asyncio.to_thread(gw.wait, 30) == 0
            elapsed = time.monotonic() - t0
        finally:
            gw.stop()
    # app.TRACING_GRACE_S (3 s) and the exit; before, at least one exporter timeout (10 s): the bound sits under
    # that, with room for a loaded host (the exit is a child process's: its CPU waits cannot be taken off)
    assert elapsed < 9, f"exit took {elapsed:.1f} s after SIGTERM with nothing in flight:\n{gw.output()}"
    assert "trace exporter did not finish" in gw.output()
    assert "Traceback" not in gw.output()


async def test_a_sigterm_during_start_up_stops_without_ever_serving(tmp_path: Path) -> None:
    # Before: a worker told to stop while it was still starting (here: waiting for its identity provider)
    # finished starting, bound the public listener, answered /readyz 200 (a load balancer's check could put
    # it in rotation) and accepted connections, then drained at once.
    import sys

    idp = socket.socket()
    idp.bind(("127.0.0.1", 0))
    idp.listen(8)  # accepts, never answers: start-up waits for jwks_timeout_s
    cfg = _config("http://127.0.0.1:1")
    cfg["auth"]["jwt"] = {"algorithms": ["RS256"], "jwks_timeout_s": 1.0,
                          "jwks_url": f"http://127.0.0.1:{idp.getsockname()[1]}/jwks"}
    gw = GatewayProcess(cfg, tmp_path)
    with gw.log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(gw.config_path)],
                                env=gw.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            conn = await asyncio.to_thread(_accept, idp, gw, proc)  # the worker is starting
            proc.send_signal(signal.SIGTERM)
            seen: set[object] = set()
            deadline = time.monotonic() + STARTUP_S  # (the stop, on a loaded host; what it must not do is seen)
            while proc.poll() is None and time.monotonic() < deadline:
                seen.add(gw.ready())
                try:
                    socket.create_connection(("127.0.0.1", gw.port), timeout=0.2).close()
                    seen.add("public listener accepted")
                except OSError:
                    pass
                await asyncio.sleep(0.005)
            assert proc.wait(5) == 0, gw.output()
            conn.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            idp.close()
    assert seen <= {None}, (seen, gw.output())
    assert "ipgate serving on" not in gw.output() and "Traceback" not in gw.output()
    assert "SIGTERM during start-up" in gw.output()


async def test_a_first_worker_refusing_a_file_changed_after_another_served_keeps_the_gateway_up(
        tmp_path: Path) -> None:
    # Before: a worker of the first generation that exited 2 (here: its watermark secret file vanished while it
    # was still starting -- a secret or certificate being rotated, a config edited with an error) made the
    # supervisor stop ipgate serve, draining the worker that was already serving: the whole gateway went down,
    # although a file broken after start-up is otherwise logged and ignored while the running config serves.
    idp = socket.socket()
    idp.bind(("127.0.0.1", 0))
    idp.listen(8)  # the IdP: the first worker's JWKS fetch fails at once, the second one's hangs until released
    secret = tmp_path / "wm-secret"
    secret.write_text("s16-watermark-master-secret-0123456789abcdef\n")
    cfg = _config("http://127.0.0.1:1")
    # jwks_timeout_s: the second worker's fetch must outlast the first worker's start-up on a loaded host (it is
    # released by the test, never timed out)
    cfg["auth"]["jwt"] = {"algorithms": ["RS256"], "jwks_timeout_s": STARTUP_S,
                          "jwks_url": f"http://127.0.0.1:{idp.getsockname()[1]}/jwks"}
    cfg["watermark"] = {"enabled": True, "scheme": "lexical", "secret_env": "S16_UNSET_WM_SECRET",
                        "secret_file": str(secret)}
    gw = GatewayProcess(cfg, tmp_path, workers=2)
    starting = asyncio.create_task(asyncio.to_thread(gw.start, STARTUP_S))
    held: socket.socket | None = None
    try:
        first = await asyncio.to_thread(_accept, idp, gw)
        first.close()  # "JWKS unreachable" is logged, that worker goes on starting and serves
        held = conn = await asyncio.to_thread(_accept, idp, gw)  # the other worker waits here, its file read
        await starting
        _wait_for(lambda: gw.output().count("ipgate serving on") == 1, STARTUP_S, "one worker serving", gw)
        secret.unlink()  # rotated away under the starting worker
        conn.close()
        idp.close()  # from now on a JWKS fetch fails at once
        _wait_for(lambda: "wm-secret: cannot read" in gw.output(), STARTUP_S, "the second worker did not refuse", gw)
        # the supervisor's answer to that exit 2, whichever it is (before: "... stopping ipgate serve")
        _wait_for(lambda: re.search(r"worker \d+ (refused the configuration|exited with 2)", gw.output()), STARTUP_S,
                  "the supervisor did not see the refusal", gw)
        assert "stopping ipgate serve" not in gw.output()
        assert re.search(r"worker \d+ exited with 2; restarting it in", gw.output()), gw.output()
        assert gw.proc is not None and gw.proc.poll() is None, gw.output()
        assert gw.ready() == 200
        secret.write_text("s16-watermark-master-secret-0123456789abcdef\n")  # the rotation completes
        _wait_for(lambda: gw.output().count("ipgate serving on") >= 2, STARTUP_S, "the refused slot was not restarted",
                  gw)
        gw.signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    finally:
        if not starting.done():
            await asyncio.wait([starting], timeout=STARTUP_S + 5)
        if held is not None:
            held.close()
        gw.stop()
        idp.close()


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    # Before: a supervisor killed with SIGKILL (supervisord's stopwaitsecs, `timeout`, an operator's kill -9, the
    # OOM killer) left its workers serving for ever, with the old configuration, beyond the reach of reloads,
    # and holding the port: the next `ipgate serve` failed with "port ... is already in use".
    gw = GatewayProcess(_config("http://127.0.0.1:1"), tmp_path, workers=2).start()
    workers: list[int] = []
    try:
        assert gw.proc is not None
        _wait_for(lambda: gw.output().count("ipgate serving on") >= 2, 20, "both workers serving", gw)
        workers = child_pids(gw.proc.pid)
        assert len(workers) == 2
        gw.proc.kill()
        gw.proc.wait(5)
        _wait_for(lambda: not any(_alive(p) for p in workers), 10, "the workers outlived their supervisor", gw)
        assert gw.output().count("SIGTERM: draining") == 2  # a drain, not a kill
        again = GatewayProcess(_config("http://127.0.0.1:1"), tmp_path, port=gw.port, admin_port=gw.admin_port)
        with again:  # the ports are free again
            assert again.ready() == 200
    finally:
        gw.stop()
        for pid in workers:  # on failure: no stray worker left serving
            if _alive(pid) and b"--supervised" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


def test_the_supervisor_keeps_its_metric_files_under_the_configured_multiprocess_dir(tmp_path: Path) -> None:
    # deploy/ipgate.service sets PROMETHEUS_MULTIPROC_DIR=/run/ipgate/metrics (a tmpfs its sandbox can write);
    # the supervisor used a directory in /tmp whatever it said.
    base = tmp_path / "metrics"
    base.mkdir()
    with GatewayProcess(_config("http://127.0.0.1:1"), tmp_path, workers=2,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(base)}) as gw:
        _wait_for(lambda: gw.output().count("ipgate serving on") >= 2, 20, "both workers serving", gw)
        runs = list(base.iterdir())
        assert len(runs) == 1 and runs[0].name.startswith("ipgate-metrics-"), runs
        assert any(runs[0].glob("*.db")), list(runs[0].iterdir())
        gw.signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    assert base.is_dir() and list(base.iterdir()) == []  # this run's directory is removed, the operator's kept


# --- deploy/ipgate.service against the code and the configuration it runs ---------------------------------


def _unit() -> dict[str, list[str]]:
    """``[Service]`` of the unit: each key with every value it is given (ExecReload= appears twice)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in (ROOT / "deploy" / "ipgate.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def _deploy_config() -> Any:
    from gateway.config import load_config

    return load_config(ROOT / "deploy" / "ipgate.yaml", env={})


def test_the_unit_creates_every_directory_the_deploy_config_writes_to() -> None:
    # ProtectSystem=strict makes the file system read-only. The unit listed /var/lib/ipgate and /var/log/ipgate in
    # ReadWritePaths=, which needs them to exist (a missing one fails the start with 226/NAMESPACE) and does not
    # give them to the ipgate user -- and the install steps in deploy/README.md never create them.
    unit = _unit()
    assert unit["ProtectSystem"] == ["strict"]
    created = [Path("/var/lib") / d for v in unit.get("StateDirectory", []) for d in v.split()]
    created += [Path("/var/log") / d for v in unit.get("LogsDirectory", []) for d in v.split()]
    created += [Path("/run") / d for v in unit.get("RuntimeDirectory", []) for d in v.split()]
    cfg = _deploy_config()
    written = [cfg.telemetry.access_log_file, cfg.watermark.recipients_file, cfg.admin.audit_file,
               *(s.path for s in cfg.alerts.sinks if s.kind == "jsonl")]
    files = [Path(f) for f in written if f]
    assert len(files) >= 3
    for f in files:
        assert f.parent in created, f"{f}: its directory is neither created by the unit nor writable"


def test_the_unit_stop_timeout_covers_the_drain_and_what_follows_it() -> None:
    import inspect

    from gateway import app, server
    from gateway.alerts.dispatcher import AlertDispatcher

    # after drain_timeout_s: cut streams write their error event, both listeners shut down (1 s each), the
    # accounting tasks, the alert flush, the access log writer (AccessLog.close: 10 s), the trace export and,
    # as asyncio.run waits for its executor's threads, a JWKS fetch in flight each get their grace
    cfg = _deploy_config()
    alerts_flush = inspect.signature(AlertDispatcher.close).parameters["timeout_s"].default
    after = server.STREAM_FINISH_GRACE_S + 2 * 1.0 + app.BACKGROUND_GRACE_S + alerts_flush + 10.0 \
        + app.TRACING_GRACE_S + cfg.auth.jwt.jwks_timeout_s
    stop = float(_unit()["TimeoutStopSec"][0])
    drain = cfg.server.drain_timeout_s
    assert stop >= drain + after + 2, f"TimeoutStopSec={stop:g}: a stop may take {drain + after:g} s before SIGKILL"
    assert _unit()["KillSignal"] == ["SIGTERM"]


def test_the_unit_runs_commands_and_variables_the_code_knows() -> None:
    from gateway.cli import build_parser
    from gateway.telemetry.metrics import MULTIPROC_ENV

    unit = _unit()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^ipgate = "gateway\.cli:main"$', pyproject, re.M)
    for command in [*unit["ExecStart"], unit["ExecReload"][0]]:
        exe, *argv = command.split()
        assert exe.endswith("/bin/ipgate")
        args = build_parser(argv[0]).parse_args(argv)  # exits on an unknown flag
        assert args.config == "/etc/ipgate/ipgate.yaml"
    assert unit["ExecReload"][1] == "/bin/kill -HUP $MAINPID"
    env = dict(v.split("=", 1) for v in unit["Environment"])
    assert set(env) == {MULTIPROC_ENV}
    assert Path(env[MULTIPROC_ENV]).relative_to("/run") in {Path(d) for d in unit["RuntimeDirectory"][0].split()}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    import sys

    ipgate = Path(sys.executable).with_name("ipgate")
    text = (ROOT / "deploy" / "ipgate.service").read_text().replace("/opt/ipgate/.venv/bin/ipgate", str(ipgate))
    unit = tmp_path / "ipgate.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # what it says about the unit file is prefixed with its path; a host without a running systemd (a CI
    # container, root or not) may add lines about itself, which say nothing about the unit
    about_unit = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith(str(unit))]
    assert r.returncode == 0 and not about_unit, r.stdout + r.stderr


def test_the_deploy_config_divides_local_limits_by_every_worker_process() -> None:
    # failure_mode: local gives each worker *process* its own in-process limits divided by local_replicas
    # ("the total number of gateway worker processes (replicas x --workers)"). The example said 3 with 4
    # workers per replica: during a Redis outage a client got 4/3 of its limit per host, 4x over 3 hosts.
    cfg = _deploy_config()
    workers = {cfg.server.workers}
    for command in _unit()["ExecStart"]:
        argv = command.split()
        workers.add(int(argv[argv.index("--workers") + 1]))
    assert len(workers) == 1
    assert cfg.store.failure_mode == "local" and cfg.store.local_replicas % workers.pop() == 0
