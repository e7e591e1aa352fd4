"""KGW on a GPU: the batched green-list bias gives bit-identical masks on CUDA and on the CPU (the numpy
detector reproduces the CPU path exactly, see tests/watermark/test_kgw_torch.py), and what it costs per
decoding step next to the sampling work it rides on.

    python bench/kgw_gpu_check.py [--out FILE]      # needs torch with CUDA; exits 2 without a GPU
    python bench/kgw_gpu_check.py --only-v2         # only the Model Runner V2 processor's step

Prints a markdown table; --out also writes it to FILE. The V2 section drives the plugin's Model Runner V2 class
(``watermark.kgw.vllm_plugin_v2``) built against the stand-in of vLLM's base class the tests use
(``tests/support/fake_vllm.py``): token history, logits and input ids on the GPU, as that engine keeps them.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import struct
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch

from tests.support import fake_vllm
from watermark.keys import KeyRing
from watermark.kgw import directives, prf
from watermark.kgw.params import KgwParams
from watermark.kgw.torch_core import (
    FusedBias,
    TableCache,
    green_mask,
    subkeys_tensor,
    watermark_logits_,
    watermark_rows_,
)

SEEDINGS = ("lefthash", "minhash", "selfhash")


def _cuda_time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0)  # µs
    return statistics.median(samples)


_F64, _I64 = struct.Struct("<d"), struct.Struct("<q")


def _pack_rows(rows, prev, sub, delta):  # type: ignore[no-untyped-def]
    """One (R, p + 6) int64 tensor per step: row, context ids, 4 subkeys, δ as float64 bits (the alternative
    measured against the shipped four tensors built from lists)."""
    flat: list[int] = []
    for r, ctx, k, d in zip(rows, prev, sub, delta, strict=True):
        flat += [r, *ctx, *k, _I64.unpack(_F64.pack(d))[0]]
    return torch.tensor(flat, dtype=torch.int64).view(len(rows), -1)


def _apply_packed(logits, packed, fused):  # type: ignore[no-untyped-def]
    w = packed.shape[1]
    idx, prev_t, keys_t = packed[:, 0], packed[:, 1 : w - 5], packed[:, w - 5 : w - 1]
    delta_t = packed[:, w - 1].view(torch.float64).to(torch.float32)
    part = logits.index_select(0, idx)
    logits.index_copy_(0, idx, fused(part, prev_t, keys_t, delta_t))
    return logits


def _rows_packed(logits, rows, prev, sub, delta, fused):  # type: ignore[no-untyped-def]
    return _apply_packed(logits, _pack_rows(rows, prev, sub, delta).to(logits.device), fused)


class _Pinned:
    """A reusable pinned host buffer and the event of its last copy (refilled only once that copy is done)."""

    def __init__(self) -> None:
        self.buf = torch.empty(0, dtype=torch.int64).pin_memory()
        self.event: torch.cuda.Event | None = None


def _rows_pinned(logits, rows, prev, sub, delta, fused, pinned):  # type: ignore[no-untyped-def]
    host = _pack_rows(rows, prev, sub, delta)
    if pinned.event is not None:
        pinned.event.synchronize()
    if pinned.buf.numel() < host.numel():
        pinned.buf = torch.empty(host.numel() * 2, dtype=torch.int64).pin_memory()
    stage = pinned.buf[: host.numel()].view(host.shape)
    stage.copy_(host)
    packed = stage.to(logits.device, non_blocking=True)
    pinned.event = torch.cuda.Event()
    pinned.event.record()
    return _apply_packed(logits, packed, fused)


def _v2_section(dev: torch.device, ring: KeyRing, repeat: int) -> tuple[list[str], bool]:
    """Model Runner V2's step: the processor's ``apply`` for ``b`` watermarked rows in a batch of ``b + 4``
    (the others unwatermarked), compiled and eager, against ``watermark_rows_`` called with the same contexts
    as host lists (the V1 path); every result must be bit-identical."""
    lines = ["", "| Model Runner V2 `apply` | seeding | rows / batch | V | compiled µs/step | eager µs/step "
             "| V1 path (`watermark_rows_`, host lists), compiled µs/step | identical |",
             "|---|---|---|---|---|---|---|---|"]
    os.environ["IPGATE_WATERMARK_SECRET"] = "hex:" + ring.master.hex()
    v, max_len, seq = 128_256, 4096, 1000
    ok = True
    for seeding in ("lefthash", "selfhash"):
        params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
        os.environ["IPGATE_KGW_PARAMS"] = directives.spec(params)
        with pytest.MonkeyPatch.context() as mp, fake_vllm.installed(mp) as plugin:
            procs: dict[bool, Any] = {}
            for compiled in (True, False):
                mp.setenv("IPGATE_KGW_COMPILE", "1" if compiled else "0")
                history = torch.randint(0, v, (128, max_len), dtype=torch.int32, device=dev)
                states = types.SimpleNamespace(all_token_ids=types.SimpleNamespace(gpu=history), max_num_reqs=128,
                                               vocab_size=v)
                procs[compiled] = plugin.KgwLogitsProcessorV2(None, states)
            fused = FusedBias(params, v)
            cache = TableCache(params, v, dev, 64)
            for b in (1, 8, 64):
                batch = b + 4
                slots = list(range(batch))
                for proc in procs.values():
                    proc.req_states.all_token_ids.gpu.copy_(procs[True].req_states.all_token_ids.gpu)
                    for s in slots:
                        xargs = dict(directives.vllm_xargs(ring.key(f"c{s}"), params)) if s < b else None
                        proc.add_request(s, types.SimpleNamespace(extra_args=xargs))
                history = procs[True].req_states.all_token_ids.gpu
                input_ids = torch.randint(0, v, (batch,), dtype=torch.int32, device=dev)
                ctx = types.SimpleNamespace(idx_mapping_np=np.array(slots, dtype=np.int32),
                                            seq_lens_upper_bound_np=np.full(batch, seq, dtype=np.int32),
                                            input_ids=input_ids)
                logits = torch.randn(batch, v, device=dev, dtype=torch.bfloat16)
                h = params.prev_tokens
                prev = history[:b, seq - h:seq].to(torch.int64)
                prev[:, -1] = input_ids[:b].to(torch.int64)
                prev_lists = prev.cpu().tolist()
                sub = [procs[True].slots[s].subkeys for s in range(b)]
                delta = [params.delta] * b
                a = procs[True].apply(logits.clone(), ctx)
                e = procs[False].apply(logits.clone(), ctx)
                r = watermark_rows_(logits.clone(), list(range(b)), prev_lists, sub, delta, params, cache, fused)
                same = bool(torch.equal(a, e)) and bool(torch.equal(a, r)) and not bool(torch.equal(a, logits))
                ok = ok and same
                tc = _cuda_time(functools.partial(procs[True].apply, logits, ctx), repeat)
                te = _cuda_time(functools.partial(procs[False].apply, logits, ctx), repeat)
                t1 = _cuda_time(functools.partial(watermark_rows_, logits, list(range(b)), prev_lists, sub, delta,
                                                  params, cache, fused), repeat)
                lines.append(f"| | {seeding} | {b} / {batch} | {v} | {tc:.0f} | {te:.0f} | {t1:.0f} | {same} |")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--compiled-only", action="store_true", help="skip the equality check and eager timings")
    ap.add_argument("--only-v2", action="store_true", help="only the Model Runner V2 section")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    ring = KeyRing(b"kgw-gpu-check-master-secret-0123456789")
    lines = [f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", ""]
    if args.only_v2:
        v2_lines, ok = _v2_section(dev, ring, args.repeat)
        print("\n".join(lines + v2_lines))
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write("\n".join(lines + v2_lines) + "\n")
        return 0 if ok else 1
    lines += ["| check | seeding | B | V | result |", "|---|---|---|---|---|"]
    gen = torch.Generator().manual_seed(0)
    for seeding in () if args.compiled_only else SEEDINGS:
        params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
        for b, v in ((1, 50_257), (8, 128_256), (64, 50_257)):
            sub = [prf.subkeys(ring.key(f"client-{i % 5}").key) for i in range(b)]
            prev = torch.randint(0, v, (b, params.prev_tokens), generator=gen)
            cpu = green_mask(prev, subkeys_tensor(sub), v, params)
            gpu = green_mask(prev.to(dev), subkeys_tensor(sub, dev), v, params).cpu()
            same = bool(torch.equal(cpu, gpu))
            share = float(gpu.float().mean())
            lines.append(f"| CUDA mask == CPU mask | {seeding} | {b} | {v} | {'identical' if same else 'DIFFERENT'}"
                         f", green share {share:.4f} (γ = {params.gamma}) |")
            if not same:
                print("\n".join(lines))
                return 1
    lines += ["", "| seeding | dtype | B | V | bias µs/step | softmax+multinomial µs/step | ratio |",
              "|---|---|---|---|---|---|---|"]
    for seeding in () if args.compiled_only else ("lefthash", "selfhash"):
        params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
        for dtype in (torch.float32, torch.bfloat16):
            for b in (1, 8, 64, 256):
                v = 128_256
                sub = [prf.subkeys(ring.key(f"c{i}").key) for i in range(b)]
                keys = subkeys_tensor(sub, dev)
                cache = TableCache(params, v, dev, size=max(64, b))
                prev = torch.randint(0, v, (b, params.prev_tokens), device=dev)
                logits = torch.randn(b, v, device=dev, dtype=dtype)

                tables = cache.tables_for(sub)
                bias = functools.partial(watermark_logits_, logits, prev, keys, params, None, tables)
                probs = functools.partial(torch.softmax, logits.float(), dim=-1)
                tb = _cuda_time(bias, args.repeat)
                ts = _cuda_time(lambda p=probs: torch.multinomial(p(), 1), args.repeat)
                lines.append(f"| {seeding} | {str(dtype).removeprefix('torch.')} | {b} | {v} | {tb:.0f} | {ts:.0f} "
                             f"| {tb / ts:.2f} |")
    # The eager mask is a chain of small elementwise int64 kernels: launch-bound at small B. FusedBias
    # (torch.compile) fuses it into one kernel; this times the vLLM plugin's path, watermark_rows_, both ways,
    # and, side by side, two alternatives not shipped: the per-row inputs packed into one tensor (one
    # host-to-device copy instead of four), and that tensor staged in a pinned buffer and copied without blocking.
    lines += ["", "| vLLM path (watermark_rows_) | dtype | rows / batch | V | fused µs/step | fused, inputs packed in "
              "one copy | fused, packed, pinned non-blocking copy | eager µs/step | identical |",
              "|---|---|---|---|---|---|---|---|---|"]
    for seeding in ("lefthash", "selfhash"):
        params = KgwParams(seeding=seeding)  # type: ignore[arg-type]
        v = 128_256
        fused = FusedBias(params, v)
        for b in (1, 8, 64):
            batch = b + 4  # the persistent batch also holds requests that are not watermarked
            rows = list(range(0, batch, 1))[:b]
            sub = [prf.subkeys(ring.key(f"c{i}").key) for i in range(b)]
            prev = torch.randint(0, v, (b, params.prev_tokens)).tolist()
            delta = [params.delta] * b
            cache = TableCache(params, v, dev, size=max(64, b))
            logits = torch.randn(batch, v, device=dev, dtype=torch.bfloat16)
            a, c, d, e = logits.clone(), logits.clone(), logits.clone(), logits.clone()
            pinned = _Pinned()
            watermark_rows_(a, rows, prev, sub, delta, params, cache, fused)
            watermark_rows_(c, rows, prev, sub, delta, params, cache)
            _rows_packed(d, rows, prev, sub, delta, fused)
            _rows_pinned(e, rows, prev, sub, delta, fused, pinned)
            same = bool(torch.equal(a, c)) and bool(torch.equal(a, d)) and bool(torch.equal(a, e))
            run_f = functools.partial(watermark_rows_, logits, rows, prev, sub, delta, params, cache, fused)
            run_e = functools.partial(watermark_rows_, logits, rows, prev, sub, delta, params, cache)
            run_b = functools.partial(_rows_packed, logits, rows, prev, sub, delta, fused)
            run_p = functools.partial(_rows_pinned, logits, rows, prev, sub, delta, fused, pinned)
            tf, tb = _cuda_time(run_f, args.repeat), _cuda_time(run_b, args.repeat)
            tp, te = _cuda_time(run_p, args.repeat), _cuda_time(run_e, args.repeat)
            tf2 = _cuda_time(run_f, args.repeat)  # again after the others: drift check
            lines.append(f"| {seeding} | bfloat16 | {b} / {batch} | {v} | {tf:.0f} (again: {tf2:.0f}) | {tb:.0f} "
                         f"| {tp:.0f} | {te:.0f} | {same} |")
            if not same:
                print("\n".join(lines))
                return 1
    v2_lines, ok = _v2_section(dev, ring, args.repeat)
    lines += v2_lines
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
