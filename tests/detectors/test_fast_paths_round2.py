"""The second round of hot-path shortcuts changes no result (see also ``test_fast_paths.py``).

Each test compares the shortcut with the plain computation it replaces, on the same inputs, and requires
identical output: tokens, phrase flags, state bytes, scores and reasons.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from typing import Any

import numpy as np
import pytest

from detectors.base import norm_entropy
from detectors.combiner import CombinerParams
from detectors.coverage import _SPREAD, Coverage
from detectors.features import extract
from detectors.linking import CrossAccountLinking
from detectors.logit_probing import LogitProbing
from detectors.normalise import fold
from detectors.patterns import (
    COT_HINTS,
    COT_RE,
    COT_RE_ASCII,
    META_HINTS,
    META_RE,
    META_RE_ASCII,
    RUBRIC_HINTS,
    RUBRIC_RE,
    RUBRIC_RE_ASCII,
)
from detectors.reasoning import ReasoningElicitation
from detectors.templates import MAX_CLUSTERS, SKEL, SLOTS, Templates, TemplateState
from detectors.timing import _FLAT, _MAX_HOURS_NOT_FLAT
from detectors.types import DetectorScore, RequestFeatures, ResponseFeatures, Verdict
from tests.detectors.conftest import CHAT, chat, feats

T0 = 1_767_258_000.0
_PIECES = (
    "step by step", "show your work", "rate the response", "on a scale of 1 to 10", "come up with 5 tasks",
    "generate 10 questions", "which answer is better", "think carefully", "chain of thought", "write out",
    "list of", "before giving the answer", "grade this", "evaluate the following answer", "rubric",
    "ſtep by ſtep", "thınk carefully", "Step", "RATE", "separate", "x", "9", "1.5", "3,000", "10/12", " ", "\n",
    "'", "_", '"q"', "http://a.b", "a@b.co", "```c```", "Σ", "É", "٣", "²", "-", ".", "outputs", "rewrite",
)


def _texts(n: int, seed: int) -> list[str]:
    """Phrases, hint fragments, numbers, masks and non-ASCII letters, glued with and without spaces."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        sep = " " if i % 2 else ""
        out.append(sep.join(r.choice(_PIECES) for _ in range(r.randrange(1, 10))))
    return out


def test_ascii_patterns_match_exactly_what_the_case_insensitive_ones_match() -> None:
    pairs = ((COT_RE, COT_RE_ASCII), (RUBRIC_RE, RUBRIC_RE_ASCII), (META_RE, META_RE_ASCII))
    for text in _texts(3000, 2):
        scan = text.lower()
        if not scan.isascii():
            continue
        for full, fast in pairs:
            m1, m2 = full.search(scan), fast.search(scan)
            assert (m1 and m1.span()) == (m2 and m2.span()), (scan, full.pattern[:30])
    # non-ASCII text keeps the re.I patterns: "ſ" matches "s" there, and it still counts
    f = extract(CHAT, chat("Explain it ſtep by ſtep please"), T0)
    assert f.cot


def _flags_reference(text: str) -> tuple[bool, bool, bool]:
    """The phrase flags as computed before: substring gates over the text, then the re.I patterns."""
    scan = (text if len(text) <= 3000 else text[:2000] + "\n" + text[-1000:]).lower()
    return (
        any(w in scan for w in COT_HINTS) and COT_RE.search(scan) is not None,
        any(w in scan for w in RUBRIC_HINTS) and RUBRIC_RE.search(scan) is not None,
        any(w in scan for w in META_HINTS) and META_RE.search(scan) is not None,
    )


def test_phrase_flags_equal_the_case_insensitive_patterns() -> None:
    long_one = "Please think carefully. " + "filler words here " * 300 + " rate the response on a scale of 1 to 10"
    for text in [*_texts(5000, 3), long_one]:
        f = extract("/v1/completions", {"prompt": text}, T0)
        # the prompt is read folded (look-alikes as Latin letters: "thınk" is "think"; review session 14b)
        assert (f.cot, f.rubric, f.meta_prompt) == _flags_reference(fold(text)), text


def test_embedding_array_is_the_embedding_read_only() -> None:
    f = extract(CHAT, chat("Summarise the causes of the French revolution for a student"), T0)
    assert f.embedding_array is not None and not f.embedding_array.flags.writeable
    assert tuple(f.embedding_array.tolist()) == f.embedding
    assert np.array_equal(np.array(f.embedding), f.embedding_array)


def test_norm_entropy_is_bit_identical_to_the_list_comprehension_form() -> None:
    r = random.Random(5)
    for _ in range(2000):
        counts = [r.random() * 9 if r.random() < 0.6 else 0.0 for _ in range(r.choice((2, 24, 32)))]
        total = sum(counts)
        if total <= 0:
            continue
        ref = -sum([p * math.log(p) for p in [x / total for x in counts if x > 0]]) / math.log(len(counts))
        assert repr(norm_entropy(counts)) == repr(ref)


def test_timing_skips_the_entropy_only_where_it_cannot_reach_the_ramp() -> None:
    assert math.log(_MAX_HOURS_NOT_FLAT) / math.log(24) < _FLAT[0]
    even = [1.0] * _MAX_HOURS_NOT_FLAT + [0.0] * (24 - _MAX_HOURS_NOT_FLAT)  # the flattest such histogram
    assert norm_entropy(even) < _FLAT[0]


@pytest.mark.parametrize("detector", [LogitProbing(), ReasoningElicitation(), CrossAccountLinking()])
def test_quiet_scores_equal_the_full_arithmetic(detector: LogitProbing | ReasoningElicitation | CrossAccountLinking
                                                 ) -> None:
    st = detector.new_state()
    r = random.Random(6)
    for i in range(200):
        body = chat("Say hi", logprobs=True, logit_bias={"5": 1}) if r.random() < 0.05 else chat(
            "Think step by step: what is 2 + 2?" if r.random() < 0.05 else "What is the capital of France?")
        now = T0 + 3 * i
        got = detector.observe(st, feats(body, now), now)
        if isinstance(detector, CrossAccountLinking):
            full = detector._score(st, now)
            if r.random() < 0.1:
                detector.fold_links(st, {f"peer-{i % 3}": 2}, now)
        elif isinstance(detector, LogitProbing):
            full = detector._score(st, st.counters.c.tolist())
        else:
            full = detector._score(st.c.tolist())
        assert got == full


def _grow_by_concatenation(self: TemplateState) -> None:
    """Growth without the pre-allocated room: concatenate one zero row to every column."""
    cat, u32 = np.concatenate, np.uint32
    self.keys = cat((self.keys, np.zeros((1, SLOTS + 2), u32)))
    self.skels, self.lasts = cat((self.skels, np.zeros((1, SKEL), u32))), cat((self.lasts, np.zeros(1, u32)))
    self.counts = cat((self.counts, np.zeros(1)))


def test_template_table_growth_into_room_equals_concatenation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step's score and state bytes, from a fresh table and from a partly filled one read from bytes."""
    det = Templates()
    r = random.Random(7)
    stream = []
    vocab = [f"w{chr(97 + a)}{chr(97 + b)}x" for a in range(26) for b in range(26)]
    for i in range(3 * MAX_CLUSTERS):
        if i % 4 == 3:  # a fill of one recurring template: matches its cluster
            text = f"Translate the sentence number {r.randrange(99)} about {r.choice(vocab)} into formal French now"
        else:  # unrelated prompts: a new cluster each, growing the table until it is full, then evicting
            text = " ".join(r.sample(vocab, 12))
        stream.append(feats(chat(text), T0 + i))

    def run(start: TemplateState) -> list[tuple[DetectorScore, bytes]]:
        out = []
        for f in stream:
            out.append((det.observe(start, f, f.ts), det.dump(start)))
        return out

    half = det.new_state()
    for f in stream[:7]:
        det.observe(half, f, f.ts)
    half_bytes = det.dump(half)
    fast = run(det.new_state()), run(det.load(half_bytes))
    monkeypatch.setattr(TemplateState, "_grow", _grow_by_concatenation)
    slow = run(det.new_state()), run(det.load(half_bytes))
    assert fast == slow
    assert len(fast[0][-1][1]) == len(det.dump(det.new_state())) + MAX_CLUSTERS * 4 * (SLOTS + SKEL + 4)


@pytest.mark.parametrize("cls", [RequestFeatures, ResponseFeatures, DetectorScore, Verdict])
def test_slot_init_builds_the_same_frozen_instances(cls: type[Any]) -> None:
    """The faster constructor keeps the signature and defaults of the one ``dataclass`` writes, fills the
    same fields, and the instance stays frozen."""
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(inspect.signature(cls).parameters) == names
    f = extract(CHAT, chat("Explain step by step how tides work", logit_bias={"7": 5}), T0)
    samples: dict[type[Any], tuple[Any, ...]] = {
        RequestFeatures: tuple(getattr(f, x.name) for x in dataclasses.fields(RequestFeatures)),
        ResponseFeatures: (200, 10, 20, ("stop",), 3, 64),
        DetectorScore: ("x", 0.25, ("a reason",), (1, 2)),
        Verdict: (0.4, 1, ("r",), {"x": 0.4}, (5,), ("e",), True, 7, 0.2, 0.3, {"x": 2.0}),
    }
    args = samples[cls]
    built, by_name = cls(*args), cls(**dict(zip(names, args, strict=True)))
    assert [getattr(built, n) for n in names] == list(args) == [getattr(by_name, n) for n in names]
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    required = [n for n in names if n not in defaults]
    minimal = cls(*args[: len(required)])
    assert all(getattr(minimal, n) == v for n, v in defaults.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.__setattr__(names[0], args[0])
    with pytest.raises(TypeError):
        cls(*args, *args)


def _match_reference(state: TemplateState, minhash: tuple[int, ...], head: int, tail: int, min_agree: int) -> int:
    """Cluster matching as three separate tests (the formulation before the weighted row sum)."""
    if not len(state):
        return -1
    if len(minhash) == SLOTS:
        hit = (state.sigs == np.array(minhash, dtype=np.uint32)).sum(axis=1) >= min_agree
    else:
        hit = np.zeros(len(state), dtype=bool)
    if head:
        hit |= state.heads == head
    if tail:
        hit |= state.tails == tail
    return int(np.flatnonzero(hit)[0]) if hit.any() else -1


@pytest.mark.parametrize("min_agree", [-1, 0, 1, 3, 16, 17, 40])
def test_weighted_row_match_equals_the_three_tests(min_agree: int) -> None:
    det = Templates(min_agree=min_agree)
    r = random.Random(min_agree + 100)
    for _ in range(300):
        k = r.randrange(0, MAX_CLUSTERS + 1)
        st = TemplateState(k)
        small = [r.randrange(4) for _ in range(k * (SLOTS + 2))]  # few values: many partial agreements
        st.keys[:] = np.array(small, dtype=np.uint32).reshape(k, SLOTS + 2)
        minhash = tuple(r.randrange(4) for _ in range(SLOTS)) if r.random() < 0.9 else ()
        head, tail = r.choice((0, 1, 2, 3)), r.choice((0, 1, 2, 3))
        f = dataclasses.replace(feats(chat("x y z w v"), T0), minhash=minhash)
        assert det._match(st, f, head, tail) == _match_reference(st, minhash, head, tail, min_agree)


def test_coverage_skips_the_entropy_only_where_it_cannot_reach_the_ramp(params: CombinerParams) -> None:
    cov = Coverage(params.reference)
    k, few = cov.k, cov._few_topics
    assert k == 32 and few == 17
    assert norm_entropy([1.0] * few + [0.0] * (k - few)) < _SPREAD[0]  # the flattest histogram it skips
    assert norm_entropy([1.0] * (few + 1) + [0.0] * (k - few - 1)) >= _SPREAD[0]  # the next one can count
