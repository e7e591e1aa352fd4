"""Review findings on private rotating probes (2026-11-27): each test failed before its fix.

- A reference answer that was empty at recording ("skipped in checks", says ``record``) was still drawn into
  the round's sample: with ``probes_per_check == min_probes`` (allowed) one such draw made the round
  inconclusive, so a swapped backend was rarely quarantined (both the round and its confirmation must
  mismatch).
- A backend error that echoes the request as JSON (``\\uXXXX`` escapes, ``\\n``) quoted a private prompt in the
  check's reasons, the log and the admin API.
"""

from __future__ import annotations

import json
import random

from fingerprint import Probe, ProbeAnswer, Signature, compare
from fingerprint.probeset import quotes_a_prompt, reference_probes, restrict, sample

PRIVATE = tuple(Probe(f"p{i}", f"Private question number {i}: describe a {w} in two lines.", 24)
                for i, w in enumerate(["lighthouse", "glacier", "market", "violin", "orchard", "comet", "ferry",
                                       "quarry", "kiln", "atlas"]))


def _reference(empty: set[str]) -> Signature:
    return Signature("m", tuple(ProbeAnswer(p.id, "" if p.id in empty else f"genuine answer to {p.id}",
                                            prompt=p.prompt, max_tokens=p.max_tokens) for p in PRIVATE))


def test_probes_with_an_empty_reference_answer_are_not_drawn() -> None:
    ref = _reference({"p1", "p4", "p7"})
    usable = reference_probes(ref)
    assert [p.id for p in usable] == ["p0", "p2", "p3", "p5", "p6", "p8", "p9"]


def test_every_round_of_a_swapped_backend_is_conclusive_when_k_equals_min_probes() -> None:
    ref = _reference({"p1", "p4", "p7"})
    swapped = Signature("m", tuple(ProbeAnswer(p.id, f"something else entirely {i}", prompt=p.prompt,
                                               max_tokens=p.max_tokens) for i, p in enumerate(PRIVATE)))
    rng = random.Random(7)
    verdicts = set()
    for _ in range(50):
        chosen = sample(reference_probes(ref), 4, rng)
        result = compare(restrict(ref, (p.id for p in chosen)), swapped, min_probes=4)
        verdicts.add(result.verdict)
    assert verdicts == {"mismatch"}


def test_a_json_escaped_echo_of_a_prompt_is_recognised() -> None:
    prompt = "Décrivez «le phare» en deux lignes,\nsans rimes, s'il vous plaît."
    ascii_echo = json.dumps({"error": {"message": "bad request", "input": prompt}})  # \u00e9, \u00ab, \n
    assert "\\u00e9" in ascii_echo and "\\n" in ascii_echo
    assert quotes_a_prompt(ascii_echo[:200], [prompt])
    unicode_echo = json.dumps({"detail": [{"input": prompt}]}, ensure_ascii=False)
    assert quotes_a_prompt(unicode_echo[:200], [prompt])
    cjk = "请用两句话描述一座灯塔，不要押韵，也不要提到大海或者船只。"
    assert quotes_a_prompt(json.dumps({"input": cjk})[:200], [cjk])
    assert not quotes_a_prompt(json.dumps({"error": "model overloaded"}), [prompt, cjk])
