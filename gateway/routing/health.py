"""Active health checks: every ``interval_s`` a GET of each backend's ``health_path``.

A check passes on a 2xx answer within ``timeout_s``. ``failure_threshold`` failed checks in a row mark the
backend unhealthy (no traffic); the first passing check marks it healthy again. Passive health (ejection on
failed requests) lives in ``pool.py``; the two are independent, and a backend needs both to get traffic.

Backends marked ``watermark_capable`` (with ``kgw_probe`` on) also get the KGW plugin probe
(``gateway/kgw_probe.py``) in each round, at most once per ``interval_s / 2`` (so the start-up round that
``probe_plugins`` runs before the gateway serves is not repeated at once); its verdict goes to the pool
(``Pool.set_plugin_verdict``), independently of the backend's health.

The checker asks for the current pools on every round, so a reload needs no restart of the checker; its
failure counts are keyed by (model, backend, url) and so survive a reload of an unchanged backend.

A round starts at most ``burst`` probes (``PROBE_BURST``) per turn of the event loop: starting a request costs
aiohttp ~0.05-0.1 ms of CPU, and a round that started all of a big pool's probes at once held the loop (and
every request on it) ~50-70 ms for 800 backends, every ``interval_s`` and after every reload (~5 ms now:
``bench/health_round_stall.py``). Probes still run side by side (no cap on those in flight), so a round still
lasts about as long as its slowest probe, a dead backend costs it ``timeout_s`` once, not once per slot; a pool
of up to ``burst`` backends is probed exactly as before.
The start-up plugin probes (``probe_plugins``) run before the gateway serves and start all at once. Each probe
has a connection of its own (``health_session``): a hung backend holds its own, not one another needs.
Entries with the same target (URL and health path, credential, TLS: one engine that several models list) get
one probe a round, its answer judged per entry: per entry, 200 models on one engine were 200 requests and 160
connections held open to it per worker (the connector has no cap), now one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import aiohttp

from gateway.config import BackendConfig, ConfigError, HealthConfig, read_header_secret
from gateway.kgw_probe import KgwPluginProbe, PluginVerdict
from gateway.routing.pool import Pool, plugin_target
from gateway.tls import backend_tls

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # of a health answer read before the connection is dropped (vLLM's /v1/models: ~1 KB)

FORCED_RECHECK_S = 2.0  # a refused KGW directive re-probes the backend's plugin at most this often
PROBE_BURST = 16  # probes a health round starts per loop turn (bench/health_round_stall.py)


def health_session() -> aiohttp.ClientSession:
    """The session health checks and plugin probes go through: no cap on its connections (a round holds one per
    probe, a bounded number). aiohttp's default caps them at 100 in all, and a check queued behind 100 hung
    backends' timed out waiting for a connection: the backends that answer were marked unhealthy."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


class HealthChecker:
    def __init__(
        self, cfg: HealthConfig, session: aiohttp.ClientSession, pools: Callable[[], Iterable[Pool]],
        plugin_probe: KgwPluginProbe | None = None, *, clock: Callable[[], float] = time.monotonic,
        burst: int = PROBE_BURST,
    ) -> None:
        self.cfg = cfg
        self.burst = burst  # probes started per loop turn in a round; 0: all at once
        self._session = session
        self._pools = pools
        self._plugin_probe = plugin_probe
        self._clock = clock
        self._failures: dict[tuple[str, str, str], int] = {}
        # (name, url) -> (the config object it was read for, its header): a reload brings new config objects and
        # reads the credential again, as the proxy's plans do - a rotated key must not fail every check
        self._headers: dict[tuple[str, str], tuple[BackendConfig, dict[str, str]]] = {}
        self._plugin_probed: dict[tuple[object, ...], float] = {}  # when each backend's plugin was last probed
        self._forced: dict[tuple[object, ...], float] = {}  # when a refused directive last forced a probe
        self._rechecks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def auth_headers(self, b: BackendConfig) -> dict[str, str]:
        """The backend credential's header (read once per backend config, so again after each reload;
        ``ConfigError`` for an unreadable key file)."""
        key = (b.name, b.url)
        got = self._headers.get(key)
        if got is None or got[0] is not b:
            secret = read_header_secret(b.api_key_env, b.api_key_file, what=f"backend {b.name} api key")
            got = self._headers[key] = (b, {"Authorization": f"Bearer {secret}"} if secret else {})
        return got[1]

    async def probe(self, b: BackendConfig) -> str | None:
        """None when the backend passes, else why it failed (for the log and the admin API)."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        try:
            headers = self.auth_headers(b)
            tls = backend_tls(b)
        except ConfigError as e:
            # An unreadable key file: requests to this backend cannot authenticate either. A failed check
            # (logged on the state change) - not an exception that fails the whole round, every round.
            return f"health check not sent: {e}"
        try:
            async with self._session.get(
                b.url + b.health_path, timeout=timeout, headers=headers, allow_redirects=False, ssl=tls
            ) as resp:
                # the status decides; the body is drained so the connection can be reused, up to a bound: a
                # backend answering with an endless or huge body must not hold the check (or memory) for it
                left = MAX_BODY_BYTES
                while left >= 0 and (chunk := await resp.content.read(65_536)):
                    left -= len(chunk)
                if left < 0:
                    resp.close()  # the rest is not read: this connection is not reused
                if 200 <= resp.status < 300:
                    return None
                return f"health check answered {resp.status}"
        except TimeoutError:
            return f"health check timed out after {self.cfg.timeout_s}s"
        except aiohttp.ClientError as e:
            return f"health check failed: {type(e).__name__}"

    def _target(self, b: BackendConfig) -> tuple[object, ...]:
        """What a probe of ``b`` sends where: entries with the same target (one engine serving several models)
        get one probe a round. An entry whose credential or TLS cannot be read is a target of its own (its
        probe says why)."""
        try:
            return b.url + b.health_path, tuple(self.auth_headers(b).items()), backend_tls(b)
        except ConfigError:
            return (b,)

    async def _check(self, entries: list[tuple[Pool, BackendConfig]]) -> None:
        problem = await self.probe(entries[0][1])
        for pool, b in entries:
            self._judge(pool, b, problem)

    def _judge(self, pool: Pool, b: BackendConfig, problem: str | None) -> None:
        key = (pool.name, b.name, b.url)
        if problem is None:
            self._failures[key] = 0
            pool.set_active_health(b.name, True)
            return
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        if n >= self.cfg.failure_threshold:
            pool.set_active_health(b.name, False, problem)

    async def _check_plugin(self, pool: Pool, b: BackendConfig, now: float, *, force: bool = False) -> None:
        key = (pool.name, b.name, *plugin_target(b))  # a reload that changes the target probes it at once
        last = self._plugin_probed.get(key)
        if self._plugin_probe is None or (
                not force and last is not None and now - last < self.cfg.interval_s / 2):
            return
        self._plugin_probed[key] = now
        try:
            headers = self.auth_headers(b)
        except ConfigError as e:  # like an unanswered probe: no verdict (the health check fails too)
            verdict = PluginVerdict(None, "no_verdict", f"probe not sent: {e}")
        else:
            verdict = await self._plugin_probe.run(self._session, b, pool.name, headers, self.cfg.timeout_s)
        pool.set_plugin_verdict(b.name, b, verdict)

    def _plugin_checks(self) -> list[tuple[Pool, BackendConfig]]:
        if self._plugin_probe is None:
            return []
        checks = [(p, s.cfg) for p in self._pools() for s in p.backends
                  if s.cfg.watermark_capable and s.cfg.kgw_probe]
        live = {(p.name, b.name, *plugin_target(b)) for p, b in checks}
        for key in self._plugin_probed.keys() - live:  # removed by a reload
            del self._plugin_probed[key]
        for key in self._forced.keys() - live:
            del self._forced[key]
        return checks

    def recheck_plugin(self, pool: Pool, b: BackendConfig) -> bool:
        """The engine refused one of the gateway's own directives: probe its plugin now instead of at the next
        round, so a plugin reconfigured between two probes (restarted with another secret or spec) costs about
        one 502 instead of every request until then; the probe's verdict then moves the backend to the
        lexical watermark. The refusal itself changes nothing: a client that can make an engine echo its
        prompt in a 400 could fake one, but not the probe's verdict. At most once per ``FORCED_RECHECK_S``
        per backend, so refusals cannot turn into a probe storm. True when a probe was started."""
        if self._plugin_probe is None or not (b.watermark_capable and b.kgw_probe):
            return False
        key = (pool.name, b.name, *plugin_target(b))
        now = self._clock()
        last = self._forced.get(key)
        if last is not None and now - last < FORCED_RECHECK_S:
            return False
        self._forced[key] = now
        task = asyncio.create_task(self._check_plugin(pool, b, now, force=True), name="ipgate-kgw-recheck")
        self._rechecks.add(task)
        task.add_done_callback(self._recheck_done)
        return True

    def _recheck_done(self, task: asyncio.Task[None]) -> None:
        self._rechecks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("KGW plugin re-probe failed unexpectedly", exc_info=task.exception())

    async def close(self) -> None:
        """Cancel re-probes still running (the health loop itself is the router's task)."""
        tasks = list(self._rechecks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def probe_plugins(self) -> None:
        """Probe every watermark-capable backend's plugin now (start-up: before the gateway serves)."""
        now = self._clock()
        checks = self._plugin_checks()
        results = await asyncio.gather(*(self._check_plugin(p, b, now) for p, b in checks), return_exceptions=True)
        for (pool, b), res in zip(checks, results, strict=True):
            if isinstance(res, Exception):  # a bug must not stop the gateway from starting: unverified = lexical
                log.error("model %s: backend %s: KGW plugin probe failed unexpectedly", pool.name, b.name,
                          exc_info=res)

    async def check_once(self) -> None:
        """One round: every backend's health check and the plugin probes that are due, ``burst`` started per
        loop turn, all then awaited together (a failure propagates once all have ended, as from ``gather``)."""
        now = self._clock()
        targets: dict[tuple[object, ...], list[tuple[Pool, BackendConfig]]] = {}
        for p in self._pools():
            for s in p.backends:
                targets.setdefault(self._target(s.cfg), []).append((p, s.cfg))
        health = list(targets.values())
        plugins = self._plugin_checks()
        tasks: list[asyncio.Future[None]] = []
        try:
            for i in range(len(health) + len(plugins)):
                if self.burst and i and i % self.burst == 0:
                    await asyncio.sleep(0)  # the started ones send in this turn; the next slice in the next one
                tasks.append(asyncio.ensure_future(
                    self._check(health[i]) if i < len(health) else self._check_plugin(*plugins[i - len(health)],
                                                                                      now)))
        except BaseException:  # cancelled while starting them (close()): the started ones go too
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        await asyncio.gather(*tasks)

    def kick(self) -> None:
        """Start the next round now (a reload added or changed backends)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # a bug here must not stop health checking for good; log it and go on
                log.exception("health check round failed")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as the
            # event is set (a reload's kick() just before a shutdown), and this loop then never ended: close()
            # waited for it for ever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.interval_s):
                    await self._wake.wait()
            self._wake.clear()
