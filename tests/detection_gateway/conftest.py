"""Fixtures of the detection-integration tests: a real aiohttp webhook receiver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.support.harness import app_backend


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that answers 503 to the first ``fail_first`` POSTs."""

    url: str = ""
    fail_first: int = 0
    fail_status: int = 503
    attempts: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.attempts <= self.fail_first:
            return web.Response(status=self.fail_status, text="not now")
        self.raw.append(body)
        self.received.append(json.loads(body))
        self.headers.append(dict(request.headers))
        return web.Response(status=204)


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    recv = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    async with app_backend(app) as url:
        recv.url = url + "/hook"
        yield recv
