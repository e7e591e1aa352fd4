"""Review session 14b (detection adversary): ways a harvester who knows the source kept the detectors from
reading what the model answers. Each fill below is one template's; the model reads every variant alike."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from detectors.engine import Engine
from detectors.features import extract, prompt_of, turn_crc
from detectors.normalise import fold, window
from detectors.replay import replay
from tests.detectors.conftest import CHAT, chat

TEMPLATE = ("Write a detailed, vivid short story of about 500 words about a {a} who lives in {c} and learns to "
            "{v}. Include dialogue.")
ANIMALS = ["cat", "dog", "owl", "fox", "bear", "wolf", "lion", "frog", "hawk", "deer", "mole", "seal"]
CITIES = ["Paris", "Lima", "Oslo", "Rome", "Cairo", "Delhi", "Tokyo", "Quito", "Accra", "Hanoi"]
VERBS = ["sing", "cook", "swim", "paint", "fly", "dance", "read", "code", "sail", "skate"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u0301"]
CYRILLIC = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445", "i": "\u0456"}


def invisible(rng: random.Random, s: str) -> str:
    """Zero-width characters, soft hyphens and combining accents sprinkled inside the words."""
    return "".join(ch + (rng.choice(INVISIBLE) if ch.isalpha() and rng.random() < 0.5 else "") for ch in s)


def fullwidth(rng: random.Random, s: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" and rng.random() < 0.5 else ch for ch in s)


def lookalike(rng: random.Random, s: str) -> str:
    return "".join(CYRILLIC[ch] if ch in CYRILLIC and rng.random() < 0.5 else ch for ch in s)


def padded(rng: random.Random, s: str) -> str:
    """The fill between 16 000 and 4 000 whitespace characters (a few hundred tokens to the model)."""
    return " " * 16_001 + s + "\n" * 4_001


def plain(rng: random.Random, s: str) -> str:
    return s


def _fill(rng: random.Random) -> str:
    return TEMPLATE.format(a=rng.choice(ANIMALS), c=rng.choice(CITIES), v=rng.choice(VERBS))


@pytest.mark.parametrize("disguise", [invisible, fullwidth, lookalike, padded])
def test_a_disguised_fill_reads_as_the_fill(disguise: Any) -> None:
    rng = random.Random(3)
    for _ in range(5):
        fill = _fill(rng)
        a, b = extract(CHAT, chat(fill), 0.0), extract(CHAT, chat(disguise(rng, fill)), 0.0)
        assert (b.prompt_key, b.head_key, b.tail_key, b.minhash, b.bottom, b.prompt_words) == (
            a.prompt_key, a.head_key, a.tail_key, a.minhash, a.bottom, a.prompt_words)
        assert b.embedding == pytest.approx(a.embedding)


def test_the_turn_identity_is_of_the_text_as_sent() -> None:
    # the memory of last turns compares the history as sent: the fold must not change a turn's identity
    text = "wh\u200bat is the c\u0430pital of France?"
    assert extract(CHAT, chat(text), 0.0).turn_crc == turn_crc(text) != turn_crc(fold(text))


def test_ascii_text_is_not_copied_and_other_scripts_stay() -> None:
    s = "plain ASCII text " * 10
    assert fold(s) is s
    # look-alike letters read as Latin; the rest of a script (and its digits) stays
    assert fold("Привет, как дела? 東京 ١٢٣") == "Пpивeт, kak дeлa? 東京 ١٢٣"
    assert fold("ＡＢＣ ｃａｆé ﬁne") == "ABC cafe fine"


def test_an_ordinary_long_document_is_cut_as_before() -> None:
    rng = random.Random(5)
    doc = " ".join(rng.choice(["alpha", "beta", "gamma.", "delta,", "(eps)"]) for _ in range(20_000))
    assert window(doc) == doc[:16_000] + " " + doc[-4_000:]
    squeezed = " ".join(doc.split(" ")[:3000])  # under 20 000 characters once its whitespace is squeezed
    spaced = squeezed.replace(" ", "   ")
    assert len(spaced) > 20_000 and window(spaced) == squeezed


def test_the_long_window_costs_what_the_padding_costs() -> None:
    # a 4 MB prompt of whitespace is squeezed at most _SCAN_CHARS in from each end, never all of it
    body = chat(" " * 4_000_000 + "tail words here")
    t0 = time.perf_counter()
    f = extract(CHAT, body, 0.0)
    assert time.perf_counter() - t0 < 0.25
    assert f.prompt_words == 3


def test_a_request_of_instructions_only_is_read_by_them() -> None:
    fill = _fill(random.Random(1))
    assert prompt_of(CHAT, {"messages": [{"role": "system", "content": fill}]}) == (fill, 0)
    two = [{"role": "developer", "content": "Be brief."}, {"role": "system", "content": fill}]
    assert prompt_of(CHAT, {"messages": two}) == ("Be brief.\n" + fill, 0)
    # leading instructions before a user turn are still not the turn
    assert prompt_of(CHAT, {"messages": [two[1], {"role": "user", "content": "Go"}]}) == ("Go", 1)
    # no user message and no trailing instructions: nothing to read, as before
    assert prompt_of(CHAT, {"messages": [two[1], {"role": "assistant", "content": "Sure"}]}) == ("", 1)


def _harvester(client: str, shape: Any) -> list[dict[str, Any]]:
    rng = random.Random(client)
    ts, out = 1_767_258_000.0, []
    for _ in range(120):
        ts += rng.uniform(2, 6)
        out.append({"ts": ts, "client": client, "endpoint": CHAT,
                    "body": {"model": "m", "messages": shape(rng, _fill(rng)), "max_tokens": 600}})
    return out


SHAPES = {
    "invisible": lambda rng, f: [{"role": "user", "content": invisible(rng, f)}],
    "fullwidth": lambda rng, f: [{"role": "user", "content": fullwidth(rng, f)}],
    "padded": lambda rng, f: [{"role": "user", "content": padded(rng, f)}],
    "system only": lambda rng, f: [{"role": "system", "content": f}],
    "developer only": lambda rng, f: [{"role": "developer", "content": f}],
    "refusal part": lambda rng, f: [{"role": "user", "content": [{"type": "refusal", "refusal": f}]}],
}


def test_disguised_harvesters_are_flagged(engine: Engine) -> None:
    # before: none of these reached even the watch tier (max scores 0.01 - 0.1); a plain one is flagged at 5
    traces = [r for name, shape in SHAPES.items() for r in _harvester(name, shape)]
    traces.sort(key=lambda r: r["ts"])
    for c in replay(traces, engine)["clients"]:
        assert c["flagged"] and c["first_flag_index"] <= 20, c


def test_text_in_refusal_and_thinking_parts_is_read() -> None:
    # vLLM reads these parts' text in any message: a fill there was read as "" while the model answered it
    fill = _fill(random.Random(2))
    for kind in ("refusal", "thinking"):
        body = {"messages": [{"role": "user", "content": [{"type": kind, kind: fill}]}]}
        assert prompt_of(CHAT, body) == (fill, 1)
    odd = {"messages": [{"role": "user", "content": [{"type": ["refusal"], "text": "x"}, {"type": "text"}]}]}
    assert prompt_of(CHAT, odd) == ("x ", 1)  # odd parts never raise
