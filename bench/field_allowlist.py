"""Cost of the request-field allowlist (``proxy.unknown_fields: refuse``) on the hot path, side by side with
the default ``pass`` mode: the same ``FieldPolicy.check`` call the pipeline makes, on the body the openai SDK
sends for a typical streamed chat request (10 top-level keys) and its headers.

    .venv/bin/python bench/field_allowlist.py [--n 100000] [--rounds 25]

Prints a markdown table of nanoseconds per call (best of 25 interleaved rounds of ``timeit``: the least
disturbed by the other processes of a shared host).
"""

from __future__ import annotations

import argparse
import contextlib
import timeit
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import parse_config
from gateway.errors import InvalidRequest
from gateway.proxy.fields import FieldPolicy

BODY = {"model": "sim", "messages": [{"role": "system", "content": "You are helpful."},
                                     {"role": "user", "content": "Explain what a reverse proxy does, briefly."}],
        "max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "stream": True, "stream_options": {"include_usage": True},
        "user": "u-1", "seed": 7, "top_k": 40}
UNKNOWN = {**BODY, "x_new_engine_field": 1}
KWARGS = {**BODY, "chat_template_kwargs": {"enable_thinking": False}}
HEADERS = CIMultiDictProxy(CIMultiDict({
    "Host": "gw:8080", "User-Agent": "AsyncOpenAI/Python 3.57.0", "Accept": "application/json",
    "Content-Type": "application/json", "Authorization": "Bearer x", "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "3.57.0", "Content-Length": "250"}))


def _refused(policy: FieldPolicy) -> None:
    with contextlib.suppress(InvalidRequest):
        policy.check(UNKNOWN, HEADERS, "chat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args()
    models = [{"name": "sim", "backends": [{"name": "b", "url": "http://x"}]}]
    p: dict[str, FieldPolicy] = {}
    for mode in ("pass", "refuse"):
        cfg = parse_config({"models": models, "proxy": {"unknown_fields": mode}}, env={}).proxy
        p[mode] = FieldPolicy(cfg.refused_fields, cfg.refused_headers, cfg.withheld_response_fields,
                              unknown=cfg.unknown_fields, allowed=cfg.allowed_fields)
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("pass: body + headers, all fields known", lambda: p["pass"].check(BODY, HEADERS, "chat"), args.n),
        ("refuse: body + headers, all fields known", lambda: p["refuse"].check(BODY, HEADERS, "chat"), args.n),
        ("pass: body with chat_template_kwargs (a block-list parent: the block list's loop)",
         lambda: p["pass"].check(KWARGS, HEADERS, "chat"), args.n),
        ("refuse: body with chat_template_kwargs (the same loop, then a second set test)",
         lambda: p["refuse"].check(KWARGS, HEADERS, "chat"), args.n),
        ("refuse: an unknown field, the 400 raised and caught", lambda: _refused(p["refuse"]), args.n // 10),
    ]
    # interleaved rounds, best of each: the least disturbed by the other processes of a shared host
    best = [float("inf")] * len(cases)
    for _ in range(args.rounds):
        for i, (_, fn, n) in enumerate(cases):
            best[i] = min(best[i], timeit.timeit(fn, number=n) / n * 1e9)
    print("| check (typical 11-key SDK chat body, 8 headers) | ns per call |\n|---|---:|")
    for (label, _, _), ns in zip(cases, best, strict=True):
        print(f"| {label} | {ns:,.0f} |")


if __name__ == "__main__":
    main()
