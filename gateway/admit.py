"""Steps 4-5, detect + admit: ONE store round trip, then pure-CPU detection, then the policy's decision.

``store.hot_path`` reads the client's stored tier/override/detector state and runs GCRA on requests and on
the token reservation at the stored tier's limits, all at once. Detection then scores this request against
that state (no I/O) and may raise the tier for this request. Blocks (an administrator's ``deny`` or a tier
whose policy says ``block``) answer 403; an exceeded limit answers 429 with ``Retry-After``/``RateLimit-*``.

The same round trip takes a slot among the client's requests in flight when its tier caps them
(``max_in_flight``): the slot is the request's lease (``gateway.store.inflight``), held in ``ctx.leases`` (renewed
while the request runs) and given back by the accounting call that ends every admitted request, served
(``account.settle``) or refused here (``_refused``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.context import AppContext
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied
from gateway.hooks import DetectionSession, ResponseFacts
from gateway.principal import Principal
from gateway.proxy.parse import ParsedRequest
from gateway.ratelimit import MIN_RESERVATION, admission_error, estimate_tokens
from gateway.store.base import AdmitRequest, AdmitResult, Limits

if TYPE_CHECKING:  # gateway.account imports this module
    from gateway.account import Exchange

log = logging.getLogger(__name__)
_pipeline_failure_logged = False
_NO_LIMITS = Limits(1.0, 1.0, 1, 1)  # what a release without tokens to reconcile passes (its rate goes unread)


@dataclass(slots=True)
class Admission:
    result: AdmitResult
    tier: int  # effective tier for this request (shaping, watermark strength)
    session: DetectionSession | None
    reserved: int  # tokens reserved by the store; reconciled in the account step
    limits_by_tier: Sequence[Limits] = ()  # the client's class's (policy-built) tuple that admission used
    lease: str = ""  # the in-flight slot this request holds ("" none): given back by ``reconcile``

    @property
    def limits(self) -> Limits:
        """The limits the store admitted at: reconciliation must charge the same bucket at the same rate."""
        lbt, t = self.limits_by_tier, self.result.tier
        return lbt[t if 0 <= t < len(lbt) else (0 if t < 0 else -1)]


def _observe(ctx: AppContext, principal: Principal, path: str, parsed: ParsedRequest,
             res: AdmitResult, request_id: str, ip: str | None) -> DetectionSession | None:
    if ctx.detection is None:
        return None
    try:
        return ctx.detection.observe(principal, path, parsed.seen, res.detector_state, res.tier, res.now,
                                     override=res.override, request_id=request_id, ip=ip)
    except Exception:  # detection isolates its detectors and its adapter; this is a last line of defence
        ctx.metrics.detector_errors_total.labels(detector="pipeline").inc()
        global _pipeline_failure_logged
        if not _pipeline_failure_logged:  # once per process: the metric counts every occurrence
            _pipeline_failure_logged = True
            log.exception("detection failed for one request; fail_policy=%s", ctx.config.detection.fail_policy)
        if ctx.config.detection.fail_policy == "block" and res.override != "allow":
            raise PermissionDenied("The request could not be screened and was refused.",
                                   code="screening_failed") from None
        return None


async def detect_and_admit(ctx: AppContext, principal: Principal, parsed: ParsedRequest, ex: Exchange) -> Admission:
    """The admission of ``ex`` (its route and request id); a refusal raises its ``GatewayError`` after noting
    the tier it was decided at in ``ex.refused_tier`` (the access log shows it)."""
    reserved = estimate_tokens(ex.route, parsed.seen)
    by_tier = _limits(ctx, principal)
    lease = ctx.leases.new_id()
    try:
        res = await ctx.store.hot_path(AdmitRequest(principal.client_id, reserved, by_tier,
                                                    ctx.config.detection.state_ttl_s, lease,
                                                    ctx.config.store.in_flight_lease_s))
    except asyncio.CancelledError:  # the client went away while the store decided: it may have taken a slot
        ctx.spawn(_release(ctx, principal.client_id, lease))
        raise
    try:
        adm = _decide(ctx, principal, parsed, ex, res, reserved, by_tier, lease if res.slot else "")
    except GatewayError:
        raise  # (refused: ``_refused`` gave the slot back)
    except BaseException:  # a gateway bug: the slot must not stay taken until its lease expires
        if res.slot:
            ctx.spawn(_release(ctx, principal.client_id, lease))
        raise
    if adm.lease:
        ctx.leases.hold(adm.lease, principal.client_id)
    return adm


def _limits(ctx: AppContext, principal: Principal) -> Sequence[Limits]:
    """The client's plan: a tuple the policy built once (one dict probe; no allocation per request)."""
    by_tier = ctx.policy.limits_by_class.get(principal.limit_class)
    if by_tier is None:
        by_tier = ctx.policy.class_limits(principal.limit_class)  # logs the unknown name once; `default`
    return by_tier


async def refuse_before_body(ctx: AppContext, principal: Principal, ex: Exchange) -> None:
    """Before a request's body is read (``Expect: 100-continue``): raise the refusal that its admission is sure
    to answer once the body is in, from one read-only store round trip (``store.peek``) that takes nothing (no
    token, no request, no slot: the admission after the body does that, once). Sure whatever the body: every
    request reserves ``MIN_RESERVATION`` tokens at least, and detection only ever raises a tier, so a tier counts
    as blocking here only when it and every tier above it block. Answered, counted and access-logged as that
    admission answers it; a store that cannot answer gets the failure mode's answer, as the hot path would."""
    res = await ctx.store.peek(AdmitRequest(principal.client_id, MIN_RESERVATION, _limits(ctx, principal), 0.0))
    blocked = res.override != "allow" and ctx.policy.tier(res.tier).block and (
        ctx.detection is None or all(t.block for t in ctx.policy.tiers[res.tier:]))
    err = _refusal(res, blocked)
    if err is None:
        return
    _count_decision(ctx, res, blocked)
    if isinstance(err, PermissionDenied):
        _count(ctx, "policy", "block")
    ex.refused_tier = ctx.policy.tier(res.tier).name
    raise err


def _refusal(res: AdmitResult, blocked: bool) -> GatewayError | None:
    """The store's refusal of a request (None: admitted by it). A request of a blocking tier never runs: refused by
    the in-flight cap (its slots held by other blocked requests whose release is on its way), it is answered as
    blocked, not 429 "wait for one to finish"."""
    err = None if blocked and res.too_many_in_flight else admission_error(res)
    if err is None and blocked:
        err = PermissionDenied("This client has been blocked by policy.", code="policy_block")
    return err


def _count_decision(ctx: AppContext, res: AdmitResult, blocked: bool) -> None:
    _count(ctx, "requests", "allow" if res.requests.allowed else "reject")
    _count(ctx, "tokens", "allow" if res.tokens.allowed else "reject")
    if not res.allowed and res.too_many_in_flight and not blocked:  # refusals only: a slot taken is an admission
        _count(ctx, "concurrency", "reject")                         # (counted above)


def _decide(ctx: AppContext, principal: Principal, parsed: ParsedRequest, ex: Exchange, res: AdmitResult,
            reserved: int, by_tier: Sequence[Limits], lease: str) -> Admission:
    path, request_id = ex.route, ex.request_id
    screening: GatewayError | None = None
    try:
        session = _observe(ctx, principal, path, parsed, res, request_id, ex.ip)
    except PermissionDenied as e:  # screening failed under fail_policy block: refused below, like any refusal
        session, screening = None, e  # (raising here kept the reservation charged: nothing gave it back)
    tier = res.tier
    if session is not None and res.override != "allow":
        tier = max(tier, session.outcome.tier)
    adm = Admission(res, tier, session, reserved if res.allowed else 0, by_tier, lease)
    blocked = res.override != "allow" and ctx.policy.tier(tier).block
    _count_decision(ctx, res, blocked)
    err = screening if screening is not None else _refusal(res, blocked)
    if err is None and session is not None and parsed.endpoint == "completions" and res.override != "allow" \
            and _token_ids(parsed.body.get("prompt")) and ctx.config.detection.token_id_prompts == "refuse":
        ctx.metrics.request_fields_refused_total.labels(field="prompt").inc()
        err = InvalidRequest(
            "prompt: token-id prompts are not accepted here: send the prompt as text (this gateway screens "
            "prompts and cannot read token ids)", param="prompt", code="token_id_prompt")
    if err is None and session is not None and res.override != "allow" \
            and ctx.config.detection.trailing_instructions == "refuse" and _trailing_instructions(parsed.seen):
        ctx.metrics.request_fields_refused_total.labels(field="messages").inc()
        err = InvalidRequest(
            "messages: a system or developer message after the last user message is not accepted here (this "
            "gateway screens the user turn: put instructions before it)", param="messages",
            code="trailing_instructions")
    if isinstance(err, PermissionDenied) and err is not screening:  # (that one counts as a detector error)
        _count(ctx, "policy", "block")
    if err is not None:
        _refused(ctx, principal, adm, err.status)
        ex.refused_tier = ctx.policy.tier(tier).name
        raise err
    return adm


def _trailing_instructions(body: dict[str, Any]) -> bool:
    """A chat request (or a Responses request's chat reading) with a system or developer message after its last
    user message."""
    messages = body.get("messages")
    if type(messages) is not list:
        return False
    after = False  # (a request without a user message is read by its instructions: nothing is after a turn)
    for m in reversed(messages):
        role = m.get("role") if type(m) is dict else None
        if role == "user":
            return after
        after = after or role in ("system", "developer")
    return False


def _token_ids(prompt: object) -> bool:
    """A completions prompt of token ids (``[1, 2]`` or ``[[1, 2], [3]]``; parse allows nothing mixed)."""
    return type(prompt) is list and bool(prompt) and not isinstance(prompt[0], str)


def _count(ctx: AppContext, kind: str, decision: str) -> None:
    key = ("rate_limit_decisions_total", kind, decision)
    child = ctx.metric_children.get(key)
    if child is None:
        child = ctx.metric_children[key] = ctx.metrics.rate_limit_decisions_total.labels(kind, decision)
    child.inc()


def _refused(ctx: AppContext, principal: Principal, adm: Admission, status: int) -> None:
    """A refused request still counts as evidence (detection state) and gives its reservation back."""
    if adm.reserved or adm.lease:
        ctx.spawn(reconcile(ctx, principal.client_id, adm, 0))
    if adm.session is not None:
        ctx.spawn(account_detection(ctx, adm.session, ResponseFacts(status=status)))


# The accounting after a request, served (``account.settle``) or refused (``_refused``): a failure is logged and
# counted, never left to asyncio's "Task exception was never retrieved" (a blocked client sends only refused
# requests, whose accounting used to run bare).
async def reconcile(ctx: AppContext, client_id: str, adm: Admission, actual: int) -> None:
    """Charge the reservation's difference to ``actual`` tokens (0: give it all back), and give back the request's
    in-flight slot."""
    if adm.lease:
        ctx.leases.drop(adm.lease)  # no longer renewed, whatever the store answers
    try:
        await ctx.store.reconcile_tokens(client_id, adm.reserved, actual, adm.limits, adm.result.tokens_until_us,
                                         adm.lease)
    except Exception:
        log.exception("reconcile_tokens failed")


async def _release(ctx: AppContext, client_id: str, lease: str) -> None:
    """Give back a slot the request may hold though it has no admission (a no-op where it holds none)."""
    try:
        await ctx.store.reconcile_tokens(client_id, 0, 0, _NO_LIMITS, None, lease)
    except Exception:
        log.exception("reconcile_tokens failed")


async def account_detection(ctx: AppContext, session: DetectionSession, facts: ResponseFacts) -> None:
    try:
        await session.account(ctx.store, facts)
    except Exception:
        ctx.metrics.detector_errors_total.labels(detector="account").inc()
        log.exception("detection accounting failed")
