"""Two processes sharing one Redis enforce the limit of one: N concurrent hot_path calls in each, for the same
client, admit exactly ``burst`` in total (the Lua script is atomic and Redis TIME is the only clock)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

WORKER = r"""
import asyncio, json, sys, time
from gateway.config import StoreConfig
from gateway.store.base import AdmitRequest, Limits
from gateway.store.redis import RedisStore

async def main(url, start_at, n, burst):
    store = RedisStore.from_config(StoreConfig(kind="redis", url=url, timeout_ms=5000))
    limits = (Limits(requests_per_minute=1, tokens_per_minute=1e9, burst_requests=burst, burst_tokens=10**9),)
    await store.ping()  # connect before the start line, so both processes fire together
    await asyncio.sleep(max(0.0, start_at - time.time()))
    results = await asyncio.gather(*(store.hot_path(AdmitRequest("shared", 1, limits)) for _ in range(n)))
    await store.close()
    print(json.dumps({"admitted": sum(r.allowed for r in results)}))

asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
"""


def test_two_processes_admit_exactly_burst(redis_url: str) -> None:
    # each process alone would admit all its n calls; only a shared, atomic bucket admits exactly burst
    n, burst = 100, 150
    start_at = time.time() + 1.5
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, redis_url, str(start_at), str(n), str(burst)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    admitted = [o["admitted"] for o in outs]
    assert sum(admitted) == burst, admitted
