"""Which text of an OpenAI body the detectors read: the last user turn (``prompt_of``), the user turns
before it (``history_of``), a turn's identity (``turn_crc``), the instructions, and the draw that picks the
scored prompt of a batched request (``draw``; ``seed_batch_pick`` and ``seeded_draws`` make it reproducible).

A chat body is read by its messages, a legacy completions body by its prompt (``_legacy``).
"""

from __future__ import annotations

import contextlib
import random
import secrets
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: Content parts whose text is not under "text": vLLM reads these as text in any message (a user turn too)
_TEXT_KEYS = {"refusal": "refusal", "thinking": "thinking"}


def _text_key(kind: Any) -> str:
    return _TEXT_KEYS.get(kind, "text") if isinstance(kind, str) else "text"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content parts: [{"type": "text", "text": ...}, ...]
        # A fill in a {"type": "refusal", "refusal": ...} part of a user message was read as "" while the
        # model read it as the prompt: each part is read under the key its type names.
        return " ".join(str(p.get(_text_key(p.get("type")), "")) for p in content if isinstance(p, Mapping))
    return ""


_INSTRUCTION_ROLES = ("system", "developer")
_MAX_TURN_MESSAGES = 8  # consecutive user messages read as one turn (the rest of a longer run is left out)
MAX_HISTORY_TURNS = 8  # earlier user turns of a request considered as history (the most recent ones)
_CRC_CHARS = 2048  # a turn is identified by the CRC32 of its first characters


def _instructions_of(messages: list[Any]) -> str:
    """The text of the leading system/developer messages ("" when the conversation opens otherwise)."""
    first = messages[0]
    if type(first) is not dict or first.get("role") not in _INSTRUCTION_ROLES:
        return ""
    parts = []
    for m in messages:
        if type(m) is not dict or m.get("role") not in _INSTRUCTION_ROLES:
            break
        parts.append(_text_of(m.get("content")))
    return parts[0] if len(parts) == 1 else "\n".join(parts)


def _trailing_instructions(messages: Sequence[Any]) -> str:
    """The text of the system/developer messages a conversation ends with (its last ``_MAX_TURN_MESSAGES``).

    Read as the turn of a request that has no user message: the model answers its instructions, and such a
    request read as "" let a harvester send every fill as a lone system message unscored. Instructions after
    a user turn are not read with it: a fixed reminder that an application appends after every user message
    then made every benign prompt end alike (251 of 300 benign personas flagged as template fillers)."""
    parts: list[str] = []
    for m in reversed(messages):
        if not (type(m) is dict or isinstance(m, Mapping)):
            continue
        if m.get("role") not in _INSTRUCTION_ROLES or len(parts) >= _MAX_TURN_MESSAGES:
            break
        parts.append(_text_of(m.get("content")))
    return "\n".join(reversed(parts))


def _legacy(endpoint: str) -> bool:
    """``/v1/completions`` (not ``/v1/chat/completions``): the prompt is what the model answers."""
    return endpoint.endswith("/completions") and not endpoint.endswith("/chat/completions")


def prompt_of(endpoint: str, body: Mapping[str, Any]) -> tuple[str, int]:
    """The last user turn and the number of conversation messages (system/developer messages excluded).
    A request without a user message is read by its instructions (``_trailing_instructions``).

    The user turn is the last user message joined with the user messages right before it (no assistant or
    tool message between): a request can split one turn over several messages, and reading only the last one
    let a harvester send its template fill followed by a short "go ahead" that was all detection saw."""
    # a legacy completions body is read by its prompt: its server ignores chat fields (a stray ``messages: []``
    # beside the prompt hid it from every detector while the backend answered the prompt)
    messages = None if _legacy(endpoint) else body.get("messages")
    # ``type(x) is list/dict`` first: what a parsed JSON body holds, and far cheaper than an ABC isinstance
    if type(messages) is list or (isinstance(messages, Sequence) and not isinstance(messages, str)):
        turns = [m for m in messages
                 if (type(m) is dict or isinstance(m, Mapping)) and m.get("role") not in _INSTRUCTION_ROLES]
        for i in range(len(turns) - 1, -1, -1):
            if turns[i].get("role") == "user":
                if i == 0 or turns[i - 1].get("role") != "user":  # the usual case: one message per turn
                    text = _text_of(turns[i].get("content"))
                else:
                    j = i - 1
                    while j > 0 and i - j < _MAX_TURN_MESSAGES - 1 and turns[j - 1].get("role") == "user":
                        j -= 1
                    text = "\n".join(_text_of(m.get("content")) for m in turns[j:i + 1])
                return text, len(turns)
        # No user message: what the model answers is the instructions (a request of system messages only)
        return _trailing_instructions(messages), len(turns)
    prompt = body.get("prompt")
    if type(prompt) is list and prompt:
        # A batch (completions ``prompt: [...]``): each prompt gets its own answers, so the request is scored
        # by one of them drawn uniformly at random, a draw the client cannot steer. Reading the first one let a
        # harvester put a harmless prompt first and its template fills after it (tests/detectors/
        # test_batched_prompts.py). Over a client's stream this samples its prompts like separate requests
        # would; token-id prompts read as "" (the gateway refuses them: detection.token_id_prompts).
        prompt = prompt[_batch_pick(len(prompt))] if len(prompt) > 1 else prompt[0]
    return (prompt if isinstance(prompt, str) else ""), 1


# Which prompt of a batch is read: unpredictable to clients (seeded from the OS per process); ``ipgate replay``
# reseeds it (``seed_batch_pick``) so that a replay is reproducible.
_batch_pick = random.Random(secrets.randbits(64)).randrange


def seed_batch_pick(seed: int) -> None:
    """Make the choice of the scored prompt of batched requests reproducible (replay, evaluation, tests)."""
    global _batch_pick
    _batch_pick = random.Random(seed).randrange


@contextlib.contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """``seed_batch_pick(seed)`` for the block, then the generator that was there before (a replay run in a
    process that also serves must not leave that process drawing a sequence anyone can compute)."""
    global _batch_pick
    before = _batch_pick
    seed_batch_pick(seed)
    try:
        yield
    finally:
        _batch_pick = before


def turn_crc(text: str) -> int:
    """A turn's identity across requests (the client resends its earlier turns verbatim); 0 for no text."""
    return zlib.crc32(text[:_CRC_CHARS].encode("utf-8", "surrogatepass")) | 1 if text else 0


def history_of(body: Mapping[str, Any]) -> tuple[tuple[int, str], ...]:
    """The user turns before the last one, as (``turn_crc``, text), most recent last, at most
    ``MAX_HISTORY_TURNS``: consecutive user messages form one turn, as in ``prompt_of``.

    Read from the end and only as far as those turns reach: a request of 10 000 messages costs the walk back
    over its last few turns, not a text extraction of every user message in it (1 ms there, read forwards)."""
    messages = body.get("messages")
    if type(messages) is not list:
        return ()
    runs: list[list[Mapping[str, Any]]] = []  # user turns, most recent first; each its messages, most recent first
    run: list[Mapping[str, Any]] | None = None
    for m in reversed(messages):
        if type(m) is not dict:
            continue
        role = m.get("role")
        if role == "user":
            if run is None:
                if len(runs) > MAX_HISTORY_TURNS:  # the last turn and the history before it are all found
                    break
                run = []
                runs.append(run)
            if len(run) < _MAX_TURN_MESSAGES:  # a turn reads its last messages (the rest of a longer run is left out)
                run.append(m)
        elif role not in _INSTRUCTION_ROLES:  # system/developer messages do not end a turn; the others do
            run = None
    out: list[tuple[int, str]] = []
    for r in reversed(runs[1:]):  # runs[0] is the last turn itself (trailing, or before an assistant prefill)
        t = _text_of(r[0].get("content")) if len(r) == 1 else "\n".join(
            _text_of(x.get("content")) for x in reversed(r))
        if t:
            out.append((turn_crc(t), t))
    return tuple(out)


def draw(n: int) -> int:
    """A uniform draw in [0, n) from the generator that picks batch prompts (seeded per process; replay
    reseeds it with ``seed_batch_pick``)."""
    return _batch_pick(n)
