"""An in-process harness for end-to-end tests: real sockets on loopback, no mocks.

Usage (inside an ``async def test_...``)::

    from tests.support.harness import sim_backend, running_gateway, gateway_config

    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client("alice")          # openai.AsyncOpenAI with a freshly minted JWT
        r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}])
        assert sim.stats.completed == 1

- ``sim_backend(**SimOptions fields)``: the bundled simulated model server on a free port; ``.url``,
  ``.stats`` (``SimStats``: requests, completed, aborted + abort_times, last_headers, last_body).
- ``app_backend(app)``: any ``aiohttp.web.Application`` as a backend; yields its base URL.
- ``gateway_config(*backend_urls, **overrides)``: a config dict (model "sim", memory store, detection and
  watermarking off unless overridden) — pass ``models=[...]`` for several models/pools.
- ``running_gateway(config, tracing=None)``: the gateway (public + admin listeners) on free ports; ``.url``,
  ``.admin_url``, ``.ctx`` (the live ``AppContext``), ``.token(client_id, **claims)``,
  ``.openai_client(client_id)`` (closed with the gateway; ``api_key=`` another credential), ``.admin_token``.
  The JWT secret is written to a temp file (``auth.jwt.secret_file``); nothing touches ``os.environ``.
- ``mint_token(secret, client_id, ...)``: an HS256 JWT for the harness defaults (aud "ipgate").
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import openai
from aiohttp import web

from gateway.admin.app import build_admin_app
from gateway.app import build_public_app, open_context
from gateway.config import GatewayConfig, parse_config
from gateway.context import AppContext
from gateway.parsererrors import JsonErrorRunner
from gateway.server import admin_site, public_site
from gateway.sim.run import start_sim
from gateway.sim.server import SIM_STATS, SimOptions, SimStats
from gateway.telemetry.tracing import Tracing

JWT_SECRET = "ipgate-test-secret-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "ipgate-test-admin-token"
AUDIENCE = "ipgate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mint_token(secret: str, client_id: str, *, tenant: str | None = None, roles: list[str] | None = None,
               ttl_s: float = 3600, audience: str = AUDIENCE, issuer: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": client_id, "iat": now, "exp": now + int(ttl_s), "aud": audience, **claims}
    if tenant:
        payload["tenant"] = tenant
    if roles:
        payload["roles"] = roles
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, secret, algorithm="HS256")


@dataclass
class SimHandle:
    url: str
    port: int
    app: web.Application

    @property
    def stats(self) -> SimStats:
        return self.app[SIM_STATS]


@contextlib.asynccontextmanager
async def sim_backend(**options: Any) -> AsyncIterator[SimHandle]:
    runner, port = await start_sim(SimOptions(**options))
    try:
        yield SimHandle(f"http://127.0.0.1:{port}", port, runner.app)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def app_backend(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def body_size_backend(seen: list[int]) -> web.Application:
    """A chat backend that records the size of each request body it reads and answers a fixed short answer."""
    async def chat(request: web.Request) -> web.Response:
        seen.append(len(await request.read()))
        return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "sim",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def gateway_config(*backend_urls: str, **overrides: Any) -> dict[str, Any]:
    """A test config: one model "sim" over ``backend_urls`` (names b0, b1, ... equal weights)."""
    cfg: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "store": {"kind": "memory"},
        "auth": {"jwt": {"algorithms": ["HS256"], "audience": AUDIENCE, "secret_env": None}},
        "detection": {"enabled": False},
        "watermark": {"enabled": False},
        "routing": {"health": {"interval_s": 30}},
        "models": [{"name": "sim", "backends": [
            {"name": f"b{i}", "url": u, "weight": 1} for i, u in enumerate(backend_urls)]}],
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@dataclass
class GatewayHandle:
    url: str
    admin_url: str
    ctx: AppContext
    secret: str
    admin_token: str
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)  # closed with the gateway

    def token(self, client_id: str, **claims: Any) -> str:
        return mint_token(self.secret, client_id, **claims)

    def openai_client(self, client_id: str = "alice", *, api_key: str | None = None, **kwargs: Any
                      ) -> openai.AsyncOpenAI:
        """A client of this gateway (``api_key``: that credential instead of a JWT minted for ``client_id``),
        closed when the gateway stops. One left open is closed by openai's ``__del__``, which schedules
        ``aclose()`` on whatever loop runs when the collector gets to it: a later test's, where the close of a
        connection of a loop already closed fails and asyncio logs "Task exception was never retrieved"."""
        client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key or self.token(client_id),
                                    max_retries=0, **kwargs)
        self.clients.append(client)
        return client


@contextlib.asynccontextmanager
async def running_gateway(config: Mapping[str, Any] | GatewayConfig, *, secret: str = JWT_SECRET,
                          admin_token: str = ADMIN_TOKEN, tracing: Tracing | None = None
                          ) -> AsyncIterator[GatewayHandle]:
    with tempfile.TemporaryDirectory(prefix="ipgate-test-") as tmp:
        secret_file = Path(tmp) / "jwt.secret"
        secret_file.write_text(secret)
        data = config.model_dump() if isinstance(config, GatewayConfig) else copy.deepcopy(dict(config))
        jwt_cfg = data.setdefault("auth", {}).setdefault("jwt", {}) or {}
        jwt_cfg["secret_file"] = str(secret_file)
        jwt_cfg.setdefault("secret_env", None)
        data["auth"]["jwt"] = jwt_cfg
        data.setdefault("admin", {})["token_env"] = "IPGATE_TEST_ADMIN_TOKEN"
        cfg = parse_config(data, source="<test>", env={})
        async with open_context(cfg, tracing=tracing) as ctx:
            public = JsonErrorRunner(build_public_app(cfg, ctx), handler_cancellation=True, access_log=None,
                                   shutdown_timeout=1.0)
            admin = JsonErrorRunner(build_admin_app(ctx, env={"IPGATE_TEST_ADMIN_TOKEN": admin_token}),
                                  handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
            await public.setup()
            await admin.setup()
            await public_site(ctx, public, "127.0.0.1", 0, None).start()  # the product's (PROXY protocol)
            await admin_site(ctx, admin, "127.0.0.1", 0, None).start()
            handle = GatewayHandle(f"http://127.0.0.1:{public.addresses[0][1]}",
                                   f"http://127.0.0.1:{admin.addresses[0][1]}", ctx, secret, admin_token)
            try:
                yield handle
            finally:
                for client in handle.clients:
                    await client.close()
                await public.cleanup()
                await admin.cleanup()


@contextlib.asynccontextmanager
async def lexical_gateway(backend: web.Application, watermark_secret: str, tmp_path: Path
                          ) -> AsyncIterator[GatewayHandle]:
    """A gateway with the lexical watermark on (its master secret in a file under ``tmp_path``) in front of
    one aiohttp backend app."""
    secret = tmp_path / "wm.secret"
    secret.write_text(watermark_secret + "\n")
    async with app_backend(backend) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "lexical", "secret_file": str(secret)})
        async with running_gateway(cfg) as g:
            yield g


async def settled(gw: GatewayHandle, timeout_s: float = 5.0) -> None:
    """Wait until the gateway's background accounting (state saves, alerts, recipients: the work that runs
    after each answer) has finished, so a test can read or overwrite what it writes without a race."""
    for _ in range(int(timeout_s / 0.01)):
        if not gw.ctx.background:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"background accounting did not finish within {timeout_s} s")


async def eventually(cond: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` every 10 ms until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.01)
