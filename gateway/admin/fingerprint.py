"""Admin API for fingerprint checks (does each backend serve the genuine model?).

- ``GET /admin/fingerprint[?model=NAME]``: settings and, per backend with a reference, the last verdict
  (``match | mismatch | inconclusive | unchecked``), its similarity, when it ran, its reasons, and the
  backend's quarantine.
- ``POST /admin/fingerprint/check[?model=NAME[&backend=NAME]]``: run the checks now (waits for a round in
  progress, then for the probes: at most ``fingerprint.timeout_s`` per probe) and answer their results.
- ``POST /admin/fingerprint/{model}/{backend}/release``: an operator puts a quarantined backend back in
  rotation. The next check quarantines it again if it still mismatches: to accept a deliberate model change,
  re-record the reference (``ipgate fingerprint record``) instead.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.admin.audit import note
from gateway.alerts.model import mask_url_passwords
from gateway.context import AppContext
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.fingerprinting import FingerprintChecker

log = logging.getLogger(__name__)


def _checker(ctx: AppContext) -> FingerprintChecker:
    # Read by name so this module works whether or not the running context was built with a checker.
    checker = getattr(ctx, "fingerprint", None)
    if not isinstance(checker, FingerprintChecker):
        raise ServiceUnavailable("Fingerprint checks are not running in this gateway (fingerprint.enabled).",
                                 code="fingerprint_off")
    return checker


def _masked(entry: dict[str, Any]) -> dict[str, Any]:
    """A backend URL may carry basic-auth credentials (also inside the reasons): never serve them."""
    out: dict[str, Any] = {}
    for k, v in entry.items():
        if isinstance(v, str):
            v = mask_url_passwords(v)
        elif isinstance(v, list):
            v = [mask_url_passwords(x) if isinstance(x, str) else x for x in v]
        out[k] = v
    return out


def _mask(reason: str | None) -> str | None:
    return mask_url_passwords(reason) if reason is not None else None


def _who(request: web.Request) -> str:
    from gateway.admin.app import ADMIN_PRINCIPAL  # the admin app sets it; imported late (no import cycle)

    principal = request.get(ADMIN_PRINCIPAL)
    return str(getattr(principal, "client_id", "admin"))


def routes(ctx: AppContext) -> list[web.RouteDef]:
    async def get_fingerprint(request: web.Request) -> web.Response:
        snap = _checker(ctx).snapshot()
        model = request.query.get("model")
        if model is not None:
            ctx.router.pool(model)  # NotFound names the parameter
            snap["backends"] = [b for b in snap["backends"] if b["model"] == model]
        snap["backends"] = [_masked(b) for b in snap["backends"]]
        return web.json_response(snap)

    async def post_check(request: web.Request) -> web.Response:
        model, backend = request.query.get("model"), request.query.get("backend")
        note(request, "fingerprint.check", target="/".join(x for x in (model, backend) if x is not None) or None)
        checker = _checker(ctx)
        if backend is not None and model is None:
            raise InvalidRequest("'backend' needs 'model' too.", param="model")
        if model is not None:
            ctx.router.pool(model)
            names = {b.name for m, b in checker.targets() if m == model}
            if backend is not None and backend not in names:
                raise NotFound(
                    f"The model {model!r} has no backend {backend!r} with a fingerprint_reference.",
                    param="backend", code="backend_not_found",
                )
        results = await checker.check_now(model, backend)
        log.info("fingerprint check of %d backends requested by %s", len(results), _who(request))
        note(request, details={"verdicts": [
            {"model": r.model, "backend": r.backend, "verdict": r.verdict,
             "quarantined": r.quarantined} for r in results]})
        body: dict[str, Any] = {"results": [_masked(r.to_json()) for r in results]}
        return web.json_response(body)

    async def post_release(request: web.Request) -> web.Response:
        model, backend = request.match_info["model"], request.match_info["backend"]
        note(request, "fingerprint.release", target=f"{model}/{backend}")
        note(request, before={"quarantine": _mask(ctx.router.quarantined(model, backend))})
        released = ctx.router.release_quarantine(model, backend, why=f"released by {_who(request)}")
        note(request, after={"quarantine": _mask(ctx.router.quarantined(model, backend))},
             details={"released": released})
        return web.json_response({"model": model, "backend": backend, "released": released,
                                  "quarantine": ctx.router.quarantined(model, backend)})

    return [
        web.get("/admin/fingerprint", get_fingerprint),
        web.post("/admin/fingerprint/check", post_check),
        web.post("/admin/fingerprint/{model}/{backend}/release", post_release),
    ]
