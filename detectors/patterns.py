"""Phrase patterns for reasoning elicitation, rubric grading and self-instruct meta-prompts.

English-only by design (a known limit, see the detection README): an attacker writing the same demand in
another language is not matched here and has to be caught by the template and volume detectors.
"""

from __future__ import annotations

import re

COT_RE = re.compile(
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|show (?:all )?(?:of )?(?:your|the) (?:full |complete |entire )?"
    r"(?:work|working|reasoning|thinking|thought process|derivation)|"
    r"(?:explain|walk (?:me )?through|detail|write out|output) (?:all )?(?:of )?(?:your|the) "
    r"(?:full |complete |entire )?(?:reasoning|thought process|thinking)|"
    r"think (?:it )?(?:through )?(?:carefully|aloud|out loud)|reasoning trace|"
    r"before (?:giving|stating|you give) (?:the|your) (?:final )?answer",
    re.I,
)
RUBRIC_RE = re.compile(
    r"\brubric\b|grade (?:the|this|each|following)|(?:rate|score) (?:the|this|each) (?:following )?"
    r"(?:response|answer|output|essay|completion)s?|on a scale (?:of|from) 0?1 to (?:5|10|100)|"
    r"evaluate (?:the )?(?:following |quality of (?:the )?)(?:response|answer|completion)s?|"
    r"which (?:response|answer|assistant) is better",
    re.I,
)
META_RE = re.compile(
    r"come up with (?:a (?:set|list) of )?\d+ (?:\w+ ){0,3}(?:task|instruction|question|prompt|example)s|"
    r"(?:generate|write|create|produce|brainstorm) (?:a (?:set|list) of )?\d+ (?:\w+ ){0,3}"
    r"(?:task instruction|instruction|task|prompt|training example|question-answer pair|"
    r"instruction-response pair)s|list of \d+ tasks|you are asked to come up with|"
    r"(?:new|diverse) (?:task )?instructions? (?:for|to train) (?:a |an )?(?:language model|ai|assistant)",
    re.I,
)

# The same patterns without re.I, for prompts that are ASCII once lower-cased (nearly all). There they match
# exactly what the re.I patterns match: every literal in the patterns is lower-case ASCII, the text holds no
# upper-case letter, and re.I only adds non-ASCII equivalents ("ı", "ſ", ...) that ASCII text cannot hold;
# ``\w``, ``\d`` and ``\b`` do not depend on the flag. Case-folding every comparison made re.I 2-3x slower.
COT_RE_ASCII, RUBRIC_RE_ASCII, META_RE_ASCII = (re.compile(r.pattern) for r in (COT_RE, RUBRIC_RE, META_RE))

# Substrings every match of the pattern above contains (checked first, on the lower-cased prompt).
COT_HINTS = (
    "step", "chain", "show", "reasoning", "thought", "think", "before", "explain", "walk", "detail", "write out",
    "output",
)
RUBRIC_HINTS = ("rubric", "grade", "rate", "score", "scale", "evaluate", "better")
META_HINTS = ("come up", "generate", "write", "create", "produce", "brainstorm", "list of", "instruction")
def demands(scan: str) -> tuple[bool, bool, bool]:
    """(chain-of-thought, rubric grading, self-instruct meta-prompt) demanded in ``scan`` (lower-cased text).

    Cheap substring gates first (the alternation regexes cost far more); on ASCII text (``isascii`` is O(1))
    the case-sensitive patterns, which match exactly the same there (see above)."""
    ascii_ = scan.isascii()
    cot = any(w in scan for w in COT_HINTS) and (COT_RE_ASCII if ascii_ else COT_RE).search(scan) is not None
    rubric = any(w in scan for w in RUBRIC_HINTS) and (
        RUBRIC_RE_ASCII if ascii_ else RUBRIC_RE).search(scan) is not None
    meta = any(w in scan for w in META_HINTS) and (META_RE_ASCII if ascii_ else META_RE).search(scan) is not None
    return cot, rubric, meta


STOPWORDS = frozenset(
    (
        "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one",
        "our", "out", "day", "get", "has", "him", "his", "how", "man", "new", "now", "old", "see", "two",
        "way", "who", "boy", "did", "its", "let", "put", "say", "she", "too", "use", "that", "with", "have",
        "this", "will", "your", "from", "they", "know", "want", "been", "good", "much", "some", "time",
        "very", "when", "come", "here", "just", "like", "long", "make", "many", "more", "only", "over",
        "such", "take", "than", "them", "well", "were", "what", "which", "their", "there", "would", "about",
        "could", "other", "into", "after", "also", "back", "then", "these", "those", "where", "while",
        "should", "because", "does", "each", "most", "being", "both", "same", "between", "through", "under",
        "again", "further", "once", "doing", "during", "before", "above", "below", "why", "own", "off",
        "few", "nor", "yes",
    )
)
