"""A reload that gives a backend another ``fingerprint_reference`` (or another ``upstream_model``) while its
check runs: the verdict compares the answers with the reference the round started with, so it is about a
configuration that no longer exists. A periodic round is spread over up to half the interval (30 minutes by
default), and the confirming round too, which makes the window wide: an operator who deploys a new model and
re-records its reference in that window had the genuine backend quarantined by the stale verdict, and, when the
reload dropped the reference instead, quarantined for good (nothing re-checks a backend without one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from gateway.admin.routing import reload_from_config
from gateway.config import parse_config
from gateway.fingerprint_client import probe_backend
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import gateway_config, running_gateway


class GatedServer(ModelServer):
    """Holds every chat request until ``gate`` is set (a slow, spread round in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def _chat(self, request: web.Request) -> web.Response:
        self.waiting += 1
        await self.gate.wait()
        return await super()._chat(request)


@pytest.mark.parametrize("change", ["new-reference", "reference-dropped"])
async def test_a_verdict_against_a_reference_replaced_during_the_check_is_dropped(tmp_path: Path,
                                                                                 change: str) -> None:
    srv = GatedServer()
    await srv.start()
    try:
        old_ref, new_ref = tmp_path / "v1.json", tmp_path / "v2.json"
        srv.weights = "v1"
        old_ref.write_text((await probe_backend(srv.url, "sim")).dumps(), encoding="utf-8")
        srv.weights = "v2"  # the operator deploys v2 and records its reference
        new_ref.write_text((await probe_backend(srv.url, "sim")).dumps(), encoding="utf-8")
        cfg = gateway_config(srv.url)
        cfg["models"][0]["backends"][0]["fingerprint_reference"] = str(old_ref)
        async with running_gateway(cfg) as gw:
            checker = gw.ctx.fingerprint
            assert checker is not None
            await checker.check_now()  # the start-up round may be running: wait for it
            if gw.ctx.router.quarantined("sim", "b0") is not None:  # v2 against v1's reference
                gw.ctx.router.release_quarantine("sim", "b0")
            srv.gate.clear()
            srv.waiting = 0
            task = asyncio.create_task(checker.check_now())
            while srv.waiting == 0:
                await asyncio.sleep(0.01)
            # ... while the probes are out, the operator reloads with v2's reference (or without one)
            cfg["models"][0]["backends"][0]["fingerprint_reference"] = \
                str(new_ref) if change == "new-reference" else None
            reload_from_config(gw.ctx, parse_config(cfg))
            srv.gate.set()
            await task
            assert gw.ctx.router.quarantined("sim", "b0") is None
            if change == "new-reference":
                (check,) = await checker.check_now()
                assert check.verdict == "match" and not check.quarantined
    finally:
        srv.gate.set()
        await srv.close()
