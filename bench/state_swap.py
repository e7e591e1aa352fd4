"""Cost of saving a detector state by compare-and-swap (``swap_client_state``, what the gateway does since
concurrent requests are merged) against the plain write (``save_client_state``), on a real redis-server.

Both write the same ~7.6 KB state for 500 clients in turns, alternating the two methods call by call; the
swap's expected state is the one the client's previous write stored (the common, uncontended case). Prints the
median wall and CPU time per call of each, from this process (the gateway's side: SHA-1 of the expected state,
argument packing, the round trip) — Redis's own SHA-1 of the stored state runs on Redis's core.

    .venv/bin/python bench/state_swap.py [--calls 6000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.store.redis import RedisStore
from tests.conftest import RedisProcess


async def run(url: str, calls: int) -> dict[str, tuple[float, float]]:
    store = RedisStore(url, timeout_s=1.0)
    state = bytes(range(256)) * 30  # 7 680 bytes, like a steady-state detector state
    held: dict[str, bytes | None] = {}
    wall: dict[str, list[float]] = {"save": [], "swap": []}
    cpu: dict[str, list[float]] = {"save": [], "swap": []}
    for i in range(calls):
        client = f"c{i % 500}"
        new = state[:-4] + i.to_bytes(4, "little")
        kind = "swap" if i % 2 else "save"
        t0, c0 = time.perf_counter(), time.thread_time()
        if kind == "swap":
            ok, _ = await store.swap_client_state(client, held.get(client), new, 1, 0.5, 3600)
            assert ok
        else:
            await store.save_client_state(client, new, 1, 0.5, 3600)
        wall[kind].append(time.perf_counter() - t0)
        cpu[kind].append(time.thread_time() - c0)
        held[client] = new
    await store.close()
    return {k: (statistics.median(wall[k]) * 1e6, statistics.median(cpu[k]) * 1e6) for k in wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=6000)
    args = ap.parse_args()
    redis = RedisProcess().start()
    try:
        out = asyncio.run(run(redis.url, args.calls))
    finally:
        redis.stop()
    print("| write | wall µs/call (median) | gateway CPU µs/call (median) |")
    print("|---|---|---|")
    for k, label in (("save", "save_client_state (plain HSET)"), ("swap", "swap_client_state (compare-and-swap)")):
        print(f"| {label} | {out[k][0]:.1f} | {out[k][1]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
