"""Signing keys from a JWKS URL, fetched off the event loop, cached, with bounded refetches.

``jwt.PyJWKClient`` does the HTTP fetch (urllib, synchronous), so every fetch runs in a worker thread through
``asyncio.to_thread``. Keys are cached by ``kid``; the whole set is re-read every ``jwks_cache_ttl_s`` in the
background so a key the IdP removed stops verifying. A token whose ``kid`` is unknown triggers at most one
refetch per ``jwks_refetch_interval_s`` — counted from the last *attempt*, failed ones included — so a flood
of tokens with random ``kid`` values cannot turn the gateway into a load generator against the IdP.
Concurrent misses share one fetch.

Only asymmetric keys of the configured families are used (RSA for RS*/PS*, EC for ES*), each only with
algorithms of its own type; ``oct`` (symmetric) keys in a JWKS are ignored, which closes the HS/RS confusion
path through the key set.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWTError

from gateway.config import ConfigError
from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class UnknownKey(Exception):
    """No usable key for the token's ``kid``/``alg`` (after the allowed refetch, if any)."""


def _kty(alg: str) -> str:
    return "EC" if alg.startswith("ES") else "RSA"  # RS*/PS*; HS* never reaches a JWKS (config forbids it)


class JwksKeys:
    def __init__(
        self,
        url: str,
        algorithms: Sequence[str],
        *,
        refetch_interval_s: float = 60.0,
        cache_ttl_s: float = 300.0,
        timeout_s: float = 5.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = tuple(algorithms)
        # Every key type the allowlist can use: the config may name RSA and EC algorithms together (an IdP moving
        # from RSA to EC keys publishes both). Keeping only the first algorithm's type refused the other family's
        # tokens as unknown keys, silently. _lookup still pairs each key with algorithms of its own type only.
        self._ktys = frozenset(_kty(a) for a in self.algorithms)
        try:
            parsed = urlsplit(url)
        except ValueError as e:  # "http://[::1/jwks": was an "internal error" from `ipgate check`, a crash at start
            raise ConfigError(f"auth.jwt.jwks_url: not a URL ({e})") from e
        try:
            self._client = PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)
        except PyJWTError as e:  # e.g. a scheme other than http(s)
            raise ConfigError(f"auth.jwt.jwks_url: {e}") from e
        if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            # Keys fetched over plain HTTP can be swapped by anyone on the path: that is token forgery.
            log.warning("auth.jwt.jwks_url %s is plain http: signing keys can be tampered with in transit", url)
        self._refetch_interval = refetch_interval_s
        self._cache_ttl = cache_ttl_s
        self._metrics = metrics
        self._clock = clock
        # (kid, kty) → raw JWK: RFC 7517 §4.5 lets one kid name keys of different types ("equivalent alternatives")
        self._jwks: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._keys: dict[tuple[str | None, str], PyJWK | None] = {}  # (kid, alg) → parsed key; None: unusable
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None  # the refetch an unknown kid started (see get)
        self.fetches = 0

    async def start(self) -> None:
        """First fetch, then the periodic refresh. An unreachable IdP is logged, not fatal: keys come later."""
        await self._refresh()
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="jwks-refresh")

    async def fetch_once(self) -> int:
        """One fetch, no refresh task (``ipgate check --connect``): the number of usable keys, 0 on failure."""
        return len(self._jwks) if await self._refresh() else 0

    async def close(self) -> None:
        for task in (self._refresher, self._pending):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._pending = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cache_ttl)
            async with self._lock:
                try:
                    await self._refresh()
                except Exception:  # the refresher must outlive any one fetch: without it removed keys live on
                    log.exception("JWKS refresh from %s failed unexpectedly; retrying in %g s", self.url,
                                  self._cache_ttl)

    async def _refresh(self) -> bool:
        """Fetch the set in a thread and install it; returns False (and keeps the old keys) on failure."""
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            data = await asyncio.to_thread(self._client.fetch_data)
            jwks = self._parse(data)
        # OSError / HTTPException: urllib lets a connection reset while reading the answer (and, before pyjwt
        # 2.15, a truncated body) through unwrapped. Uncaught, it failed start-up, ended the refresh task for
        # good (keys the IdP removed then kept verifying until a restart) and re-raised from close().
        except (PyJWTError, ValueError, TypeError, OSError, http.client.HTTPException) as e:
            log.warning("JWKS fetch from %s failed, keeping %d cached keys: %s", self.url, len(self._jwks), e)
            if self._metrics is not None:
                self._metrics.jwks_fetches_total.labels(outcome="error").inc()
            return False
        if self._metrics is not None:
            self._metrics.jwks_fetches_total.labels(outcome="ok").inc()
        if set(jwks) != set(self._jwks):
            log.info("JWKS from %s now has key ids %s", self.url, sorted(str(k) for k, _ in jwks))
        self._jwks = jwks
        self._keys = {}
        return True

    def _parse(self, data: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise ValueError("JWKS has no 'keys' list")
        out: dict[tuple[str | None, str], dict[str, Any]] = {}
        for jwk in keys:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str) or jwk["kty"] not in self._ktys:
                continue
            if jwk.get("use", "sig") != "sig":
                continue
            alg = jwk.get("alg")
            if alg is not None and alg not in self.algorithms:
                continue
            kid = jwk.get("kid")
            out[(kid if isinstance(kid, str) else None, jwk["kty"])] = jwk
        return out

    def _lookup(self, kid: str | None, alg: str) -> PyJWK | None:
        if (kid, alg) in self._keys:
            return self._keys[(kid, alg)]
        # A single-key set may be used by tokens without a kid.
        single = kid is None and len(self._jwks) == 1
        jwk = next(iter(self._jwks.values())) if single else self._jwks.get((kid, _kty(alg)))
        if jwk is None or jwk.get("alg", alg) != alg or jwk.get("kty") != _kty(alg):
            return None
        try:
            key = PyJWK(jwk, algorithm=alg)
        except PyJWTError as e:
            # Remembered until the set is re-read: the kid is public, so anyone could otherwise have this
            # WARNING written (and the key parsed again) once per request.
            log.warning("JWKS key %r unusable for %s: %s", kid, alg, e)
            self._keys[(kid, alg)] = None
            return None
        self._keys[(kid, alg)] = key
        return key

    async def get(self, kid: str | None, alg: str) -> PyJWK:
        key = self._lookup(kid, alg)
        if key is not None:
            return key
        # The refetch runs in a task of its own that every concurrent miss awaits through a shield. Awaited
        # directly, it was cancelled with the request that started it (the listeners cancel the handler when
        # the client disconnects): the fetched set was thrown away while the attempt still counted, so a new
        # kid stayed unknown for a whole refetch interval. Anyone could do that to every refetch by sending a
        # random kid and hanging up, leaving rotated keys to the periodic refresh (jwks_cache_ttl_s).
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._refetch_if_due(kid), name="jwks-refetch")
        await asyncio.shield(self._pending)
        key = self._lookup(kid, alg)
        if key is None:
            raise UnknownKey(f"no {alg} key with kid {kid!r}")
        return key

    async def _refetch_if_due(self, kid: str | None) -> None:
        async with self._lock:  # the periodic refresh may be running: after it, a refetch is not due
            now = self._clock()
            if self._last_attempt is None or now - self._last_attempt >= self._refetch_interval:
                log.debug("unknown kid %r: refetching JWKS", kid)
                await self._refresh()

