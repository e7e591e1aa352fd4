"""Admin API for one client: read its record, allowlist / denylist it, or pin its tier.

- ``GET /admin/clients/{client_id}`` → the record the gateway applies: effective tier (int and name), the
  detector's tier, an administrator's pin, the override and when it expires, the suspicion score and the
  limits in force. A client never seen answers ``known: false`` with the defaults (the policy applies to
  any id, so an administrator can denylist one before its first request). ``limit_classes`` lists the plans
  the client authenticates with as far as this replica knows (its API keys' classes, and those of its
  recently verified JWTs); ``limits`` are its plan's at the tier when that is one class, else ``default``'s,
  and ``limits_by_class`` shows every plan's at the tier. ``detection`` (null with detection off): the plans
  its stored detection state records (every replica's requests: what detection judges by, not this replica's
  credentials), whether that record overflowed, and the detector weights it is judged with (the strictest).
- ``PUT /admin/clients/{client_id}/override`` with ``{"override": "allow"|"deny"|null, "tier": "<name>"|<int>|
  null, "ttl_s": <seconds>}``. ``allow`` pins tier 0 and exempts the client from detection blocks; ``deny``
  refuses every request (403); ``tier`` pins a tier (detection may still raise a request above it). Both
  null clears, like DELETE. Every key in the store has a TTL, overrides included: ``ttl_s`` defaults to
  90 days, at most 365.
- ``DELETE /admin/clients/{client_id}/override`` clears the override and the pin.
- The same three as ``/admin/client?client_id=ID`` and ``/admin/client/override?client_id=ID``: every id
  the authenticator admits (1-256 characters, any of them) must be reachable, and ids such as ``.`` or
  ``..`` cannot travel in a path (browsers and most HTTP clients resolve them as dot segments, even
  percent-encoded). The dashboard uses this form.

Every change is logged at INFO with the administrator's identity and recorded, with the override before
and after, in the audit trail (``gateway/admin/audit.py``; no metric: no per-client labels).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.admin.audit import note, override_state
from gateway.admin.body import parse_json, read_body
from gateway.context import AppContext
from gateway.errors import InvalidRequest, ServiceUnavailable
from gateway.principal import DEFAULT_LIMIT_CLASS
from gateway.store.base import Limits, Override

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 90 * 24 * 3600.0
MAX_TTL_S = 365 * 24 * 3600.0
MAX_CLIENT_ID = 256
MAX_BODY_BYTES = 1024 * 1024  # aiohttp's default bound, now answered with a 413 that names it and the body
MIN_TTL_S = 1.0  # an override that expired at once was answered "blocked": true and did nothing
_FIELDS = {"override", "tier", "ttl_s"}


def _client_id(request: web.Request) -> str:
    # Exactly the ids the authenticator admits (gateway/auth: a non-empty claim of at most 256 characters,
    # any characters): refusing some of them here, e.g. control characters, would leave a client that can
    # authenticate but that no administrator can deny. Logs print the id with %r, so it cannot forge lines.
    cid = request.match_info.get("client_id")
    if cid is None:
        cid = request.query.get("client_id")
        if cid is None:
            raise InvalidRequest("the query parameter client_id is required", param="client_id")
    if not cid or len(cid) > MAX_CLIENT_ID:
        raise InvalidRequest(f"client_id must be 1-{MAX_CLIENT_ID} characters", param="client_id")
    return cid


def _parse_tier(ctx: AppContext, raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            return ctx.policy.index(raw)
        except KeyError as e:
            raise InvalidRequest(str(e.args[0]), param="tier") from None
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(ctx.policy.tiers):
        return raw
    raise InvalidRequest(
        f"tier must be a tier name ({', '.join(ctx.policy.names)}) or an index 0-{len(ctx.policy.tiers) - 1}",
        param="tier",
    )


def parse_override(ctx: AppContext, body: Any) -> tuple[Override | None, int | None, float]:
    """Validate a PUT body; errors name the offending field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; allowed: override, tier, ttl_s", param=unknown[0])
    override = body.get("override")
    if override not in (None, "allow", "deny"):
        raise InvalidRequest('override must be "allow", "deny" or null', param="override")
    tier = _parse_tier(ctx, body.get("tier"))
    if override == "allow" and tier not in (None, 0):
        raise InvalidRequest('"allow" pins tier 0; omit tier or use override null to pin a tier', param="tier")
    ttl = body.get("ttl_s", DEFAULT_TTL_S)
    if ttl is None:
        ttl = DEFAULT_TTL_S
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise InvalidRequest(f"ttl_s must be a number of seconds in [{MIN_TTL_S:g}, {int(MAX_TTL_S)}]",
                             param="ttl_s")
    return override, tier, float(ttl)


async def client_view(ctx: AppContext, client_id: str) -> dict[str, Any]:
    rec = await ctx.store.get_client(client_id)
    names = ctx.policy.names
    if rec is None:
        tier, detector, pinned, override, score, ttl = 0, 0, None, None, 0.0, None
    else:
        tier = min(max(rec.tier, 0), len(names) - 1)  # as hot_path clamps it
        detector, pinned = rec.detector_tier, rec.pinned_tier
        override, score, ttl = rec.override, rec.score, rec.override_ttl_s
    # `tier` sets the rate limits (the store's tier: the pin when there is one); hardening and blocking follow
    # the higher of it and detection's own tier, because a pin is a floor (only `allow` lifts a block)
    applied = tier if override == "allow" else max(tier, min(max(detector, 0), len(names) - 1))
    classes = sorted(ctx.auth.limit_classes(client_id))
    # the detection profile: by the plans recorded in the shared state (every replica's), not this replica's
    # credentials; null with detection off
    profile = ctx.detection.profile_view(await ctx.store.get_client_state(client_id)) \
        if ctx.detection is not None else None
    lim = ctx.policy.limits_for(tier, classes[0] if len(classes) == 1 else DEFAULT_LIMIT_CLASS)
    return {
        "client_id": client_id,
        "known": rec is not None,
        "tier": tier,
        "tier_name": names[tier],
        "applied_tier": applied,
        "applied_tier_name": names[applied],
        "detector_tier": detector,
        "detector_tier_name": ctx.policy.tier(detector).name,
        "pinned_tier": pinned,
        "pinned_tier_name": ctx.policy.tier(pinned).name if pinned is not None else None,
        "override": override,
        "override_ttl_s": round(ttl, 3) if ttl is not None else None,
        "score": score,
        "blocked": override == "deny" or (override != "allow" and ctx.policy.tier(applied).block),
        "limit_classes": classes,
        "limits": _limits_json(lim),
        "limits_by_class": {name: _limits_json(ctx.policy.limits_for(tier, name))
                            for name in sorted(ctx.policy.limits_by_class)},
        "detection": profile,
    }


def _limits_json(lim: Limits) -> dict[str, Any]:
    return {
        "requests_per_minute": lim.requests_per_minute,
        "tokens_per_minute": lim.tokens_per_minute,
        "burst_requests": lim.burst_requests,
        "burst_tokens": lim.burst_tokens,
        "max_in_flight": lim.max_in_flight or None,  # null: no cap
    }


def _who(request: web.Request) -> str:
    from gateway.admin.app import ADMIN_PRINCIPAL  # the admin app sets it; imported late (no import cycle)

    # The key is a web.RequestKey: looking it up by its name string never finds it (every change was logged
    # as made by "unknown").
    principal = request.get(ADMIN_PRINCIPAL)
    return str(getattr(principal, "client_id", "unknown"))


async def _before(ctx: AppContext, client_id: str) -> dict[str, Any] | None:
    """The override before a change, for the audit record; None when the store cannot say (the write that
    follows then answers 503, saying the override was not saved)."""
    try:
        return override_state(await client_view(ctx, client_id))
    except ServiceUnavailable:
        return None


def routes(ctx: AppContext) -> list[web.RouteDef]:
    async def get_client(request: web.Request) -> web.Response:
        return web.json_response(await client_view(ctx, _client_id(request)))

    async def put_override(request: web.Request) -> web.Response:
        note(request, "client.override.set")
        cid = _client_id(request)
        note(request, target=cid)
        override, tier, ttl = parse_override(ctx, parse_json(await read_body(request, MAX_BODY_BYTES)))
        cleared = override is None and tier is None  # both null clears, like DELETE
        note(request, "client.override.clear" if cleared else None, before=await _before(ctx, cid))
        await ctx.store.set_override(cid, override, tier, ttl)
        log.info("admin %s set client %r override=%s tier=%s ttl_s=%.0f", _who(request), cid, override,
                 ctx.policy.tier(tier).name if tier is not None else None, ttl)
        view = await client_view(ctx, cid)
        note(request, after=override_state(view))
        return web.json_response(view)

    async def delete_override(request: web.Request) -> web.Response:
        note(request, "client.override.clear")
        cid = _client_id(request)
        note(request, target=cid, before=await _before(ctx, cid))
        await ctx.store.set_override(cid, None, None, DEFAULT_TTL_S)
        log.info("admin %s cleared the override of client %r", _who(request), cid)
        view = await client_view(ctx, cid)
        note(request, after=override_state(view))
        return web.json_response(view)

    # ``.+`` so that ids containing "/" (sent as %2F) still match one segment
    return [
        web.put("/admin/clients/{client_id:.+}/override", put_override),
        web.delete("/admin/clients/{client_id:.+}/override", delete_override),
        web.get("/admin/clients/{client_id:.+}", get_client),
        web.put("/admin/client/override", put_override),
        web.delete("/admin/client/override", delete_override),
        web.get("/admin/client", get_client),
    ]
