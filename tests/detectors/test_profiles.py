"""A client is judged by the strictest detection profile among all the plans it was seen with
(``detectors.profiles``): per detector the highest weight of those plans' profiles, a plan without a profile
contributing the engine's weights. The plans are recorded in the client's state, so they travel with it (every
replica, a merge of two replicas' saves, ``ipgate replay``).

Before this rule each request was judged by the plan of its own credential: a client holding a key of a plan
that mutes ``templates`` and a key of any other plan was judged without the templates detector whenever it sent
its harvest on the first key, while both keys' requests fed one state."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from detectors import state as envelope
from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.features import extract
from detectors.profiles import (
    MAX_PLAN_BYTES,
    MAX_PLANS,
    PLANS,
    PLANS_BYTES,
    Profiles,
    decode_plans,
    encode_plans,
    record_plan,
)
from detectors.replay import replay
from detectors.state_codec import declared_state_bytes
from detectors.types import FLAG_TIER, STATE_BUDGET_BYTES
from gateway.detection_live import LiveStates
from gateway.principal import DEFAULT_LIMIT_CLASS

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CHAT = "/v1/chat/completions"
INSTRUCTION = ("You are the support assistant of Acme Cloud. Answer the customer's message below politely and "
               "briefly, in the customer's language, and never mention internal tools or pricing that is not "
               "public.\n\nCustomer message:\n")
APPS = {"templates": 0.0}


def messages(n: int, seed: int = 5) -> list[str]:
    rows = [json.loads(x) for x in (DATA / "prompts.jsonl").read_text(encoding="utf-8").split("\n") if x]
    texts = [r["turns"][0] for r in rows if r["category"] != "harmless-redteam" and 20 < len(r["turns"][0]) < 600]
    return random.Random(seed).sample(texts, n)


def harvest(message: str) -> dict[str, Any]:
    """One request of a fixed-template harvest (what a template application sends too)."""
    return {"model": "sim", "messages": [{"role": "user", "content": INSTRUCTION + message}], "max_tokens": 200}


HELLO = {"model": "sim", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}


def engine(profiles: dict[str, dict[str, float]] | None = None) -> Engine:
    eng = Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8")))
    eng.set_profiles(profiles if profiles is not None else {"apps": APPS})
    return eng


def test_the_strictest_profile_is_the_highest_weight_per_detector() -> None:
    base = {"templates": 7.0, "reasoning": 2.0, "volume": 8.0}
    p = Profiles(base, {"apps": {**base, "templates": 0.0}, "research": {**base, "reasoning": 0.0},
                        "strict": {**base, "reasoning": 5.0}})
    assert p.strictest(["apps"]) == {**base, "templates": 0.0}
    # two plans muting different detectors: each detector either keeps (the fitted combiner, exactly)
    assert p.strictest(["apps", "research"]) == base
    # a plan without a profile contributes the engine's weights; a stricter plan passes its weight on
    assert p.strictest(["apps", "default"]) == base
    assert p.strictest(["apps", "strict"]) == {**base, "reasoning": 5.0}
    assert p.strictest([]) == base
    assert p.strictest(["apps"], overflow=True) == {**base, "reasoning": 5.0}  # every profile and the engine's
    with pytest.raises(ValueError, match="not the engine's detectors"):
        Profiles(base, {"apps": {"templates": 0.0}})


def test_the_record_of_plans_is_a_bounded_sorted_set() -> None:
    blob = record_plan(None, "default")
    assert decode_plans(blob) == (("default",), False)
    assert record_plan(blob, "default") is blob  # known: the same bytes (nothing to write)
    blob = record_plan(blob, "apps")
    assert decode_plans(blob) == (("apps", "default"), False)
    assert record_plan(record_plan(None, "apps"), "default") == blob  # a set: order does not matter
    full = encode_plans(f"p{i}" for i in range(MAX_PLANS))
    assert decode_plans(full) == (tuple(sorted(f"p{i}" for i in range(MAX_PLANS))), False)
    over = record_plan(full, "one-more")
    assert decode_plans(over)[1] is True and len(over) <= PLANS_BYTES
    assert record_plan(over, "yet-another") is over  # an overflowing record stands for every plan
    assert decode_plans(record_plan(None, "x" * (MAX_PLAN_BYTES + 1))) == ((), True)
    longest = encode_plans("é" * (MAX_PLAN_BYTES // 2) + str(i) for i in range(MAX_PLANS + 3))
    assert len(longest) <= PLANS_BYTES
    # a record tampered with in the store reads as overflowing: the strict side
    for bad in (b"\x02", b"\x00\x09ab", b"\x00\x00", b"\x00\x02\xff\xfe"):
        assert decode_plans(bad)[1] is True, bad


def run(eng: Engine, steps: list[tuple[dict[str, Any], str]], state: bytes | None = None, t0: float = 1000.0
        ) -> tuple[bytes | None, list[int]]:
    tiers = []
    for i, (body, plan) in enumerate(steps):
        t = t0 + 7.3 * i
        obs = eng.observe(state, extract(CHAT, body, t), t, plan=plan)
        state = obs.state
        tiers.append(obs.verdict.tier)
    return state, tiers


def test_a_client_seen_with_another_plan_is_judged_by_the_strictest_on_the_muted_plans_key() -> None:
    eng = engine()
    harvests = [(harvest(m), "apps") for m in messages(40)]
    _, app_only = run(eng, harvests)
    assert max(app_only) == 0, app_only  # a template application on its plan: served
    _, mixed = run(eng, [(HELLO, DEFAULT_LIMIT_CLASS), *harvests])  # the other key once, then the harvest
    assert max(mixed) >= FLAG_TIER, mixed
    # the order does not matter: evidence gathered under the lenient plan is judged again once the client is
    # seen with the other one (the evidence is the same under every profile)
    state, tiers = run(eng, harvests)
    assert max(tiers) == 0
    _, after = run(eng, [(HELLO, DEFAULT_LIMIT_CLASS)], state, t0=1000.0 + 7.3 * 40)
    assert after[-1] >= FLAG_TIER, after


def test_the_verdict_says_the_weights_it_was_judged_with_and_peek_follows_the_record() -> None:
    eng = engine()
    state, _ = run(eng, [(harvest(m), "apps") for m in messages(30)])
    now = 1000.0 + 7.3 * 30
    assert eng.peek(state, now).weights == eng.weights_for(APPS)
    assert eng.peek(state, now).tier == 0
    plans, overflow, weights = eng.judged_by(state)
    assert plans == ("apps",) and not overflow and weights["templates"] == 0.0
    state, _ = run(eng, [(HELLO, "default")], state, t0=now)
    assert eng.peek(state, now + 8).weights == eng.weights and eng.peek(state, now + 8).tier >= FLAG_TIER
    assert eng.judged_by(state) == (("apps", "default"), False, eng.weights)
    # explicit weights still win (the profile as such, e.g. for an evaluation)
    assert eng.peek(state, now + 8, eng.weights_for(APPS)).score < 0.3


def test_without_profiles_every_plan_is_judged_alike_and_the_plan_is_still_recorded() -> None:
    eng = engine({})
    assert eng.profiles is None
    state, tiers = run(eng, [(harvest(m), "apps") for m in messages(30)])
    assert max(tiers) >= FLAG_TIER
    assert eng.judged_by(state)[0] == ("apps",)  # a profile configured later finds the plans used meanwhile


def test_a_state_without_a_record_is_judged_by_the_engines_weights_and_old_states_still_read() -> None:
    eng = engine()
    state, _ = run(eng, [(harvest(m), "apps") for m in messages(5)])
    assert state is not None
    env = envelope.decode(state)
    del env.blobs[PLANS]  # a state saved by a build that predates the record
    old = envelope.encode(env)
    assert eng.judged_by(old) == ((), False, eng.weights)
    state, _ = run(eng, [(harvest(messages(1, seed=9)[0]), "apps")], old, t0=2000.0)
    assert eng.judged_by(state)[0] == ("apps",)  # recorded again by its next request


def test_a_merge_of_two_replicas_saves_records_both_plans() -> None:
    """Replica A served the client's normal key; replica B, from the state it read before A's save, its apps
    key. B's save meets A's: B's steps are replayed into A's state with their plan, and the merged state is
    judged by both plans."""
    eng_a, eng_b = engine(), engine()
    state, _ = run(eng_a, [(harvest(m), "apps") for m in messages(25)])
    a, b = LiveStates(eng_a, 3600.0), LiveStates(eng_b, 3600.0)
    live_a, live_b = a.begin("mixed", state), b.begin("mixed", state)
    a.fold_request(live_a, extract(CHAT, HELLO, 1300.0), 1300.0, plan="default")
    v = b.fold_request(live_b, extract(CHAT, harvest(messages(1, seed=11)[0]), 1301.0), 1301.0, plan="apps")
    assert v.tier == 0  # B has not seen the other plan yet
    a_saved = eng_a.snapshot(live_a.pending)
    b._rebase(live_b, a_saved)  # what B's compare-and-swap does when A saved first
    assert eng_b.judged_by(eng_b.snapshot(live_b.pending))[0] == ("apps", "default")
    assert live_b.pending.tier_score()[0] >= FLAG_TIER


def test_the_record_fits_the_state_budget() -> None:
    eng = engine()
    declared = declared_state_bytes(eng.detectors)
    assert declared <= STATE_BUDGET_BYTES
    state, _ = run(eng, [(harvest(m), f"plan-{'x' * 60}-{i}") for i, m in enumerate(messages(MAX_PLANS + 4))])
    assert state is not None and len(state) <= declared
    assert len(envelope.decode(state).blobs[PLANS]) <= PLANS_BYTES
    assert eng.judged_by(state)[1] is True  # more plans than kept: judged by every profile


def test_replay_records_each_records_plan_and_a_record_without_one_is_on_default() -> None:
    recs: list[dict[str, Any]] = []
    for i, m in enumerate(messages(40)):
        t = 1000.0 + 7.3 * i
        recs.append({"ts": t, "client": "app-only", "endpoint": CHAT, "body": harvest(m), "limit_class": "apps"})
        recs.append({"ts": t, "client": "mixed", "endpoint": CHAT, "body": harvest(m), "limit_class": "apps"})
    recs.insert(1, {"ts": 1000.0, "client": "mixed", "endpoint": CHAT, "body": HELLO})  # no limit_class: default
    out = {c["client"]: c for c in replay(recs, engine({}), class_weights={"apps": APPS})["clients"]}
    assert out["mixed"]["flagged"] and not out["app-only"]["flagged"], out
