"""The multi-process supervisor of ``ipgate serve --workers N`` (N > 1): it claims the listen addresses, starts N
worker processes (``python -m gateway serve --supervised LISTEN ADMIN_LISTEN``, one each; ``gateway.server`` is
what a worker runs), forwards SIGTERM/SIGINT/SIGHUP to them and restarts one that dies (at most once a second,
backed off when it refuses its configuration).

A worker started by a supervisor serves the addresses the supervisor claimed (``pin_claimed``), tells it once it
serves (``tell_supervisor``: ``SERVING_SIGNAL``), and gets SIGTERM from the kernel when the supervisor dies
without forwarding anything (``PR_SET_PDEATHSIG``). A worker that exits 2 (it refused its configuration) within
``STARTUP_REFUSAL_S`` of the start, before any worker served, stops ``ipgate serve`` with exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.portclaim import claim_listen_ports

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal() -> Callable[[int], object] | None:
    """``prctl(PR_SET_PDEATHSIG, sig)`` from the C library, looked up before any fork (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda sig: prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _worker_preexec(supervisor: int, set_pdeathsig: Callable[[int], object] | None) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if set_pdeathsig is not None:
            # A supervisor that dies without forwarding a SIGTERM (SIGKILL from a process manager's stop timeout,
            # the OOM killer, kill -9) must not leave its workers serving on their own for ever: the old
            # configuration, out of reach of reloads, holding the port against the next `ipgate serve`. The
            # kernel sends them SIGTERM then: they drain and exit as on a normal stop.
            set_pdeathsig(signal.SIGTERM)
            if os.getppid() != supervisor:  # it died before the line above: nobody would tell this worker
                os._exit(1)  # (not a SIGTERM to itself: until exec, the supervisor's Python handler would run)
    return preexec


def _spawn(config_path: str, env: dict[str, str], log_level: str,
           claimed: tuple[str, str]) -> subprocess.Popen[bytes]:
    # The worker starts with SIGHUP ignored (inherited across exec) until its reload handler is installed: a
    # reload forwarded while it is still importing would otherwise kill it (SIGHUP's default action).
    # ``--supervised LISTEN ADMIN_LISTEN``: the supervisor holds the claim of these addresses; the worker binds
    # them beside it without claiming (whatever the file says by the time a restarted worker reads it).
    return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", config_path,
                             "--workers", "1", "--log-level", log_level, "--supervised", *claimed], env=env,
                            preexec_fn=_worker_preexec(os.getpid(), _parent_death_signal()))


def pin_claimed(cfg: GatewayConfig, claimed: tuple[str, str]) -> GatewayConfig:
    """A supervised worker serves the addresses its supervisor claimed at start-up. A worker restarted after
    the file's ``listen``/``admin_listen`` changed would otherwise bind the new, unclaimed address with
    ``SO_REUSEPORT`` -- beside another gateway serving there, which would silently lose a share of its
    connections. Moving the listeners needs a restart of ``ipgate serve`` (as for a SIGHUP reload)."""
    listen, admin = claimed
    if (cfg.listen, cfg.admin_listen) == (listen, admin):
        return cfg
    log.warning("listen/admin_listen changed in the config file (now %s, %s) since ipgate serve started; this "
                "worker serves the addresses the supervisor holds (%s, %s): restart ipgate serve to move them",
                cfg.listen, cfg.admin_listen, listen, admin)
    return cfg.model_copy(update={"listen": listen, "admin_listen": admin})


def supervise(config_path: str, workers: int, cfg: GatewayConfig, log_level: str = "INFO") -> int:
    """Run ``workers`` worker processes sharing the ports; forward SIGTERM/SIGINT/SIGHUP; restart crashes.

    The supervisor claims the listen addresses before any worker starts and holds the claim until it exits:
    a taken port fails start-up (exit code 2) instead of workers that exit at once being restarted forever,
    and no other gateway can join the port while the workers restart."""
    with claim_listen_ports(cfg):
        return _supervise(config_path, workers, cfg, log_level)


STARTUP_REFUSAL_S = 30.0  # a worker exiting 2 this soon after ipgate serve started ends it (exit 2)...
# ...unless a worker of this run has served: the configuration started, a later refusal is backed off
SERVING_SIGNAL = signal.SIGUSR1  # a supervised worker -> its supervisor: "I serve" (see tell_supervisor)


def tell_supervisor(supervisor: int) -> Callable[[], None]:
    """The supervised worker's ``on_ready``: tells the supervisor that the configuration started."""
    def on_ready() -> None:
        if os.getppid() == supervisor:  # not a process that took the pid of a supervisor gone since
            os.kill(supervisor, SERVING_SIGNAL)
    return on_ready


def _supervise(config_path: str, workers: int, cfg: GatewayConfig, log_level: str) -> int:
    from gateway.telemetry.metrics import mark_worker_dead, multiproc_dir, prepare_multiproc_dir

    if cfg.store.kind == "memory":
        log.warning("--workers %d with the memory store: each worker keeps its own limits and detection "
                    "state; use store.kind: redis to share them", workers)
    # A fresh directory for this run's workers (stale files of an earlier run would be summed in), inside
    # $PROMETHEUS_MULTIPROC_DIR when the environment names one (deploy/ipgate.service: a tmpfs under /run, where
    # the unit's sandbox lets it write), else in the temporary directory.
    base = multiproc_dir()
    if base is not None:
        os.makedirs(base, exist_ok=True)
    metrics_dir = tempfile.mkdtemp(prefix="ipgate-metrics-", dir=base)
    prepare_multiproc_dir(metrics_dir)
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False
    told: set[int] = set()  # workers sent SIGTERM
    served: list[bool] = []  # a worker told us (SIGUSR1) that it serves: the configuration started

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        elif stopping:  # a reload while stopping: the workers are on their way out (and ignore it by then)
            return
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)
                if signum != signal.SIGHUP:
                    told.add(p.pid)

    # Handlers before the first spawn: a SIGTERM in between would otherwise kill the supervisor and orphan
    # the workers it had started.
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)

    def serving(_signum: int, _frame: object) -> None:
        if not served:
            served.append(True)

    signal.signal(SERVING_SIGNAL, serving)
    claimed = (cfg.listen, cfg.admin_listen)
    started = time.monotonic()
    procs.extend(_spawn(config_path, env, log_level, claimed) for _ in range(workers))
    codes: dict[int, int] = {}
    refusals = [0] * workers  # consecutive exits 2 (the worker refused its configuration) per slot
    # A worker exits 2 only when its start-up fails (ConfigError/OSError out of `serve`): one of the first
    # workers doing so refused the file ipgate serve started with, however long its start-up took (a JWKS
    # fetch waiting out jwks_timeout_s, a slow tokenizer load): past STARTUP_REFUSAL_S it was backed off for ever.
    restarted = [False] * workers
    # slot -> when its exited worker is started again. A deadline, not a sleep: a back-off of up to a minute
    # must neither hold up a SIGTERM (the orchestrator's grace period ends in a SIGKILL) nor the restart of
    # another slot's worker.
    due: dict[int, float] = {}
    while True:
        alive = False
        for i, p in enumerate(procs):
            rc = p.poll()
            if rc is None:
                alive = True
                if stopping and p.pid not in told:  # started while (or just before) the SIGTERM was forwarded
                    p.send_signal(signal.SIGTERM)
                    told.add(p.pid)
                continue
            if stopping:
                # killed by our own SIGTERM before its handler was installed: it never served, nothing lost
                # (a worker waiting for its restart: its exit code)
                codes[p.pid] = 0 if rc == -signal.SIGTERM else rc
                continue
            if i in due:
                alive = True
                if time.monotonic() >= due[i]:
                    del due[i]
                    restarted[i] = True
                    procs[i] = _spawn(config_path, env, log_level, claimed)
                continue
            mark_worker_dead(p.pid)
            if rc == 2 and not served and (not restarted[i] or time.monotonic() - started < STARTUP_REFUSAL_S):
                # Exit 2: the worker refused the configuration (its error line is above), which the supervisor's
                # own check did not catch (an admin token too short, an unreadable secret...). The same file
                # cannot start: restarting it once a second for ever would never serve and never exit.
                # Unless another worker serves already: then the configuration did start, and what this one
                # refused changed since (a file edited or a secret or certificate rotated while it was still
                # starting). Stopping would take the serving workers down too; it is backed off like a
                # restarted worker's refusal instead.
                log.error("worker %d refused the configuration at start-up (exit 2; its error is above): "
                          "stopping ipgate serve", p.pid)
                codes[p.pid] = rc
                forward(signal.SIGTERM, None)
                continue
            refusals[i] = refusals[i] + 1 if rc == 2 else 0
            # a configuration broken since start-up (a restarted worker reads the file again): back off
            delay = min(2.0 ** refusals[i], 60.0) if refusals[i] else 1.0
            log.error("worker %d exited with %d; restarting it in %.0f s", p.pid, rc, delay)
            due[i] = time.monotonic() + delay
            alive = True
        if not alive:
            break
        with contextlib.suppress(InterruptedError):
            time.sleep(0.1)
    # The forwarder goes, and with it SIGHUP's default action at the interpreter's exit (Python puts it back for
    # every signal it handled): a hang-up in the last milliseconds would kill a supervisor that stopped cleanly.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    if any(c == 2 for c in codes.values()):
        return 2
    return 0 if all(c == 0 for c in codes.values()) else 1
