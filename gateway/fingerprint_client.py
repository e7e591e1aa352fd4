"""The I/O side of fingerprint checks: send the probes to a backend and build its signature."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from fingerprint import DEFAULT_PROBES, Probe, Signature, build_signature
from fingerprint.signature import ProbeAnswer, answer_from_response


class FingerprintError(Exception):
    """A probe could not be sent or its answer could not be read."""


async def probe_backend(
    base_url: str,
    model: str,
    *,
    api_key: str | None = None,
    probes: Sequence[Probe] = DEFAULT_PROBES,
    logprobs: bool = True,
    timeout_s: float = 30.0,
) -> Signature:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

        async def one(probe: Probe) -> ProbeAnswer:
            try:
                async with session.post(url, json=probe.chat_body(model, logprobs=logprobs)) as resp:
                    if resp.status != 200:
                        detail = (await resp.text())[:200]
                        raise FingerprintError(f"probe {probe.id}: HTTP {resp.status}: {detail}")
                    body = await resp.json()
            except (TimeoutError, aiohttp.ClientError) as e:
                raise FingerprintError(f"probe {probe.id}: {type(e).__name__}: {e}") from e
            try:
                return answer_from_response(probe.id, body)
            except ValueError as e:
                raise FingerprintError(str(e)) from e

        answers = await asyncio.gather(*(one(p) for p in probes))
    return build_signature(model, answers)
