"""``ipgate serve``: the public and admin listeners of a worker process, graceful drain and reload.

One worker = one asyncio process with both listeners. ``--workers N`` (N > 1) runs a small supervisor
(``gateway.supervisor``) that starts N worker processes; each binds the same ports with ``SO_REUSEPORT`` so the
kernel spreads connections over them. Prometheus metrics are aggregated across workers (multiprocess mode). A
worker that dies unexpectedly is restarted (at most once a second).

``SO_REUSEPORT`` would also let a second, unrelated gateway of the same user bind the same port and take a
share of its connections. The process that owns the listeners (the single worker, or the supervisor) therefore
claims both addresses first (``gateway.portclaim``): an address in use, by another gateway or by anything
else, fails start-up with ``PortInUse`` before a worker starts.

Signals (worker):
- ``SIGTERM``/``SIGINT``: ``/readyz`` answers 503 at once; the public listener stops accepting; requests in
  flight get ``server.drain_timeout_s`` to finish; after that, streams still running receive a terminating
  SSE error event and other requests a 503; then the process exits 0. One that arrives while the worker is
  still starting stops it once started, without ever listening.
- ``SIGHUP``: the API key file (``auth.api_keys.file``) is re-read when it changed, and the config file is
  read again: ``router.reload(models)`` swaps weights, backends and canary
  steps without dropping in-flight requests (the file is read and validated in a thread, then applied on the
  loop; reloads go one at a time, in order). Other sections need a restart (a warning says so when they
  changed). An invalid file is logged and ignored: the running config stays. Either way the admin audit
  trail records it (``routing.reload`` by ``signal:SIGHUP``).
The supervisor forwards both signals to its workers; a worker whose supervisor dies without forwarding
anything (SIGKILL) gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and drains as above.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web

from gateway import memtrim
from gateway.admin.app import build_admin_app
from gateway.admin.audit import AUDIT_TRAIL
from gateway.app import build_public_app, open_context
from gateway.audit.trail import AuditTrail
from gateway.clientaddr import parse_networks
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.context import AppContext
from gateway.parsererrors import JsonErrorRunner
from gateway.portclaim import claim_listen_ports
from gateway.proxyprotocol import ProxyProtocolSite, peer_in
from gateway.senddeadline import SendDeadline, SendDeadlineSite
from gateway.supervisor import (
    PR_SET_PDEATHSIG,
    SERVING_SIGNAL,
    STARTUP_REFUSAL_S,
    pin_claimed,
    supervise,
    tell_supervisor,
)
from gateway.telemetry import acceptfail
from gateway.tls import not_after as tls_not_after
from gateway.tls import reload as reload_tls
from gateway.tls import server_context

log = logging.getLogger(__name__)

# The supervisor's names (gateway/supervisor.py) and the port claim stay importable from here; a test that
# patches one patches it in gateway.supervisor, where the code reads it.
__all__ = [
    "PR_SET_PDEATHSIG", "SERVING_SIGNAL", "STARTUP_REFUSAL_S", "STREAM_FINISH_GRACE_S", "claim_listen_ports", "drain",
    "pin_claimed", "public_site", "reload_models", "run_worker", "serve", "supervise", "tell_supervisor", "tune_gc",
]

STREAM_FINISH_GRACE_S = 2.0  # after the deadline: time for cancelled streams to write their error event


async def reload_models(ctx: AppContext, path: str | Path, trail: AuditTrail | None = None) -> bool:
    """SIGHUP: re-read the config file and apply its live sections (the admin API's reload, same code; the file
    is read in a thread), recorded in the admin audit trail when one is given. Returns False (and logs) on a
    bad file: the running configuration stays."""
    from gateway.admin.routing import reload_by_signal

    # The API key file too, whatever the config file holds: `ipgate apikey` tells operators that SIGHUP picks
    # up its changes (a revoked key must not wait for auth.api_keys.reload_interval_s, which may be 0: off).
    ctx.auth.reload_api_keys()
    try:
        await reload_by_signal(ctx, str(path), trail)
    except ConfigError as e:
        log.error("reload ignored, the running configuration stays: %s", e)
        return False
    return True


class Coalesced:
    """Runs ``job`` in a task when asked; asked again while it runs, once more after it, however often asked
    meanwhile (hang-ups during a reload: the next one reads the file as it is then). One task at a time, so
    the runs are in order."""

    def __init__(self, job: Callable[[], Awaitable[object]]) -> None:
        self._job = job
        self._again = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def ask(self) -> None:
        if self._closed:  # (a hang-up while stopping: nothing is reloaded any more)
            return
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._again:
            self._again = False
            try:
                await self._job()
            except Exception:  # a bug in applying it (counted as failed): logged, the next hang-up tries again
                log.exception("reload failed")

    async def close(self) -> None:
        """Stops a run in progress (at exit: its file read finishes in its thread, unapplied) and any to come."""
        self._closed = True
        self._again = False
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def public_site(ctx: AppContext, runner: web.AppRunner, host: str, port: int,
                tls: ssl.SSLContext | None) -> web.TCPSite:
    """The public listener's site; with ``server.proxy_protocol_from``, one that reads the PROXY protocol header of
    connections from those load balancers (``gateway/proxyprotocol.py``; the config refuses it with TLS). Either
    closes a connection whose client takes none of its answers for ``server.send_timeout_s``
    (``gateway/senddeadline.py``) while it listens."""
    balancers = ctx.config.server.proxy_protocol_from
    site: _PublicSite | _PublicProxySite
    if not balancers:
        site = _PublicSite(runner, host, port, reuse_port=True, backlog=1024, ssl_context=tls)
    else:
        rejected = ctx.metrics.proxy_protocol_rejected_total
        site = _PublicProxySite(runner, host, port, reuse_port=True, backlog=1024,
                                trusted=peer_in(parse_networks(balancers, "proxy_protocol_from")),
                                rejected=lambda reason: rejected.labels(reason=reason).inc())
    site._deadline = SendDeadline(ctx.config.server.send_timeout_s, ctx.metrics.client_send_timeouts_total.inc)
    return site


def admin_site(ctx: AppContext, runner: web.AppRunner, host: str, port: int,
               tls: ssl.SSLContext | None) -> web.TCPSite:
    """The admin listener's site, with the public one's send deadline (``server.send_timeout_s``): whoever can
    reach the admin port gets answers without a credential (``/healthz``, a 401, a 421), so a client that pipelines
    requests and never reads them would hold its connection and kernel buffers for ever there too."""
    site = _AdminSite(runner, host, port, reuse_port=True, ssl_context=tls)
    site._deadline = SendDeadline(ctx.config.server.send_timeout_s, ctx.metrics.client_send_timeouts_total.inc)
    return site


class _PublicSite(SendDeadlineSite, web.TCPSite):
    __slots__ = ("_deadline",)


class _AdminSite(SendDeadlineSite, web.TCPSite):
    __slots__ = ("_deadline",)


class _PublicProxySite(SendDeadlineSite, ProxyProtocolSite):
    __slots__ = ("_deadline",)


def _export_expiry(ctx: AppContext, cert_file: str) -> None:
    """The served certificate's end of validity as a gauge (the shipped alert warns two weeks ahead)."""
    ts = tls_not_after(cert_file)
    if ts is not None:
        ctx.metrics.set_tls_certificate_expiry(ts)
    else:  # loaded by OpenSSL but not parsed here: the gauge (and its alerts) cannot watch this certificate
        log.warning("TLS certificate %s: expiry not read, ipgate_tls_certificate_expiry_timestamp_seconds "
                    "not set (ipgate check reads it too)", cert_file)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections on the request path. Everything built at start-up (config, pools,
    compiled tables) is moved out of the collector's reach (``gc.freeze``), and the young generation is
    collected every 50 000 allocations instead of 700: a request allocates a few hundred short-lived objects
    that reference counting frees anyway, so frequent young collections were pure overhead (and the older
    ones, which walk long-lived state, caused p99 spikes)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def drain(ctx: AppContext, public: web.AppRunner, site: web.TCPSite) -> None:
    """SIGTERM: refuse new work, let in-flight requests finish until the deadline, then end the rest."""
    ctx.draining = True
    await site.stop()  # stop accepting connections; open keep-alive connections get 503 + Connection: close
    deadline = time.monotonic() + ctx.config.server.drain_timeout_s
    n = len(ctx.inflight)
    if n:
        log.info("draining: %d requests in flight, deadline %.1f s", n, ctx.config.server.drain_timeout_s)
    while ctx.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if ctx.inflight:
        log.warning("drain deadline passed: ending %d requests with an error", len(ctx.inflight))
        ctx.drain_expired = True
        for task in list(ctx.inflight):
            task.cancel()
        end = time.monotonic() + STREAM_FINISH_GRACE_S
        while ctx.inflight and time.monotonic() < end:
            await asyncio.sleep(0.02)
    await public.cleanup()


async def run_worker(config_path: str | Path | None, cfg: GatewayConfig,
                     on_ready: Callable[[], None] | None = None, *, claim: bool = True,
                     supervisor_pid: int | None = None, hung_up: Sequence[bool] = ()) -> int:
    """One worker: both listeners until SIGTERM/SIGINT. ``config_path`` None: no SIGHUP reload (demo).
    ``claim``: claim the listen addresses first (False in a supervisor's worker: the supervisor holds them).
    ``hung_up``: not empty when a hang-up came since the file was read (``serve``): reloaded once serving."""
    ports = claim_listen_ports(cfg) if claim else None
    try:
        return await _serve_listeners(config_path, cfg, on_ready, supervisor_pid, hung_up)
    finally:
        # From here to the exit a hang-up is ignored. It was SIGHUP's default action (death) once the loop was
        # closed, and a reload sent during a rolling restart (or forwarded by the supervisor as its worker exits)
        # turned a clean stop into a death by signal, which process managers report as a failure. One call: the
        # disposition goes from the handler straight to SIG_IGN (see _on_hangup).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if ports is not None:
            ports.close()


def _on_hangup(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the loop at each SIGHUP. A Python-level handler, not ``loop.add_signal_handler``: asyncio's
    removal (and the loop's close) resets the signal to its default action before anything else can be set, and
    a SIGHUP in between killed the process; here ``signal.signal`` replaces one disposition by the next at once."""
    pending = False  # hang-ups coalesce until the loop runs ``fn`` (as the loop's own wake-up pipe did)

    def run() -> None:
        nonlocal pending
        pending = False
        fn()

    def handler(_signum: int, _frame: object) -> None:  # (runs in the main thread, as the loop does)
        nonlocal pending
        if not pending:
            pending = True
            loop.call_soon_threadsafe(run)

    signal.signal(signal.SIGHUP, handler)


async def _serve_listeners(config_path: str | Path | None, cfg: GatewayConfig,
                           on_ready: Callable[[], None] | None, supervisor_pid: int | None = None,
                           hung_up: Sequence[bool] = ()) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    holder: list[AppContext] = []
    received: list[str] = []

    def on_term(name: str) -> None:
        if holder:
            holder[0].draining = True  # /readyz flips now, before anything else happens
        received.append(name)
        stop.set()

    # Installed before start-up work, so a SIGTERM that arrives while starting is a clean stop, not a kill.
    loop.add_signal_handler(signal.SIGTERM, on_term, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_term, "SIGINT")
    # SIGHUP's default action kills the process: until the reload handler is installed (after start-up), a
    # reload request (`kill -HUP`, or the supervisor forwarding an admin reload) must not take a starting worker
    # down. Nor may it be lost: the file was read before start-up (JWKS fetch, Redis...), and may have changed
    # since -- this worker would serve the old models beside workers serving the new ones. Reloaded once started.
    early_hup: list[bool] = []

    def on_early_hup() -> None:
        early_hup.append(True)
        log.warning("SIGHUP during start-up: %s", "nothing to reload" if config_path is None
                    else "the configuration is re-read once started")

    # One handler for the whole run, calling what ``on_hangup`` holds when the loop runs it (not when the signal
    # came): a hang-up that arrived at the end of start-up and ran after the serving handler replaced the
    # start-up one was noted by the start-up one after start-up had looked for it, and never reloaded.
    on_hangup: list[Callable[[], None]] = [on_early_hup]
    _on_hangup(loop, lambda: on_hangup[0]())
    if hung_up:  # (looked at once the handler above is in place: a later hang-up goes to it)
        on_early_hup()
    async with open_context(cfg) as ctx:
        ctx.config_path = str(config_path) if config_path is not None else None
        ctx.supervisor_pid = supervisor_pid
        holder.append(ctx)
        acceptfail.install(loop, ctx.metrics.accept_failures_total.inc)  # (out of descriptors: no log flood)
        if stop.is_set():  # told to stop while starting: never listen (no /readyz 200, no connection taken)
            log.info("%s during start-up: stopped before serving", received[0])
            return 0
        public = JsonErrorRunner(build_public_app(cfg, ctx), handler_cancellation=True, access_log=None,
                               shutdown_timeout=1.0, keepalive_timeout=cfg.server.keepalive_timeout_s)
        admin_app = build_admin_app(ctx)
        trail = admin_app[AUDIT_TRAIL]
        admin = JsonErrorRunner(admin_app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await public.setup()
        await admin.setup()
        host, port = cfg.listen_addr
        ahost, aport = cfg.admin_addr
        sc = cfg.server
        tls = server_context(sc.tls_cert_file, sc.tls_key_file) if sc.tls_cert_file and sc.tls_key_file else None
        if tls is not None and sc.tls_cert_file:
            _export_expiry(ctx, sc.tls_cert_file)
        site = public_site(ctx, public, host, port, tls)
        asite = admin_site(ctx, admin, ahost, aport, tls)
        await site.start()
        await asite.start()
        hup_reloads: Coalesced | None = None
        if config_path is not None:
            path = config_path
            hup_reloads = reloads = Coalesced(lambda: reload_models(ctx, path, trail))

            def on_hup() -> None:
                # a renewed certificate, in place
                if tls is not None and sc.tls_cert_file and sc.tls_key_file and \
                        reload_tls(tls, sc.tls_cert_file, sc.tls_key_file):
                    _export_expiry(ctx, sc.tls_cert_file)
                reloads.ask()

            on_hangup[0] = on_hup
            if early_hup:
                on_hup()
        else:  # nothing to reload (demo): a hang-up ends the process as usual
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        tune_gc()
        trimmer = memtrim.start(sc.malloc_trim_interval_s, memtrim.glibc_malloc_trim())
        scheme = "https" if tls is not None else "http"
        log.info("ipgate serving on %s://%s:%d (admin %s://%s:%d), pid %d", scheme, host, port, scheme, ahost, aport,
                 os.getpid())
        if on_ready is not None and not stop.is_set():
            on_ready()
        await stop.wait()
        log.info("%s: draining", received[0] if received else "stop")
        if trimmer is not None:
            trimmer.cancel()
        await drain(ctx, public, site)
        await admin.cleanup()
        if hup_reloads is not None:
            await hup_reloads.close()
    log.info("stopped")
    return 0


def serve(config_path: str, workers: int | None, log_level: str = "INFO", *,
          supervised: tuple[str, str] | None = None) -> int:
    """``supervised``: this process is a worker started by ``supervise``, which holds the port claim of these
    (``listen``, ``admin_listen``)."""
    # From the file's read on, a hang-up asks for a file newer than the one read: noted (ignored before, so that
    # it could not kill a starting gateway, and lost) and reloaded once the worker serves. A supervisor lets it
    # go: its workers read the file after this anyway. Ignored again from the end of this call to the exit
    # (the interpreter's exit would put SIGHUP's default action back for a handler left in place).
    hung_up: list[bool] = []
    signal.signal(signal.SIGHUP, lambda _signum, _frame: hung_up.append(True))
    try:
        return _serve(config_path, workers, log_level, supervised, hung_up)
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _serve(config_path: str, workers: int | None, log_level: str, supervised: tuple[str, str] | None,
           hung_up: Sequence[bool]) -> int:
    cfg = load_config(config_path)
    if supervised is not None:
        cfg = pin_claimed(cfg, supervised)
    n = workers if workers is not None else cfg.server.workers
    if cfg.server.tls_cert_file and cfg.server.tls_key_file:  # an unusable certificate: one clear error, not N
        server_context(cfg.server.tls_cert_file, cfg.server.tls_key_file)
    if n > 1:
        return supervise(config_path, n, cfg, log_level)  # workers log at the supervisor's level
    supervisor = os.getppid() if supervised is not None else None
    return asyncio.run(run_worker(config_path, cfg, None if supervisor is None else tell_supervisor(supervisor),
                                  claim=supervised is None, supervisor_pid=supervisor, hung_up=hung_up))
