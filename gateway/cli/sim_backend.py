"""``ipgate sim-backend``: the simulated model server (stands in for a GPU backend)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from gateway.sim import LABEL
from gateway.sim.run import serve_sim_forever
from gateway.sim.server import SimOptions


def _bounded(cast: Callable[[str], float], lo: float, hi: float, what: str) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` (an int or a finite float) within [lo, hi], else a one-line error
    naming ``what`` (a negative or NaN delay, or a 200 "failure", used to start a server that misbehaved)."""
    def parse(text: str) -> Any:
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return v
    return parse


_non_negative = _bounded(float, 0, math.inf, "a finite number >= 0")  # a delay or a rate
_share = _bounded(float, 0, 1, "a share of requests, from 0 to 1")
_error_status = _bounded(int, 400, 599, "an HTTP error status, 400 to 599")
_tokens = _bounded(int, 0, math.inf, "a number of tokens >= 0")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim-backend", help=f"run the {LABEL}",
                       description=f"Run the {LABEL}: OpenAI-compatible chat/completions/embeddings/models, "
                                   "and /v1/responses as vLLM serves it.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18000, help="port to listen on (default 18000)")
    p.add_argument("--model", default="sim", help="model id listed in /v1/models")
    p.add_argument("--latency-ms", type=_non_negative, default=0.0, help="delay before the first byte")
    p.add_argument("--tokens-per-s", type=_non_negative, default=0.0, help="streaming rate; 0 = as fast as possible")
    p.add_argument("--fail-rate", type=_share, default=0.0,
                   help="share of requests (0 to 1) answered with --fail-status")
    p.add_argument("--fail-status", type=_error_status, default=500, help="HTTP error status (default 500)")
    p.add_argument("--cut-after", type=_tokens, default=None, help="close the connection after N streamed tokens")
    p.add_argument("--stall-after", type=_tokens, default=None, help="stop sending after N streamed tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the failure injection's draws (default 0)")
    p.add_argument("--kgw-plugin", action="store_true",
                   help="emulate vLLM with ipgate's KGW plugin loaded: vllm_xargs are checked by the plugin's own "
                        "validator (400 on a bad directive or the gateway's probe); its spec and master secret "
                        "come from IPGATE_KGW_PARAMS and IPGATE_WATERMARK_SECRET(_FILE), as on a real engine host")
    p.add_argument("--reasoning", action="store_true",
                   help="answer like a reasoning model behind vLLM's reasoning parser: chat answers carry a chain "
                        "of thought in message.reasoning / delta.reasoning before the content, /v1/responses "
                        "answers a reasoning item before the message")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kgw: dict[str, Any] = {}
    if args.kgw_plugin:
        from watermark.kgw import vllm_plugin

        try:
            kgw = {"kgw_plugin": True, "kgw_spec": os.environ.get(vllm_plugin.ENV_PARAMS) or None,
                   "kgw_secret": vllm_plugin.server_secret()}
            vllm_plugin.server_params()  # a bad spec fails here, not per request
        except (OSError, ValueError) as e:  # an unreadable secret file, a bad secret or spec
            print(f"ipgate sim-backend: --kgw-plugin: {e}", file=sys.stderr)
            return 2
    opts = SimOptions(model=args.model, latency_ms=args.latency_ms, tokens_per_s=args.tokens_per_s,
                      fail_rate=args.fail_rate, fail_status=args.fail_status, cut_after=args.cut_after,
                      stall_after=args.stall_after, seed=args.seed, reasoning=args.reasoning, **kgw)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_sim_forever(opts, args.host, args.port))
    except (OSError, OverflowError) as e:  # the port is taken, or not a port (as `ipgate demo` says it)
        print(f"ipgate sim-backend: cannot listen on {args.host}:{args.port}: {getattr(e, 'strerror', None) or e}",
              file=sys.stderr)
        return 2
    return 0
