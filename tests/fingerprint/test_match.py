from __future__ import annotations

import math

import pytest

from fingerprint import ProbeAnswer, Signature, build_signature, compare
from fingerprint.match import jaccard, prefix_ratio, text_similarity, total_variation
from fingerprint.signature import answer_from_response, shingles


def sig(texts: dict[str, str], lp: dict[str, dict[str, float]] | None = None) -> Signature:
    lp = lp or {}
    return build_signature("m", [ProbeAnswer(k, v, lp.get(k, {})) for k, v in texts.items()])


BASE = {
    "a": "I am a large language model trained by Example Labs.",
    "b": "My knowledge cutoff is June 2024.",
    "c": "I can't help with that request, but I can talk about safety.",
    "d": "391",
    "e": "The old lighthouse keeper watched the storm roll in over the bay.",
}


@pytest.mark.parametrize(
    ("observed", "verdict"),
    [
        (BASE, "match"),
        ({k: v.upper() + "  " for k, v in BASE.items()}, "match"),  # case and whitespace are not identity
        ({**BASE, "e": "The old lighthouse keeper slept."}, "match"),  # one divergent probe: median holds
        ({k: f"Completely different answer number {i} from another model." for i, k in enumerate(BASE)}, "mismatch"),
        ({"a": BASE["a"], "b": BASE["b"]}, "inconclusive"),  # too few probes answered
    ],
)
def test_verdicts(observed: dict[str, str], verdict: str) -> None:
    assert compare(sig(BASE), sig(observed)).verdict == verdict


def test_logprobs_catch_a_requantised_model_with_identical_text() -> None:
    genuine = {k: {"x": math.log(0.7), "y": math.log(0.2), "z": math.log(0.1)} for k in BASE}
    shifted = {k: {"x": math.log(0.05), "y": math.log(0.05), "w": math.log(0.9)} for k in BASE}
    same = compare(sig(BASE, genuine), sig(BASE, genuine))
    moved = compare(sig(BASE, genuine), sig(BASE, shifted))
    assert same.verdict == "match" and same.similarity == pytest.approx(1.0)
    assert moved.similarity < same.similarity - 0.4
    assert moved.verdict == "mismatch"
    assert "first-token distributions moved" in moved.reasons[0]
    slightly = {k: {"x": math.log(0.65), "y": math.log(0.25), "z": math.log(0.1)} for k in BASE}
    assert compare(sig(BASE, genuine), sig(BASE, slightly)).verdict == "match"


def test_late_divergence_keeps_the_prefix() -> None:
    ref = "one two three four five six seven eight nine ten eleven twelve"
    late = "one two three four five six seven eight nine something else entirely"
    assert prefix_ratio(ref, late) == pytest.approx(0.75)
    assert text_similarity(ref, late) >= 0.75 > jaccard(shingles(ref), shingles(late))
    assert prefix_ratio("", "") == 1.0


def test_distances() -> None:
    assert jaccard(frozenset(), frozenset()) == 1.0
    assert jaccard(frozenset({"a"}), frozenset({"b"})) == 0.0
    p = {"a": math.log(0.5), "b": math.log(0.5)}
    assert total_variation(p, p) == pytest.approx(0.0)
    assert total_variation(p, {"c": 0.0}) == pytest.approx(1.0)
    assert shingles("Hi there") == frozenset({"hi", "there"})


def test_signature_round_trip_and_bad_file() -> None:
    s = sig(BASE, {"a": {"x": -0.1}})
    assert Signature.loads(s.dumps()) == s
    with pytest.raises(ValueError, match="not a fingerprint signature"):
        Signature.loads("[1, 2]")


def test_answer_from_response_reads_top_logprobs() -> None:
    body = {"choices": [{"message": {"content": "391"}, "logprobs": {"content": [
        {"token": "391", "logprob": -0.01, "top_logprobs": [{"token": "391", "logprob": -0.01},
                                                            {"token": "39", "logprob": -4.6}]}]}}]}
    ans = answer_from_response("arith", body)
    assert ans.text == "391" and ans.first_token_logprobs == {"391": -0.01, "39": -4.6}
    with pytest.raises(ValueError, match="no choices"):
        answer_from_response("arith", {"choices": []})


def test_thresholds_validated() -> None:
    with pytest.raises(ValueError):
        compare(sig(BASE), sig(BASE), match_threshold=0.3, mismatch_threshold=0.6)
