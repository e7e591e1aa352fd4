"""The admin application: health/readiness/metrics plus the admin API routes of every feature.

Each feature module in ``ADMIN_MODULES`` (``gateway/admin/<name>.py``) exposes ``routes(ctx)``; they are all
mounted on the admin listener, never on the public one. Admin API calls need either the bearer token from
the environment variable named by ``admin.token_env`` (compared in constant time; at least 16 characters or
the gateway refuses to start) or a JWT/API-key principal with the role ``admin``. Credentials travel only in
the ``Authorization`` header, never in cookies or the URL, so a cross-site page cannot borrow them (no CSRF)
and no CORS headers are sent (another origin cannot read an answer). Health, readiness, metrics and the
(data-free) dashboard page need no credential: the admin listener should be bound to a private address.
Every request, to any route, must name an allowed host in ``Host`` or gets 421 (``gateway/admin/hosts.py``:
DNS-rebinding protection for those credential-free routes).
Every answer carries ``SECURITY_HEADERS`` (nosniff, no framing, no caching). Every state-changing call
that passed admin auth is recorded in the audit trail (``gateway/admin/audit.py``).
"""

from __future__ import annotations

import hmac
import importlib
import logging
import os
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.admin.audit import AUDIT_TRAIL, audit_middleware
from gateway.admin.core import PUBLIC_PATHS
from gateway.admin.hosts import METRIC_REASON, HostAllowlist, host_check
from gateway.app import openai_errors
from gateway.audit.trail import AuditTrail
from gateway.config import AdminConfig, ConfigError
from gateway.context import CTX, AppContext
from gateway.errors import PermissionDenied
from gateway.parsererrors import parser_limits
from gateway.principal import Principal

log = logging.getLogger(__name__)

ADMIN_MODULES: tuple[str, ...] = ("core", "routing", "alerts", "clients", "watermark", "fingerprint", "audit")
UNAUTHENTICATED = PUBLIC_PATHS | {"/admin/dashboard"}
ADMIN_PRINCIPAL = web.RequestKey("ipgate_admin_principal", Principal)  # who passed admin auth (for audit)
# The admin token is a long-lived bearer secret with full control of the gateway: a short one is guessable
# (the listener counts no failures). 16 characters is a floor, not a target: generate 32 random bytes.
MIN_ADMIN_TOKEN_CHARS = 16
ADMIN_LINE_BYTES = 8190  # the admin listener's request line and header lines (aiohttp's default line limit)


def _admin_auth(ctx: AppContext, token: str | None) -> Middleware:
    expected = token.encode() if token else None

    @web.middleware
    async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNAUTHENTICATED:
            return await handler(request)
        header = ctx.auth.single_header(request.headers)  # several Authorization headers: 401
        # The scheme is case-insensitive (RFC 9110 §11.1), as in the authenticator; the token is compared in
        # constant time. surrogatepass: aiohttp hands undecodable header bytes over as lone surrogates, which a
        # strict encode turned into a 500 with a logged traceback for any unauthenticated caller; now they
        # simply do not match and the authenticator answers its 401.
        scheme, _, presented = (header or "").partition(" ")
        if expected is not None and scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode("utf-8", "surrogatepass"), expected):
            request[ADMIN_PRINCIPAL] = Principal("admin-token", roles=frozenset({"admin"}), auth_method="token")
            return await handler(request)
        principal = await ctx.auth.authenticate(header)  # raises AuthenticationFailed (401)
        if not principal.is_admin:
            raise PermissionDenied("This credential does not have the admin role.", code="not_admin")
        request[ADMIN_PRINCIPAL] = principal
        return await handler(request)

    return admin_auth


# On every admin answer (JSON, errors, metrics, the dashboard): never sniffed into HTML, never framed, never
# cached by a browser or a proxy, no referrer, and not readable by another origin's no-cors embed. The
# dashboard page sets its own, stricter Content-Security-Policy; everything else is data, so it gets one that
# allows nothing at all (a JSON body opened as a page can run nothing even if a browser misreads it).
SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def admin_token(cfg: AdminConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The admin bearer token from ``admin.token_env`` (None when unset); ``ConfigError`` when it is too short."""
    source = os.environ if env is None else env
    token = source.get(cfg.token_env) if cfg.token_env else None
    # A header cannot carry surrounding whitespace (HTTP strips it, and so does the comparison): a value with
    # the trailing newline of a secret mounted from a file (e.g. a Kubernetes secret made --from-file) could
    # never be presented, so the admin token silently never worked. Stripped, it is the token the operator has.
    token = token.strip() if token else None
    if token and len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(
            f"admin.token_env: {cfg.token_env} holds {len(token)} characters; an admin token needs "
            f"at least {MIN_ADMIN_TOKEN_CHARS} (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token or None


def audit_key(cfg: AdminConfig, env: Mapping[str, str] | None = None) -> bytes | None:
    """The audit chain key from ``admin.audit_key_env``; a named variable that is unset or short fails
    start-up (never a silently unkeyed chain)."""
    if not cfg.audit_key_env:
        return None
    key = (os.environ if env is None else env).get(cfg.audit_key_env, "")
    if len(key) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(f"admin.audit_key_env: {cfg.audit_key_env} is unset or shorter than "
                          f"{MIN_ADMIN_TOKEN_CHARS} characters")
    return key.encode()


def open_trail(ctx: AppContext, env: Mapping[str, str] | None = None) -> AuditTrail:
    """This process's audit writer (see gateway/admin/audit.py); a bad ``admin.audit_file`` or
    ``admin.audit_key_env`` fails start-up."""
    cfg = ctx.config.admin
    key = audit_key(cfg, env)
    try:
        return AuditTrail(ctx.store, max_records=cfg.audit_max_records, file=cfg.audit_file,
                          failures=ctx.metrics.audit_write_failures_total, key=key)
    except OSError as e:
        raise ConfigError(f"admin.audit_file: cannot open {cfg.audit_file!r} for appending: {e}") from e


def build_admin_app(ctx: AppContext, *, env: Mapping[str, str] | None = None) -> web.Application:
    token = admin_token(ctx.config.admin, env)
    if not token:
        log.info("admin API: %s is not set; only JWTs with the 'admin' role are accepted",
                 ctx.config.admin.token_env)
    trail = open_trail(ctx, env)
    hosts = HostAllowlist(ctx.config.admin_addr[0], ctx.config.admin.allowed_hosts)
    refusals = ctx.metrics.auth_failures_total.labels(reason=METRIC_REASON)
    # The Host check comes before admin auth: an unauthenticated route is exactly what rebinding would read.
    app = web.Application(middlewares=[openai_errors, host_check(hosts, refusals.inc), _admin_auth(ctx, token),
                                       audit_middleware(trail, ADMIN_PRINCIPAL)],
                          handler_args=parser_limits(ADMIN_LINE_BYTES))  # 414 / 431 told apart (parsererrors)
    app[CTX] = ctx
    app[AUDIT_TRAIL] = trail

    async def close_trail(app: web.Application) -> None:
        await trail.close()

    app.on_cleanup.append(close_trail)
    app.on_response_prepare.append(_security_headers)
    for name in ADMIN_MODULES:
        module = importlib.import_module(f"gateway.admin.{name}")
        app.add_routes(module.routes(ctx))
    return app

