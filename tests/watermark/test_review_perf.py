"""Adversarial review of the KGW verification speed-up (c8cab87): the optimised counting against the
straightforward per-key reference on generated inputs (extreme gammas, tiny vocabularies, both threads and
many chunks, a key that fails), and the CLI's collector switch leaving the caller's gc state alone."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from watermark.kgw import counting, detect, prf
from watermark.kgw.params import KgwParams

from .test_kgw_verify_fast import _plain_counts


@st.composite
def _cases(draw: st.DrawFn) -> tuple[KgwParams, list[list[int]], list[bytes], int]:
    seeding = draw(st.sampled_from(["lefthash", "minhash", "selfhash"]))
    width = draw(st.integers(2 if seeding == "selfhash" else 1, 5))
    gamma = draw(st.sampled_from([1e-9, 0.01, 0.25, 0.5, 0.99, 1 - 1e-9]))
    params = KgwParams(gamma=gamma, context_width=width, seeding=seeding)  # type: ignore[arg-type]
    vocab = draw(st.sampled_from([1, 2, 3, 3, 7, 7, 50, 2**31]))
    seqs = draw(st.lists(st.lists(st.integers(0, vocab - 1), max_size=120), min_size=1, max_size=3))
    keys = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=9))
    lanes = draw(st.sampled_from([64, 512, 1 << 17]))
    return params, seqs, keys, lanes


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_cases())
def test_green_counts_equal_the_reference(case: tuple[KgwParams, list[list[int]], list[bytes], int],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    params, seqs, keys, lanes = case
    tuples = detect.collect_tuples(seqs, params)
    if tuples.n == 0:
        return
    monkeypatch.setattr(counting, "_CHUNK_LANES", lanes)  # many chunks: both threads share the work queue
    scored, hits = detect.green_counts(tuples, prf.subkeys_array(keys), params, threads=2)
    assert list(zip(scored.tolist(), hits.tolist(), strict=True)) == [_plain_counts(tuples, k, params) for k in keys]


def test_a_failing_chunk_raises_instead_of_leaving_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    params = KgwParams(gamma=0.25, context_width=2, seeding="minhash")
    tuples = detect.collect_tuples([[i % 11 for i in range(200)]], params)
    sk = prf.subkeys_array([bytes([i]) * 32 for i in range(64)])
    monkeypatch.setattr(counting, "_CHUNK_LANES", 256)
    calls: list[int] = []

    def boom(*a: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("chunk failed")
        real(*a)

    real = counting._count_chunk
    monkeypatch.setattr(counting, "_count_chunk", boom)
    with pytest.raises(RuntimeError, match="chunk failed"):
        detect.green_counts(tuples, sk, params, threads=2)


def test_verify_cli_leaves_a_disabled_collector_disabled(tmp_path: Path) -> None:
    """The CLI switches the cyclic collector off around key derivation; a caller that had it off (an
    embedding program, a benchmark) must not find it switched on afterwards."""
    secret, text = tmp_path / "secret", tmp_path / "text.txt"
    secret.write_text("hex:" + "ab" * 32)
    text.write_text("Some ordinary text that carries no watermark at all, written by a person.\n")
    gc.disable()
    try:
        rc = main(["verify", "--client", "alice", "--secret-file", str(secret), "--scheme", "lexical", str(text)])
        assert rc in (0, 1)
        assert not gc.isenabled()
    finally:
        gc.enable()
    gc.enable()
    main(["verify", "--client", "alice", "--secret-file", str(secret), "--scheme", "lexical", str(text)])
    assert gc.isenabled()
