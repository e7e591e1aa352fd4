"""The audit trail of administrative actions: the middleware that records them and the routes that read them.

Every state-changing admin request (any method but GET/HEAD/OPTIONS on an admin API route; the watermark
verification POST included, since its answer reveals who received a text) that passed admin auth produces
exactly **one** record, whatever its outcome: ``ts``, ``request_id`` (the caller's ``X-Request-Id`` or a
fresh one, echoed in the answer), ``actor`` (``id``: ``admin-token`` or the JWT/API-key client id; ``auth``;
``tenant``), ``source`` (the peer address of the admin listener's connection), ``method``, ``route`` (the
route pattern), ``action`` (``client.override.set``, ``canary.abort``, ...), ``target``, ``before`` /
``after`` (what the handler knows of the state it changed), ``details``, ``status`` (the HTTP status
answered; 499 when the caller went away mid-action) and ``error`` (the error code, or null), plus the chain
fields of ``gateway.audit.chain``. Handlers describe their action with ``note(request, ...)``; a route that
does not is still recorded, under ``"<METHOD> <route>"``. Records never hold credentials, request bodies or
verified text (only its length and SHA-256).

A reload by SIGHUP (no admin request) is recorded by ``gateway.admin.routing.reload_by_signal`` in the same
shape, with actor ``signal:SIGHUP`` and method ``SIGHUP``.

Requests refused by admin auth (401/403) are not recorded: they are no admin action, and an unauthenticated
flood must not be able to push real records out of the capped shared list.

- ``GET /admin/audit?limit=N[&actor=ID][&action=NAME|PREFIX.*][&target=T]``: the newest records across all
  replicas (newest first), read from the store's capped list; ``{"records": [...], "count": n,
  "pending": k}`` where ``pending`` counts this replica's records still waiting for the store.
- ``GET /admin/audit/verify``: checks every writer's hash chain in the store's list (a writer's oldest kept
  record may be mid-chain: the list is capped); ``{"intact": bool, "records": n, "writers": w,
  "problems": [{"position": i, "writer": ..., "reason": ...}]}`` with positions counted oldest first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.admin.alerts import MAX_LIMIT, _limit
from gateway.audit.chain import verify_lines
from gateway.audit.trail import AuditTrail
from gateway.context import AppContext
from gateway.errors import GatewayError
from gateway.pipeline import error_response
from gateway.principal import Principal
from gateway.receive import request_id

log = logging.getLogger(__name__)

AUDIT_TRAIL: web.AppKey[AuditTrail] = web.AppKey("ipgate_audit_trail", AuditTrail)
_NOTE: web.RequestKey[dict[str, Any]] = web.RequestKey("ipgate_audit_note", dict)
READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection before the answer"


def note(request: web.Request, action: str | None = None, target: str | None = None, **fields: Any) -> None:
    """Describe the admin action of ``request`` for its audit record (``before``, ``after``, ``details``:
    JSON values). Call it first with the action, then again as the handler learns more."""
    n = request.get(_NOTE)
    if n is None:
        n = request[_NOTE] = {}
    if action is not None:
        n["action"] = action
    if target is not None:
        n["target"] = target
    n.update(fields)


def _route(request: web.Request) -> str | None:
    info = request.match_info
    if info.http_exception is not None:  # 404 / 405: no admin route was reached
        return None
    resource = info.route.resource
    return resource.canonical if resource is not None else None


def audit_middleware(trail: AuditTrail, principal_key: web.RequestKey[Principal]) -> Middleware:
    """Records every state-changing request that passed admin auth (placed after the auth middleware)."""

    @web.middleware
    async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route(request)
        if request.method in READ_ONLY or route is None:
            return await handler(request)
        rid = request_id(request)
        started = time.time()

        async def record(status: int, error: str | None) -> None:
            # In a task of its own, shielded: the admin listener runs with handler_cancellation, so a caller
            # that hangs up while the record waits for the trail's lock (another record's fsync) or the store
            # would otherwise cancel the write of an action that has already happened.
            await asyncio.shield(trail.write_soon(_fields(request, principal_key, route, rid, started, status,
                                                          error)))

        try:
            response = await handler(request)
        except GatewayError as e:  # answered here so the error carries the same request id as the record
            await record(e.status, e.code)
            return error_response(e, rid)
        except web.HTTPException as e:  # aiohttp's own (a body over the admin app's 1 MiB: 413)
            await record(e.status, f"http_{e.status}")
            e.headers["X-Request-Id"] = rid  # kept by openai_errors: the answer names the record's id
            raise
        except asyncio.CancelledError:
            # The caller went away: the action may have happened. Record it without waiting (this task is
            # being cancelled); the trail keeps a reference until the write is done.
            trail.write_soon(_fields(request, principal_key, route, rid, started, CLIENT_CLOSED, "client_closed"))
            raise
        except Exception:
            await record(500, "internal_error")
            raise
        await record(response.status, None)
        response.headers["X-Request-Id"] = rid
        return response

    return audit


def _fields(request: web.Request, principal_key: web.RequestKey[Principal], route: str, rid: str,
            started: float, status: int, error: str | None) -> dict[str, Any]:
    n = request.get(_NOTE) or {}
    who = request.get(principal_key)
    return {
        "ts": round(started, 3),
        "request_id": rid,
        "actor": {"id": who.client_id, "auth": who.auth_method, "tenant": who.tenant} if who else None,
        "source": request.remote,
        "method": request.method,
        "route": route,
        "action": n.get("action") or f"{request.method} {route}",
        "target": n.get("target"),
        "before": n.get("before"),
        "after": n.get("after"),
        "details": n.get("details"),
        "status": status,
        "error": error,
    }


def _matches(rec: dict[str, Any], actor: str | None, action: str | None, target: str | None) -> bool:
    if actor is not None and (rec.get("actor") or {}).get("id") != actor:
        return False
    if action is not None:
        name = str(rec.get("action"))
        if not (name.startswith(action[:-1]) if action.endswith("*") else name == action):
            return False
    return target is None or rec.get("target") == target


def _select(raw: list[str], limit: int, actor: str | None, action: str | None, target: str | None
            ) -> list[dict[str, Any]]:
    """The newest ``limit`` records of ``raw`` (JSON lines, newest first) that match the filters."""
    records: list[dict[str, Any]] = []
    unreadable = 0
    for line in raw:
        try:
            rec = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(rec, dict) and _matches(rec, actor, action, target):
            records.append(rec)
            if len(records) >= limit:
                break
    if unreadable:
        log.warning("skipped %d unreadable audit records in the store", unreadable)
    return records


def routes(ctx: AppContext) -> list[web.RouteDef]:
    async def list_audit(request: web.Request) -> web.Response:
        limit = _limit(request.query.get("limit"))
        actor, action, target = (request.query.get(k) for k in ("actor", "action", "target"))
        trail = request.app.get(AUDIT_TRAIL)
        pending = await trail.flush() if trail is not None else 0  # a recovered store gets the backlog first
        filtered = actor is not None or action is not None or target is not None
        # Filtering reads the whole capped list, so that a filtered answer is still up to `limit` long.
        raw = await ctx.store.recent_audit(max(ctx.config.admin.audit_max_records, MAX_LIMIT) if filtered
                                           else limit)
        # In a worker thread, as the chain check below: a filter reads the whole list (admin.audit_max_records,
        # up to 1 000 000), ~7 us of JSON each, on the loop that serves the public API.
        records = await asyncio.to_thread(_select, raw, limit, actor, action, target)
        return web.json_response({"records": records, "count": len(records), "pending": pending})

    async def verify_audit(request: web.Request) -> web.Response:
        raw = await ctx.store.recent_audit(ctx.config.admin.audit_max_records)
        trail = request.app.get(AUDIT_TRAIL)
        # ~12 us per record (parse, re-encode, hash): 10 000 (the default list) took ~120 ms of the event loop,
        # the allowed 1 000 000 about 12 s with every proxied request waiting. The check is pure: a worker thread.
        report = await asyncio.to_thread(verify_lines, raw[::-1], partial_start=True,
                                         key=trail.chain.key if trail else None)
        return web.json_response({
            "intact": report.intact, "records": report.records, "writers": report.writers,
            "problems": [{"position": p.line, "writer": p.writer, "reason": p.reason} for p in report.problems],
        })

    return [web.get("/admin/audit", list_audit), web.get("/admin/audit/verify", verify_audit)]


def override_state(view: dict[str, Any]) -> dict[str, Any]:
    """The part of a client view (``gateway.admin.clients.client_view``) an override changes."""
    return {k: view.get(k) for k in ("override", "pinned_tier_name", "tier_name", "override_ttl_s")}
