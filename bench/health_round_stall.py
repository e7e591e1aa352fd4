"""How long one round of active health checks holds the event loop, for a pool of N backends.

Run: .venv/bin/python bench/health_round_stall.py [--backends 800] [--models 8] [--rounds 4] [--slow 0]

N backends (N listening ports of a real aiohttp server in a child process, so its work does not run on the
measured loop) answer ``GET /v1/models``; the gateway's own ``HealthChecker`` (``gateway/routing/health.py``)
checks them, over ``--models`` pools, as the router's health loop does. For each round the script reports its
wall time, the longest stretch of CPU the loop's thread spent between two turns of a 1 ms watcher (what
every other request on that loop waits: ``tests/support/stall.py``'s measure) and the number of turns over
10 ms, and how many checks failed. Round 1 opens the connections; later rounds reuse them. ``--slow K`` makes K of
the backends never answer (each check then waits ``--timeout`` seconds): what a round with hung backends costs,
and (``--default-connector``: aiohttp's default session, which the router used before) whether the others'
checks still pass.

The garbage collector is tuned as ``ipgate serve`` tunes it (``gateway.server.tune_gc``) unless ``--python-gc``.
``--burst`` compares the checker's bound on probe starts per loop turn (``HealthChecker(burst=...)``) with the
same code starting every probe at once (``0``), in the same run, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp


def serve(n: int, slow: int) -> None:
    """The child: n sites, the first ``slow`` of which never answer; prints the ports, serves until stdin ends."""
    from aiohttp import web

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def main() -> None:
        ok, stuck = web.Application(), web.Application()
        ok.router.add_get("/v1/models", models)
        stuck.router.add_get("/v1/models", hang)
        runners = []
        for app in (ok, stuck):
            r = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await r.setup()
            runners.append(r)
        ports = []
        for i in range(n):
            site = web.TCPSite(runners[1] if i < slow else runners[0], "127.0.0.1", 0, backlog=1024)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        print(json.dumps(ports), flush=True)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), done.set)  # stdin closed: the parent is done
        await done.wait()
        for r in runners:
            await r.cleanup()

    asyncio.run(main())


async def _round(checker: Any) -> tuple[float, float, int]:
    """(wall s, longest loop hold s, turns over 10 ms) for one ``check_once``."""
    worst, long_turns = 0.0, 0
    since = time.thread_time()

    async def watch() -> None:
        nonlocal worst, since, long_turns
        while True:
            since = time.thread_time()
            await asyncio.sleep(0.001)
            held = time.thread_time() - since
            worst = max(worst, held)
            long_turns += held > 0.010

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await checker.check_once()
    wall = time.perf_counter() - t0
    worst = max(worst, time.thread_time() - since)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    return wall, worst, long_turns


async def measure(ports: list[int], models: int, rounds: int, timeout: float, burst: int | None,
                  gateway_gc: bool = True, default_connector: bool = False) -> list[tuple[float, float, int, int]]:
    from gateway.config import HealthConfig, ModelConfig
    from gateway.routing.health import HealthChecker, health_session
    from gateway.routing.pool import Pool

    health = HealthConfig(interval_s=5.0, timeout_s=timeout)
    per = -(-len(ports) // models)
    pools = [Pool(ModelConfig.model_validate({"name": f"m{j}", "backends": [
        {"name": f"b{i}", "url": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports[j * per:(j + 1) * per])]}),
        health) for j in range(models) if ports[j * per:(j + 1) * per]]
    if gateway_gc:
        from gateway.server import tune_gc

        tune_gc()  # what `ipgate serve` does once started: start-up objects frozen, fewer young collections
    out = []
    async with (aiohttp.ClientSession() if default_connector else health_session()) as session:  # the router's
        kwargs = {} if burst is None else {"burst": burst}
        checker = HealthChecker(health, session, lambda: pools, **kwargs)
        for _ in range(rounds):
            wall, worst, long_turns = await _round(checker)
            failed = sum(1 for n in checker._failures.values() if n > 0)  # checks that failed this round
            out.append((wall, worst, long_turns, failed))
            await asyncio.sleep(0.2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=int, default=800)
    parser.add_argument("--models", type=int, default=8, help="pools the backends are spread over")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--slow", type=int, default=0, help="backends that never answer (each check times out)")
    parser.add_argument("--timeout", type=float, default=2.0, help="routing.health.timeout_s")
    parser.add_argument("--burst", type=int, nargs="*", default=None,
                        help="HealthChecker burst values to compare (0: every probe at once); default: the checker's")
    parser.add_argument("--python-gc", action="store_true",
                        help="keep Python's default collector settings (the gateway tunes them: server.tune_gc)")
    parser.add_argument("--default-connector", action="store_true",
                        help="aiohttp's default session (100 connections in all) instead of the router's")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("gateway.routing").setLevel(logging.ERROR)  # not one line per backend marked unhealthy
    if args.serve:
        serve(args.backends, args.slow)
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--backends", str(args.backends),
                              "--slow", str(args.slow)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        bursts: list[int | None] = list(args.burst) if args.burst else [None]
        print(f"{args.backends} backends over {args.models} pools, {args.slow} never answering, "
              f"timeout {args.timeout} s, {args.rounds} rounds each, "
              f"{'aiohttp default' if args.default_connector else 'health_session'} connector, "
              f"{'Python default' if args.python_gc else 'gateway'} GC settings")
        print("| burst | round | wall ms | longest loop hold ms | turns > 10 ms | checks failed |")
        print("|---|---|---|---|---|---|")
        for burst in bursts:
            results = asyncio.run(measure(ports, args.models, args.rounds, args.timeout, burst,
                                          not args.python_gc, args.default_connector))
            for i, (wall, worst, long_turns, failed) in enumerate(results, 1):
                print(f"| {'default' if burst is None else burst} | {i} | {wall * 1e3:.0f} | {worst * 1e3:.1f} "
                      f"| {long_turns} | {failed} |")
            warm = results[1:] or results
            print(f"| {'default' if burst is None else burst} | median of rounds 2+ | "
                  f"{statistics.median(r[0] for r in warm) * 1e3:.0f} | "
                  f"{statistics.median(r[1] for r in warm) * 1e3:.1f} | | |")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


if __name__ == "__main__":
    main()
