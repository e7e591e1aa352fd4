"""KGW overhead: µs per batch of logits (torch core, CPU) and detection throughput (numpy).

    .venv/bin/python bench/kgw_bench.py [--threads 1]

Prints a markdown table. The green-mask cost is elementwise integer work over (B, V); on a GPU it is a few
fused kernels, on this CPU it is memory-bound. Detection: tokens/s for one key and for 1 000 candidate keys.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from watermark.keys import ClientKey, KeyRing
from watermark.kgw import detect, prf
from watermark.kgw.params import KgwParams
from watermark.kgw.torch_core import TableCache, subkeys_tensor, watermark_logits_


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (first call builds the per-key tables)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _no_text(texts: Sequence[str]) -> list[list[int]]:
    raise AssertionError("the benchmark scores token ids, not text")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ring = KeyRing(b"kgw-bench-master-secret-0123456789")
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s), median of {args.repeat}\n")
    print("| seeding | B | V | µs per batch (bias added in place) | µs per row |")
    print("|---|---|---|---|---|")
    for seeding in ("lefthash", "selfhash"):
        params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
        for b in (1, 8):
            for v in (32_000, 50_257):
                sub = [prf.subkeys(ring.key(f"c{i}").key) for i in range(b)]
                keys = subkeys_tensor(sub)
                cache = TableCache(params, v, "cpu")
                prev = torch.randint(0, v, (b, params.prev_tokens))
                logits = torch.randn(b, v)

                def step(
                    logits: torch.Tensor = logits,
                    prev: torch.Tensor = prev,
                    keys: torch.Tensor = keys,
                    params: KgwParams = params,
                    cache: TableCache = cache,
                    sub: list[tuple[int, int, int, int]] = sub,
                ) -> None:
                    watermark_logits_(logits, prev, keys, params, None, cache.tables_for(sub))

                dt = _time(step, args.repeat)
                print(f"| {seeding} | {b} | {v} | {dt * 1e6:.0f} | {dt * 1e6 / b:.0f} |")
    print("\n| detection | candidate keys | tokens | ms | tokens/s (x keys) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    params = KgwParams()
    for n_keys in (1, 1000):
        keys_list = ring.candidates([f"c{i}" for i in range(n_keys)])
        for n_tok in (200, 800):
            seq = rng.integers(0, 50_000, n_tok).tolist()
            scheme = detect.KgwScheme(_no_text, params)

            def verdict(seq: list[int] = seq, kl: list[ClientKey] = keys_list, sc: detect.KgwScheme = scheme) -> None:
                sc.score_ids([seq], kl)

            dt = _time(verdict, max(3, args.repeat // 5))
            print(f"| ids -> verdict | {n_keys} | {n_tok} | {dt * 1e3:.1f} | {n_tok / dt:,.0f} "
                  f"({n_tok * n_keys / dt:,.0f} token-keys/s) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
