"""KGW overhead: µs per batch of logits (torch core, CPU), detection throughput (numpy), and verification
of an 800-token text against 1 / 1 000 / 100 000 candidate clients (old vs new implementation, side by side).

    .venv/bin/python bench/kgw_bench.py [--threads 1] [--part all|sampler|detect|verify]

Prints markdown tables. The green-mask cost is elementwise integer work over (B, V); on a GPU it is a few
fused kernels, on this CPU it is memory-bound. Detection: tokens/s for one key and for 1 000 candidate keys.

Verification (``--part verify``, no torch needed): real assistant text (``../shared/data/responses.jsonl``,
or a built-in sample) tokenized with ``--tokenizer`` (default ``var/kgw/tokenizer.json`` from
``scripts/eval/kgw_lm.py``; a byte-level BPE is trained on the text when it is missing), cut to 800 tokens.
In process: the new ``score_tuples`` against the pre-change implementation (the reference kept in
``tests/watermark/test_kgw_fast.py``), with keys already derived and including key derivation; the results
are checked equal. Whole process: ``ipgate verify --scheme kgw --json`` wall time, 100 000 ids in
``--clients``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from watermark.keys import ClientKey, KeyRing
from watermark.kgw import detect, prf
from watermark.kgw.params import KgwParams

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "responses.jsonl"
MASTER = b"kgw-bench-master-secret-0123456789"
SAMPLE = (
    "Here is a quick summary. First, make sure you have the latest version installed. Second, check that it "
    "is configured correctly; it does not work with older settings. Finally, restart the service. In summary, "
    "the process is usually fast, and you will not lose any data. Perhaps the easiest way is to try it on a "
    "test machine first, because it is hard to undo changes. "
)


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


def sampler(args: argparse.Namespace) -> None:
    import torch

    from watermark.kgw.torch_core import TableCache, subkeys_tensor, watermark_logits_

    torch.set_num_threads(args.threads)
    ring = KeyRing(MASTER)
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


def detection(args: argparse.Namespace) -> None:
    ring = KeyRing(MASTER)
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


def _reference() -> ModuleType:
    """The pre-change implementation, kept as the reference of the equality tests."""
    spec = importlib.util.spec_from_file_location("kgw_reference", REPO / "tests" / "watermark" / "test_kgw_fast.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _text_and_tokenizer(path: str, workdir: Path) -> tuple[str, str]:
    """An 800-token text of real answers and the tokenizer.json it was cut with."""
    from tokenizers import Tokenizer

    raw = ""
    if DATA.exists():
        with DATA.open(encoding="utf-8") as f:
            for line in f:
                raw += json.loads(line)["response"] + "\n\n"
                if len(raw) > 20_000:
                    break
    else:
        raw = SAMPLE * 60
    if not Path(path).exists():
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([raw], trainer)
        path = str(workdir / "tokenizer.json")
        tok.save(path)
    tok = Tokenizer.from_file(path)
    return tok.decode(tok.encode(raw, add_special_tokens=False).ids[:800]), path


def _best(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return min(samples)


def verification(args: argparse.Namespace) -> None:
    ref = _reference()
    ring = KeyRing(MASTER)
    with tempfile.TemporaryDirectory() as tmp:
        text, tok_path = _text_and_tokenizer(args.tokenizer, Path(tmp))
        ids = detect.tokenizer_encoder(tok_path)([text])
        print(f"\nload average {os.getloadavg()[0]:.2f} at start; text: {len(ids[0])} tokens, "
              f"{len(text.split())} words; best of {args.verify_repeat} (old at 100 000: one run)\n")
        print("| seeding | clients | distinct scored tuples | old (ms) | new (ms) | speed-up | "
              "new incl. key derivation (ms) |")
        print("|---|---|---|---|---|---|---|")
        for seeding in args.seedings:
            params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
            tuples = detect.collect_tuples(ids, params)
            for n in (1, 1000, 100_000):
                names = [f"client-{i}" for i in range(n)]
                keys = ring.candidates(names)
                new = detect.score_tuples(tuples, keys, params)
                t_new = _best(partial(detect.score_tuples, tuples, keys, params), args.verify_repeat)
                t_all = _best(partial(_derive_and_score, ring, names, tuples, params), args.verify_repeat)
                if n < 100_000 or seeding in args.old_at_100k:
                    t0 = time.perf_counter()
                    old = ref._ref_score(tuples, keys, params)
                    t_old = time.perf_counter() - t0
                    if n < 100_000:
                        t_old = min(t_old, _best(partial(ref._ref_score, tuples, keys, params), args.verify_repeat))
                    assert old == new, f"{seeding} {n}: new != old"
                    old_ms, ratio = f"{t_old * 1e3:,.1f}", f"{t_old / t_new:.1f}×"
                else:
                    old_ms, ratio = "—", "—"
                print(f"| {seeding} | {n:,} | {new.scored} | {old_ms} | {t_new * 1e3:,.1f} | {ratio} | "
                      f"{t_all * 1e3:,.1f} |")
        _whole_process(text, tok_path, Path(tmp), args.verify_repeat)


def _derive_and_score(
    ring: KeyRing, names: list[str], tuples: detect.Tuples, params: KgwParams
) -> object:
    return detect.score_tuples(tuples, ring.candidates(names), params)


def _run_cli(cmd: list[str], env: dict[str, str], out: dict[str, Any]) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode not in (0, 1):
        raise RuntimeError(res.stderr)
    out.update(json.loads(res.stdout))


def _whole_process(text: str, tok_path: str, tmp: Path, repeat: int) -> None:
    (tmp / "leak.txt").write_text(text, encoding="utf-8")
    exe = str(Path(sys.executable).with_name("ipgate"))
    env = {**os.environ, "IPGATE_WATERMARK_SECRET": MASTER.decode()}
    print(f"\nWhole process (`ipgate verify leak.txt --scheme kgw --tokenizer T --clients F --json`), "
          f"load average {os.getloadavg()[0]:.2f}:\n")
    print(f"| clients | wall s (best of {repeat}) | verdict |")
    print("|---|---|---|")
    for n in (1, 1000, 100_000):
        (tmp / "clients.txt").write_text("".join(f"client-{i}\n" for i in range(n)), encoding="utf-8")
        cmd = [exe, "verify", str(tmp / "leak.txt"), "--scheme", "kgw", "--tokenizer", tok_path,
               "--clients", str(tmp / "clients.txt"), "--json"]
        out: dict[str, Any] = {}
        dt = _best(partial(_run_cli, cmd, env, out), repeat)
        print(f"| {n:,} | {dt:.2f} | watermarked={out['watermarked']}, p={out['p_value']:.3g} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the sampler part")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--part", choices=("all", "sampler", "detect", "verify"), default="all")
    ap.add_argument("--tokenizer", default=str(REPO / "var" / "kgw" / "tokenizer.json"))
    ap.add_argument("--verify-repeat", type=int, default=3)
    ap.add_argument("--seedings", nargs="+", default=["selfhash", "lefthash", "minhash"])
    ap.add_argument("--old-at-100k", nargs="*", default=["selfhash"],
                    help="seedings for which the old implementation is also run at 100 000 clients (~11 s each)")
    args = ap.parse_args(argv)
    if args.part in ("all", "sampler"):
        sampler(args)
    if args.part in ("all", "detect"):
        detection(args)
    if args.part in ("all", "verify"):
        verification(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
