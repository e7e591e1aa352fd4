"""Second meaning review on real text (tune split, 2026-11-26): text in another language is never a slot, nor
a discourse "So," before a speaker's opener ("So, I don't have any evidence" -> "Therefore, I don't have").

Read in watermarked tune-split answers: a German story ("So schritt sie weiter" -> "Hence schritt sie weiter",
"So sieht's aus" -> "Therefore sieht's aus"), a Vietnamese song ("Ông cỏ may ơi" -> "Ông cỏ might ơi"). The English
table matches words that other languages share, and no variant is right there. The guard (watermark/slots.py,
``language.foreign``) reads the last 12 words of the paragraph before a slot, outside code and other slots: when at
least two are foreign (a function word of a few European languages, or a word with diacritics or letters of
another alphabet) and at least three times as many as the English function words, the phrase is no slot. Each
refused case below was a slot before the guard; the controls are English text that quotes or glosses another
language.
"""

from __future__ import annotations

import random

import pytest

from tests.support.lexical import feed_in_pieces, slots
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.mix import choose, tuple_hash


def variants(text: str, level: int = 2) -> list[str]:
    return [v for _, v in slots(text, level)]


# (text, variant of the defective slot that must not be found); the first four are tune-split text
REFUSED = [
    ("zu sein, ein geheimer Tanz zwischen Lust und Schmerz, den niemand außer ihr ganz wirklich verstand. "
     "So schritt sie weiter, allein im schwachen Licht des nächtlichen Büros.", "so"),
    ('"Na, Anna, warst du wieder auf einem ganz wilden Ausflug unterwegs? So sieht’s aus, als hättest du mehr '
     'als nur Akten durchgenommen!"', "so"),
    ("zu verstärken – und somit die drohende Dunkelheit der Orks endgültig zu bannen. So begann ein neuer "
     "Abschnitt in ihrem Leben.", "so"),
    ("Hình bóng ấy vẫn in đậm bên con đường xa\nÔng cỏ may ơi, với tâm hồn giản dị", "may"),
    # the same words in other languages without diacritics: function words alone decide
    ("Er sagte, dass er nicht kommen kann, und sie wartete auf ihn. So war es immer.", "so"),
    ("Il est venu avec nous dans la voiture et il est parti. C'est important pour nous.", "important"),
    ("Para que se cumplan todas las condiciones, como se explica en el manual, en particular el orden de los "
     "palos.", "particular"),
    ("Мы знаем, что это правда. Это очень важно для нас. So it is.", "so"),
]


@pytest.mark.parametrize(("text", "variant"), REFUSED)
def test_foreign_text_is_no_slot(text: str, variant: str) -> None:
    assert variant not in variants(text)


# (text, variant that must stay a slot): English that quotes, names or glosses another language
KEPT = [
    # a Portuguese dictionary entry with its English gloss (tune text)
    ("• [azuretts]O carácter dele é muito forte.[/azuretts] (His character is very strong.)", "very"),
    # Hungarian column names quoted in an English explanation (tune text)
    ("The idea is that each course has an individual gross price (column “bruttó ár”) but some courses also "
     "appear under one or more coupon–offer columns.", "also"),
    ("In German, „Ich weiß es nicht“ means that you do not know. So it is a polite answer.", "so"),
    ("My café is near the Champs-Élysées, and it is open late.", "it is"),
    ("Smith et al. and Jones et al. found that it is safe.", "it is"),
    # math: Greek letters, subscripts and single-letter variables are no foreign words
    ("Let λ = 3, μ = 4 and ε > 0, with xₙ in ℓ² and y = 2. So the answer is 8.", "so"),
    ("Los Angeles and Las Vegas are far apart, so it is a long drive.", "it is"),
]


@pytest.mark.parametrize(("text", "variant"), KEPT)
def test_english_text_stays_a_slot(text: str, variant: str) -> None:
    assert variant in variants(text)


def test_english_after_a_foreign_paragraph_gets_slots_back() -> None:
    german = "Er sagte, dass er nicht kommen kann, und sie wartete auf ihn. "
    assert "so" not in variants(german + "So it is done.")
    english = "This is the English translation of the story, and it is short. "
    assert "so" in variants(german + "\n\n" + english + "So it is done.")


def test_the_window_starts_again_at_each_paragraph() -> None:
    german = "Er sagte, dass er nicht kommen kann, und sie wartete auf ihn.\n"
    assert "sure" not in variants(german + "Sure, it is easy.")
    assert "sure" in variants(german + "\nSure, it is easy.")
    assert "sure" in variants(german + "  \n```\nx = 1\n```\n\nSure, it is easy.")


def test_slot_variants_do_not_move_the_window() -> None:
    """A slot's words are not counted: whichever variant the embedder wrote ("So"/"Therefore", "it is"/"it's"),
    the detector's window holds the same classes, so it refuses and accepts the same later phrases."""
    tail = " es wird nicht kommen und sie ist auf dem Weg. So it is."
    assert variants("So" + tail)[1:] == []
    for lead in ("Therefore", "Thus", "Hence"):
        assert variants(lead + tail)[1:] == []
    tail = " es wird nicht kommen, and it is late. So it is."
    for lead in ("So", "Therefore", "Thus", "Hence"):
        assert variants(lead + tail)[1:] == ["it is", "so"]


# Discourse "So," before a speaker's opener, which the comma hid from the group's next-word guard: "So, I don't have
# any good evidence" -> "Therefore, I don't have", "So, let's get started!" -> "Hence, let's". Tune-split text.
COMMA_REFUSED = [
    "I was feeling a little confused before! So, I don’t have any good evidence for you.",
    "Hm... so, I’m not an expert on violence in men in the US, but it might be important.",
    "I’m trying to be better at inferring what is most likely. So, I do sometimes reflect on the future.",
    "Here are helpful tips for cooking the perfect apple muffin. So, let's get started!",
    "They sink into a cycle of self-doubt and existential despair. So, how do you manufacture rarity?",
    # the detector reads the variant the embedder wrote: either contraction variant is refused the same way
    "It is hard to say. Therefore, I am not sure.",
    "It is hard to say. Therefore, I'm not sure.",
    "It is hard to say. Thus, let us begin.",
]


@pytest.mark.parametrize("text", COMMA_REFUSED)
def test_discourse_so_before_a_comma_is_no_slot(text: str) -> None:
    assert not {"so", "therefore", "thus", "hence"} & set(variants(text))


# inferential "So,"/"Thus," before a clause stays a slot (tune text); so does "So he ..." in worked solutions,
# where "so" is inferential (narrative "So he took this kid to the park" is not told apart: not fixed)
COMMA_KEPT = [
    ("She walks for 4 hours at 1.5 miles per hour. Thus, altogether, she travels 12+6=18 miles.", "thus"),
    ("She will be paid $210. Thus, if both work 20 hours, Billy will be paid $20 more.", "thus"),
    ("You will pay $4 for the juice. Therefore, you will pay a total of $24.", "therefore"),
    ("It gives you a 16.67% chance of survival. So, you should ask him to spin again.", "so"),
    ("It is 5 + 3 = 8. So, in three weeks, one section collected 420 kilos.", "so"),
    ("He sees the doctor 12/6=2 times a year. So he pays 400*2=$800 for doctor visits.", "so"),
]


@pytest.mark.parametrize(("text", "variant"), COMMA_KEPT)
def test_inferential_so_before_a_comma_stays_a_slot(text: str, variant: str) -> None:
    assert variant in variants(text)


def test_mixed_language_text_streams_like_batch() -> None:
    """The guard's window is updated on the fast path (a stretch copied verbatim) and on the word-by-word path:
    streamed in random pieces the output equals the batch output, and the detector finds every level-1 slot the
    embedder wrote as a hit."""
    ring = KeyRing(b"review-meaning2-master-secret-012")
    scheme = LexicalScheme(ring.master)
    text = "\n\n".join([t for t, _ in REFUSED + KEPT + COMMA_KEPT] + COMMA_REFUSED) + (
        "\n\nSo it is not hard, and I think that you are right. However, it is also true that we do not know. "
        "`code` und `mehr` So it is. Er sagte, dass er `nicht` kommen kann. So it is.")
    rnd = random.Random(11)
    for client in range(4):
        key = ring.key(f"client-{client}")
        whole = scheme.embed(text, key)
        for _ in range(6):
            assert feed_in_pieces(scheme.embedder(key), text, rnd, 7) == whole
        obs = scheme.observe(whole)
        groups = [scheme._lex.groups[g] for g in obs.groups.tolist()]
        assert len(groups) > 8
        assert all(choose(tuple_hash(scheme._base(key.version), c, g.gid), key.seed64, g.k) == o
                   for c, g, o in zip(obs.contexts, groups, obs.observed.tolist(), strict=True) if g.level <= 1)
