"""Run ipgate's KGW logits processors against an *installed* vLLM's own classes and loaders (no GPU, no model).

    python scripts/vllm_conformance.py [--steps 64] [--json]

Needs an environment with vLLM and torch (vLLM's CUDA wheel imports on a CPU-only host for what this uses)
and ipgate importable. It does not start an engine: it checks what can be checked with vLLM's real code and
without a model —

1. loading: vLLM's V1 loader (``--logits-processors`` FQCN) accepts ``KgwLogitsProcessor``, Model Runner V2's
   loader accepts ``KgwLogitsProcessorV2`` and refuses the V1 class (why both exist); no installed package
   declares a ``vllm.logits_processors`` entry point whose class V2 would refuse (that stops ``vllm serve``);
2. admission: vLLM's own params validators (V1 ``validate_logits_processors_parameters``, V2
   ``build_custom_logits_processors_params_validator``) pass an ipgate directive, and turn a forged directive
   and the gateway's liveness probe into ``VLLMValidationError`` (vLLM's HTTP 400) carrying the plugin's mark;
3. the engine loop, simulated with vLLM's own data structures — V1: real ``SamplingParams``,
   ``BatchUpdateBuilder`` and ``MoveDirectionality`` (requests added, removed, condensed and swapped as
   ``InputBatch`` does); V2: real ``LogitsProcRequestState`` / ``LogitsContext`` over a ``StagedWriteTensor``
   token history, slots recycled — generating from random logits: every step, both processors must give
   bit-identical logits for the same requests, unwatermarked requests must be untouched, and at the end each
   watermarked request's tokens must verify (exact binomial test, Bonferroni over 1 000 clients) to its own
   client and the unwatermarked ones to none.

Exit 0 when every check passes, 1 otherwise. What it cannot show: that a real engine calls these methods with
the data this simulation gives them (a ``vllm serve`` run with a model on a GPU is still needed for that).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import types
from importlib.metadata import entry_points
from typing import Any

FQ_V1 = "watermark.kgw.vllm_plugin:KgwLogitsProcessor"
FQ_V2 = "watermark.kgw.vllm_plugin:KgwLogitsProcessorV2"
MASTER_HEX = "6b67772d636f6e666f726d616e63652d6d61737465722d7365637265742d3031"
VOCAB = 4096


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=64, help="generated tokens per request")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ["IPGATE_WATERMARK_SECRET"] = "hex:" + MASTER_HEX
    os.environ.pop("IPGATE_KGW_PARAMS", None)
    os.environ["IPGATE_KGW_COMPILE"] = "0"
    import vllm

    results: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        results.append((name, bool(ok), detail))

    _loading(check)
    _admission(check)
    _engine_loop(check, args.steps)
    failed = [r for r in results if not r[1]]
    if args.json:
        print(json.dumps({"vllm": vllm.__version__, "checks": [
            {"check": n, "ok": ok, "detail": d} for n, ok, d in results], "failed": len(failed)}, indent=1))
    else:
        print(f"vLLM {vllm.__version__}")
        for n, ok, d in results:
            print(f"  {'ok  ' if ok else 'FAIL'} {n}{': ' + d if d else ''}")
        print(f"{len(results) - len(failed)} of {len(results)} checks passed")
    return 1 if failed else 0


def _loading(check: Any) -> None:
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1Base
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2Base
    from vllm.v1.worker.gpu.sample.logits_processor.loader import (
        _load_v2_logitsprocs_by_fqcns,
        _load_v2_logitsprocs_plugins,
    )

    (v1,) = _load_logitsprocs_by_fqcns([FQ_V1])
    check("V1 loader accepts KgwLogitsProcessor", issubclass(v1, V1Base), v1.__qualname__)
    (v2,) = _load_v2_logitsprocs_by_fqcns([FQ_V2])
    check("V2 loader accepts KgwLogitsProcessorV2", issubclass(v2, V2Base), v2.__qualname__)
    try:
        _load_v2_logitsprocs_by_fqcns([FQ_V1])
        check("V2 loader refuses the V1 class", False, "accepted")
    except ValueError as e:
        check("V2 loader refuses the V1 class", True, str(e)[:80])
    declared = [ep.value for ep in entry_points(group="vllm.logits_processors")]
    try:
        loaded = _load_v2_logitsprocs_plugins()
        check("installed entry points load under Model Runner V2", True, f"{declared or 'none declared'}")
    except (ValueError, RuntimeError) as e:
        check("installed entry points load under Model Runner V2", False, f"{declared}: {e}")
        loaded = []
    del loaded


def _admission(check: Any) -> None:
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.sample.logits_processor import validate_logits_processors_parameters
    from vllm.v1.worker.gpu.sample.logits_processor.loader import build_custom_logits_processors_params_validator

    from watermark.keys import KeyRing
    from watermark.kgw import directives
    from watermark.kgw.params import KgwParams

    ring = KeyRing(bytes.fromhex(MASTER_HEX))
    good = directives.vllm_xargs(ring.key("alice"), KgwParams())
    forged = {**good, directives.F_CLIENT: "mallory"}
    probe = directives.probe_xargs(bytes.fromhex(MASTER_HEX))
    v2_validate = build_custom_logits_processors_params_validator([FQ_V2])
    for runner, validate in (("V1", lambda sp: validate_logits_processors_parameters((FQ_V1,), sp)),
                             ("V2", v2_validate)):
        validate(SamplingParams(extra_args=dict(good)))
        validate(SamplingParams())
        check(f"{runner} admission passes a directive and a plain request", True)
        for what, xargs in (("a forged directive", forged), ("the gateway's liveness probe", probe)):
            try:
                validate(SamplingParams(extra_args=dict(xargs)))
                check(f"{runner} admission refuses {what}", False, "accepted")
            except VLLMValidationError as e:
                check(f"{runner} admission refuses {what}", directives.REFUSAL_MARK in str(e), str(e)[:70])
        try:
            validate(SamplingParams(extra_args=dict(probe)))
        except VLLMValidationError as e:
            report = directives.read_probe_refusal(str(e))
            check(f"{runner} probe report readable by the gateway", report is not None and report.secret == "match",
                  repr(report))


def _engine_loop(check: Any, steps: int) -> None:
    import numpy as np
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdateBuilder, MoveDirectionality
    from vllm.v1.worker.gpu.buffer_utils import StagedWriteTensor
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState

    from watermark.keys import KeyRing
    from watermark.kgw import directives, vllm_plugin
    from watermark.kgw.detect import KgwScheme
    from watermark.kgw.params import KgwParams

    params = KgwParams()
    ring = KeyRing(bytes.fromhex(MASTER_HEX))
    v1 = vllm_plugin.KgwLogitsProcessor(None, torch.device("cpu"), False)
    max_reqs, max_len = 8, 512
    try:
        history: Any = StagedWriteTensor((max_reqs, max_len), torch.int32, torch.device("cpu"))
        history_kind = "StagedWriteTensor"
    except RuntimeError:  # its staging buffers need pinned (CUDA) memory: the same device tensor, held plainly
        history = types.SimpleNamespace(gpu=torch.zeros((max_reqs, max_len), dtype=torch.int32))
        history_kind = "a plain tensor in StagedWriteTensor's .gpu place (no CUDA on this host)"
    states = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=max_reqs, vocab_size=VOCAB,
                                    all_token_ids=history, prompt_len=None, prefill_len=None, total_len=None)
    v2 = vllm_plugin.KgwLogitsProcessorV2(None, states)
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    # requests: client (None: no directive) and prompt; they come and go while others run
    plan = [("alice", 40), (None, 12), ("bob", 7), ("carol", 25), (None, 30), ("dave", 9)]
    # The V1 persistent batch as vLLM's InputBatch keeps it (gpu_input_batch.py): finished requests leave holes
    # (``removed_append``); a new request takes the lowest hole (``pop_removed``) or the end; ``condense`` fills
    # the remaining holes from the end (one-way moves); the scheduler may reorder (swaps). V2: a free slot each.
    batch: list[dict[str, Any] | None] = []
    free_slots = list(range(max_reqs))
    builder = BatchUpdateBuilder()
    finished: list[dict[str, Any]] = []
    pending = list(plan)
    identical = untouched = True
    late: list[tuple[int, int, int]] = []
    step = 0
    while pending or any(r is not None for r in batch):
        for i, r in enumerate(batch):
            if r is not None and len(r["out"]) >= steps:
                finished.append(r)
                free_slots.append(r["slot"])
                batch[i] = None
                builder.removed_append(i)
        while pending and sum(r is not None for r in batch) < 4 and rng.random() < 0.7:
            client, prompt_len = pending.pop(0)
            xargs = dict(directives.vllm_xargs(ring.key(client), params)) if client else None
            sp = SamplingParams(extra_args=xargs)
            prompt = [rng.randrange(VOCAB) for _ in range(prompt_len)]
            req = {"client": client, "prompt": prompt, "out": [], "slot": free_slots.pop(0)}
            history.gpu[req["slot"], :prompt_len] = torch.tensor(prompt, dtype=torch.int32)
            v2.add_request(req["slot"], sp)
            index = builder.pop_removed()
            if index is None:
                index = len(batch)
                batch.append(req)
            else:
                batch[index] = req
            builder.added.append((index, sp, prompt, req["out"]))
        last = len(batch) - 1
        while builder.has_removed():  # condense
            while last >= 0 and batch[last] is None:
                last -= 1
            empty = builder.peek_removed()
            assert empty is not None
            if empty >= last:
                break
            builder.pop_removed()
            batch[empty], batch[last] = batch[last], None
            builder.moved.append((last, empty, MoveDirectionality.UNIDIRECTIONAL))
            last -= 1
        while batch and batch[-1] is None:
            batch.pop()
        live: list[dict[str, Any]] = [r for r in batch if r is not None]
        if len(live) != len(batch):
            raise AssertionError("condense left a hole inside the batch")
        if not live:
            continue
        if rng.random() < 0.3 and len(live) >= 2:  # reorder: a swap
            a, b = rng.sample(range(len(live)), 2)
            live[a], live[b] = live[b], live[a]
            batch[a], batch[b] = batch[b], batch[a]
            builder.moved.append((a, b, MoveDirectionality.SWAP))
        v1.update_state(builder.get_and_reset(len(live)))
        logits = torch.randn((len(live), VOCAB), generator=gen) * 3.0
        out1 = v1.apply(logits.clone())
        seq_lens = [len(r["prompt"]) + len(r["out"]) for r in live]
        input_ids = torch.tensor([(r["prompt"] + r["out"])[-1] for r in live], dtype=torch.int32)
        slots = [r["slot"] for r in live]
        ctx = LogitsContext(expanded_idx_mapping=torch.tensor(slots), idx_mapping=torch.tensor(slots),
                            idx_mapping_np=np.array(slots, dtype=np.int32),
                            expanded_local_pos=torch.zeros(len(live), dtype=torch.int32), input_ids=input_ids,
                            pos=torch.tensor(seq_lens) - 1, seq_lens_upper_bound_np=np.array(seq_lens))
        out2 = v2.apply(logits.clone(), ctx)
        for slot, position, tok in late:  # the previous step's tokens reach the device history only now
            history.gpu[slot, position] = tok
        late.clear()
        identical &= bool(torch.equal(out1, out2))
        for i, r in enumerate(live):
            if r["client"] is None:
                untouched &= bool(torch.equal(out1[i], logits[i]))
        probs = torch.softmax(out1, dim=1)
        for i, r in enumerate(live):
            tok = int(torch.multinomial(probs[i], 1, generator=gen))
            # V1: the engine appends to the list the BatchUpdate handed over. V2: the token is written into the
            # device history one step late (as async scheduling may leave it): the processor must read the
            # newest token from ctx.input_ids, which the check on identical logits exercises
            late.append((r["slot"], len(r["prompt"]) + len(r["out"]), tok))
            r["out"].append(tok)
        step += 1
    check("V1 and V2 processors give bit-identical logits every step", identical,
          f"{step} steps; V2 history: {history_kind}")
    check("requests without a directive are left untouched", untouched)
    scheme = KgwScheme(lambda texts: [[] for _ in texts], params)  # type: ignore[arg-type]  # ids scored directly
    candidates = [ring.key(f"client-{i}") for i in range(996)] + [ring.key(c) for c in ("alice", "bob", "carol",
                                                                                       "dave")]
    for r in finished:
        score = scheme.score_ids([r["out"]], candidates, prompts=[r["prompt"]])
        if r["client"] is None:
            check("an unwatermarked request verifies to nobody", not score.watermarked(1e-6),
                  f"p = {score.p_value:.2g}")
        else:
            ok = score.watermarked(1e-6) and score.client_id == r["client"]
            check(f"{r['client']}'s {steps} tokens verify to {r['client']} among 1 000", ok,
                  f"p = {score.p_value:.2g}, {score.hits}/{score.scored} green")


if __name__ == "__main__":
    sys.exit(main())
