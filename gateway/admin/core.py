"""Health, readiness and metrics on the admin listener.

- ``GET /healthz``: 200 while the process serves (liveness).
- ``/readyz`` also names the worker's pid (with ``--workers N`` each connection may reach another worker).
- ``GET /readyz``: 200 when the gateway should get traffic; 503 at once on SIGTERM (draining), and while
  the store answers from its failure-mode fallback with ``failure_mode: closed`` (every request would be
  refused). The body says why.
- ``GET /metrics``: Prometheus text exposition (all workers when run with ``--workers N``).
"""

from __future__ import annotations

import os

from aiohttp import web

from gateway.context import AppContext

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def routes(ctx: AppContext) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if ctx.draining:
            return web.json_response({"status": "draining"}, status=503)
        degraded = bool(getattr(ctx.store, "degraded", False))  # ResilientStore; the memory store never is
        if degraded and ctx.config.store.failure_mode == "closed":
            return web.json_response({"status": "store unavailable (failure_mode: closed)"}, status=503)
        return web.json_response({"status": "ready", "models": sorted(ctx.models), "pid": os.getpid()})

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = ctx.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]
