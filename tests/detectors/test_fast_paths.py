"""The hot-path shortcuts change no result: deferred serialisation, partial re-serialisation, memoised hashing.

Each test runs the optimised path and a path without the shortcut on the same inputs and requires
*identical* output (state bytes, verdicts, features), not approximately equal.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from detectors import sketch, tokens
from detectors import state as envelope
from detectors.base import COUNT_MAX, Counters
from detectors.combiner import CombinerParams
from detectors.engine import Engine
from detectors.features import extract
from detectors.state_codec import Pending
from detectors.tokens import _crc
from detectors.types import ResponseFeatures
from tests.detectors.conftest import CHAT, chat, feats

T0 = 1_767_258_000.0


class FullDumpEngine(Engine):
    """The engine without the partial re-serialisation: every step dumps every detector it holds."""

    def _close(self, env: envelope.Envelope, states: Mapping[str, Any], dirty: frozenset[str] | None = None,
               parent: bytes | None = None) -> bytes:
        return super()._close(env, states, None, parent)


def _stream(n: int, seed: int) -> list[tuple[dict[str, Any], float]]:
    """Template fills, repeats, logit probes and plain questions, so every detector's state moves."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        kind = r.random()
        if kind < 0.4:
            body = chat(f"Write a step-by-step guide to {r.choice(['baking', 'sailing', 'coding'])} for "
                        f"grade {r.randint(1, 12)} students, then list {r.randint(3, 9)} quiz questions.")
        elif kind < 0.55:
            body = chat("Say hi", logprobs=True, top_logprobs=5, max_tokens=1,
                        logit_bias={str(1000 + 20 * i + j): 100 for j in range(20)})
        else:
            body = chat(f"What is {r.randint(1, 99)} times {r.randint(1, 99)}, and why does {r.random():.3f} "
                        f"matter?", temperature=r.choice([0.2, 0.7, 1.0]), max_tokens=r.choice([16, 64, 256]))
        out.append((body, T0 + 5 * i + r.random()))
    return out


def _drive(engine: Engine, pending: bool, n: int = 120, seed: int = 3, cold: bool = False
           ) -> list[tuple[Any, bytes]]:
    """The gateway's three steps per request; returns (verdict, stored bytes) per request. ``cold``: every
    request starts from bytes this engine has not cached (as when another replica served the client last)."""
    state: bytes | None = None
    out = []
    for i, (body, ts) in enumerate(_stream(n, seed)):
        f = feats(body, ts)
        if cold:
            engine._decoded.clear()
        resp = ResponseFeatures(prompt_tokens=20, completion_tokens=16, finish_reasons=("length",))
        if pending:
            verdict, p = engine.observe_pending(state, f, ts)
            st = engine.observe_response(p, resp, ts)
        else:
            obs = engine.observe(state, f, ts)
            verdict, st = obs.verdict, engine.observe_response(obs.state, resp, ts)
        if i % 3 == 0:
            st = engine.apply_links(st, {"peer-a": 2, "peer-b": 5}, ts, peer_scores={"peer-b": 0.4}).state
        out.append((verdict, st))
        state = st
    return out


def test_partial_reserialisation_writes_the_same_bytes(params: CombinerParams) -> None:
    fast, full = _drive(Engine.from_params(params), False), _drive(FullDumpEngine.from_params(params), False)
    assert fast == full  # verdicts (exact floats) and every stored state byte


def test_deferred_serialisation_is_identical_to_observe(params: CombinerParams) -> None:
    deferred, eager = _drive(Engine.from_params(params), True), _drive(Engine.from_params(params), False)
    assert deferred == eager


def test_deferred_serialisation_is_identical_on_the_cold_path(params: CombinerParams) -> None:
    """Each request's stored bytes decoded afresh (the state load paths run every time)."""
    a, b = Engine.from_params(params), FullDumpEngine.from_params(params)
    assert _drive(a, True, cold=True) == _drive(b, False, cold=True)
    assert _drive(Engine.from_params(params), True, cold=True) != _drive(a, True)  # the cold path did run


def test_a_pending_state_is_used_once(engine: Engine) -> None:
    f = feats(chat("hello there, how are you?"), T0)
    _, p = engine.observe_pending(None, f, T0)
    assert isinstance(p, Pending)
    data = engine.encode(p)
    assert engine.observe(None, f, T0).state == data
    with pytest.raises(ValueError, match="already used"):
        engine.observe_response(p, ResponseFeatures(), T0)
    with pytest.raises(ValueError, match="already used"):
        engine.encode(p)


def test_memoised_token_hashes_equal_crc32_and_survive_a_full_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    body = chat("Explain the water cycle to a ten year old, with 3 short examples at the end, please!")
    before = extract(CHAT, body, 0)
    monkeypatch.setattr(tokens, "TOKEN_CACHE", 4)  # clears on nearly every miss
    tokens._CODES.clear()
    after = extract(CHAT, body, 0)
    assert after == before and after.embedding == before.embedding
    assert len(tokens._CODES) <= 4
    for tok in ("water", "ᶜ", "0", "\ud800x", "é", "the"):
        assert tokens._CODES[tok] & 0xFFFFFFFF == _crc(tok)
    is_content = {tok: tokens._CODES[tok] >> 32 for tok in ("water", "the", "0", "ab")}
    assert is_content == {"water": 1, "the": 0, "0": 0, "ab": 0}
    hashes, content = tokens._token_hashes(["water", "the", "cycle", "0"])
    assert hashes.tolist() == [_crc(t) for t in ("water", "the", "cycle", "0")]
    assert content.tolist() == [_crc("water"), _crc("cycle")]


@pytest.mark.parametrize("n", [0, 1, 5, 64, 65, 100, 256])
def test_bottom_k_sample_is_the_k_smallest_distinct_hashes(n: int) -> None:
    r = random.Random(n)
    hashes = [r.getrandbits(32) for _ in range(n)] + ([7, 7, 3, 3] if n else [])  # duplicates included
    assert sketch._bottom(np.array(hashes, dtype=np.uint64)) == tuple(sorted(set(hashes))[: sketch.BOTTOM_K])


@pytest.mark.parametrize("size", [4, 99])  # the short (plain sum) and the long (ufunc reduce) check
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_counter_load_rejects_non_finite_values(bad: float, size: int) -> None:
    c = Counters(size)
    c.c[2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        Counters(size).load(c.dump())
    c.c[:] = np.nextafter(np.float32(COUNT_MAX), np.float32(0.0))  # the largest count in the declared range
    assert Counters(size).load(c.dump()) == c.nbytes()
    for out_of_range in (COUNT_MAX, 3.4e38, -3.4e38, -1.0, -0.0):  # finite, but no count the gateway writes
        c.c[1] = out_of_range
        with pytest.raises(ValueError, match="declared range"):
            Counters(size).load(c.dump())
