"""Run the simulated model server on a port until cancelled (used by the CLI and the demo)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.sim import LABEL
from gateway.sim.server import SimOptions, build_sim_app

log = logging.getLogger(__name__)


async def start_sim(opts: SimOptions, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start a sim on ``host:port`` (0 = a free port); return the runner and the bound port."""
    runner = web.AppRunner(build_sim_app(opts), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("%s listening on http://%s:%d (model %r)", LABEL, host, bound, opts.model)
    return runner, int(bound)


async def serve_sim_forever(opts: SimOptions, host: str, port: int) -> None:
    runner, _ = await start_sim(opts, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
