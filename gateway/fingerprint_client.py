"""The I/O side of fingerprint checks: send the probes to a backend and build its signature."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ssl import SSLContext

import aiohttp

from fingerprint import DEFAULT_PROBES, Probe, Signature, build_signature
from fingerprint.probeset import quotes_a_prompt
from fingerprint.signature import ProbeAnswer, answer_from_response
from gateway.config import api_root

# A probe answer is at most 48 tokens plus top-5 logprobs: a few KB. The backend under check may be hostile (a
# suspect third-party API): never read an unbounded body into memory.
MAX_ANSWER_BYTES = 1 << 20


class FingerprintError(Exception):
    """A probe could not be sent or its answer could not be read."""


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``): a failure quotes the backend's error body,
    and the reasons reach the gateway's log lines and the CLI's terminal, where a raw newline would start a
    forged log line and an escape sequence would drive the operator's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, slots=True)
class ProbeRun:
    """The answers that came back, and one message per probe that failed."""

    signature: Signature
    failures: tuple[str, ...]


async def probe_backend_partial(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    probes: Sequence[Probe] = DEFAULT_PROBES,
    logprobs: bool = True,
    timeout_s: float = 30.0,
    delays: Sequence[float] = (),
    hurry: asyncio.Event | None = None,
    ssl: SSLContext | bool = True,
    cache_salt: bool = False,
    forwarded_for: Callable[[], str | None] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> ProbeRun:
    """Send every probe (at once, or each after its own ``delays[i]`` seconds: a round spread over time is
    not a burst a backend can recognise); a probe that fails is left out of the signature and listed in failures.
    Once ``hurry`` is set, the probes still waiting for their delay are sent at once (an operator asked for a
    verdict now).

    The matcher's ``min_probes`` decides whether the answers that came back are enough. Voiding a whole check
    for one failed probe would let a swapped backend that fails one probe per round stay in rotation for good.

    ``cache_salt``: the backend's ``cache_salt`` is not ``none``, so the gateway adds one to every request it
    proxies there; each probe then carries a fresh one of the same form (a probe without it was told apart).
    ``forwarded_for``: an ``X-Forwarded-For`` value for each probe (the gateway's recent proxied requests: every
    proxied request carries the header, and a probe without it was told apart by that alone).
    ``session``: the gateway's pooled upstream session (``gateway/proxy/forward.py``): probes then travel over
    the keep-alive connections proxied requests use, where a session of their own opened new connections each
    round (a backend could tell probes apart by that). None: a session of this call's own (the CLI).
    """
    # The headers the proxy sends upstream (gateway/proxy/forward.py), *in its order* (a backend sees the order:
    # the gateway's own headers come as forward_headers sets them, then the credential Upstream.open adds): no
    # aiohttp User-Agent, identity encoding, a fresh X-Request-Id per request in the gateway's format. A probe
    # should not be told from a proxied request by its headers (what still tells it apart is listed in
    # docs/fingerprint.md).
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = api_root(base_url) + "/v1/chat/completions"  # --url may be given with or without /v1
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    prompts = [p.prompt for p in probes]
    async with contextlib.AsyncExitStack() as own:
        if session is None:
            session = await own.enter_async_context(aiohttp.ClientSession(skip_auto_headers=("User-Agent",)))

        async def one(probe: Probe, delay: float) -> ProbeAnswer:
            if delay > 0:
                if hurry is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):  # (asyncio.timeout: see routing/health.py)
                        async with asyncio.timeout(delay):
                            await hurry.wait()
            try:
                request = probe.chat_body(model, logprobs=logprobs)
                if cache_salt:  # the form of gateway/shape.py cache_salt: 256 bits, base64url, no padding
                    request["cache_salt"] = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
                headers = {"Accept-Encoding": "identity", "Content-Type": "application/json",
                           "X-Request-Id": os.urandom(12).hex()}
                forwarded = forwarded_for() if forwarded_for is not None else None
                if forwarded:  # where forward_headers puts it: after the request id, before the credential
                    headers["X-Forwarded-For"] = forwarded
                headers.update(auth)
                # encoded as the gateway encodes a body it rewrites (gateway/shape.py upstream_body): aiohttp's
                # json= writes ", " and ": " and ASCII escapes, which no rewritten proxied body has
                data = json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()
                async with session.post(url, data=data, headers=headers, ssl=ssl, timeout=timeout,
                                        allow_redirects=False) as resp:
                    if resp.status != 200:
                        detail = (await resp.content.read(512)).decode("utf-8", errors="replace")[:200]
                        if quotes_a_prompt(detail, prompts):  # an echo of the request: keep the prompt out
                            detail = "(the error body quotes a probe prompt: withheld)"
                        raise FingerprintError(f"probe {probe.id}: HTTP {resp.status}: {detail}")
                    raw = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        raw += chunk
                        if len(raw) > MAX_ANSWER_BYTES:
                            raise FingerprintError(
                                f"probe {probe.id}: the answer is over {MAX_ANSWER_BYTES} bytes")
                    body = json.loads(raw)
            except (TimeoutError, aiohttp.ClientError) as e:
                raise FingerprintError(f"probe {probe.id}: {type(e).__name__}: {e}") from e
            except (ValueError, RecursionError) as e:  # a 200 whose body is not JSON, or nested past the stack
                raise FingerprintError(f"probe {probe.id}: the answer is not JSON ({e})") from e
            try:
                return answer_from_response(probe.id, body, prompt=probe.prompt, max_tokens=probe.max_tokens)
            except ValueError as e:
                raise FingerprintError(str(e)) from e

        waits = list(delays) + [0.0] * (len(probes) - len(delays))
        outcomes = await asyncio.gather(*(one(p, w) for p, w in zip(probes, waits, strict=False)),
                                        return_exceptions=True)
    answers: list[ProbeAnswer] = []
    failures: list[str] = []
    for outcome in outcomes:
        if isinstance(outcome, FingerprintError):
            failures.append(printable(str(outcome)))
        elif isinstance(outcome, BaseException):  # a bug, or cancellation: not a probe failure to swallow
            raise outcome
        else:
            answers.append(outcome)
    return ProbeRun(build_signature(model, answers), tuple(failures))


async def probe_backend(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    probes: Sequence[Probe] = DEFAULT_PROBES,
    logprobs: bool = True,
    timeout_s: float = 30.0,
) -> Signature:
    """Every probe must answer (a reference is recorded from complete answers): the first failure raises."""
    run = await probe_backend_partial(base_url, model, api_key=api_key, probes=probes, logprobs=logprobs,
                                      timeout_s=timeout_s)
    if run.failures:
        raise FingerprintError(run.failures[0])
    return run.signature
