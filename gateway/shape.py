"""Step 6, shape: what the upstream receives, for one try on one backend.

Tier hardening (``gateway.hardening.harden``: caps on logprobs/bias/n/seed, client ``vllm_xargs`` always
removed; ``logit_bias``/``seed`` removed for watermark-capable backends), the watermark directives for a
backend whose engine watermarks (``BackendLease.engine_watermark``: marked ``watermark_capable`` and its KGW
plugin verified by the probe, ``gateway/kgw_probe.py``; otherwise its responses are watermarked post hoc),
the backend's own model name, its prefix-cache salt (``cache_salt``), and ``stream_options.include_usage`` for
streams (the gateway needs real usage to reconcile the token reservation). The body is re-encoded only when
something changed; otherwise the client's bytes go upstream as they came.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import random
from typing import Any

from gateway.config import HardeningConfig
from gateway.context import AppContext
from gateway.errors import PermissionDenied
from gateway.hardening import harden
from gateway.hooks import StreamEmbedder
from gateway.principal import Principal
from gateway.proxy.choice import ChoiceHook, EmbedderFactory, ReasoningOnly, withhold_tokens
from gateway.proxy.parse import ParsedRequest
from gateway.proxy.responses_request import LOGPROBS_INCLUDE, wants_logprobs
from gateway.proxy.usage import ask_upstream_for_usage
from gateway.reasoning_strip import ThinkStripper, strip_reasoning, strip_think
from gateway.response_hardening import harden_choice_logprobs, response_needs_hardening
from gateway.routing.pool import BackendLease
from gateway.watermarking import responses_unwatermarkable, tool_call_field, unwatermarkable

log = logging.getLogger(__name__)

_ASK_USAGE = b'{"stream_options":{"include_usage":true},'  # the body has other keys (model, ...): comma is safe


def unwatermarked_field(ctx: AppContext, parsed: ParsedRequest, lease: BackendLease | None, *,
                        tools: bool = False) -> str | None:
    """The request field that keeps this answer from the client's watermark, when it is watermarked at all
    and would be post hoc (``gateway.watermarking.unwatermarkable``): structured output or a forced tool
    call; with ``tools`` also tools the model may call (``tool_call_field``: their arguments are never
    watermarked). None when nothing stops the watermark, or the backend watermarks in its engine (``lease``
    None: whatever the backend)."""
    wm = ctx.watermarking
    if wm is None or parsed.endpoint == "embeddings" or (lease is not None and lease.engine_watermark) \
            or not wm.watermarks(parsed.model):
        return None
    constrained = responses_unwatermarkable if parsed.endpoint == "responses" else unwatermarkable
    return constrained(parsed.body) or (tool_call_field(parsed.body) if tools else None)


def needs_engine_watermark(ctx: AppContext, parsed: ParsedRequest, tier: int) -> bool:
    """Whether only a backend whose engine watermarks may serve this request: the tier refuses output that
    cannot carry a post-hoc watermark (``refuse_unwatermarkable``) and this request asks for such output. The
    router then prefers such a backend (``Router.acquire``), so that in a pool mixing KGW and lexical
    backends the answer does not depend on which one the split would have picked."""
    return ctx.policy.tier(tier).hardening.refuse_unwatermarkable and \
        unwatermarked_field(ctx, parsed, None, tools=True) is not None


def unwatermarkable_refusal(field: str) -> PermissionDenied:
    """The 403 of a tier that refuses output the client's watermark cannot reach (``field``: the request field
    that asks for it). Explicit, not a silent rewrite: a client flagged by mistake sees why its JSON mode
    stopped working."""
    return PermissionDenied(f"{field}: output that cannot be watermarked (structured output or tool calls) is "
                            "not available to this client.", param=field, code="unwatermarkable_output")


def upstream_body(ctx: AppContext, parsed: ParsedRequest, principal: Principal, tier: int,
                  lease: BackendLease) -> bytes:
    backend = lease.backend
    tier_cfg = ctx.policy.tier(tier)
    if tier_cfg.hardening.refuse_unwatermarkable and (field := unwatermarked_field(ctx, parsed, lease, tools=True)):
        raise unwatermarkable_refusal(field)
    # logit_bias/seed go for every backend marked capable, verified or not: what a client may send must not
    # change with the probe's verdict
    if parsed.endpoint == "responses":
        body, changes = harden_responses(parsed.body, tier_cfg.hardening, backend.watermark_capable)
    else:
        body, changes = harden(parsed.body, tier_cfg.hardening, strip_watermark_fields=backend.watermark_capable,
                               chat=parsed.endpoint == "chat")
    if changes and log.isEnabledFor(logging.DEBUG):
        log.debug("hardening for tier %s: %s", tier_cfg.name, "; ".join(changes))
    changed = body is not parsed.body
    if lease.engine_watermark and ctx.watermarking is not None and parsed.endpoint != "embeddings":
        extra = ctx.watermarking.upstream_directives(principal, parsed.model, True, tier_cfg.name)
        if extra:
            body = body if changed else dict(body)
            body.update(extra)
            changed = True
    if backend.cache_salt != "none":
        salt = cache_salt(principal, backend.cache_salt)
        if body.get("cache_salt") != salt:
            body = body if changed else dict(body)
            body["cache_salt"] = salt
            changed = True
    if backend.upstream_model and backend.upstream_model != parsed.model:
        body = body if changed else dict(body)
        body["model"] = backend.upstream_model
        changed = True
    if parsed.stream and not parsed.client_usage:
        raw = parsed.raw.lstrip()
        if not changed and "stream_options" not in body and raw[:1] == b"{":
            # The only change: splice the option into the client's bytes instead of re-encoding the body.
            return _ASK_USAGE + raw[1:]
        body = body if changed else dict(body)
        ask_upstream_for_usage(body)
        changed = True
    if not changed:
        return parsed.raw
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def cache_salt(principal: Principal, scope: str) -> str:
    """The prefix-cache salt of ``principal``'s requests (``BackendConfig.cache_salt``): 256 bits, base64url
    without padding (43 characters, what vLLM recommends), the same on every replica and after restarts (the
    cache stays warm for the client). Not keyed: it only has to differ between clients, and a client cannot
    choose it (the gateway replaces a client's own) — a hash with domain separation is enough for that.
    ``tenant``: clients of one tenant share their cache; a client without a tenant is its own."""
    who = f"tenant\0{principal.tenant}" if scope == "tenant" and principal.tenant else f"client\0{principal.client_id}"
    return _salt_of(who)


@functools.lru_cache(maxsize=4096)
def _salt_of(who: str) -> str:
    digest = hashlib.sha256(b"ipgate prefix-cache salt v1\0" + who.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def harden_responses(body: dict[str, Any], cfg: HardeningConfig,
                     strip_watermark_fields: bool) -> tuple[dict[str, Any], list[str]]:
    """``harden`` for a Responses API body (vLLM's ResponsesRequest takes ``logit_bias``, ``seed``,
    ``vllm_xargs`` and ``top_logprobs`` like chat), where logprobs are asked for by ``include`` and not by a
    ``logprobs`` flag; and ``store: false`` always: a stored response can only be read back through routes
    the gateway does not serve (``GET /v1/responses/{id}``, ``previous_response_id``), unwatermarked."""
    out, changes = harden(body, cfg, strip_watermark_fields=strip_watermark_fields, chat=True)
    if out is body:
        out = dict(body)
    if out.get("logprobs") is False and "logprobs" not in body:  # chat's way to disable them: not a field here
        del out["logprobs"]
    if wants_logprobs(body):
        if cfg.max_top_logprobs is not None and cfg.max_top_logprobs <= 0:
            out["include"] = [x for x in body["include"] if x != LOGPROBS_INCLUDE]
            out.pop("top_logprobs", None)
            changes.append("disabled logprobs")
        elif cfg.logprobs_xor_logit_bias and out.get("logit_bias"):
            del out["logit_bias"]
            changes.append("dropped logit_bias: logprobs requested")
    out["store"] = False
    return out, changes


def embedder_factory(ctx: AppContext, principal: Principal, parsed: ParsedRequest, tier: int,
                     lease: BackendLease) -> EmbedderFactory | None:
    """A factory of per-choice post-hoc watermark embedders, or None when this response is not watermarked
    post hoc (watermarking off, embeddings, the backend watermarks in the engine, or the scheme declines); a
    ``ReasoningOnly`` one when the answer must stay verbatim (``unwatermarked_field``) but a chain of thought
    beside it is not constrained."""
    wm = ctx.watermarking
    if wm is None or parsed.endpoint == "embeddings" or lease.engine_watermark:
        return None
    tier_name = ctx.policy.tier(tier).name
    if field := unwatermarked_field(ctx, parsed, lease):  # served, counted: a way around the watermark
        ctx.metrics.watermark_skipped_total.labels(reason=field).inc()
        if parsed.endpoint not in ("chat", "responses"):
            return None
        # a reasoning model's chain of thought beside it is free text all the same: watermarked ({}: the
        # constraint is the answer's, and an echoed prompt precedes the answer, not the thought)
        return ReasoningOnly(lambda: wm.embedder_for(principal, parsed.model, tier_name, {}))
    # a Responses body's constraints were read above (its own fields); the chat ones in it mean nothing upstream
    body = {} if parsed.endpoint == "responses" else parsed.body
    first = wm.embedder_for(principal, parsed.model, tier_name, body)
    if first is None:
        return None
    pending: list[StreamEmbedder] = [first]

    def make() -> StreamEmbedder | None:
        return pending.pop() if pending else wm.embedder_for(principal, parsed.model, tier_name, body)

    return make


def response_hook(ctx: AppContext, tier: int, lease: BackendLease) -> ChoiceHook | None:
    """The tier's response-side hardening (cap the logprobs a backend returned, add noise, strip the chain of
    thought), or None."""
    cfg = ctx.policy.tier(tier).hardening
    if not response_needs_hardening(cfg):
        return None
    rng: random.Random | None = None
    thinking: dict[int, ThinkStripper] = {}  # strip_reasoning: a <think> section in the answer, per choice
    prefilled = lease.backend.think_prefilled  # the answer begins inside the section (template opened it)

    def hook(choice: dict[str, Any]) -> bool:
        nonlocal rng
        stripped = cfg.strip_reasoning and (strip_reasoning(choice) | strip_think(choice, thinking, prefilled))
        if stripped:
            # the backend's tokens (logprobs, vLLM's token_ids) would spell the stripped thought: they go with it
            withhold_tokens(choice)
            return True
        if not isinstance(choice.get("logprobs"), dict) and choice.get("prompt_logprobs") is None:
            return stripped  # no logprobs: skip seeding a generator (≈ 1 % of gateway CPU under load)
        if rng is None:
            rng = random.Random()  # seeded from os.urandom: the noise must not be predictable across requests
        return harden_choice_logprobs(choice, cfg, rng) or stripped

    return hook
