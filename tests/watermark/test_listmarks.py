"""Markdown list markers as choice points: one choice per list, never splitting or merging lists.

The CommonMark reference renderer (markdown-it-py) is the judge: for texts whose words hold no lexical slot,
the watermarked text must render to exactly the same HTML as the original, for every client key.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.lexicon import default_lexicon
from watermark.listmarks import Marker, parse_marker
from watermark.scanner import Scanner

LEX = default_lexicon()
MD = MarkdownIt("commonmark")


def slots(text: str, markdown: bool = True) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def record(group: int, observed: int, context: str) -> int:
        found.append((context, " ".join(LEX.groups[group].variants[observed])))
        return observed

    out, used = Scanner(LEX, 2, markdown).run(text, True, record)
    assert out == text and used == len(text)
    return found


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n- c", [("", "-")]),  # one choice per list, not per item
        ("* one\n* two\n\nPara\n\n- three", [("", "*"), ("para", "-")]),  # a paragraph ends a list
        ("1. x\n2. y\n   - sub\n   - sub2\n3. z", [("y", "-")]),  # nested lists are lists too; ordered: never
        ("- a\n\n  more of a\n- b", [("", "-")]),  # a loose list with a continuation paragraph is one list
        ("- a\nlazy line of a\n- b", [("", "-")]),  # a lazy continuation line does not end the list
        ("- a\n* b\n- c", [("", "-")]),  # marker changes start new lists: those are forced, not chosen
        ("1. a\n\n2. b\n\nPara\n\n1) c", []),  # ordered lists keep their delimiters (raw text stays consistent)
        ("---\n- - -\n* * *\n", []),  # thematic breaks
        ("Title\n- \n", []),  # setext underline / empty item
        ("+ a\n+ b", []),  # "+" bullets are tracked, never chosen
        ("2019. It was a good year.", []),  # a number opening a paragraph is not a new list
        ("text\n2. not a list item\n", []),  # "2." cannot interrupt a paragraph
        ("    - indented code\n", []),
        ("```\n- in a fence\n- still\n```\n", []),
        ("-not a marker\n*emphasis*\n", []),
        ("<div>\n- raw html block\n</div>\n", []),  # an HTML block's lines are not markdown
        ("> - quoted\n> - list\n", []),  # lists inside block quotes are not chosen
    ],
)
def test_list_slots(text: str, expected: list[tuple[str, str]]) -> None:
    assert slots(text) == expected
    assert slots(text, markdown=False) == []


def test_list_item_words_start_a_sentence() -> None:
    # the first word of an item is sentence-initial, as after "1." (sentence-only groups apply there)
    assert ("", "-") in slots("- So the total is 5\n") and ("", "so") in slots("- So the total is 5\n")


@pytest.mark.parametrize(
    ("line", "kind", "content_col"),
    [("- a", "bullet", 2), ("*   a", "bullet", 4), ("12. a", "ordered", 4), ("3) a", "ordered", 3),
     ("-      a", "bullet", 2)],  # 5+ spaces: indented code inside the item, content column = marker + 1
)
def test_parse_marker(line: str, kind: str, content_col: int) -> None:
    complete, m = parse_marker(line, 0, 0, True)
    assert complete and isinstance(m, Marker) and m.kind == kind and m.content_col == content_col


@pytest.mark.parametrize("prefix", ["-", "- ", "12", "12.", "- -", "* * "])
def test_parse_marker_waits_for_the_line(prefix: str) -> None:
    assert parse_marker(prefix, 0, 0, False) == (False, None)


DOCS = [
    "Intro:\n\n- alpha\n- beta\n  - nested\n  - nested two\n- gamma\n\n1. one\n   - x\n    - y\n2. two\n\n* star\n",
    "1. alpha\n2. beta\n\n   beta again\n3. gamma\n\nText.\n\n1) delta\n2) epsilon\n",
    "- alpha\n* beta\n- gamma\n+ delta\n\n---\n\n* epsilon\n  * zeta\n* eta\n",
    "Heading\n=======\n\n- alpha\n  lazy\n- beta\n\n    code block\n\n- gamma\n\n```\n- fenced\n```\n",
    "- alpha\n\n      indented code in item\n- beta\n   - sibling? nested\n - beta two\n",
    "- use `a\n- b` and `c`\n\n1. x ``y\n2) z``\n",
]


@pytest.mark.parametrize("doc", DOCS)
def test_rendering_is_unchanged_for_every_key(doc: str) -> None:
    ring = KeyRing(b"k" * 32, 1)
    scheme = LexicalScheme(ring.master)
    html = MD.render(doc)
    outs = {scheme.embed(doc, ring.key(f"client-{i}")) for i in range(24)}
    has_bullets = any(line.lstrip().startswith(("- ", "* ")) for line in doc.splitlines())
    assert (len(outs) > 1) == has_bullets  # bullet markers carry choices; ordered lists never change
    for out in outs:
        assert MD.render(out) == html, out


_LINE = st.sampled_from([
    "___", "***", "## Head", "\t- tab", " - one", "  1) two", "1.  wide", "*\tx", "   > q", "  10. x", "#tag",
    "> - quoted", "~~~", "-  ", "1.", "***bold***",
    "- alpha", "* alpha", "+ alpha", "1. alpha", "1) alpha", "2. alpha", "3) alpha", "  - beta", "  * beta",
    "   1. beta", "    - gamma", "     * gamma", "Para text", "lazy text", "", "", "---", "# Heading", "```",
    "> quote", "- - -", "-", "10. alpha", "- a `b", "c` d", "1. x ``y",
])


# 150 random documents per run keep the suite fast; hypothesis explores new ones on every run.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE, min_size=1, max_size=14), client=st.integers(0, 50),
       cuts=st.lists(st.integers(1, 300), max_size=8))
def test_random_markdown_renders_the_same(lines: list[str], client: int, cuts: list[int]) -> None:
    doc = "\n".join(lines) + "\n"
    if doc.count("```") % 2:
        doc += "```\n"
    ring = KeyRing(b"k" * 32, 1)
    scheme = LexicalScheme(ring.master)
    out = scheme.embed(doc, ring.key(f"c{client}"))
    assert MD.render(out) == MD.render(doc)
    # streamed in arbitrary pieces, the output is the same
    e = scheme.embedder(ring.key(f"c{client}"))
    parts, pos = [], 0
    for c in sorted(set(cuts)):
        if pos < c < len(doc):
            parts.append(e.feed(doc[pos:c]))
            pos = c
    parts.append(e.feed(doc[pos:]))
    assert "".join(parts) + e.finish() == out


@settings(max_examples=80, deadline=None)
@given(doc=st.sampled_from(DOCS), cuts=st.lists(st.integers(1, 200), max_size=12), client=st.integers(0, 9))
def test_streaming_equals_batch_for_lists(doc: str, cuts: list[int], client: int) -> None:
    ring = KeyRing(b"k" * 32, 1)
    scheme = LexicalScheme(ring.master)
    key = ring.key(f"c{client}")
    batch = scheme.embed(doc, key)
    e = scheme.embedder(key)
    parts, pos = [], 0
    for c in sorted(set(cuts)):
        if c < len(doc):
            parts.append(e.feed(doc[pos:c]))
            pos = c
    parts.append(e.feed(doc[pos:]))
    parts.append(e.finish())
    assert "".join(parts) == batch


def test_list_choices_are_detected() -> None:
    ring = KeyRing(b"k" * 32, 1)
    scheme = LexicalScheme(ring.master)
    # each list's context is the word before it: distinct here, so 4 bullet tuples (ordered lists never count)
    doc = "".join(f"Part {w}:\n\n- alpha\n- beta {w}\n\n1. one\n2. two\n\n" for w in ("red", "green", "blue", "cyan"))
    key = ring.key("alice")
    score = scheme.score(scheme.embed(doc, key), ring.candidates(["alice", "bob"]))
    assert score.client_id == "alice" and score.scored == 4 and score.hits == 4
