"""Adversarial review of detection round 2 (738e7be): the exec-written constructors of the frozen result
types against everything else that builds or copies instances, and the entropy skips against random
histograms (not only the flattest one)."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import norm_entropy, ramp
from detectors.patterns import COT_RE, META_RE, RUBRIC_RE, demands
from detectors.timing import _FLAT, _MAX_HOURS_NOT_FLAT
from detectors.types import DetectorScore, ResponseFeatures, Verdict

SAMPLES: list[Any] = [
    DetectorScore("x", 0.25, ("a reason",), (1, 2)),
    ResponseFeatures(200, 10, 20, ("stop",), 3, 64),
    Verdict(0.4, 1, ("r",), {"x": 0.4}, (5,), ("e",), True, 7, 0.2, 0.3),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_slot_init_instances_copy_pickle_replace_and_compare(obj: Any) -> None:
    cls = type(obj)
    for clone in (pickle.loads(pickle.dumps(obj)), copy.copy(obj), copy.deepcopy(obj),
                  dataclasses.replace(obj)):
        assert type(clone) is cls and clone == obj
        assert [getattr(clone, f.name) for f in dataclasses.fields(cls)] == [
            getattr(obj, f.name) for f in dataclasses.fields(cls)]
    first = dataclasses.fields(cls)[0].name
    changed = dataclasses.replace(obj, **{first: getattr(obj, first)})
    assert changed == obj
    if cls is not Verdict:  # Verdict holds a dict: unhashable by design, as before
        assert hash(pickle.loads(pickle.dumps(obj))) == hash(obj)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, first, getattr(obj, first))
    with pytest.raises(TypeError):
        dataclasses.replace(obj, no_such_field=1)


def test_a_dataclass_subclass_gets_its_own_constructor() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Tagged(DetectorScore):
        tag: str = "t"

    t = Tagged("x", 0.5, (), (), "mine")
    assert (t.name, t.score, t.tag) == ("x", 0.5, "mine")
    assert Tagged("y", 0.1).tag == "t"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.floats(min_value=1.5e-45, max_value=1e6), min_size=1, max_size=_MAX_HOURS_NOT_FLAT),
       st.integers(0, 2**32 - 1))
def test_timing_hours_it_skips_never_reach_the_ramp(positive: list[float], seed: int) -> None:
    hours = positive + [0.0] * (24 - len(positive))
    random.Random(seed).shuffle(hours)
    assert ramp(norm_entropy(hours), *_FLAT) == 0.0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz0123456789 -\n.ABCSTEPİKſıK")),
               max_size=80),
       st.sampled_from(["step by step", "chain of thought", "rubric", "rate the following response",
                        "come up with 10 tasks", "generate 5 new instructions", "think carefully", ""]))
def test_demands_equal_the_case_insensitive_patterns(text: str, phrase: str) -> None:
    scan = (text + " " + phrase + " " + text).lower()
    want = tuple(r.search(scan) is not None for r in (COT_RE, RUBRIC_RE, META_RE))
    assert demands(scan) == want


def test_the_entropy_bound_margin_holds_for_every_topic_count() -> None:
    # Coverage._few_topics keeps log(m)/log(k) 1e-6 under the ramp; rounding in norm_entropy is ~1e-15
    for k in range(2, 65):
        for m in range(1, k + 1):
            if math.log(m) / math.log(k) < 0.82 - 1e-6:
                assert norm_entropy([1.0] * m + [0.0] * (k - m)) < 0.82
