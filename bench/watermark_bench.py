"""Lexical watermark overhead and verification throughput (numbers for docs/watermark-benchmarks.md).

    .venv/bin/python bench/watermark_bench.py [--responses 200] [--repeat 5]

- embedding one 300-word response (non-streaming), per response;
- streaming the same responses as 4-character deltas (a typical token), per delta, including finish();
- verification of an 800-word text against 1 and 100 000 candidate clients: words per second, with and
  without deriving the 100 000 HMAC keys (the CLI derives them once per run; a service can cache them).

Text: real responses from ``../shared/data/responses.jsonl`` of at least 300 words, cut to 300 words (or the
built-in sample text when the corpus is not there). Best of ``--repeat`` runs; single process, one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "responses.jsonl"


def texts(n: int) -> list[str]:
    out: list[str] = []
    if DATA.exists():
        with DATA.open(encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)["response"]
                ends = [m.end() for m in re.finditer(r"\S+", r)]
                if len(ends) >= 300:
                    out.append(r[: ends[299]])
                if len(out) >= n:
                    break
    return out or ["I think it is not hard, and you do not need to buy a big car. " * 20]


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--responses", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=100_000)
    args = ap.parse_args()
    ring = KeyRing(b"benchmark-master-secret-000000")
    scheme = LexicalScheme(ring.master)
    key = ring.key("bench-client")
    docs = texts(args.responses)
    words = sum(len(d.split()) for d in docs)

    def embed_all() -> None:
        for d in docs:
            scheme.embed(d, key)

    deltas = [[d[i : i + 4] for i in range(0, len(d), 4)] for d in docs]
    n_deltas = sum(len(x) for x in deltas)

    def stream_all() -> None:
        for parts in deltas:
            e = scheme.embedder(key)
            for p in parts:
                e.feed(p)
            e.finish()

    def copy_all() -> None:  # the same loop without watermarking: the harness's own cost
        for parts in deltas:
            out = []
            for p in parts:
                out.append(p)
            "".join(out)

    t_embed = best(embed_all, args.repeat)
    t_stream = best(stream_all, args.repeat) - best(copy_all, args.repeat)
    long = " ".join(" ".join(docs).split()[:800])
    marked = scheme.embed(long, key)
    one = [key]
    ids = [f"client-{i:06d}" for i in range(args.candidates - 1)] + ["bench-client"]
    many = ring.candidates(ids)
    t_keys = best(lambda: ring.candidates(ids), 3)
    t_one = best(lambda: scheme.score(marked, one), args.repeat)
    t_many = best(lambda: scheme.score(marked, many), max(1, args.repeat // 2))
    s = scheme.score(marked, many)
    assert s.client_id == "bench-client"
    n_words = len(marked.split())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"<!-- .venv/bin/python bench/watermark_bench.py --responses {args.responses} --repeat {args.repeat} "
          f"| Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at start -->")
    print("| measurement | result |")
    print("|---|---|")
    print(f"| embed one 300-word response (mean of {len(docs)}, {words} words) | "
          f"{t_embed / len(docs) * 1e3:.3f} ms |")
    print(f"| streaming: per 4-character delta ({n_deltas} deltas, harness cost subtracted) | "
          f"{t_stream / n_deltas * 1e6:.2f} µs |")
    print(f"| verify 800 words, 1 candidate | {t_one * 1e3:.1f} ms ({n_words / t_one:,.0f} words/s) |")
    print(f"| verify 800 words, {len(many):,} candidates (keys already derived) | {t_many * 1e3:.0f} ms "
          f"({n_words / t_many:,.0f} words/s) |")
    print(f"| derive {len(many):,} client keys (HMAC-SHA256, once per run) | {t_keys * 1e3:.0f} ms |")
    print(f"| verify 800 words against {len(many):,} clients including key derivation | "
          f"{(t_many + t_keys) * 1e3:.0f} ms |")
    print(f"scored tuples in the 800-word text: {s.scored}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
