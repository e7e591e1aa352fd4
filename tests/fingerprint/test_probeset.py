"""The sans-IO probe-set core: parsing the operator's JSONL file, probes of a reference, rotation samples."""

from __future__ import annotations

import json
import random
import secrets

import pytest

from fingerprint import DEFAULT_PROBES, Probe, ProbeAnswer, ProbeSetError, Signature, parse_probe_set
from fingerprint.probeset import (
    MAX_PROBE_TOKENS,
    public_probe_ids,
    quotes_a_prompt,
    reference_probes,
    restrict,
    sample,
)


def _lines(*objs: object) -> str:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n"


GOOD = {"id": "p1", "prompt": "Summarise the plot of a heist film in one line."}


def test_a_valid_file_parses_with_defaults_and_blank_lines() -> None:
    text = _lines(GOOD, "", {"id": "p-2.b:x", "prompt": "Name a river.", "max_tokens": 8}, "   ")
    assert parse_probe_set(text, "set.jsonl") == (
        Probe("p1", GOOD["prompt"], 48), Probe("p-2.b:x", "Name a river.", 8))


# (file content, the line and field the error must name)
BAD: list[tuple[str, str]] = [
    (_lines("not json"), "f.jsonl:1: not valid JSON"),
    (_lines(GOOD, "{\"id\": \"p2\","), "f.jsonl:2: not valid JSON"),
    (_lines(["p1", "prompt"]), "f.jsonl:1: expected a JSON object, not list"),
    (_lines({"prompt": "x y z"}), "f.jsonl:1: field 'id'"),
    (_lines({"id": "", "prompt": "x y z"}), "f.jsonl:1: field 'id'"),
    (_lines({"id": 7, "prompt": "x y z"}), "f.jsonl:1: field 'id'"),
    (_lines({"id": "has space", "prompt": "x y z"}), "f.jsonl:1: field 'id'"),
    (_lines({"id": "x" * 65, "prompt": "x y z"}), "f.jsonl:1: field 'id'"),
    (_lines({"id": "-lead", "prompt": "x y z"}), "f.jsonl:1: field 'id'"),
    (_lines({"id": "p1"}), "f.jsonl:1: field 'prompt'"),
    (_lines({"id": "p1", "prompt": "   "}), "f.jsonl:1: field 'prompt'"),
    (_lines({"id": "p1", "prompt": ["a"]}), "f.jsonl:1: field 'prompt'"),
    (_lines({"id": "p1", "prompt": "x" * 8001}), "f.jsonl:1: field 'prompt' is longer"),
    (_lines({**GOOD, "max_tokens": 0}), "f.jsonl:1: field 'max_tokens'"),
    (_lines({**GOOD, "max_tokens": MAX_PROBE_TOKENS + 1}), "f.jsonl:1: field 'max_tokens'"),
    (_lines({**GOOD, "max_tokens": 8.5}), "f.jsonl:1: field 'max_tokens'"),
    (_lines({**GOOD, "max_tokens": True}), "f.jsonl:1: field 'max_tokens'"),
    (_lines({**GOOD, "max_tokens": "48"}), "f.jsonl:1: field 'max_tokens'"),
    (_lines({**GOOD, "temperature": 0}), "f.jsonl:1: unknown field 'temperature'"),
    (_lines(GOOD, {"id": "p1", "prompt": "another question"}), "f.jsonl:2: field 'id': 'p1' is already used on line 1"),
    (_lines(GOOD, "", {"id": "p9", "prompt": GOOD["prompt"]}), "f.jsonl:3: field 'prompt': the same prompt"),
    ("", "f.jsonl: no probes"),
    ("\n  \n", "f.jsonl: no probes"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_file_names_line_and_field_never_the_prompt(text: str, message: str) -> None:
    with pytest.raises(ProbeSetError) as e:
        parse_probe_set(text, "f.jsonl")
    assert str(e.value).startswith(message)
    assert GOOD["prompt"] not in str(e.value) and "another question" not in str(e.value)


def _answer(probe: Probe, *, with_prompt: bool = True) -> ProbeAnswer:
    if with_prompt:
        return ProbeAnswer(probe.id, f"answer {probe.id}", prompt=probe.prompt, max_tokens=probe.max_tokens)
    return ProbeAnswer(probe.id, f"answer {probe.id}")


def test_reference_probes_new_and_old_files() -> None:
    private = (Probe("a", "What is the capital of Peru?", 12), Probe("b", "Write a haiku about rain."))
    new = Signature("m", tuple(_answer(p) for p in private))
    assert reference_probes(new) == private
    # files from before prompts were stored: bundled ids stand for the bundled probes; an unknown id cannot be
    # asked again and is left out; a repeated id is asked once
    old = Signature("m", (*(_answer(p, with_prompt=False) for p in DEFAULT_PROBES),
                          ProbeAnswer("mystery", "x"), ProbeAnswer("banner", "dup")))
    assert reference_probes(old) == DEFAULT_PROBES
    # a reference recorded with an older wording of a bundled probe is asked that older wording
    reworded = Signature("m", (ProbeAnswer("banner", "t", prompt="Who made you?", max_tokens=20),))
    assert reference_probes(reworded) == (Probe("banner", "Who made you?", 20),)


def test_public_probe_ids() -> None:
    mixed = (*DEFAULT_PROBES[:2], Probe("mine", "A question nobody else asks."))
    assert public_probe_ids(mixed) == (DEFAULT_PROBES[0].id, DEFAULT_PROBES[1].id)
    assert public_probe_ids(DEFAULT_PROBES) == tuple(p.id for p in DEFAULT_PROBES)
    # the id does not make a probe public, its prompt does
    assert public_probe_ids([Probe("banner", "My own banner question?")]) == ()


@pytest.mark.parametrize("k", [1, 5, 8, 20])
def test_sample_draws_k_distinct_probes_and_covers_the_set(k: int) -> None:
    probes = tuple(Probe(f"p{i}", f"question {i}") for i in range(20))
    rng = secrets.SystemRandom()
    seen: set[str] = set()
    for _ in range(200):
        got = sample(probes, k, rng)
        assert len(got) == k and len({p.id for p in got}) == k and set(got) <= set(probes)
        seen |= {p.id for p in got}
    assert seen == {p.id for p in probes}


def test_sample_of_more_than_the_set_is_the_whole_set_and_k_below_one_is_refused() -> None:
    assert sorted(sample(DEFAULT_PROBES, 12, random.Random(1)), key=lambda p: p.id) == sorted(
        DEFAULT_PROBES, key=lambda p: p.id)
    with pytest.raises(ValueError, match="k must be"):
        sample(DEFAULT_PROBES, 0, random.Random(1))


def test_restrict_keeps_only_the_probes_sent() -> None:
    ref = Signature("m", tuple(_answer(p) for p in DEFAULT_PROBES))
    cut = restrict(ref, ["arith", "banner", "not-there"])
    assert cut.model == "m" and [a.probe_id for a in cut.answers] == ["banner", "arith"]


@pytest.mark.parametrize(("text", "quotes"), [
    ("error: cannot answer 'Describe the secret test of our lighthouse keeper'", True),
    ("ERROR:   describe the SECRET test of our\n lighthouse", True),  # case and whitespace folded
    ("the prompt is too long", False),
    ("Describe the secret", False),  # a short common stretch is not a quote
])
def test_quotes_a_prompt(text: str, quotes: bool) -> None:
    assert quotes_a_prompt(text, ["Describe the secret test of our lighthouse keeper in two lines."]) is quotes


def test_a_short_prompt_is_found_whole() -> None:
    assert quotes_a_prompt("bad request: 'Hi there'", ["Hi there"])
    assert not quotes_a_prompt("bad request", ["Hi there"])


def test_the_probe_request_carries_no_field_that_only_marks_it_as_a_probe() -> None:
    body = DEFAULT_PROBES[0].chat_body("m", logprobs=False)
    assert body == {"model": "m", "messages": [{"role": "user", "content": DEFAULT_PROBES[0].prompt}],
                    "temperature": 0, "max_tokens": 48}
    assert DEFAULT_PROBES[0].chat_body("m", logprobs=True)["top_logprobs"] == 5
