"""Embedding and detection round trips, attribution, deduplication, versions, strength, streaming."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.lexical import feed_in_pieces
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme, Observation
from watermark.mix import choose, tuple_hash


def long_text(responses: list[str], words: int, start: int = 0) -> str:
    out: list[str] = []
    i = start
    while sum(len(t.split()) for t in out) < words:
        out.append(responses[i % len(responses)])
        i += 1
    return "\n\n".join(out)


def test_round_trip_attributes_the_right_client(scheme: LexicalScheme, ring: KeyRing,
                                                responses: list[str]) -> None:
    text = long_text(responses, 1500)
    marked = scheme.embed(text, ring.key("alice"))
    assert marked != text
    keys = ring.candidates([f"client-{i}" for i in range(200)] + ["alice"])
    score = scheme.score(marked, keys)
    assert score.client_id == "alice" and score.key_version == 1
    assert score.hits == score.scored  # an untouched watermarked text hits every scored slot
    assert score.watermarked(1e-6)
    assert score.family_size == len(keys)  # strength views are one joint test, even with strong-only slots
    # another client's text is not attributed to alice, and unmarked text to nobody
    other = scheme.embed(text, ring.key("bob"))
    s2 = scheme.score(other, ring.candidates(["alice", "carol"]))
    assert not s2.watermarked(1e-3)
    assert not scheme.score(text, keys).watermarked(1e-3)


def test_vectorised_hits_equal_scalar_choices(scheme: LexicalScheme, ring: KeyRing,
                                              responses: list[str]) -> None:
    text = long_text(responses, 600)
    full = scheme.observe(text)
    lvl1 = full.level <= 1  # one strength view only, so every candidate's hits are over all tuples
    obs = Observation(tuple(c for c, k in zip(full.contexts, lvl1.tolist(), strict=True) if k),
                      full.groups[lvl1], full.observed[lvl1], full.level[lvl1])
    assert obs.size >= 10
    keys = ring.candidates([f"c{i}" for i in range(7)])
    score = scheme.score_observation(obs, keys, top=7)
    base = scheme._base(1)
    groups = scheme._lex.groups
    for cand in score.candidates:
        seed = ring.key(cand.client_id).seed64
        hits = sum(
            choose(tuple_hash(base, c, groups[g].gid), seed, groups[g].k) == o
            for c, g, o in zip(obs.contexts, obs.groups.tolist(), obs.observed.tolist(), strict=True)
        )
        assert hits == cand.hits


def test_repeated_text_is_scored_once(scheme: LexicalScheme, ring: KeyRing, responses: list[str]) -> None:
    para = scheme.embed(responses[0], ring.key("alice"))
    once = scheme.score(para, [ring.key("alice")])
    many = scheme.score("\n\n".join([para] * 30), [ring.key("alice")])
    # a verbatim copy adds no tuples, except the slots of the second copy whose preceding characters reach back
    # into the first (a different passage there): at most the slots within the copy window of its start
    assert once.scored <= many.scored <= once.scored + 3
    assert many.hits >= once.hits == once.scored
    assert abs(many.log10_p_value - once.log10_p_value) < 1.5
    corpus = scheme.score([para] * 30, [ring.key("alice")])  # pooled corpus: same tuples, counted once
    assert corpus.scored == once.scored and corpus.p_value == once.p_value


# (text, context mode, expected contexts of the "it is" slots): a repeat of (previous word, group) is numbered
CONTEXT_CASES = [
    ("Well it is here. Well it is there. Well it is blue.", "repeat", ["well", "well\x1e2", "well\x1e3"]),
    ("Well it is here. Well it is there. Well it is blue.", "word", ["well"]),
    ("Well it is here. So it is there. Well it is blue.", "repeat", ["well", "so", "well\x1e2"]),
    ("Well it is here. So it is there.", "first", ["\x1e", "so"]),
]


@pytest.mark.parametrize(("text", "mode", "expected"), CONTEXT_CASES)
def test_context_modes(ring: KeyRing, text: str, mode: str, expected: list[str]) -> None:
    scheme = LexicalScheme(ring.master, context=mode)
    obs = scheme.observe(text)
    gids = [scheme._lex.groups[g].gid for g in obs.groups.tolist()]
    got = [c for c, g in zip(obs.contexts, gids, strict=True) if g.startswith("it is|")]
    assert got == expected


def test_repeat_contexts_score_natural_repeats_and_round_trip(ring: KeyRing, responses: list[str]) -> None:
    text = long_text(responses, 2500)
    word, repeat = LexicalScheme(ring.master, context="word"), LexicalScheme(ring.master, context="repeat")
    key = ring.key("alice")
    s_word = word.score(word.embed(text, key), [key])
    s_rep = repeat.score(repeat.embed(text, key), [key])
    assert s_rep.scored > s_word.scored and s_rep.hits == s_rep.scored  # every numbered repeat was embedded
    # a first occurrence is keyed by its previous word in both schemes, so the "word" detector still finds every
    # tuple of a "repeat" text a hit; the other way round the numbered repeats are coin flips
    back = word.score(repeat.embed(text, key), [key])
    assert back.hits == back.scored > 0
    forth = repeat.score(word.embed(text, key), [key])
    assert forth.scored > s_word.scored and forth.hits < forth.scored
    with pytest.raises(ValueError, match="context"):
        LexicalScheme(ring.master, context="sentence")


def test_repeat_contexts_keep_null_pvalues_uniform(ring: KeyRing, responses: list[str]) -> None:
    # Numbered repeats are distinct PRF inputs: under H0 every tuple is still a fresh Bernoulli(1/k), so a
    # highly repetitive unwatermarked text is no more "significant" than any other.
    scheme = LexicalScheme(ring.master, context="repeat")
    nouns = ["cats", "dogs", "maps", "cars", "trees", "songs", "books", "lamps", "shoes", "coins", "cups", "birds"]
    text = " ".join(f"The {a} and the {b} are here. So it is true that I think you are right, and it is not easy."
                     for a in nouns for b in nouns[:4])
    obs = scheme.observe(text)
    assert obs.size > 100 and len(set(zip(obs.contexts, obs.groups.tolist(), strict=True))) == obs.size
    small = sum(scheme.score(text, [ring.key(f"null-{i}")]).p_value < 0.01 for i in range(300))
    assert small <= 12  # expected at most 3


def test_embedding_is_idempotent(scheme: LexicalScheme, ring: KeyRing, responses: list[str]) -> None:
    for text in responses[:20]:
        once = scheme.embed(text, ring.key("alice"))
        assert scheme.embed(once, ring.key("alice")) == once


def test_null_pvalues_are_not_small(scheme: LexicalScheme, ring: KeyRing, responses: list[str]) -> None:
    # Unwatermarked texts against one key: p-values are (super-)uniform, so few fall below 0.05.
    small = 0
    total = 0
    for i, text in enumerate(responses):
        s = scheme.score(text, [ring.key(f"null-{i}")])
        if s.scored:
            total += 1
            small += s.p_value < 0.05
    assert total >= 10 and small <= max(2, total // 8)


def test_rotation_old_version_still_verifies(responses: list[str]) -> None:
    old = KeyRing(b"test-master-secret-0123456789", current=1)
    new = KeyRing(b"test-master-secret-0123456789", current=2, retained=(1,))
    scheme = LexicalScheme(old.master)
    text = scheme.embed(long_text(responses, 1200), old.key("alice"))
    s = scheme.score(text, new.candidates(["alice", "bob"]))
    assert (s.client_id, s.key_version) == ("alice", 1)
    assert s.family_size == 4 and s.watermarked(1e-4)  # clients x versions: strength views are one joint test


def test_strong_strength_adds_choices(scheme: LexicalScheme, ring: KeyRing, responses: list[str]) -> None:
    text = long_text(responses, 3000)
    normal = scheme.embed(text, ring.key("alice"), "normal")
    strong = scheme.embed(text, ring.key("alice"), "strong")
    obs = scheme.observe(strong)
    assert bool(np.any(obs.level > 1))
    s_strong = scheme.score(strong, [ring.key("alice")])
    s_normal = scheme.score(normal, [ring.key("alice")])
    assert s_strong.family_size == 1  # the two strength views are one exact joint test (lexical_views.Strengths)
    assert s_strong.log10_p_value < s_normal.log10_p_value + math.log10(2) + 1e-9
    assert s_strong.watermarked(1e-6) and s_normal.watermarked(1e-6)


def test_empty_and_slotless_text(scheme: LexicalScheme, ring: KeyRing) -> None:
    for text in ("", "1234 5678", "```\nit is\n```", "   \n\n"):
        s = scheme.score(text, [ring.key("a")])
        assert s.scored == 0 and s.p_value == 1.0 and s.client_id is None and not s.watermarked(0.5)
    assert scheme.score("it is often", []).client_id is None


MARKDOWN = st.sampled_from(["it", "is", "not", "do", "don't", "It's", "for", "example", "often", "I", "think",
                            "you", "are", "about", "5", "`", "```", "\n", " ", "  ", "    ", ",", ".", "**",
                            "https://x.y/z", "However,", "a", "huge", "to", "help", "’", "~~~", "\t", "\n\n",
                            "NOT", "half", "of", "the", "years", "old.", "Let's", "break", "has", "been", "in",
                            "total.", "Also,", "So", "so", "He's", "just", "also", "left", "used", "tired", "each",
                            "sent", "altogether."])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(MARKDOWN, st.text(max_size=6)), max_size=60), seed=st.integers(0, 2**32))
def test_streaming_equals_batch(scheme: LexicalScheme, ring: KeyRing, parts: list[str], seed: int) -> None:
    text = " ".join(parts) if seed % 2 else "".join(parts)
    key = ring.key(f"k{seed % 5}")
    whole = scheme.embed(text, key)
    rnd = random.Random(seed)
    assert feed_in_pieces(scheme.embedder(key), text, rnd, 8) == whole


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_detection_never_crashes_on_unicode(scheme: LexicalScheme, ring: KeyRing, text: str) -> None:
    s = scheme.score(text, ring.candidates(["a", "b"]))
    assert 0.0 <= s.p_value <= 1.0
    marked = scheme.embed(text, ring.key("a"))
    # only listed phrases change: everything else, including all non-ASCII text, is kept
    assert [c for c in marked if not c.isascii()] == [c for c in text if not c.isascii()] or "’" in text


def test_feed_after_finish_is_an_error(scheme: LexicalScheme, ring: KeyRing) -> None:
    emb = scheme.embedder(ring.key("a"))
    emb.feed("it is")
    assert emb.finish() in ("it is", "it's")
    assert emb.finish() == ""
    try:
        emb.feed("x")
    except RuntimeError:
        pass
    else:
        raise AssertionError("feed() after finish() must raise")


def test_streaming_holds_back_at_most_a_phrase(scheme: LexicalScheme, ring: KeyRing) -> None:
    emb = scheme.embedder(ring.key("a"))
    assert emb.feed("Hello world. The ") == "Hello world. The "
    assert emb.feed("cat sat") == "cat "  # "sat" may continue
    assert emb.feed(" on it") == "sat on "  # "it" may start "it is"
    assert emb.feed(" is") == ""  # "it is" needs the next word (never contracted at a clause end)
    assert emb.feed(" nice.") == ""  # "nice." may continue
    assert emb.feed(" Bye") in ("it is nice. ", "it's nice. ")
    assert emb.finish() == "Bye"


def test_streaming_holds_has_lookahead_until_the_deciding_word(scheme: LexicalScheme, ring: KeyRing) -> None:
    # "He's just" is "he is just" or "he has just": the word after the adverb decides, so the phrase waits for it
    for rest, can_change in ((" left.", False), (" tired.", True)):
        emb = scheme.embedder(ring.key("a"))
        assert emb.feed("He's") == ""
        assert emb.feed(" just") == ""
        assert emb.feed(rest[:3]) == ""  # the deciding word may continue
        out = emb.feed(rest[3:] + " Bye") + emb.finish()
        assert out == scheme.embed("He's just" + rest + " Bye", ring.key("a"))
        if not can_change:
            assert out.startswith("He's just left.")


def test_inline_code_is_streamed_not_held(scheme: LexicalScheme, ring: KeyRing) -> None:
    emb = scheme.embedder(ring.key("a"))
    assert emb.feed("see `some code that never ") == "see `some code that never "
    assert emb.feed("closes\n") == "closes"  # only the line break is held (a blank line would end the span)
    assert emb.feed("more") == "\nmore"
    assert emb.finish() == ""


# Repeat contexts make the embedder stateful (each (previous word, group) pair is numbered), so a slot decided
# twice, or in a different order, when the text arrives in pieces would shift every later draw. Texts here
# repeat slots on purpose (numbered contexts), mix the newer groups with markdown, code and contractions, and
# are cut at arbitrary points: inside words, contractions, "**" markers, backtick runs and fences.
REPEATS = st.sampled_from([
    "So it is true. ", "So it is true. ", "Let's break it down. ", "She has been there. ", "She's been there. ",
    "He is 5 years old. ", "There were 12 in total. ", "Half of the cake was eaten. ", "He ate half the pie. ",
    "Additionally, it works. ", "Also, it is fine; moreover, it is cheap. ", "He paid $2 for each apple. ",
    "I do NOT agree. ", "**However**, it is not here. ", "`it is` ", "```\nit is not\n```\n", "- it is\n",
    "1. do not\n", "\n\n", "It’s been long. ", "you are right, but it is odd. ", "see https://x.y/it-is ",
    # look-ahead past the next word ('s = has), and the guarded contexts of "each", "half" and "altogether"
    "He's just left. ", "It's also used here. ", "He's just tired. ", "It's also become clear. ", "It's still ",
    "They also each sent it. ", "each appending ", "It fell to 0 altogether. ", "Cut in half the time. ",
])
CUTS = st.lists(st.integers(1, 400), max_size=40)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(REPEATS, min_size=1, max_size=30), cuts=CUTS, client=st.integers(0, 4))
def test_repeat_contexts_stream_like_batch(scheme: LexicalScheme, ring: KeyRing, parts: list[str],
                                          cuts: list[int], client: int) -> None:
    text = "".join(parts)
    key = ring.key(f"k{client}")
    whole = scheme.embed(text, key)
    emb = scheme.embedder(key)
    pieces, last = [], 0
    for c in sorted(set(cuts)):
        if c < len(text):
            pieces.append(emb.feed(text[last:c]))
            last = c
    pieces.append(emb.feed(text[last:]))
    pieces.append(emb.finish())
    assert "".join(pieces) == whole
    # the detector numbers the repeats as the embedder did: every normal-strength tuple of the marked text's
    # strict reading is a hit (``score`` may report the strong view, whose level-2 tuples are coin flips here,
    # and the lenient reading of a never-closed fence scores text the embedder took for code: coin flips too)
    obs = scheme.observe(whole)
    groups = [scheme._lex.groups[g] for g in obs.groups.tolist()]
    lenient = obs.lenient.tolist() if obs.lenient is not None else [False] * obs.size
    assert all(choose(tuple_hash(scheme._base(key.version), c, g.gid), key.seed64, g.k) == o
               for c, g, o, extra in zip(obs.contexts, groups, obs.observed.tolist(), lenient, strict=True)
               if g.level <= 1 and not extra)
