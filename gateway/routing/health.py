"""Active health checks: every ``interval_s`` a GET of each backend's ``health_path``.

A check passes on a 2xx answer within ``timeout_s``. ``failure_threshold`` failed checks in a row mark the
backend unhealthy (no traffic); the first passing check marks it healthy again. Passive health (ejection on
failed requests) lives in ``pool.py``; the two are independent, and a backend needs both to get traffic.

The checker asks for the current pools on every round, so a reload needs no restart of the checker; its
failure counts are keyed by (model, backend, url) and so survive a reload of an unchanged backend.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import aiohttp

from gateway.config import BackendConfig, ConfigError, HealthConfig, read_secret
from gateway.routing.pool import Pool

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(
        self, cfg: HealthConfig, session: aiohttp.ClientSession, pools: Callable[[], Iterable[Pool]]
    ) -> None:
        self.cfg = cfg
        self._session = session
        self._pools = pools
        self._failures: dict[tuple[str, str, str], int] = {}
        self._headers: dict[tuple[str, str], dict[str, str]] = {}

    def _auth_headers(self, b: BackendConfig) -> dict[str, str]:
        key = (b.name, b.url)
        if key not in self._headers:
            secret = read_secret(b.api_key_env, b.api_key_file, what=f"backend {b.name} api key")
            self._headers[key] = {"Authorization": f"Bearer {secret}"} if secret else {}
        return self._headers[key]

    async def probe(self, b: BackendConfig) -> str | None:
        """None when the backend passes, else why it failed (for the log and the admin API)."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        try:
            headers = self._auth_headers(b)
        except ConfigError as e:
            # An unreadable key file: requests to this backend cannot authenticate either. A failed check
            # (logged on the state change) - not an exception that fails the whole round, every round.
            return f"health check not sent: {e}"
        try:
            async with self._session.get(
                b.url + b.health_path, timeout=timeout, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"health check answered {resp.status}"
        except TimeoutError:
            return f"health check timed out after {self.cfg.timeout_s}s"
        except aiohttp.ClientError as e:
            return f"health check failed: {type(e).__name__}"

    async def _check(self, pool: Pool, b: BackendConfig) -> None:
        problem = await self.probe(b)
        key = (pool.name, b.name, b.url)
        if problem is None:
            self._failures[key] = 0
            pool.set_active_health(b.name, True)
            return
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        if n >= self.cfg.failure_threshold:
            pool.set_active_health(b.name, False, problem)

    async def check_once(self) -> None:
        checks = [self._check(p, s.cfg) for p in self._pools() for s in p.backends]
        await asyncio.gather(*checks)

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # a bug here must not stop health checking for good; log it and go on
                log.exception("health check round failed")
            await asyncio.sleep(self.cfg.interval_s)
