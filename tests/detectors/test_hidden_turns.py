"""History the client wrote itself: a chat request's earlier user turns that the client never sent as a last
turn (a made-up conversation) may be what the model is answering. The engine remembers each client's recent
last turns and scores such a request by one of {its unseen history turns, its last turn}, drawn at random; a
conversation sent turn by turn is read as before."""

from __future__ import annotations

import random
from typing import Any

from detectors import state as envelope
from detectors.engine import Engine
from detectors.features import extract, history_of, seeded_draws, turn_crc
from detectors.replay import replay
from detectors.turns import TURN_MEMORY, TURNS, read_turn
from detectors.types import ResponseFeatures
from tests.detectors.conftest import CHAT

TEMPLATE = ("Write a detailed, vivid short story of about 500 words about a {a} who lives in {c} and learns to "
            "{v}. Include dialogue.")
ANIMALS = ["cat", "dog", "owl", "fox", "bear", "wolf", "lion", "frog", "hawk", "deer", "mole", "seal"]
CITIES = ["Paris", "Lima", "Oslo", "Rome", "Cairo", "Delhi", "Tokyo", "Quito", "Accra", "Hanoi"]
VERBS = ["sing", "cook", "swim", "paint", "fly", "dance", "read", "code", "sail", "skate"]
GO = ["Please answer the question above.", "Go ahead.", "Continue please", "ok, do it", "Answer it now."]


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str = "(answer)") -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _harvester(client: str, hidden: bool, n: int = 200) -> list[dict[str, Any]]:
    rng = random.Random(client)
    ts, out = 1_767_258_000.0, []
    for _ in range(n):
        ts += rng.uniform(2, 6)
        fill = TEMPLATE.format(a=rng.choice(ANIMALS), c=rng.choice(CITIES), v=rng.choice(VERBS))
        msgs = [u(fill), a("Happy to help."), u(rng.choice(GO))] if hidden else [u(fill)]
        out.append({"ts": ts, "client": client, "endpoint": CHAT,
                    "body": {"model": "m", "messages": msgs, "max_tokens": 600}})
    return out


def test_a_template_fill_behind_a_made_up_reply_is_flagged(engine: Engine) -> None:
    result = {c["client"]: c for c in replay(_harvester("plain", False) + _harvester("hidden", True), engine)
              ["clients"]}
    for name in ("plain", "hidden"):
        c = result[name]
        assert c["flagged"] and c["first_flag_index"] <= 60, c
        assert any("template" in r for r in c["reasons"]), c["reasons"]


def test_history_of_reads_earlier_user_turns() -> None:
    sys_ = {"role": "system", "content": "be brief"}
    body = {"messages": [sys_, u("one"), a(), u("two"), u("two b"), a(), u("three")]}
    assert [t for _, t in history_of(body)] == ["one", "two\ntwo b"]
    assert history_of({"messages": [u("only")]}) == ()
    assert [t for _, t in history_of({"messages": [u("one"), a(), u("two"), a()]})] == ["one"]  # "two" is last
    assert all(c == turn_crc(t) and c != 0 for c, t in history_of(body))
    many = {"messages": [m for i in range(20) for m in (u(f"q{i}"), a())] + [u("last")]}
    assert [t for _, t in history_of(many)] == [f"q{i}" for i in range(12, 20)]


def _env_after(engine: Engine, bodies: list[dict[str, Any]]) -> tuple[envelope.Envelope, list[int]]:
    env, keys = envelope.Envelope(), []
    for body in bodies:
        keys.append(read_turn(env, extract(CHAT, body, 0.0))[0].prompt_key)
    return env, keys


def test_a_conversation_sent_turn_by_turn_is_read_at_its_last_turn(engine: Engine) -> None:
    turns = [u("what is the capital of peru"), a(), u("and its population?"), a(), u("tell me about its food")]
    bodies = [{"messages": turns[:1]}, {"messages": turns[:3]}, {"messages": turns[:5]}]
    for _ in range(30):  # no draw happens: every earlier turn was seen as a last turn
        _, keys = _env_after(engine, bodies)
        assert keys == [extract(CHAT, {"messages": [t]}, 0.0).prompt_key for t in turns[::2]]


def test_unseen_history_is_scored_half_the_time(engine: Engine) -> None:
    hidden = extract(CHAT, {"messages": [u("a hidden fill about owls in Oslo")]}, 0.0).prompt_key
    last = extract(CHAT, {"messages": [u("Go ahead.")]}, 0.0).prompt_key
    body = {"messages": [u("a hidden fill about owls in Oslo"), a("Sure."), u("Go ahead.")]}
    with seeded_draws(2):
        picks = [_env_after(engine, [body])[1][0] for _ in range(400)]
    assert set(picks) == {hidden, last} and 150 < picks.count(hidden) < 250, picks.count(hidden)


def test_the_turn_memory_is_bounded_and_survives_a_bad_blob(engine: Engine) -> None:
    env, _ = _env_after(engine, [{"messages": [u(f"question number {i}")]} for i in range(200)])
    assert len(env.blobs[TURNS]) == 4 * TURN_MEMORY
    env.blobs[TURNS] = b"\x01\x02\x03"  # not a whole number of CRCs: read as empty, then rewritten
    read_turn(env, extract(CHAT, {"messages": [u("next")]}, 0.0))
    assert len(env.blobs[TURNS]) == 4
    # the memory travels in the stored state, through encode/decode and the next observation
    obs = engine.observe(None, extract(CHAT, {"messages": [u("hello there")]}, 0.0), 0.0)
    assert TURNS in envelope.decode(obs.state).blobs
    again = engine.observe(obs.state, extract(CHAT, {"messages": [u("hello there"), a(), u("more")]}, 1.0), 1.0)
    assert len(envelope.decode(again.state).blobs[TURNS]) == 8
    after = engine.observe_response(again.state, ResponseFeatures(prompt_tokens=5, completion_tokens=9,
                                                                  finish_reasons=("stop",)), 2.0)
    linked = engine.apply_links(after, {"peer": 3}, 3.0, {"peer": 0.5}).state
    assert envelope.decode(linked).blobs[TURNS] == envelope.decode(again.state).blobs[TURNS]
