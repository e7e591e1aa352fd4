"""Detection of text whose code fence never closes (line-joining reformatting): the second, lenient reading."""

from __future__ import annotations

import numpy as np

from tests.support.lexical import rewrap
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme, Observation
from watermark.lexicon import default_lexicon
from watermark.scanner import Scanner

PROSE = (
    "I think you are right, but it is not that simple. You do not need to buy a big car; it is easy to use "
    "public transport instead, and it is cheaper. However, it is important to consider the cost. I am sure "
    "you will find a way. It is not hard, and you do not have to rush. They are happy to help, and we are "
    "too. If you are unsure, it is fine to ask. You are not alone, and it is normal to need time."
)



def document(paragraphs: int) -> str:
    code = "```python\nimport os\nprint(os.getcwd())\n```"
    steps = [PROSE.replace("I think", f"Step {i}: I think") for i in range(paragraphs)]
    return "\n\n".join(["Run this:", code, "Then it is done.", *steps])


def test_a_fence_joined_into_one_line_hides_the_rest_from_the_strict_reading(scheme: LexicalScheme,
                                                                             ring: KeyRing) -> None:
    key = ring.key("alice")
    marked = scheme.embed(document(6), key)
    attacked = rewrap(marked)
    assert "```python import os" in attacked  # the closing fence is now in the middle of a line
    obs = scheme.observe(attacked)
    assert obs.lenient is not None and int(obs.lenient.sum()) > int((~obs.lenient).sum())
    strict_only = Observation(tuple(c for c, f in zip(obs.contexts, obs.lenient.tolist(), strict=True) if not f),
                              obs.groups[~obs.lenient], obs.observed[~obs.lenient], obs.level[~obs.lenient])
    strict = scheme.score_observation(strict_only, [key])
    both = scheme.score_observation(obs, [key])
    assert not strict.watermarked(1e-6)
    assert both.watermarked(1e-6) and both.client_id == "alice"
    # the strict reading has no slot at all here (an empty view never rejects, so it is no hypothesis); the
    # lenient reading's two strength views are one joint test
    assert strict.scored == 0 and both.family_size == 1
    assert both.hits == both.scored  # every slot the lenient reading adds was chosen by the embedder


def test_text_whose_fences_close_is_scored_exactly_as_before(scheme: LexicalScheme, ring: KeyRing) -> None:
    keys = ring.candidates([f"client-{i}" for i in range(50)])
    marked = scheme.embed(document(3), keys[7])
    obs = scheme.observe(marked)
    assert obs.lenient is not None and not obs.lenient.any()
    plain = Observation(obs.contexts, obs.groups, obs.observed, obs.level)  # no lenient flags at all
    a, b = scheme.score_observation(obs, keys), scheme.score_observation(plain, keys)
    assert (a.p_value, a.client_id, a.family_size, a.hits, a.scored) == (b.p_value, b.client_id, b.family_size,
                                                                        b.hits, b.scored)


def test_a_response_cut_inside_its_code_block_keeps_its_prose(scheme: LexicalScheme, ring: KeyRing) -> None:
    # truncated output (max_tokens): the fence never closes, and there is nothing after it to recover
    key = ring.key("bob")
    marked = scheme.embed(PROSE + "\n\n" + PROSE + "\n\n```python\n# it is not done\nx = 1\n", key)
    obs = scheme.observe(marked)
    assert obs.lenient is not None and obs.lenient.any()  # the code's comment, read only by the lenient reading
    prose = scheme.observe(scheme.embed(PROSE + "\n\n" + PROSE, key))
    assert int((~obs.lenient).sum()) == prose.size  # the strict reading: exactly the prose's slots
    assert scheme.score(marked, [key]).watermarked(1e-6)


def test_unclosed_fence_markers_are_resolved_one_after_another_and_the_search_is_bounded(
        scheme: LexicalScheme) -> None:
    # fences close only with a marker at least as long as the opener: with these markers, shorter each time,
    # every marker opens a fence that never closes once the ones before it are read as plain text
    text = "".join(f"{'`' * (45 - i)}\n\n{PROSE}\n\n" for i in range(40))
    obs = scheme.observe(text)  # terminates: 16 markers at most are read as plain text
    assert obs.lenient is not None and obs.lenient.any()
    assert not (~obs.lenient).any()  # the first marker opens at offset 0: the strict reading sees nothing


def test_scanner_reads_a_listed_fence_marker_as_an_inline_code_span() -> None:
    lex = default_lexicon()
    text = "It is here.\n```python it is code ``` and it is prose\n\nIt is after.\n"
    at = text.index("```")

    def found(plain: frozenset[int]) -> list[str]:
        out: list[str] = []

        def record(group: int, observed: int, context: str) -> int:
            out.append(" ".join(lex.groups[group].variants[observed]))
            return observed

        scanner = Scanner(lex, 2, True, plain)
        assert scanner.run(text, True, record) == (text, len(text))
        return out

    assert found(frozenset()) == ["it is"]  # a fence: everything after it is code
    # plain backticks: the span up to the matching ``` is code, the rest of the paragraph and the next one prose
    assert found(frozenset({at})) == ["it is", "it is", "it is"]
    assert np.array_equal(np.array(found(frozenset({at + 1}))), np.array(["it is"]))  # only listed offsets
