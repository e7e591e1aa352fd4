"""Review of session 13's detection changes: defects found, each with the test that failed before its fix."""

from __future__ import annotations

import random
from typing import Any

import pytest

from detectors import prompt
from detectors import state as envelope
from detectors.engine import Engine
from detectors.features import extract, history_of, prompt_of, seed_batch_pick
from detectors.replay import replay
from detectors.turns import TURNS
from tests.detectors.conftest import CHAT
from tests.detectors.test_hidden_turns import ANIMALS, CITIES, TEMPLATE, VERBS, a, u

IMAGE_ONLY = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


def _harvester(client: str, last: Any, n: int = 200) -> list[dict[str, Any]]:
    rng = random.Random(client)
    ts, out = 1_767_258_000.0, []
    for _ in range(n):
        ts += rng.uniform(2, 6)
        fill = TEMPLATE.format(a=rng.choice(ANIMALS), c=rng.choice(CITIES), v=rng.choice(VERBS))
        msgs = [u(fill), a("Happy to help."), {"role": "user", "content": last}]
        out.append({"ts": ts, "client": client, "endpoint": CHAT,
                    "body": {"model": "m", "messages": msgs, "max_tokens": 600}})
    return out


@pytest.mark.parametrize("last", ["", IMAGE_ONLY], ids=["empty", "image-only"])
def test_made_up_history_behind_an_empty_last_turn_is_read(engine: Engine, last: Any) -> None:
    """The history draw ran only when the last turn had text (``turn_crc != 0``): ending a made-up conversation
    with an empty user message (or an image alone) turned it off, and the template fills went unscored."""
    (c,) = replay(_harvester("hidden-empty", last), engine)["clients"]
    assert c["flagged"] and c["first_flag_index"] <= 60, c
    assert any("template" in r for r in c["reasons"]), c["reasons"]


def test_an_empty_last_turn_is_not_remembered(engine: Engine) -> None:
    """Text-less last turns leave the memory of last turns alone (CRC 0 names no turn)."""
    body = {"messages": [u("a hidden fill about owls in Oslo"), a(), u("")]}
    obs = engine.observe(None, extract(CHAT, body, 0.0), 0.0)
    assert envelope.decode(obs.state).blobs.get(TURNS, b"") == b""


def test_replay_leaves_the_process_draw_unpredictable(engine: Engine) -> None:
    """``replay`` seeds the batch draw for reproducibility; the generator it left behind stayed seeded with 0 for
    the rest of the process (any gateway or evaluation sharing it drew a predictable sequence)."""
    before = prompt._batch_pick
    replay(_harvester("r", "Go ahead.", n=3), engine)
    assert prompt._batch_pick is before
    seed_batch_pick(123)  # a caller's own seeding: replay neither replaces nor advances it
    replay(_harvester("r", "Go ahead.", n=3), engine)
    expected = random.Random(123)
    assert [prompt.draw(1000) for _ in range(5)] == [expected.randrange(1000) for _ in range(5)]


def test_two_replays_with_batches_and_history_are_equal(engine: Engine) -> None:
    records = _harvester("h", "Go ahead.", n=60) + [
        {"ts": 1_767_258_000.0 + i, "client": "b", "endpoint": "/v1/completions",
         "body": {"model": "m", "prompt": ["hello", TEMPLATE.format(a="cat", c="Rome", v=f"x{i}")]}}
        for i in range(60)]
    assert replay(records, engine) == replay(records, engine)


def test_reading_odd_conversations() -> None:
    """Non-dict messages, tool messages, an assistant prefill last: the turn and the history agree."""
    tool = {"role": "tool", "tool_call_id": "c1", "content": "42"}
    body = {"messages": ["junk", u("one"), 7, u("one b"), a(), tool, u("two"), a("prefill")]}
    assert prompt_of(CHAT, body)[0] == "two"
    assert [t for _, t in history_of(body)] == ["one\none b"]
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
                          a(), u("z")]}
    assert [t for _, t in history_of(parts)] == ["x y"]


def _history_forwards(body: dict[str, Any]) -> tuple[tuple[int, str], ...]:
    """Session 13's ``history_of`` as it was written (every message read, front to back): the reference."""
    turns: list[str] = []
    run: list[str] = []
    for m in body["messages"]:
        if type(m) is not dict:
            continue
        role = m.get("role")
        if role == "user":
            run.append(prompt._text_of(m.get("content")))
        elif role not in ("system", "developer") and run:
            turns.append(run[0] if len(run) == 1 else "\n".join(run[-8:]))
            run = []
    if not run and turns:
        turns.pop()
    return tuple((prompt.turn_crc(t), t) for t in turns[-prompt.MAX_HISTORY_TURNS:] if t)


def test_history_read_backwards_equals_the_forward_reading() -> None:
    """``history_of`` read every user message of the request (1.1 ms for 10 000 messages, on top of the
    parse); it now walks back over the last turns only. Same answer on random conversations."""
    rng = random.Random(13)
    kinds: list[Any] = ["user"] * 5 + ["assistant"] * 3 + ["system", "developer", "tool", None]
    for _ in range(3000):
        msgs: list[Any] = []
        for _ in range(rng.randrange(0, 40)):
            role = rng.choice(kinds)
            if role is None:
                msgs.append(rng.choice(["junk", 3, None]))
                continue
            content: Any = rng.choice(["", "a", "b c", f"q{rng.randrange(5)}",
                                       [{"type": "text", "text": "p"}, {"type": "image_url"}]])
            msgs.append({"role": role, "content": content})
        body = {"messages": msgs}
        assert history_of(body) == _history_forwards(body), msgs


def test_a_huge_conversation_is_read_in_bounded_time() -> None:
    import time

    body = {"messages": [m for i in range(10_000) for m in (u(f"question {i}"), a())] + [u("last")]}
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        got = history_of(body)
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.0005, times  # read forwards: ~2 ms; backwards: ~6 us
    assert [t for _, t in got] == [f"question {i}" for i in range(9992, 10_000)]
