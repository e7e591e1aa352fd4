"""A chat answer whose ``content`` is a list of parts instead of a string.

Mistral's API writes its reasoning models' answers this way (Magistral; Small 4, Medium 3.5 and Large 4 with
``reasoning_effort``), in a whole message and in every stream delta::

    [{"type": "thinking", "thinking": [{"type": "text", "text": "…"}]}, {"type": "text", "text": "…"}]

A gateway reselling such an API watermarks the ``text`` parts as it does a string answer and the ``thinking``
parts as it does a chain of thought (``reasoning``), and drops the ``thinking`` parts where a tier strips
reasoning. The parts keep their shape and order, so a client reading Mistral's format reads ours.

Parts of any other type (``reference``, ``image_url``, …) carry no generated prose and pass as written.
"""

from __future__ import annotations

from typing import Any

# (in a thinking part, the dict that holds the text, the key it is under)
TextSlot = tuple[bool, dict[str, Any], str]


def slots(parts: list[Any]) -> list[TextSlot]:
    """The pieces of generated text in ``parts``, in order: a ``text`` part's ``text``; a ``thinking`` part's
    inner text parts (``thinking`` is a list of them in Mistral's API; a plain string is read too)."""
    out: list[TextSlot] = []
    for p in parts:
        if not isinstance(p, dict):
            continue
        # a part without a type but with a text is read as text (Mistral's SDK reads one so inside a thinking
        # part, where ``type`` is optional): passed over, its text went out unwatermarked
        kind = p.get("type", "text")
        if kind == "text":
            if isinstance(p.get("text"), str) and p["text"]:
                out.append((False, p, "text"))
        elif kind == "thinking":
            inner = p.get("thinking")
            if isinstance(inner, str):
                if inner:
                    out.append((True, p, "thinking"))
            elif isinstance(inner, list):
                out.extend((True, q, "text") for q in inner if isinstance(q, dict)
                           and q.get("type", "text") == "text" and isinstance(q.get("text"), str) and q["text"])
    return out


def answers(parts: list[Any]) -> bool:
    """Whether ``parts`` hold answer text (a ``text`` part that is not empty)."""
    return any(not thinking for thinking, _, _ in slots(parts))


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def thinking_part(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": [text_part(text)]}


def drop_thinking(parts: list[Any]) -> bool:
    """Remove the ``thinking`` parts from ``parts`` in place; True when there was one."""
    kept = [p for p in parts if not (isinstance(p, dict) and p.get("type") == "thinking")]
    if len(kept) == len(parts):
        return False
    parts[:] = kept
    return True


def chars(parts: list[Any]) -> int:
    """Characters of generated text in ``parts`` (for the estimate of an answer without ``usage``)."""
    return sum(len(holder[key]) for _, holder, key in slots(parts))
