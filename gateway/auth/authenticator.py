"""``Authorization: Bearer ...`` → ``Principal``.

Tokens starting with ``sk-`` are API keys (a SHA-256 lookup, ≈ 1 µs, no cache needed); anything else is a
JWT. A verified JWT is cached (bounded LRU keyed by the token string) until its own ``exp``, so a client's
repeat requests cost a dictionary probe instead of a signature check. The cache never extends a token's
life: an entry is dropped at ``exp`` and the token is re-verified (where the leeway then applies).

Every failure raises ``AuthenticationFailed`` with the same generic message, whatever went wrong: a
rejection must not tell a prober which check failed. The reason goes to the debug log and to the
``ipgate_auth_failures_total{reason}`` counter. The token itself is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from multidict import MultiMapping

from gateway.auth.apikeys import KEY_PREFIX, ApiKeyFile
from gateway.auth.jwt import JwtVerifier, TokenRejected
from gateway.auth.limitclass import LimitClasses
from gateway.config import AuthConfig
from gateway.errors import AuthenticationFailed
from gateway.principal import Principal
from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

GENERIC_MESSAGE = "Invalid or missing credentials."
# RFC 6750 §3: a 401 for a bearer-protected resource carries this challenge; no error detail in it either.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ipgate"'}
_SCHEME = "bearer"


class Authenticator:
    def __init__(
        self,
        *,
        jwt: JwtVerifier | None,
        api_keys: ApiKeyFile | None,
        cache_size: int = 10_000,
        max_token_bytes: int = 8192,
        reload_interval_s: float = 0.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._jwt = jwt
        self._api_keys = api_keys
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        # "Bearer " + the token; anything longer is rejected before it is split or decoded.
        self._max_header = max_token_bytes + len(_SCHEME) + 1
        self._reload_interval = reload_interval_s
        self._reloader: asyncio.Task[None] | None = None
        self._metrics = metrics
        # Bound label children: a labels() lookup per request would cost more than the cache hit itself.
        self._cache_hit = metrics.auth_cache_total.labels(result="hit") if metrics is not None else None
        self._cache_miss = metrics.auth_cache_total.labels(result="miss") if metrics is not None else None
        self._clock = clock
        if jwt is None and api_keys is None:
            log.warning("no authentication method configured: every request will be rejected")

    @classmethod
    def from_config(
        cls, cfg: AuthConfig, *, metrics: Metrics | None = None, env: Mapping[str, str] | None = None,
        classes: LimitClasses | None = None,
    ) -> Authenticator:
        """Raises ``ConfigError`` (naming the field) for a missing secret, a weak key or a bad key file.
        ``classes``: the configured limit classes (``LimitClasses.from_config``); None: only ``default``."""
        verifier = (JwtVerifier.from_config(cfg.jwt, metrics=metrics, env=env, classes=classes)
                    if cfg.jwt is not None else None)
        api_keys = ApiKeyFile(cfg.api_keys.file, classes) if cfg.api_keys.file else None
        return cls(
            jwt=verifier,
            api_keys=api_keys,
            cache_size=cfg.cache_size,
            max_token_bytes=cfg.jwt.max_token_bytes if cfg.jwt is not None else 8192,
            reload_interval_s=cfg.api_keys.reload_interval_s,
            metrics=metrics,
        )

    async def start(self) -> None:
        if self._jwt is not None:
            await self._jwt.start()
        if self._api_keys is not None and self._reload_interval > 0 and self._reloader is None:
            self._reloader = asyncio.create_task(self._reload_loop(), name="apikeys-reload")

    async def close(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
            self._reloader = None
        if self._jwt is not None:
            await self._jwt.close()

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reload_interval)
            self.reload_api_keys()

    def reload_api_keys(self) -> bool:
        """Re-read the API key file if it changed (also called on SIGHUP). True when new keys are in force."""
        if self._api_keys is None:
            return False
        # A stat and, on change, a small file read: cheap enough to run on the loop every few seconds.
        return self._api_keys.reload_if_changed()

    def _fail(self, reason: str, detail: str = "") -> AuthenticationFailed:
        log.debug("authentication rejected: %s %s", reason, detail)
        if self._metrics is not None:
            self._metrics.auth_failures_total.labels(reason=reason).inc()
        return AuthenticationFailed(GENERIC_MESSAGE, headers=CHALLENGE)

    def single_header(self, headers: MultiMapping[str]) -> str | None:
        """The request's one ``Authorization`` value. Several are refused (401): a proxy in front that reads
        the last one would check a different credential than the gateway, which reads the first."""
        values = headers.getall("Authorization", [])
        if len(values) > 1:
            raise self._fail("multiple", f"{len(values)} Authorization headers")
        return values[0] if values else None

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise self._fail("missing")
        if len(authorization) > self._max_header:
            raise self._fail("oversized", f"{len(authorization)} bytes")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != _SCHEME or not token:
            raise self._fail("scheme")
        if not token.isascii():
            # JWTs (base64url) and API keys are ASCII by construction. aiohttp hands over undecodable header bytes
            # as lone surrogates, which made the API-key hash raise UnicodeEncodeError: a 500 with a logged
            # traceback for every such unauthenticated request instead of a 401.
            raise self._fail("malformed", "non-ASCII characters in the credential")

        if token.startswith(KEY_PREFIX):
            principal = self._api_keys.table.lookup(token) if self._api_keys is not None else None
            if principal is None:
                raise self._fail("unknown_api_key")
            return principal

        cached = self._cache.get(token)
        if cached is not None:
            principal, expires_at = cached
            if self._clock() < expires_at:
                self._cache.move_to_end(token)
                if self._cache_hit is not None:
                    self._cache_hit.inc()
                return principal
            del self._cache[token]
        if self._cache_miss is not None:
            self._cache_miss.inc()

        if self._jwt is None:
            raise self._fail("jwt_disabled")
        try:
            verified = await self._jwt.verify(token)
        except TokenRejected as e:
            raise self._fail(e.reason, e.detail) from None
        except Exception as e:  # a library bug on crafted input must still be a 401, not a 500: logged + counted
            log.warning("unexpected %s while verifying a token; rejected", type(e).__name__)
            raise self._fail("verify_error") from None
        if verified.expires_at > self._clock():
            self._cache[token] = (verified.principal, verified.expires_at)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verified.principal

    def limit_classes(self, client_id: str) -> frozenset[str]:
        """The limit classes ``client_id`` authenticates with, as far as this process knows: its API keys', and
        those of its verified tokens still cached. For the admin API (it scans the token cache: not for the
        request path)."""
        found = set(self._api_keys.table.limit_classes(client_id)) if self._api_keys is not None else set()
        found.update(p.limit_class for p, _ in list(self._cache.values()) if p.client_id == client_id)
        return frozenset(found)

    @property
    def cache_len(self) -> int:
        return len(self._cache)
