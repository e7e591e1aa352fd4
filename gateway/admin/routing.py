"""Admin API for routing and canary rollouts, and the reload entry point used by SIGHUP.

- ``GET /admin/routing[?model=NAME]``: pools, weights (configured and effective), health, ejections,
  in-flight counts, retry budget, and each canary's state with its history.
- ``POST /admin/routing/reload``: re-read the config file the gateway was started with and apply the
  sections that reload live (``models`` - backends, weights, stickiness, canary steps - and ``routing``).
  A changed section that needs a restart is named in ``restart_required``; a bad file is a 400 that names
  the file and field, and the running config is kept.
- ``POST /admin/canary/{model}/{abort|promote|pause|resume|restart}``: operator commands; the answer is the
  rollout's new state. With a shared store every replica follows within one poll (at most 1 s).

``reload_from_config(ctx, cfg)`` / ``reload_from_file(ctx, path)`` are what the server's SIGHUP handler calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.admin.audit import note
from gateway.admin.offloop import to_thread_to_the_end
from gateway.alerts.model import mask_url_passwords
from gateway.audit.trail import AuditTrail
from gateway.config import ConfigError, GatewayConfig, load_config, read_header_secret
from gateway.context import AppContext
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.routing.canary import Op
from gateway.tls import check_backend_tls

log = logging.getLogger(__name__)

LIVE_SECTIONS = ("models", "routing")


def reload_from_config(ctx: AppContext, new: GatewayConfig) -> dict[str, Any]:
    """Apply the live-reloadable sections of ``new``; in-flight requests finish on the backends they hold."""
    old = ctx.config
    for m in new.models:  # a key file that cannot be read would fail every request to its backend: refused here
        for b in m.backends:
            # (and one no header can carry: aiohttp refuses it, every request to the backend a 500)
            read_header_secret(b.api_key_env, b.api_key_file, what=f"models: {m.name}: backend {b.name} api key")
    check_backend_tls(new, fresh=True)  # renewed certificate files are read again; an unusable one: ConfigError
    restart = sorted(
        name for name in type(new).model_fields
        if name not in LIVE_SECTIONS and getattr(new, name) != getattr(old, name)
    ) + _start_up_model_fields(ctx, new)
    ctx.router.reload(new.models, new.routing)
    ctx.config = old.model_copy(update={"models": new.models, "routing": new.routing})
    ctx.models = frozenset(ctx.router.models())
    if restart:
        log.warning("config reload: sections %s changed but need a restart; they keep their old values", restart)
    log.info("config reload applied: models %s", sorted(ctx.models))
    return {"applied": list(LIVE_SECTIONS), "models": sorted(ctx.models), "restart_required": restart}


def _start_up_model_fields(ctx: AppContext, new: GatewayConfig) -> list[str]:
    """Fields of ``models`` that the reload does not apply: a model's ``watermark_scheme`` is read once, at
    start-up (``GatewayWatermarking``). Compared with what the running gateway applies to each model of the new
    file, so a reload that would turn a model's watermark on (or off) says that it needs a restart instead of
    answering "applied" while the model's answers go on as before."""
    scheme = ctx.config.watermark.scheme
    scheme_for: Callable[[str], str] | None = getattr(ctx.watermarking, "scheme_for", None)
    if ctx.watermarking is None:
        if not ctx.config.watermark.enabled:  # off: no model's scheme applies, after a restart either
            return []
        # `scheme: none` and no model asking for one started no watermarking: every model runs "none"
        scheme_for = _no_scheme
    if scheme_for is None:
        return []
    return [f"models.{m.name}.watermark_scheme" for m in new.models
            if (m.watermark_scheme or scheme) != scheme_for(m.name)]


def _no_scheme(model: str) -> str:
    return "none"


async def reload_from_file(ctx: AppContext, path: str) -> dict[str, Any]:
    """Re-read ``path`` (with the current ``IPGATE_*`` overrides) and apply it; ``ConfigError`` keeps the old.

    Reading, parsing and validating the file runs in a thread: it needs no live state, and on the loop it held
    every proxied request (100 models x 4 backends: ~0.1 s of YAML and validation, more on a busy machine).
    Applying it (``reload_from_config``: the router's pools, the config, the backend TLS contexts the request
    path reads) stays on the loop, in one piece. Reloads go one at a time, in the order they were asked for
    (``ctx.reloads``), each reading the file when its turn comes: two in a row apply in order, and the last
    one applies the file as it was last written."""
    async with ctx.reloads:
        new = await to_thread_to_the_end(load_config, path)
        return reload_from_config(ctx, new)


def count_reload(ctx: AppContext, source: str, result: str) -> None:
    """``ipgate_config_reloads_total{source, result}`` and ``ipgate_config_last_reload_successful``: a rejected
    reload is logged once by its caller and keeps the running config, which an alert must be able to see."""
    ctx.metrics.config_reloads_total.labels(source=source, result=result).inc()
    ctx.metrics.config_last_reload_successful.set(1 if result == "applied" else 0)


async def reload_by_signal(ctx: AppContext, path: str, trail: AuditTrail | None) -> dict[str, Any]:
    """SIGHUP's reload: ``reload_from_file``, recorded in the audit trail like ``POST /admin/routing/reload``
    (it changes the same live state, with no admin call to carry the record): actor ``signal:SIGHUP``,
    status 200, or 400 with ``invalid_config`` (then ``ConfigError`` propagates and the config stays)."""
    before = _live_state(ctx)  # (a reload asked for before this one may still apply: the trail shows both)
    fields: dict[str, Any] = {
        "ts": round(time.time(), 3), "request_id": os.urandom(12).hex(),
        "actor": {"id": "signal:SIGHUP", "auth": "signal", "tenant": None}, "source": "signal",
        "method": "SIGHUP", "route": None, "action": "routing.reload", "target": path, "before": before,
    }
    try:
        result = await reload_from_file(ctx, path)
    except ConfigError:
        count_reload(ctx, "signal", "rejected")
        if trail is not None:
            trail.write_soon({**fields, "after": None, "details": None, "status": 400, "error": "invalid_config"})
        raise
    except Exception:  # a bug in applying it: the live state may have changed part-way
        count_reload(ctx, "signal", "failed")
        if trail is not None:
            trail.write_soon({**fields, "after": _live_state(ctx), "details": None, "status": 500,
                              "error": "internal_error"})
        raise
    count_reload(ctx, "signal", "applied")
    if trail is not None:
        trail.write_soon({**fields, "after": _live_state(ctx), "status": 200, "error": None,
                          "details": {"restart_required": result["restart_required"]}})
    return result


def _retrieved(task: asyncio.Future[Any]) -> None:
    """(A reload whose caller left: its failure is counted and logged there, not "never retrieved".)"""
    if not task.cancelled():
        task.exception()


def _config_path(ctx: AppContext) -> str | None:
    # Set by `ipgate serve` on the context; a gateway built in code from a config object has no file.
    path = getattr(ctx, "config_path", None)
    return path if isinstance(path, str) and path else None


def _live_state(ctx: AppContext) -> dict[str, Any]:
    """For the audit record: the models served and a digest of the live sections (backend URLs may carry
    credentials, so the record names their SHA-256, which shows whether anything changed, never the values)."""
    live = json.dumps({s: getattr(ctx.config, s) for s in LIVE_SECTIONS}, default=_dump, sort_keys=True)
    return {"models": sorted(ctx.models), "live_config_sha256": hashlib.sha256(live.encode()).hexdigest()}


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else str(value)


def _canary_state(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: snap.get(k) for k in ("phase", "step", "weight")}


def _who(request: web.Request) -> str:
    from gateway.admin.app import ADMIN_PRINCIPAL  # the admin app sets it; imported late (no import cycle)

    principal = request.get(ADMIN_PRINCIPAL)
    return str(getattr(principal, "client_id", "admin"))


def routes(ctx: AppContext) -> list[web.RouteDef]:
    async def get_routing(request: web.Request) -> web.Response:
        snap = ctx.router.snapshot()
        model = request.query.get("model")
        if model is not None:
            if model not in snap["models"]:
                raise NotFound(f"The model {model!r} does not exist.", param="model", code="model_not_found")
            snap["models"] = {model: snap["models"][model]}
        # A backend URL may carry basic-auth credentials (so may an error or quarantine reason naming it).
        for pool in snap["models"].values():
            for b in pool.get("backends", ()):
                for k, v in b.items():
                    if isinstance(v, str):
                        b[k] = mask_url_passwords(v)
        return web.json_response(snap)

    async def post_reload(request: web.Request) -> web.Response:
        path = _config_path(ctx)
        note(request, "routing.reload", target=path, before=_live_state(ctx))
        if path is None:
            raise ServiceUnavailable(
                "This gateway was not started from a config file; there is nothing to re-read.",
                code="no_config_file",
            )
        sup = ctx.supervisor_pid
        supervised = sup is not None and sup == os.getppid()
        if not supervised:
            # what SIGHUP does too (gateway/server.py reload_models): the API key file, whatever the config file
            # holds, so a revoked key stops working on this call with one worker as with --workers N
            ctx.auth.reload_api_keys()
        async def reload() -> dict[str, Any]:
            try:
                result = await reload_from_file(ctx, path)
            except ConfigError as e:
                count_reload(ctx, "admin", "rejected")
                log.warning("config reload via admin API rejected: %s", e)
                raise InvalidRequest(f"config not reloaded: {e}", param="config", code="invalid_config") from e
            except Exception:
                count_reload(ctx, "admin", "failed")
                raise
            count_reload(ctx, "admin", "applied")
            return result

        # Asked for, a reload is applied (and counted) even if the caller hangs up while the file is read, as
        # when it all ran on the loop at once: the listener cancels the handler, not the reload.
        task = asyncio.ensure_future(reload())
        task.add_done_callback(_retrieved)
        result = await asyncio.shield(task)
        log.info("config reloaded from %s by %s", path, _who(request))
        note(request, after=_live_state(ctx), details={"restart_required": result["restart_required"]})
        if supervised:
            assert sup is not None
            # `ipgate serve --workers N`: this request reached one worker; the supervisor forwards SIGHUP to
            # every worker (this one re-reads the same file again: nothing changes), so all serve the new file
            try:
                os.kill(sup, signal.SIGHUP)
            except OSError as e:
                log.error("admin reload: could not ask the supervisor (pid %d) to reload the other workers: %s; "
                          "send SIGHUP to ipgate serve", sup, e)
            else:
                result = {**result, "workers": "all (SIGHUP to the supervisor)"}
        return web.json_response(result)

    async def post_canary(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        op = Op(request.match_info["op"])
        note(request, f"canary.{op.value}", target=model)
        by = _who(request)
        note(request, before=_canary_state(ctx.router.canary(model).snapshot()))
        await ctx.router.canary_command(model, op, by=by)
        log.info("canary %s: %s requested by %s", model, op.value, by)
        snap = ctx.router.canary(model).snapshot()
        note(request, after=_canary_state(snap))
        return web.json_response(snap)

    ops = "|".join(o.value for o in Op)
    return [
        web.get("/admin/routing", get_routing),
        web.post("/admin/routing/reload", post_reload),
        web.post(f"/admin/canary/{{model}}/{{op:{ops}}}", post_canary),
    ]
