"""The shipped substitution table: well-formed, unambiguous, and shipped with WordNet's licence."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from watermark.lexicon import default_lexicon


def test_shipped_table_is_well_formed() -> None:
    data = json.loads(resources.files("watermark.data").joinpath("lexicon.json").read_text(encoding="utf-8"))
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in data["wordnet_notice"]
    ids = [g["id"] for g in data["groups"]]
    assert len(ids) == len(set(ids))
    owner: dict[str, list[object]] = {}
    for g in data["groups"]:
        assert len(g["variants"]) >= 2 and g["level"] in (1, 2)
        assert g["source"] == "grammar" or g["source"].startswith(("wordnet:", "curated: ", "context: "))
        assert not g["source"].startswith("curated") or g["level"] == 2  # unchecked groups: strong tier only
        # groups whose shared sense comes from their context must be guarded by that context
        assert not g["source"].startswith("context") or (g["prev_in"] and len(g["source"]) > 40)
        for v in g["variants"]:
            assert not any(ch.isdigit() for ch in v)  # numbers are never involved
            owner.setdefault(v.lower(), []).append(g.get("sentence_start"))
    # a phrase belongs to one group, or to two whose sentence-start conditions exclude each other
    for v, starts in owner.items():
        assert len(starts) == 1 or sorted(starts, key=str) == [False, True], (v, starts)
    licence = resources.files("watermark.data").joinpath("LICENSE.wordnet").read_text(encoding="utf-8")
    assert "Princeton University" in licence and "WordNet 3.0" in licence


def test_index_lookahead_covers_every_phrase() -> None:
    lex = default_lexicon()
    for first, cands in lex.by_first.items():
        assert all(c.words[0] == first for c in cands)
        assert [len(c.words) for c in cands] == sorted((len(c.words) for c in cands), reverse=True)
        assert lex.lookahead[first] >= max(len(c.words) for c in cands) - 1


def test_articles_agree_by_sound() -> None:
    """Every rendered variant says "an hour" and "a unit": a wrong article would make the watermark visible."""
    lex = default_lexicon()
    vowel_sound_consonant = {"hour", "honor", "heir"}
    consonant_sound_vowel = {"unit", "university", "use", "user", "euro", "one"}
    for g in lex.groups:
        for words in g.variants:
            for art, noun in itertools.pairwise(words):
                if art == "a":
                    assert noun[0] not in "aeiou" or noun in consonant_sound_vowel, words
                    assert noun not in vowel_sound_consonant, words
                if art == "an":
                    assert noun[0] in "aeiou" or noun in vowel_sound_consonant, words
                    assert noun not in consonant_sound_vowel, words


def test_shipped_table_is_what_the_script_builds(tmp_path: Path) -> None:
    """The table is regenerable: the committed script rebuilds it byte for byte from WordNet."""
    wordnet = Path("/usr/share/wordnet")
    licence = Path("/usr/share/doc/wordnet-base/copyright")
    if not (wordnet / "index.verb").exists() or not licence.exists():
        pytest.skip("WordNet (Debian wordnet-base) is not installed")
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_lexicon.py"
    out = tmp_path / "lexicon.json"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    shipped = resources.files("watermark.data").joinpath("lexicon.json").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == shipped
