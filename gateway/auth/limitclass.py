"""A client's limit class (its plan): which entry of ``limits`` its rate limits start from.

First match wins:

1. the API key's ``limits=NAME`` field in the key file — checked when the file is loaded: an unknown name is an
   error naming the line, so a typo never silently hands out another plan;
2. the JWT claim named by ``auth.jwt.limits_claim`` (off by default). The identity provider may know plans the
   gateway was not configured with: a name that is not a key of ``limits`` gets ``default`` — not a 401 (the
   token is valid) and never a 500 — logged once per name and counted in ``ipgate_limit_class_unknown_total``.
   A claim that is absent, null or empty names no class and falls through;
3. ``limits_by_tenant[tenant]``;
4. ``default``.

Resolved once per credential — when the key file is (re)loaded for API keys, when a token is verified for
JWTs (the verified-token cache keeps the resolved principal) — so the request path pays nothing for it. The
policy (gateway/policy.py) turns the class into the client's limits per tier.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.principal import DEFAULT_LIMIT_CLASS

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_MAX_LOGGED = 256  # distinct unknown names logged; past that one line says so (the metric counts them all)
_MAX_SHOWN = 64  # characters of an unknown name shown in the log


class LimitClasses:
    """The configured class names and the tenant map; resolves a credential's class."""

    __slots__ = ("_by_tenant", "_counter", "_logged", "known")

    def __init__(self, known: Iterable[str], by_tenant: Mapping[str, str] | None = None, *,
                 metrics: Metrics | None = None) -> None:
        self.known = frozenset(known) | {DEFAULT_LIMIT_CLASS}
        self._by_tenant = dict(by_tenant or {})
        bad = sorted(f"{t}: {c}" for t, c in self._by_tenant.items() if c not in self.known)
        if bad:
            raise ValueError(f"limits_by_tenant names classes not in limits: {', '.join(bad)}")
        self._counter = metrics.limit_class_unknown_total if metrics is not None else None
        self._logged: set[str] = set()

    @classmethod
    def from_config(cls, cfg: GatewayConfig, metrics: Metrics | None = None) -> LimitClasses:
        return cls(cfg.limits, cfg.limits_by_tenant, metrics=metrics)

    def describe(self) -> str:
        """The known names, for error messages."""
        return ", ".join(sorted(self.known))

    def for_tenant(self, tenant: str | None) -> str:
        if tenant is None:
            return DEFAULT_LIMIT_CLASS
        return self._by_tenant.get(tenant, DEFAULT_LIMIT_CLASS)

    def for_api_key(self, named: str | None, tenant: str | None) -> str:
        """``named``: the key file's ``limits=`` field, already checked against ``known`` by the parser."""
        return named if named is not None else self.for_tenant(tenant)

    def for_jwt(self, claim: Any, tenant: str | None) -> str:
        """``claim``: the raw value of ``limits_claim`` (None when the claim is off or absent)."""
        if claim is None or claim == "":
            return self.for_tenant(tenant)
        if isinstance(claim, str) and claim in self.known:
            return claim
        self._unknown(claim)
        return DEFAULT_LIMIT_CLASS

    def _unknown(self, claim: Any) -> None:
        if self._counter is not None:
            self._counter.inc()
        name = claim if isinstance(claim, str) else f"<{type(claim).__name__}>"
        if name in self._logged or len(self._logged) > _MAX_LOGGED:
            return
        self._logged.add(name)
        if len(self._logged) > _MAX_LOGGED:
            log.warning("more than %d distinct unknown limit classes in JWTs; no longer logging new ones "
                        "(ipgate_limit_class_unknown_total still counts them)", _MAX_LOGGED)
            return
        shown = name if len(name) <= _MAX_SHOWN else name[:_MAX_SHOWN] + "..."
        # %r: the claim comes from a token, and must not forge log lines
        log.warning("a JWT names limit class %r, which is not in limits (known: %s); such clients get %r",
                    shown, self.describe(), DEFAULT_LIMIT_CLASS)


def parse_limits_field(value: str) -> str | None:
    """The class name of a key-file field ``limits=NAME``; None when the field is not one."""
    key, sep, name = value.partition("=")
    return name if sep and key == "limits" else None
