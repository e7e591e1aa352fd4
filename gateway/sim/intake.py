"""The way into every generating endpoint of the sim (count the request, read its JSON object, the emulated
KGW plugin's check, injected failure, latency) and the record of a generation the client abandoned."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.sim import kgw_plugin
from gateway.sim.state import SIM_OPTIONS, SIM_RNG, SIM_STATS, SimOptions, SimStats

log = logging.getLogger(__name__)


def error(status: int, message: str, etype: str = "invalid_request_error") -> web.Response:
    """The sim's own error JSON (OpenAI's shape), for what happens before vLLM's request checks."""
    return web.json_response({"error": {"message": message, "type": etype, "param": None, "code": None}},
                             status=status)


async def intake(request: web.Request) -> tuple[SimOptions, SimStats, dict[str, Any]] | web.Response:
    """``(options, stats, body)`` to go on with, or the answer that ends the request here."""
    stats, opts = request.app[SIM_STATS], request.app[SIM_OPTIONS]
    stats.requests += 1
    stats.last_headers = CIMultiDict(request.headers)
    try:
        body = await request.json()
    except ValueError:
        return error(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    stats.last_body = body
    if opts.kgw_plugin:
        refused = kgw_plugin.refusal(opts, body)
        if refused is not None:
            stats.refused += 1
            return refused
    if opts.fail_rate and request.app[SIM_RNG].random() < opts.fail_rate:
        stats.failed += 1
        return error(opts.fail_status, "simulated failure", "server_error")
    if opts.latency_ms:
        try:
            await asyncio.sleep(opts.latency_ms / 1000)
        except asyncio.CancelledError:
            record_abort(stats, 0)
            raise
    return opts, stats, body


def record_abort(stats: SimStats, tokens_sent: int) -> None:
    stats.aborted += 1
    stats.abort_times.append(time.monotonic())
    log.info("sim: client abandoned a generation after %d tokens", tokens_sent)
