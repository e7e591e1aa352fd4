"""Admin API for alerts, and the alert dashboard.

- ``GET /admin/alerts?limit=N[&client=ID]``: the most recent alerts across all replicas (newest first), read
  from the store's bounded shared list; ``{"alerts": [...], "count": n, "tiers": [tier names]}``. Alerts in
  the store are always redacted.
- ``GET /admin/dashboard``: one self-contained HTML page (inline JS/CSS, no CDN, no external requests) that
  polls ``/admin/alerts``, shows a client's record from ``/admin/clients/{id}`` and sets overrides through
  ``PUT /admin/clients/{id}/override``. The page holds no data itself; its API calls carry the admin token
  (typed into the page, or passed once as ``#token=...``, which never reaches the server's logs) and go
  through the admin auth like any other call. A strict Content-Security-Policy allows only same-origin
  requests and the page's own inline code.
"""

from __future__ import annotations

import json
import logging
from importlib import resources

from aiohttp import web

from gateway.context import AppContext
from gateway.errors import InvalidRequest

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _dashboard_html() -> bytes:
    return resources.files("gateway.admin").joinpath("static/dashboard.html").read_bytes()


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        n = int(raw)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer between 1 and {MAX_LIMIT}", param="limit") from None
    if not 1 <= n <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer between 1 and {MAX_LIMIT}", param="limit")
    return n


def routes(ctx: AppContext) -> list[web.RouteDef]:
    page = _dashboard_html()  # read once at start-up: a missing file fails start-up, not a request

    async def list_alerts(request: web.Request) -> web.Response:
        limit = _limit(request.query.get("limit"))
        client = request.query.get("client")
        # Filtering by client reads more than `limit` so the filtered answer is still up to `limit` long.
        raw = await ctx.store.recent_alerts(MAX_LIMIT if client else limit)
        alerts = []
        for line in raw:
            try:
                a = json.loads(line)
            except ValueError:
                log.warning("skipping an unreadable alert in the store")
                continue
            if client and a.get("client") != client:
                continue
            alerts.append(a)
            if len(alerts) >= limit:
                break
        return web.json_response({"alerts": alerts, "count": len(alerts), "tiers": list(ctx.policy.names)})

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(
            body=page, content_type="text/html", charset="utf-8",
            headers={
                "Content-Security-Policy": DASHBOARD_CSP, "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            },
        )

    return [web.get("/admin/alerts", list_alerts), web.get("/admin/dashboard", dashboard)]
