"""Admin API for alerts, and the alert dashboard.

- ``GET /admin/alerts?limit=N[&client=ID]``: the most recent alerts across all replicas (newest first), read
  from the store's bounded shared list; ``{"alerts": [...], "count": n, "tiers": [tier names]}``. Alerts in
  the store are always redacted.
- ``GET /admin/dashboard``: one self-contained HTML page (inline JS/CSS, no CDN, no external requests) that
  polls ``/admin/alerts`` and the latest admin actions from ``/admin/audit``, shows a client's record from
  ``/admin/clients/{id}`` and sets overrides through ``PUT /admin/clients/{id}/override``. The page holds
  no data itself; its API calls carry the admin token (typed into the page, or passed once as
  ``#token=...``, which never reaches the server's logs) and go
  through the admin auth like any other call. A strict Content-Security-Policy allows only same-origin
  requests and the page's own inline script and style, pinned by their SHA-256 hashes (no
  ``'unsafe-inline'``: markup that ever got into the page could not run code), and forbids framing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from importlib import resources

from aiohttp import web

from gateway.context import AppContext
from gateway.errors import InvalidRequest

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_INLINE = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.DOTALL) for tag in ("script", "style")}


def _dashboard_html() -> bytes:
    return resources.files("gateway.admin").joinpath("static/dashboard.html").read_bytes()


def _hashes(page: str, tag: str) -> str:
    blocks = _INLINE[tag].findall(page)
    if not blocks:  # a page edit that renamed the tags would otherwise ship a page that cannot run
        raise RuntimeError(f"dashboard.html has no inline <{tag}> block")
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in blocks
    )


def dashboard_csp(page: bytes) -> str:
    """The page's Content-Security-Policy: only its own inline blocks (by hash) run, only same-origin fetches."""
    text = page.decode("utf-8")
    return (
        f"default-src 'none'; script-src {_hashes(text, 'script')}; style-src {_hashes(text, 'style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


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
    csp = dashboard_csp(page)

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
            if not isinstance(a, dict):  # valid JSON but no alert: a 500 with ?client=, a blank dashboard without
                log.warning("skipping an alert in the store that is not a JSON object")
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
                "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            },
        )

    return [web.get("/admin/alerts", list_alerts), web.get("/admin/dashboard", dashboard)]
