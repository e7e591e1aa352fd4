"""The admin application: health/readiness/metrics plus the admin API routes of every feature.

Each feature module in ``ADMIN_MODULES`` (``gateway/admin/<name>.py``) exposes ``routes(ctx)``; they are all
mounted on the admin listener, never on the public one. Admin API calls need either the bearer token from
the environment variable named by ``admin.token_env`` (compared in constant time) or a JWT/API-key principal
with the role ``admin``. Health, readiness, metrics and the (data-free) dashboard page need no credential:
the admin listener should be bound to a private address.
"""

from __future__ import annotations

import hmac
import importlib
import logging
import os
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.admin.core import PUBLIC_PATHS
from gateway.app import openai_errors
from gateway.context import CTX, AppContext
from gateway.errors import PermissionDenied
from gateway.principal import Principal

log = logging.getLogger(__name__)

ADMIN_MODULES: tuple[str, ...] = ("core", "routing", "alerts", "clients", "watermark", "fingerprint")
UNAUTHENTICATED = PUBLIC_PATHS | {"/admin/dashboard"}
ADMIN_PRINCIPAL = web.RequestKey("ipgate_admin_principal", Principal)  # who passed admin auth (for audit)


def _admin_auth(ctx: AppContext, token: str | None) -> Middleware:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNAUTHENTICATED:
            return await handler(request)
        header = request.headers.get("Authorization")
        if expected is not None and header is not None and hmac.compare_digest(header.encode(), expected):
            request[ADMIN_PRINCIPAL] = Principal("admin-token", roles=frozenset({"admin"}), auth_method="token")
            return await handler(request)
        principal = await ctx.auth.authenticate(header)  # raises AuthenticationFailed (401)
        if not principal.is_admin:
            raise PermissionDenied("This credential does not have the admin role.", code="not_admin")
        request[ADMIN_PRINCIPAL] = principal
        return await handler(request)

    return admin_auth


def build_admin_app(ctx: AppContext, *, env: Mapping[str, str] | None = None) -> web.Application:
    source = os.environ if env is None else env
    token = source.get(ctx.config.admin.token_env) if ctx.config.admin.token_env else None
    if not token:
        log.info("admin API: %s is not set; only JWTs with the 'admin' role are accepted",
                 ctx.config.admin.token_env)
    app = web.Application(middlewares=[openai_errors, _admin_auth(ctx, token)])
    app[CTX] = ctx
    for name in ADMIN_MODULES:
        module = importlib.import_module(f"gateway.admin.{name}")
        app.add_routes(module.routes(ctx))
    return app

