"""The substitution table: groups of interchangeable phrasings and the contexts in which they are safe.

The table is data (``watermark/data/lexicon.json``, built by ``scripts/build_lexicon.py`` from WordNet 3.0 and
curated); this module loads it once and indexes it by first word for the left-to-right scanner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from watermark.listmarks import BULLETS, DELIMITERS

_VOWELS = frozenset("aeiou")
# how many chunks a ``Group.parallel`` slot reads past the word after it ("every smile, every laugh": the phrase,
# its noun, then the repeated word)
PARALLEL_REACH = 2
ARTICLES = frozenset({"a", "an"})


@dataclass(frozen=True, slots=True)
class Group:
    gid: str  # stable identifier, hashed into the keyed choice (changing it changes the choices)
    variants: tuple[tuple[str, ...], ...]  # lower-case words of each variant, for matching
    display: tuple[str, ...]  # rendering of each variant in lower-case position ("I" stays upper)
    level: int  # 1: normal strength; 2: strong only
    need_next_word: bool
    comma_after: bool
    next_not: frozenset[str]
    next_in: frozenset[str]
    prev_not: frozenset[str]
    next_not_participle: frozenset[str]  # non-empty: also reject a next word ending in "ed"
    prev_in: frozenset[str]  # non-empty: only right after one of these words (before the number: after_quantity)
    after_comma: bool  # only right after a comma
    next_number: bool  # only right before a number
    next_word_only: bool  # only right before a plain word: never a number ("every 6 hours") or a symbol
    sentence_start: bool | None  # True: only at the start of a sentence; False: only elsewhere; None: both
    after_quantity: bool  # only after a number or a word in ``quantities`` ("$5 a day", "twice a day")
    quantities: frozenset[str]
    before_punct: bool  # only right before . ; : ! or ? (the end of a clause)
    after_break: bool  # only after , ; or a dash, or right after and/but/or/yet (a clause break)
    mixed_initial: bool  # some variants start with a vowel, others not: never after "a"/"an"
    # 's = "has" ("he's just left"): after one of these adverbs the word after it decides; refused when it is
    # a participle (``adverb_participles``, or any "-ed" word not in ``adverb_adjectives``) or an adverb of
    # ``adverb_chain`` (which may come before one)
    adverb_lookahead: frozenset[str] = frozenset()
    adverb_participles: frozenset[str] = frozenset()
    adverb_chain: frozenset[str] = frozenset()  # adverbs that may come between the adverb and a participle
    adverb_adjectives: frozenset[str] = frozenset()
    # not before a word with one of these endings ("each appending": "each" as a pronoun) unless it is one of
    # ``suffix_nouns`` ("every morning"); the first-word classes of such words are in ``next_not`` already
    next_not_suffix: tuple[str, ...] = ()
    suffix_nouns: frozenset[str] = frozenset()
    suffix_prev_ok: frozenset[str] = frozenset()  # the ending is allowed right after these ("for each matching")
    # never before a number that may be a point in time: a year ("since 1958") or a clock time ("since 9:30",
    # "since 9am"), where "since" is temporal and "because" would change the meaning
    next_not_date: bool = False
    # the table revision that added the group (1: the groups of the first revision). The table is append-only,
    # so a text served under revision r is scored over the groups with ``since <= r`` too (``LexicalScheme``)
    since: int = 1
    # non-empty: the number after the phrase must be followed by one of these chunks (an operator or a relation:
    # "because 4 x 5 = 20", "so 4 x 5 = 20"), else it is too often a time ("since 3.6") or a size ("3 x 3 filters")
    next_relation: frozenset[str] = frozenset()
    # before one of these words (closed like ``next_not``), a slot only when the paragraph holds a number before it
    # ("So he pays 400*2=$800" is an inference, "So he took this kid to the park" narrative)
    next_needs_number: frozenset[str] = frozenset()
    # non-empty (the group's own first-word class): never a slot within two chunks of one of these words, before or
    # after ("Every smile, every laugh": changing one occurrence breaks the anaphora)
    parallel: frozenset[str] = frozenset()

    @property
    def k(self) -> int:
        return len(self.variants)

    @property
    def needs_next(self) -> bool:
        return bool(self.need_next_word or self.next_not or self.next_in or self.next_not_participle
                    or self.next_number or self.next_word_only)


@dataclass(frozen=True, slots=True)
class Candidate:
    group: int  # index into Lexicon.groups
    variant: int
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Lexicon:
    groups: tuple[Group, ...]
    by_first: dict[str, tuple[Candidate, ...]]  # longest phrases first
    lookahead: dict[str, int]  # chunks needed after the first word to decide every candidate
    # the same without the word after an adverb (``Group.adverb_lookahead``), which is read only when the word
    # after the phrase is such an adverb: a phrase is held no longer than its decision needs
    base_lookahead: dict[str, int]
    seconds: dict[str, frozenset[str]]  # first words that only start phrases -> the possible second words
    bullet_group: int  # the markdown choice points (``watermark.listmarks``): not in the table, never matched
    ordered_group: int  # as words, appended after the table's groups

    @classmethod
    def from_json(cls, table: dict[str, Any]) -> Lexicon:
        classes = _first_word_classes(table["groups"])

        def closed(words: list[str]) -> frozenset[str]:
            out: set[str] = set()
            for w in words:
                out |= classes.get(w, {w})
            return frozenset(out)

        # a word whose first-word class holds an "-ed" word counts as one after an adverb, so that embedding a
        # variant of that word's own group never changes the decision the detector sees
        ed_words = closed(sorted(w for w in classes if w.endswith("ed")))
        groups: list[Group] = []
        for g in table["groups"]:
            words = tuple(tuple(v.lower().replace("’", "'").split()) for v in g["variants"])
            display = tuple(_display(v) for v in g["variants"])
            initials = {w[0][0] in _VOWELS for w in words}
            suffixes = tuple(g.get("next_not_suffix", []))
            # a first word with the ending refuses its whole class (after any word), so embedding never changes
            # the decision
            suffix_class = closed(sorted(w for w in classes if suffixes and w.endswith(suffixes)
                                         and w not in g.get("suffix_nouns", [])))
            groups.append(Group(
                gid=g["id"], variants=words, display=display, level=int(g["level"]),
                need_next_word=bool(g["need_next_word"]), comma_after=bool(g["comma_after"]),
                next_not=closed(g["next_not"]) | suffix_class, next_in=closed(g["next_in"]),
                prev_not=frozenset(g["prev_not"]),
                next_not_participle=closed(g["participle_hints"]) if g["next_not_participle"] else frozenset(),
                prev_in=frozenset(g["prev_in"]), after_comma=bool(g["after_comma"]),
                next_number=bool(g["next_number"]), next_word_only=bool(g.get("next_word_only", False)),
                sentence_start=g.get("sentence_start"),
                after_quantity=bool(g.get("after_quantity", False)), quantities=frozenset(g.get("quantities", [])),
                before_punct=bool(g.get("before_punct", False)), after_break=bool(g.get("after_break", False)),
                mixed_initial=len(initials) > 1,
                adverb_lookahead=closed(g.get("adverb_lookahead", [])), adverb_chain=closed(g.get("adverb_chain", [])),
                adverb_participles=(closed(g["adverb_participles"]) | ed_words) if "adverb_participles" in g
                else frozenset(),
                adverb_adjectives=frozenset(g.get("adverb_adjectives", [])) - ed_words,
                next_not_suffix=suffixes, suffix_nouns=frozenset(g.get("suffix_nouns", [])) - suffix_class,
                suffix_prev_ok=frozenset(g.get("suffix_prev_ok", [])),
                next_not_date=bool(g.get("next_not_date", False)),
                since=_since(g),
                # closed like the next-word lists: the relation may be a slot of its own ("x" / "times")
                next_relation=closed(g.get("next_relation", [])),
                next_needs_number=closed(g.get("next_needs_number", [])),
                parallel=_parallel(g, closed),
            ))
        first: dict[str, list[Candidate]] = {}
        for gi, grp in enumerate(groups):
            if _retired(table["groups"][gi]):
                continue  # kept for its index and id; never a choice point again
            for vi, w in enumerate(grp.variants):
                first.setdefault(w[0], []).append(Candidate(gi, vi, w))
        by_first = {k: tuple(sorted(v, key=lambda c: -len(c.words))) for k, v in first.items()}
        base_lookahead = {
            k: max(len(c.words) - 1 + (1 if groups[c.group].needs_next else 0) + (1 if groups[c.group].next_relation
                                                                                   else 0)
                   + (PARALLEL_REACH if groups[c.group].parallel else 0) for c in v)
            for k, v in by_first.items()
        }
        lookahead = {
            k: max([base_lookahead[k], *(len(c.words) + 1 for c in v if groups[c.group].adverb_lookahead)])
            for k, v in by_first.items()
        }
        seconds = {
            k: frozenset(c.words[1] for c in v) for k, v in by_first.items() if all(len(c.words) > 1 for c in v)
        }
        bullet, ordered = len(groups), len(groups) + 1
        groups += [_markdown_group("markdown:bullet", BULLETS), _markdown_group("markdown:ordered", DELIMITERS)]
        return cls(tuple(groups), by_first, lookahead, base_lookahead, seconds, bullet, ordered)

    @property
    def revision(self) -> int:
        """The table's revision: the newest ``since`` of its groups."""
        return max(g.since for g in self.groups)


def _parallel(g: dict[str, Any], closed: Callable[[list[str]], frozenset[str]]) -> frozenset[str]:
    flag = g.get("parallel", False)
    if type(flag) is not bool:
        raise ValueError(f"lexicon group {g.get('id')!r}: 'parallel' must be true or false, got {flag!r}")
    return closed(sorted({v.lower().split()[0] for v in g["variants"]})) if flag else frozenset()


def _retired(g: dict[str, Any]) -> bool:
    """A retired group (``"retired": reason``) stays in the table, so ids and revisions stay as they were, but is
    never matched: text served while it was active is scored without its slots (fewer tuples, still valid)."""
    reason = g.get("retired", "")
    if not isinstance(reason, str):
        raise ValueError(f"lexicon group {g.get('id')!r}: 'retired' must be a reason (a string), got {reason!r}")
    return bool(reason)


def _since(g: dict[str, Any]) -> int:
    since = g.get("since", 1)
    if type(since) is not int or since < 1:
        raise ValueError(f"lexicon group {g.get('id')!r}: 'since' must be an integer >= 1, got {since!r}")
    return since


def _markdown_group(gid: str, marks: tuple[str, ...]) -> Group:
    """A list-marker choice point: same keyed choice and statistics as a word group, no word conditions."""
    none: frozenset[str] = frozenset()
    return Group(gid=gid, variants=tuple((m,) for m in marks), display=marks, level=1, need_next_word=False,
                 comma_after=False, next_not=none, next_in=none, prev_not=none, next_not_participle=none,
                 prev_in=none, after_comma=False, next_number=False, next_word_only=False, sentence_start=None,
                 after_quantity=False, quantities=none, before_punct=False, after_break=False,
                 mixed_initial=False)


def _first_word_classes(groups: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Words that can replace each other as the first word of a slot ("it" / "it's", "do" / "don't").

    A slot's conditions on the *next* word must not change when embedding swaps that next word for another
    variant of its own group, or the detector would see a different set of slots than the embedder wrote.
    So every next-word condition is closed under these classes (union-find over first words per group).
    """
    parent: dict[str, str] = {}

    def find(w: str) -> str:
        while parent.setdefault(w, w) != w:
            w = parent[w]
        return w

    for g in groups:
        firsts = [v.lower().replace("’", "'").split()[0] for v in g["variants"]]
        for w in firsts[1:]:
            parent[find(w)] = find(firsts[0])
    out: dict[str, set[str]] = {}
    for w in list(parent):
        out.setdefault(find(w), set()).add(w)
    return {w: out[find(w)] for w in parent}


def _display(variant: str) -> str:
    """Lower-case rendering, keeping the pronoun "I" (and its contractions) upper-case."""
    words = variant.split(" ")
    out = [w if w == "I" or w.startswith(("I'", "I’")) else w.lower() for w in words]
    return " ".join(out)


_DEFAULT: list[Lexicon] = []


def default_lexicon() -> Lexicon:
    """The shipped table (loaded once per process; the object is immutable)."""
    if not _DEFAULT:
        text = resources.files("watermark.data").joinpath("lexicon.json").read_text(encoding="utf-8")
        _DEFAULT.append(Lexicon.from_json(json.loads(text)))
    return _DEFAULT[0]
