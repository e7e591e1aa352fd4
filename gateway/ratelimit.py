"""Pure rate-limit logic: GCRA, the response headers it implies, and the token reservation estimate.

GCRA (the generic cell rate algorithm) keeps ONE number per key, the theoretical arrival time ``TAT``:

    base = max(now, TAT)                  # an idle key does not bank credit beyond its burst
    TAT' = base + cost·T                  # T = emission interval = 60 s / per_minute
    reject if TAT' − now > burst·T        # admitting would exceed the burst tolerance

so exactly ``burst`` unit requests pass at once, then one per ``T``. Nothing here does I/O: the memory store
calls :func:`gcra` directly and ``gateway/store/lua/hot_path.lua`` is a line-by-line port of it (the contract
tests hold both to the same numbers).

Times are integer **microseconds** so that Redis ``TIME`` (seconds + microseconds) is represented exactly in a
double; ``EPS_US`` absorbs the rounding of fractional emission intervals (60e6/7 µs is not an integer), so the
``burst``-th back-to-back request is never rejected by a float ulp.

A cost larger than the burst (a request reserving more tokens than the tier's token burst) could never pass
the test above. Such a request is admitted only when the bucket is full, and its full cost is charged, which
puts the key into debt: later requests wait until the long-run rate is restored. Exactness over time is
kept; a single big request is not starved forever.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError, PermissionDenied, RateLimited, ServiceUnavailable
from gateway.store.base import AdmitResult, Limits, RateDecision

EPS_US = 1.0
# The furthest a TAT may run ahead of now (2**50 µs ≈ 35.7 years): an absurd reservation (max_tokens 10**19 is
# valid JSON and passes the parse step) must still give exact doubles, integer replies and a representable Redis
# expiry; without the cap the Lua port overflowed Redis's expiry argument after its HSET, leaving a key with no
# TTL. Real reservations are many orders of magnitude below it.
MAX_AHEAD_US = float(2**50)
DEFAULT_MAX_TOKENS = 1024  # completion reservation when the client names no max_tokens; reconcile corrects it
MAX_N = 128  # cap on the n/best_of multiplier, so an absurd body cannot overflow the reservation
_MAX_DELTA = 2**1000  # a backend's usage is any JSON integer: clamp it to what converts to a float
_MESSAGE_OVERHEAD = 4  # role/separator tokens per chat message (OpenAI's cookbook counts 3-4)


def interval_us(per_minute: float) -> float:
    """Emission interval ``T`` in microseconds for a rate given per minute."""
    return 60_000_000.0 / per_minute


@dataclass(slots=True)  # not frozen: built on every request, frozen __init__ costs ~3x
class GcraStep:
    tat_us: float  # the TAT to store (unchanged when rejected)
    decision: RateDecision


def gcra(tat_us: float, now_us: float, cost: int, interval: float, burst: int) -> GcraStep:
    """One GCRA decision. ``tat_us`` is the stored TAT (0 for a new key), ``interval`` is ``T`` in µs."""
    # Conditionals instead of max()/min() calls (this runs twice per request); the arithmetic is the same
    # expressions in the same order, so the results stay bit-identical to the Lua port.
    if cost < 0:
        cost = 0  # a negative cost would bank credit beyond the burst
    base = tat_us if tat_us >= now_us else now_us
    cap = burst * interval
    need = base + (cost if cost <= burst else burst) * interval - now_us
    if need > cap + EPS_US:
        remaining = math.floor((cap - (base - now_us) + EPS_US) / interval)
        return GcraStep(
            tat_us,
            RateDecision(False, burst, remaining if remaining > 0 else 0, (base - now_us) / 1e6, (need - cap) / 1e6),
        )
    new_tat = base + cost * interval
    ahead = now_us + MAX_AHEAD_US
    if new_tat > ahead:
        new_tat = ahead
    remaining = math.floor((cap - (new_tat - now_us) + EPS_US) / interval)
    return GcraStep(new_tat, RateDecision(True, burst, remaining if remaining > 0 else 0, (new_tat - now_us) / 1e6,
                                          0.0))


@dataclass(slots=True)  # not frozen: built on every request, frozen __init__ costs ~3x
class Admission:
    allowed: bool
    tat_requests_us: float  # TATs to store (unchanged unless allowed)
    tat_tokens_us: float
    requests: RateDecision
    tokens: RateDecision


def admit(tat_requests_us: float, tat_tokens_us: float, now_us: float, tokens: int, limits: Limits,
          deny: bool = False) -> Admission:
    """Both buckets of one request, all or nothing: a request is charged only if requests AND tokens admit it.

    A bucket that would have admitted but is not charged (the other one rejected, or ``deny``) is reported
    as it stands (a zero-cost look), so its ``remaining`` is not off by the uncharged request.
    """
    tr = 60_000_000.0 / limits.requests_per_minute  # interval_us(), inlined: once per request
    tk = 60_000_000.0 / limits.tokens_per_minute
    br, bk = limits.burst_requests, limits.burst_tokens
    if not deny:
        r = gcra(tat_requests_us, now_us, 1, tr, br)
        k = gcra(tat_tokens_us, now_us, tokens, tk, bk)
        if r.decision.allowed and k.decision.allowed:
            return Admission(True, r.tat_us, k.tat_us, r.decision, k.decision)
    if deny or r.decision.allowed:
        r = gcra(tat_requests_us, now_us, 0, tr, br)
    if deny or k.decision.allowed:
        k = gcra(tat_tokens_us, now_us, 0, tk, bk)
    return Admission(False, tat_requests_us, tat_tokens_us, r.decision, k.decision)


def reconcile_tat(tat_us: float, now_us: float, delta: int, interval: float,
                  until_us: float | None = None) -> float:
    """Charge ``delta`` more units (negative: give back) to a key after the fact.

    Giving back never lowers the TAT below ``now`` (that would bank credit beyond the burst); charging more
    may push the key past its burst (debt), which later requests then wait out.

    ``until_us`` is the TAT the reservation being reconciled was admitted with: time repays a bucket's debt in
    order, so by ``now`` all of that reservation before ``until_us - now`` is already repaid and only what lies
    ahead of ``now`` can be given back. Without this bound a request that outlived its reservation's refill
    time gave back tokens time had already returned, shifting every reservation made since then into the
    past: a client holding long requests that generate little got a second full burst at once (decoys). The
    bound never gives back more than the exact replay would (reservations equal to the usage from the start),
    and nothing is lost over the long run: whatever the bound keeps is repaid by the time ``until_us`` arrives.
    None: no bound (a caller that does not know the admission).
    """
    if delta > _MAX_DELTA or delta < -_MAX_DELTA:  # int * float raises OverflowError past ~1.8e308; the Lua
        delta = _MAX_DELTA if delta > 0 else -_MAX_DELTA  # port reads such a number as ±inf: same results
    if delta >= 0:
        return min(max(tat_us, now_us) + delta * interval, now_us + MAX_AHEAD_US)
    if tat_us <= now_us:
        return tat_us
    give = -delta * interval
    if until_us is not None:
        ahead = until_us - now_us
        if ahead <= 0:
            return tat_us  # the whole reservation is behind us: repaid by time already
        if ahead < give:
            give = ahead
    return max(tat_us - give, now_us)


# --- headers -------------------------------------------------------------------------------------------


def _binding(result: AdmitResult) -> tuple[str, RateDecision]:
    """The decision that constrains the client most: the rejecting one, else the fuller bucket."""
    r, t = result.requests, result.tokens
    if not r.allowed or not t.allowed:
        if r.allowed:
            return "tokens", t
        if t.allowed:
            return "requests", r
        return ("requests", r) if r.retry_after_s >= t.retry_after_s else ("tokens", t)
    fr = r.remaining / r.limit if r.limit else 1.0
    ft = t.remaining / t.limit if t.limit else 1.0
    return ("requests", r) if fr <= ft else ("tokens", t)


def _secs(x: float) -> str:
    return str(max(0, math.ceil(x - 1e-9)))


def rate_limit_headers(result: AdmitResult) -> dict[str, str]:
    """IETF ``RateLimit-*`` headers (draft-ietf-httpapi-ratelimit-headers) for the binding limit, OpenAI-style
    ``x-ratelimit-*`` for both, and ``Retry-After`` (+ ``retry-after-ms``, which the openai SDK honours)
    when the request was not admitted."""
    _, d = _binding(result)
    r, t = result.requests, result.tokens
    h = {
        "RateLimit-Limit": str(d.limit),
        "RateLimit-Remaining": str(d.remaining),
        "RateLimit-Reset": _secs(d.reset_s),
        "x-ratelimit-limit-requests": str(r.limit),
        "x-ratelimit-remaining-requests": str(r.remaining),
        "x-ratelimit-reset-requests": f"{r.reset_s:.3f}s",
        "x-ratelimit-limit-tokens": str(t.limit),
        "x-ratelimit-remaining-tokens": str(t.remaining),
        "x-ratelimit-reset-tokens": f"{t.reset_s:.3f}s",
    }
    if not result.allowed and result.override != "deny":
        wait = max(d.retry_after_s, 0.001)
        h["Retry-After"] = str(max(1, math.ceil(wait - 1e-9)))
        h["retry-after-ms"] = str(max(1, math.ceil(wait * 1000 - 1e-6)))
    return h


def admission_error(result: AdmitResult) -> GatewayError | None:
    """The error to answer a non-admitted request with (None when admitted).

    - an administrator's ``deny`` override → 403 (a policy decision, retrying does not help);
    - the store could not decide and the failure mode is ``closed`` (``unavailable``) → 503 with
      ``Retry-After``: the client did not exceed its quota, we could not check it, so a 429 would be a lie
      that skews client back-off;
    - too many of the client's requests in flight (``max_in_flight``) → 429 ``too_many_concurrent_requests``
      with ``Retry-After: 1``;
    - otherwise → 429 with the ``RateLimit-*`` headers of the binding limit (including the in-process limits
      of failure mode ``local``: those are real limits).
    """
    if result.allowed:
        return None
    if result.override == "deny":
        return PermissionDenied("This client has been blocked by an administrator.", code="client_denied")
    headers = rate_limit_headers(result)
    if result.unavailable:
        return ServiceUnavailable(
            "Rate-limit state is temporarily unavailable; please retry shortly.",
            code="rate_limit_state_unavailable",
            headers={"Retry-After": headers.get("Retry-After", "1")},
        )
    if result.too_many_in_flight:
        # No rate says when a slot frees (a stream ends when it ends): one second, as a hint to back off. The
        # buckets are reported as they stand (nothing was charged).
        headers["Retry-After"], headers["retry-after-ms"] = "1", "1000"
        return RateLimited(
            f"Too many concurrent requests: {result.in_flight} of this client's requests are in flight and its "
            f"limit is {result.in_flight_limit}. Wait for one to finish, then retry.",
            code="too_many_concurrent_requests", headers=headers)
    kind, d = _binding(result)
    return RateLimited(
        f"Rate limit reached for {kind}: burst of {d.limit}, {d.remaining} remaining. "
        f"Please try again in {max(d.retry_after_s, 0.001):.3f}s.",
        headers=headers,
    )


# --- reservation ---------------------------------------------------------------------------------------


def _chars(value: Any) -> int:
    """Characters of text in a message content / prompt: a string, a list of parts, or token ids."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, int):
                total += 4  # a token id is one token
            elif isinstance(part, Mapping):
                total += _chars(part.get("text"))
            elif isinstance(part, list):
                total += _chars(part)
        return total
    return 0


def _json_chars(value: Any) -> int:
    """Characters of the strings (object keys included) in a JSON value: tool definitions and tool-call
    arguments, which the backend renders into the prompt. Iterative: the parse step accepts deep nesting."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, Mapping):
            for k, item in v.items():
                total += len(k) if isinstance(k, str) else 1
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)
        elif v is not None:
            total += 1  # a number or a boolean: a token-ish piece of the rendered schema
    return total


def _int_field(body: Mapping[str, Any], *names: str, default: int) -> int:
    for name in names:
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return default


# The least ``estimate_tokens`` reserves for any request: every endpoint's estimate is 1 at least (a completion
# budget or n of 0 reads as the default; every prompt and every input is a token at least). What the look before
# a request's body (``Expect: 100-continue``) checks the tokens bucket with.
MIN_RESERVATION = 1


def estimate_tokens(endpoint: str, body: Mapping[str, Any]) -> int:
    """Tokens to reserve before forwarding: prompt ≈ characters / 4, plus the completion budget.

    Deliberately cheap (no tokenizer): the reservation only has to be a fair upper-ish guess, because the
    real usage reconciles it afterwards. Never raises: schema validation is the parse step's job.
    """
    prompt, completion = estimate_parts(endpoint, body)
    return prompt + completion


def estimate_parts(endpoint: str, body: Mapping[str, Any]) -> tuple[int, int]:
    """``estimate_tokens`` as (prompt, completion budget): what a request that generated nothing read."""
    if endpoint.endswith(("/chat/completions", "/responses")):  # responses: its chat view (ParsedRequest.seen)
        chars, overhead = 0, 0
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, Mapping):
                    chars += _chars(m.get("content"))
                    if m.get("tool_calls") is not None:
                        chars += _json_chars(m["tool_calls"])
                    overhead += _MESSAGE_OVERHEAD
        # tool definitions are prompt too (the chat template renders them): left out, a huge prompt moved into
        # `tools` cost nothing where the estimate is what is charged (an aborted stream, a failed request)
        if body.get("tools") is not None or body.get("functions") is not None:
            chars += _json_chars(body.get("tools")) + _json_chars(body.get("functions"))
        prompt = (chars + 3) // 4 + overhead
        completion = _int_field(body, "max_completion_tokens", "max_tokens", default=DEFAULT_MAX_TOKENS)
        # vLLM's best_of (forwarded on chat too) generates that many sequences, as on /completions
        n = max(_int_field(body, "n", default=1), _int_field(body, "best_of", default=1))
        return prompt, completion * min(n, MAX_N)
    if endpoint.endswith("/completions"):
        raw = body.get("prompt")
        # a batch (list of strings or of token-id lists) generates n completions per prompt. MAX_N caps n only:
        # the batch length is bounded by the body size, and capping n x batch reserved 128 x max_tokens for a
        # batch of any length (a client could run far past its token burst before the first reconciliation)
        batch = _batch(raw)
        prompt = max((_chars(raw) + 3) // 4, batch)  # every prompt is a token at least
        completion = _int_field(body, "max_tokens", default=DEFAULT_MAX_TOKENS)
        n = max(_int_field(body, "n", default=1), _int_field(body, "best_of", default=1))
        return prompt, completion * min(n, MAX_N) * batch
    if endpoint.endswith("/embeddings"):
        # every input is a token at least (most tokenizers add one or two special tokens besides): characters / 4
        # over the whole batch reserved 1 token for 2 048 empty inputs
        raw = body.get("input")
        return max(1, (_chars(raw) + 3) // 4, _batch(raw)), 0
    return 1, 0


def choices_at_most(endpoint: str, body: Mapping[str, Any]) -> int:
    """The choices an answer to this request may hold: ``n`` (or vLLM's ``best_of``) per prompt of a completions
    batch; what the stream relay bounds the state it keeps per choice by."""
    n = max(_int_field(body, "n", default=1), _int_field(body, "best_of", default=1))
    return n * (_batch(body.get("prompt")) if endpoint == "completions" else 1)


def _batch(raw: Any) -> int:
    """The prompts (inputs) of a completions ``prompt`` (embeddings ``input``): a list of strings or of token-id
    lists holds one each; a string or a list of token ids is one."""
    return len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], int) else 1
