"""End to end: two real ``ipgate serve`` processes sharing one Redis enforce ONE exact request limit.

N concurrent chat requests for the same client, split across both gateways, in front of the bundled
simulated backend: exactly ``burst_requests`` are answered 200, the rest 429 with Retry-After and
RateLimit-* headers. A second client is unaffected (limits are per client, not per gateway).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.harness import JWT_SECRET, free_port, mint_token, sim_backend

BURST = 7
PER_GATEWAY = 12


def write_config(path: Path, redis_url: str, backend: str, port: int, admin_port: int) -> None:
    path.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "store": {"kind": "redis", "url": redis_url, "failure_mode": "closed", "timeout_ms": 1000},
        "auth": {"jwt": {"algorithms": ["HS256"], "audience": "ipgate", "secret_env": "IPGATE_JWT_SECRET"}},
        # rpm 1: no refill during the test, so the admitted count is exactly the burst
        "limits": {"default": {"requests_per_minute": 1, "tokens_per_minute": 10_000_000, "burst_requests": BURST},
                   "suspicious": {"requests_per_minute": 1, "tokens_per_minute": 1000}},
        "detection": {"enabled": False},
        "watermark": {"enabled": False},
        "telemetry": {"access_log": False},
        "routing": {"health": {"interval_s": 30}},
        "models": [{"name": "sim", "backends": [{"name": "b0", "url": backend}]}],
    }))


class Gateways:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.admin_urls: list[str] = []
        self.logs: list[Path] = []

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def gateways() -> Iterator[Gateways]:
    g = Gateways()
    yield g
    g.stop()


async def wait_ready(http: aiohttp.ClientSession, g: Gateways, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    for proc, admin in zip(g.procs, g.admin_urls, strict=True):
        while True:
            if proc.poll() is not None:
                log = g.logs[g.procs.index(proc)].read_text()[-3000:]
                raise AssertionError(f"gateway exited with {proc.returncode}:\n{log}")
            try:
                async with http.get(admin + "/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "gateway not ready in time"
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_two_gateway_processes_enforce_one_exact_limit(redis_url: str, gateways: Gateways,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "IPGATE_JWT_SECRET": JWT_SECRET}
    env.pop("IPGATE_ADMIN_TOKEN", None)
    async with sim_backend() as sim:
        for i in range(2):
            port, admin_port = free_port(), free_port()
            cfg = tmp_path / f"gw{i}.yaml"
            write_config(cfg, redis_url, sim.url, port, admin_port)
            log = tmp_path / f"gw{i}.log"
            gateways.logs.append(log)
            with log.open("wb") as out:
                gateways.procs.append(subprocess.Popen(
                    # the server entry point `ipgate serve` runs, without loading every other subcommand
                    [sys.executable, "-c", "import sys; from gateway.server import serve; "
                     "sys.exit(serve(sys.argv[1], 1))", str(cfg)],
                    env=env, stdout=out, stderr=subprocess.STDOUT,
                ))
            gateways.urls.append(f"http://127.0.0.1:{port}")
            gateways.admin_urls.append(f"http://127.0.0.1:{admin_port}")

        body = {"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}

        async def one(http: aiohttp.ClientSession, url: str, client: str) -> tuple[int, dict[str, Any]]:
            headers = {"Authorization": f"Bearer {mint_token(JWT_SECRET, client)}"}
            async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
                return r.status, dict(r.headers)

        async with aiohttp.ClientSession() as http:
            await wait_ready(http, gateways)
            results = await asyncio.gather(*(
                one(http, gateways.urls[i % 2], "mallory") for i in range(2 * PER_GATEWAY)))
            statuses = [s for s, _ in results]
            assert statuses.count(200) == BURST, statuses
            assert statuses.count(429) == 2 * PER_GATEWAY - BURST, statuses
            limited = next(h for s, h in results if s == 429)
            assert int(limited["Retry-After"]) >= 1 and limited["RateLimit-Limit"] == str(BURST)
            assert limited["RateLimit-Remaining"] == "0"
            # both gateways admitted some and refused some: neither kept a private count
            per_gw = [[s for j, (s, _) in enumerate(results) if j % 2 == i] for i in range(2)]
            assert all(429 in g for g in per_gw)
            # another client is untouched, on either gateway
            assert [(await one(http, u, "alice"))[0] for u in gateways.urls] == [200, 200]
    assert sim.stats.completed == BURST + 2
