"""Probe sets: the operator's private probes, the probes a reference can be checked with, and rotation.

Why private and rotating. The bundled probes (``probes.DEFAULT_PROBES``) are in the source: a backend that
wants to pass the checks while serving something else can recognise those eight prompts and route them to the
genuine model. An operator-owned set of prompts that never leaves the operator's hands (the JSONL file given
to ``ipgate fingerprint record --probes`` and the reference file written from it) removes that shortcut, and
sending only a random sample of it each round (``sample``) means one round never shows a backend the whole
set: it cannot learn the set from a single check and answer it genuinely from then on.

Rules of this module: no I/O (the CLI reads the file, the gateway reads the reference); the randomness comes
in as an argument, so the gateway can pass ``secrets.SystemRandom`` (the sample must not be predictable from
earlier rounds, which a seeded Mersenne Twister would allow) while a test can still pass a seeded one.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence

from fingerprint.probes import DEFAULT_PROBES, Probe
from fingerprint.signature import MAX_PROBE_TOKENS, Signature, normalise

# Ids appear in logs, alerts, metrics-free reasons and the admin API, prompts never do: an id is a short name,
# not a place to write the question. Bounds keep a file from turning a check into a long-generation job.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_PROMPT_CHARS = 8000
DEFAULT_MAX_TOKENS = 48
_FIELDS = frozenset({"id", "prompt", "max_tokens"})

_PUBLIC_PROMPTS = frozenset(p.prompt for p in DEFAULT_PROBES)
_PUBLIC_BY_ID = {p.id: p for p in DEFAULT_PROBES}


class ProbeSetError(ValueError):
    """A probe file that cannot be used; the message names the line and the field at fault."""


def _line_error(source: str, no: int, message: str) -> ProbeSetError:
    return ProbeSetError(f"{source}:{no}: {message}")


def _probe(obj: object, source: str, no: int) -> Probe:
    if not isinstance(obj, dict):
        raise _line_error(source, no, f"expected a JSON object, not {type(obj).__name__}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise _line_error(source, no, f"unknown field {unknown[0]!r} (allowed: id, prompt, max_tokens)")
    pid = obj.get("id")
    if not isinstance(pid, str) or not _ID.fullmatch(pid):
        raise _line_error(source, no, "field 'id' must be 1-64 characters of letters, digits and _ . : - "
                                      "(starting with a letter or digit)")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _line_error(source, no, "field 'prompt' must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _line_error(source, no, f"field 'prompt' is longer than {MAX_PROMPT_CHARS} characters")
    max_tokens = obj.get("max_tokens", DEFAULT_MAX_TOKENS)
    # bool is an int in Python: `"max_tokens": true` must not become a one-token probe
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_PROBE_TOKENS:
        raise _line_error(source, no, f"field 'max_tokens' must be an integer from 1 to {MAX_PROBE_TOKENS}")
    return Probe(pid, prompt, max_tokens)


def parse_probe_set(text: str, source: str = "<probes>") -> tuple[Probe, ...]:
    """Parse a JSONL probe file: one ``{"id", "prompt", "max_tokens"?}`` object per line.

    Blank lines are skipped. Anything else that is not a valid probe is a ``ProbeSetError`` naming
    ``source:line`` and the field, never the prompt text (error messages end up in terminals and logs).
    Duplicate ids, and duplicate prompts (the same question twice is no extra evidence and would let one answer
    count twice in the median), are errors too.
    """
    probes: list[Probe] = []
    ids: dict[str, int] = {}
    prompts: dict[str, int] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _line_error(source, no, f"not valid JSON ({e.msg} at column {e.colno})") from e
        probe = _probe(obj, source, no)
        if probe.id in ids:
            raise _line_error(source, no, f"field 'id': {probe.id!r} is already used on line {ids[probe.id]}")
        if probe.prompt in prompts:
            raise _line_error(source, no, f"field 'prompt': the same prompt is already on line {prompts[probe.prompt]}")
        ids[probe.id], prompts[probe.prompt] = no, no
        probes.append(probe)
    if not probes:
        raise ProbeSetError(f"{source}: no probes (expected one JSON object per line)")
    return tuple(probes)


def reference_probes(reference: Signature) -> tuple[Probe, ...]:
    """The probes a reference can be checked with: each answer's own prompt and ``max_tokens``.

    Sending the prompt the reference answered (rather than today's bundled wording) keeps every probe
    comparable. Files written before prompts were stored hold only ids: those were recorded with the bundled
    set, so a bundled id stands for its bundled probe; an unknown id without a prompt cannot be asked again
    and is left out. So is a probe whose reference answer is empty (there is nothing to compare it with).
    """
    out: dict[str, Probe] = {}
    seen: set[str] = set()
    for a in reference.answers:
        if a.probe_id in seen:  # a hand-edited file with an id twice: the first answer is the one compared
            continue
        seen.add(a.probe_id)
        if not normalise(a.text):
            # An empty reference answer is never compared (``match.compare``; ``record`` says it is skipped):
            # drawing it would only waste a place in the round's sample, and with probes_per_check ==
            # min_probes make the round inconclusive.
            continue
        if a.prompt:
            out[a.probe_id] = Probe(a.probe_id, a.prompt, a.max_tokens or DEFAULT_MAX_TOKENS)
        elif a.probe_id in _PUBLIC_BY_ID:
            out[a.probe_id] = _PUBLIC_BY_ID[a.probe_id]
    return tuple(out.values())


# A backend's error body (or an exception message) is worth quoting to the operator, but one that echoes the
# request would copy a private prompt into logs and the admin API: any stretch of this many characters of a
# prompt (case and whitespace folded) marks the text as quoting it.
QUOTE_CHARS = 24


def _fold(text: str) -> str:
    return " ".join(text.split()).lower()


def quotes_a_prompt(text: str, prompts: Iterable[str]) -> bool:
    """Does ``text`` quote a stretch of one of ``prompts``, as written or as the JSON request carried it
    (``\\uXXXX`` escapes for non-ASCII characters, ``\\n``, ``\\"``): an error body that echoes the raw
    request body holds the escaped form. Probes are sent as UTF-8 (non-ASCII characters as they are, ``\\n``
    escaped: ``gateway/fingerprint_client.py``), so that form too; ASCII-escaped echoes come from servers that
    re-encode the request."""
    folded = _fold(text)
    for prompt in prompts:
        for form in {prompt, json.dumps(prompt)[1:-1], json.dumps(prompt, ensure_ascii=False)[1:-1]}:
            p = _fold(form)
            n = min(QUOTE_CHARS, len(p))
            if n and any(p[i : i + n] in folded for i in range(len(p) - n + 1)):
                return True
    return False


def public_probe_ids(probes: Iterable[Probe]) -> tuple[str, ...]:
    """Ids of the probes whose prompt is one of the bundled (public) ones: a backend can recognise these."""
    return tuple(p.id for p in probes if p.prompt in _PUBLIC_PROMPTS)


def sample(probes: Sequence[Probe], k: int, rng: random.Random) -> tuple[Probe, ...]:
    """``k`` distinct probes drawn uniformly without replacement (all of them, shuffled, when ``k`` >= the set)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return tuple(rng.sample(list(probes), min(k, len(probes))))


def restrict(reference: Signature, probe_ids: Iterable[str]) -> Signature:
    """The reference cut to the probes sent this round, so the matcher counts and reports over those only."""
    wanted = set(probe_ids)
    return Signature(model=reference.model, answers=tuple(a for a in reference.answers if a.probe_id in wanted))
