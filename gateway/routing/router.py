"""The router: model name -> pool -> (canary split, sticky) -> healthy backend, plus the retry budget.

``acquire`` is synchronous and does no I/O: a dict lookup, a bucket deposit and the pool's choice. The
background work (active health checks, canary controllers) starts in ``start()``, which also probes the KGW
plugin of every ``watermark_capable`` backend before it returns (bounded by ``health.timeout_s``), so such a
backend watermarks in its engine from the first request when its plugin answers (``gateway/kgw_probe.py``).

``reload(models)`` builds new pools and swaps the mapping in one assignment. Backends that keep their name
and URL keep their state object (in-flight count, ejection, health), so leases taken on the old pool release
into the same counters the new pool reads, and no in-flight request is dropped or double-counted. A canary
whose rollout (backend, URL, steps, analysis) is unchanged keeps its progress; a changed one starts over.

A request is routed on the ``Route`` (its model's pool and retry budget) it took at its first try: its retries
and its repeat without a refused watermark directive draw on that one, so a reload that removes or changes its
model meanwhile cannot turn a request that was being served into a 404 ``model_not_found``; the reload applies
to the requests routed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.config import ModelConfig, RoutingConfig
from gateway.errors import NotFound, ServiceUnavailable
from gateway.routing import canary
from gateway.routing.budget import RetryBudget
from gateway.routing.canary import CanaryState, Op
from gateway.routing.controller import CanaryController
from gateway.routing.health import HealthChecker, health_session
from gateway.routing.pool import BackendLease, Outcome, Pool
from gateway.store.base import StateStore

if TYPE_CHECKING:
    from gateway.kgw_probe import KgwPluginProbe
    from gateway.telemetry.metrics import Metrics

__all__ = ["BackendLease", "Outcome", "Route", "Router"]

log = logging.getLogger(__name__)

STARTUP_SYNC_S = 2.0  # how long start() waits to read each rollout's published state from the store


@dataclass(frozen=True, slots=True)
class Route:
    """A model's pool and retry budget as one request found them at its first try. Held for the whole request
    (``gateway/route.py``): every further try of it draws on this pool and budget even when a reload has since
    swapped in another pool or removed the model. One per model and configuration, built by the reload."""

    pool: Pool
    budget: RetryBudget

    def acquire(self, client_id: str, exclude: frozenset[str] = frozenset(), *,
                prefer_engine_watermark: bool = False, first_try: bool = True) -> BackendLease:
        """A lease on a backend of the pool (``Router.acquire`` says what the flags do)."""
        if first_try and not exclude:
            self.budget.deposit()  # first attempts fund the retry budget
        if prefer_engine_watermark:
            try:
                return self.pool.acquire(client_id, exclude, engine_watermark=True)
            except ServiceUnavailable as e:
                if e.code == "pool_saturated" or exclude:
                    raise
        return self.pool.acquire(client_id, exclude)

    def may_retry(self, *, withdraw: bool = True) -> bool:
        """``Router.may_retry`` on this route's budget."""
        return self.budget.try_withdraw() if withdraw else self.budget.can_withdraw()


class Router:
    def __init__(
        self,
        models: Sequence[ModelConfig],
        routing: RoutingConfig,
        metrics: Metrics | None = None,
        store: StateStore | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        owner: str | None = None,
        health_checks: bool = True,
        plugin_probe: KgwPluginProbe | None = None,
    ) -> None:
        self.routing = routing
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._wall = wall
        self._owner = owner
        self._health_checks = health_checks
        self._plugin_probe = plugin_probe
        self._trust_logged: set[tuple[str, str, str]] = set()
        self._pools: dict[str, Pool] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._routes: dict[str, Route] = {}
        self._canaries: dict[str, CanaryController] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._checker: HealthChecker | None = None
        self._started = False
        self._install(models)

    # --- life cycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        if self._health_checks:
            self._session = health_session()
            self._checker = HealthChecker(self.routing.health, self._session, lambda: self._pools.values(),
                                          self._plugin_probe)
            # the probes' own timeouts bound this; the margin only guards against a bug hanging start-up
            try:
                await asyncio.wait_for(self._checker.probe_plugins(), self.routing.health.timeout_s + 1.0)
            except TimeoutError:
                log.warning("KGW plugin probes did not finish at start-up; unverified backends get the lexical "
                            "watermark until they do")
            self._tasks["health"] = asyncio.create_task(self._checker.run(), name="ipgate-health")
        # Read each rollout's published state before the gateway serves: a restarted replica must not route
        # a first step's share to a canary the others aborted. Bounded (all rollouts at once), so a store
        # outage delays start-up by at most STARTUP_SYNC_S; the canary then gets nothing until the store is back.
        unsynced = [(name, ctl) for name, ctl in self._canaries.items() if not ctl.synced]
        results = await asyncio.gather(
            *(asyncio.wait_for(ctl.tick(), timeout=STARTUP_SYNC_S) for _, ctl in unsynced), return_exceptions=True
        )
        for (name, _), res in zip(unsynced, results, strict=True):
            if isinstance(res, BaseException):  # the controller's loop retries and logs store trouble itself
                log.warning("canary %s: could not read the rollout state at start-up (%s); the canary gets no "
                            "traffic until it can", name, type(res).__name__)
        for name, ctl in self._canaries.items():
            self._start_canary(name, ctl)

    async def close(self) -> None:
        self._started = False
        if self._checker is not None:
            await self._checker.close()
        tasks = [*self._tasks.values(), *self._stopping]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _start_canary(self, model: str, ctl: CanaryController) -> None:
        key = f"canary:{model}"
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(ctl.run(), name=f"ipgate-canary-{model}")

    def _stop_canary(self, model: str) -> None:
        task = self._tasks.pop(f"canary:{model}", None)
        if task is not None:
            task.cancel()  # reload is synchronous: close() awaits the cancelled task later
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    # --- configuration -----------------------------------------------------------------------------------

    def _install(self, models: Sequence[ModelConfig]) -> None:
        old_pools = self._pools
        pools: dict[str, Pool] = {}
        canaries: dict[str, CanaryController] = {}
        for m in models:
            for b in m.backends:
                key = (m.name, b.name, b.url)
                if b.watermark_capable and not b.kgw_probe and key not in self._trust_logged:
                    self._trust_logged.add(key)
                    log.warning("model %s: backend %s is trusted to run the KGW plugin without a check (kgw_probe: "
                                "false); if it does not, its responses leave unwatermarked", m.name, b.name)
            old = old_pools.get(m.name)
            pool = Pool(
                m, self.routing.health, clock=self._clock, metrics=self._metrics,
                carry=old.backends if old is not None else (),
            )
            prev = self._canaries.get(m.name)
            if m.canary is not None:
                ctl = prev
                if ctl is not None:
                    url = m.backends[pool.canary_index or 0].url
                    if canary.fingerprint(m.canary, url) == ctl.fingerprint:
                        # same rollout: keep its progress and its cumulative observations
                        if old is not None and old.canary_obs is not None:
                            pool.canary_obs = old.canary_obs
                        ctl.rebind(pool)
                    else:
                        ctl = None
                if ctl is None:
                    # At start-up a controller with a store routes nothing to the canary until it has read
                    # the published state (start() reads it before serving); a live reload starts a changed
                    # rollout at its first step at once.
                    ctl = CanaryController(
                        pool, store=self._store, owner=self._owner, wall=self._wall, metrics=self._metrics,
                        synced=True if self._started else None,
                    )
                canaries[m.name] = ctl
            pool.publish_all()
            pools[m.name] = pool
        live = {id(s) for p in pools.values() for s in p.backends}
        for p in old_pools.values():
            for s in p.backends:
                if id(s) not in live:  # removed: its series are retired below, and stay so
                    s.retired = True
        self._retire_series(old_pools, pools)
        for name in self._canaries.keys() - canaries.keys():
            self._stop_canary(name)
        for name, ctl in canaries.items():
            if self._canaries.get(name) is not ctl:
                self._stop_canary(name)
        self._budgets = {m.name: self._budgets.get(m.name) or RetryBudget(self.routing.retry_budget_ratio)
                         for m in models}
        self._canaries = canaries
        self._pools = pools
        self._routes = {name: Route(pool, self._budgets[name]) for name, pool in pools.items()}  # what route() reads
        if self._started:
            for name, ctl in canaries.items():
                self._start_canary(name, ctl)

    def _retire_series(self, old: Mapping[str, Pool], new: Mapping[str, Pool]) -> None:
        """Stop exporting the per-backend gauges of backends (and models) a reload removed: an ejected backend's
        ``backend_healthy 0`` would otherwise stay until a restart and keep IpgateBackendUnhealthy (and, for a
        retired model, the critical IpgateNoHealthyBackend) firing about a backend that no longer exists."""
        m = self._metrics
        if m is None or not hasattr(m, "retire"):
            return
        for model, pool in old.items():
            keep = {b.cfg.name for b in new[model].backends} if model in new else set()
            canary_gone = model not in new or new[model].canary_index is None
            for b in pool.backends:
                name = b.cfg.name
                if name not in keep:
                    m.retire(m.backend_healthy, model, name)
                    m.retire(m.watermark_plugin_ok, model, name)
                if (name not in keep or canary_gone) and pool.canary_index is not None:
                    m.retire(m.canary_weight, model, name)
            if canary_gone and pool.canary_index is not None:
                for phase in canary.Phase:
                    m.retire(m.canary_state, model, phase.value)

    def reload(self, models: Sequence[ModelConfig], routing: RoutingConfig | None = None) -> None:
        """Swap in new pools (and routing settings); in-flight leases release cleanly into the state they
        were taken from."""
        before = set(self._pools)
        if routing is not None and routing != self.routing:
            if routing.retry_budget_ratio != self.routing.retry_budget_ratio:
                self._budgets = {}  # new buckets at the new ratio
            self.routing = routing
            if self._checker is not None:
                self._checker.cfg = routing.health
        self._install(models)
        if self._checker is not None:
            self._checker.kick()  # new backends get their health check and KGW plugin probe now
        log.info("routing reloaded: %d models (added %s, removed %s)", len(self._pools),
                 sorted(set(self._pools) - before), sorted(before - set(self._pools)))

    # --- the hot path ------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return list(self._pools)

    def pool(self, model: str) -> Pool:
        pool = self._pools.get(model)
        if pool is None:
            raise NotFound(f"The model {model!r} does not exist.", param="model", code="model_not_found")
        return pool

    def route(self, model: str) -> Route:
        """``model``'s pool and retry budget now: what a request holds for all its tries (404 for no such model)."""
        route = self._routes.get(model)
        if route is None:
            raise NotFound(f"The model {model!r} does not exist.", param="model", code="model_not_found")
        return route

    def acquire(self, model: str, client_id: str, exclude: frozenset[str] = frozenset(), *,
                prefer_engine_watermark: bool = False, first_try: bool = True) -> BackendLease:
        """A lease on a backend of ``model``'s pool. ``prefer_engine_watermark``: the answer cannot carry a
        post-hoc watermark (structured output, tool calls) and this client may only have it watermarked, so
        only a backend whose engine watermarks is picked while the pool has one (the weighted split and the
        client's stickiness among those); if they are all at their concurrency limit the request waits for
        one (503 ``pool_saturated``, ``Retry-After``) rather than going where it would be refused. A first
        try with no such backend healthy takes any backend (the caller refuses the request there); a retry
        does not, so the client learns of the real failure, not of a refusal. ``first_try`` False: the same
        request again, not a retry (its backend refused the watermark directive); it funds nothing. A request
        that tries more than once takes ``route(model)`` once and acquires on it, so a reload between its tries
        does not change (or remove) the pool it is served from."""
        return self.route(model).acquire(client_id, exclude, prefer_engine_watermark=prefer_engine_watermark,
                                         first_try=first_try)

    def may_retry(self, model: str, *, withdraw: bool = True) -> bool:
        """Ask before each retry; True withdraws one retry from the model's budget. The caller, which makes
        the retry, counts it in ``upstream_retries_total`` (gateway/route.py), so it is counted once.
        ``withdraw`` False only asks: the caller withdraws once it holds the retry's backend, so a retry that
        finds no other backend is neither paid for nor counted."""
        budget = self._budgets.get(model)
        if budget is None:
            return False
        return budget.try_withdraw() if withdraw else budget.can_withdraw()

    # --- canary operations and introspection -------------------------------------------------------------

    def canary(self, model: str) -> CanaryController:
        self.pool(model)
        ctl = self._canaries.get(model)
        if ctl is None:
            raise NotFound(f"The model {model!r} has no canary rollout.", param="model", code="no_canary")
        return ctl

    async def canary_command(self, model: str, op: Op, *, by: str = "operator") -> CanaryState:
        return await self.canary(model).command(op, by=by)

    # --- quarantine (fingerprint mismatch) ---------------------------------------------------------------

    def _backend_pool(self, model: str, backend: str) -> Pool:
        pool = self.pool(model)
        try:
            pool.state(backend)
        except KeyError:
            raise NotFound(f"The model {model!r} has no backend {backend!r}.", param="backend",
                           code="backend_not_found") from None
        return pool

    def recheck_plugin(self, model: str, backend: str) -> bool:
        """``backend`` refused the gateway's KGW directive: probe its plugin now (``HealthChecker.recheck_plugin``).
        False when nothing was started (no health checks, no such backend, rate-limited)."""
        if self._checker is None:
            return False
        try:
            pool = self.pool(model)
            cfg = pool.state(backend).cfg
        except (KeyError, NotFound):  # reloaded away meanwhile
            return False
        return self._checker.recheck_plugin(pool, cfg)

    def quarantine(self, model: str, backend: str, reason: str) -> bool:
        """Keep ``backend`` out of rotation until ``release_quarantine`` (a reload that keeps its name and URL
        keeps the quarantine). True when it was not quarantined before."""
        return self._backend_pool(model, backend).quarantine(backend, reason)

    def release_quarantine(self, model: str, backend: str, *, why: str = "released") -> bool:
        return self._backend_pool(model, backend).release_quarantine(backend, why)

    def quarantined(self, model: str, backend: str) -> str | None:
        """Why the backend is quarantined, or None."""
        return self._backend_pool(model, backend).state(backend).quarantine

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, pool in self._pools.items():
            snap = pool.snapshot()
            budget = self._budgets.get(name)
            snap["retry_budget"] = round(budget.balance, 3) if budget else None
            ctl = self._canaries.get(name)
            snap["canary"] = ctl.snapshot() if ctl is not None else None
            out[name] = snap
        return {"models": out, "retries": self.routing.retries,
                "retry_budget_ratio": self.routing.retry_budget_ratio}
