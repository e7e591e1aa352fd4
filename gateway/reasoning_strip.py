"""Reasoning stripping: a reasoning model's chain of thought removed from an answer, under the tier's
``strip_reasoning`` (``gateway.config.HardeningConfig``).

``strip_reasoning`` removes the ``reasoning``/``reasoning_content`` fields (and Mistral's thinking parts), the
output chain-of-thought harvesting is after, while the answer itself is still served; ``strip_think`` removes a
leading ``<think>…</think>`` section written into the answer text (``ThinkStripper``). The transform step calls
them per choice (full bodies and stream chunks).
"""

from __future__ import annotations

from typing import Any

from gateway.proxy import parts
from gateway.proxy.choice import REASONING_KEYS

__all__ = ["ThinkStripper", "strip_reasoning", "strip_think"]


class ThinkStripper:
    """Removes a leading ``<think>…</think>`` section from one choice's answer text, fed in pieces (stream deltas)
    or whole. A backend serving a reasoning model without a reasoning parser (TGI, vLLM or SGLang without
    ``--reasoning-parser``) writes the chain of thought into ``content`` this way. Only a section that opens the
    answer counts (leading whitespace allowed), so an answer that merely mentions the tags later is untouched.
    A chain of thought whose opening tag the chat template put in the prompt (DeepSeek-R1 templates: the answer
    holds only ``</think>``) cannot be told from the answer while streaming; for a backend declared so
    (``think_prefilled``) the stripper starts inside the section, and everything up to the first ``</think>``
    goes — all of it when no ``</think>`` comes, as vLLM's own R1 reasoning parser reads such an answer. Holds
    back at most the few characters that could still begin ``<think>``, and the tail of the section that could
    begin ``</think>``."""

    OPEN, CLOSE = "<think>", "</think>"
    __slots__ = ("_buf", "_state")

    def __init__(self, prefilled: bool = False) -> None:
        self._state = "inside" if prefilled else "start"  # start -> inside -> after -> pass, or start -> pass
        self._buf = ""

    def feed(self, text: str) -> str:
        if self._state == "pass":
            return text
        buf = self._buf + text
        self._buf = ""
        if self._state == "start":
            head = buf.lstrip()
            if head.startswith(self.OPEN):
                self._state, buf = "inside", head[len(self.OPEN):]
            elif not head or self.OPEN.startswith(head):
                self._buf = buf  # whitespace so far, or what may still become "<think>"
                return ""
            else:
                self._state = "pass"
                return buf
        if self._state == "inside":
            end = buf.find(self.CLOSE)
            if end < 0:
                self._buf = buf[-(len(self.CLOSE) - 1):]  # what may begin a split "</think>"; the rest is dropped
                return ""
            self._state, buf = "after", buf[end + len(self.CLOSE):]
        rest = buf.lstrip()  # after: the blank lines between the section and the answer go too
        if rest:
            self._state = "pass"
        return rest

    def finish(self) -> str:
        """The end of the answer: what was held back, unless it belonged to the section."""
        rest = self._buf if self._state == "start" else ""
        self._buf = ""
        return rest


def strip_think(choice: dict[str, Any], strippers: dict[int, ThinkStripper], prefilled: bool = False) -> bool:
    """Run a chat choice's answer text (message or delta ``content``) through its ``ThinkStripper`` (one per
    choice index in ``strippers``, kept for the whole response; ``prefilled``: the answer begins inside the
    section), in place; True when the text changed."""
    whole = isinstance(choice.get("message"), dict)
    holder = choice.get("message") if whole else choice.get("delta")
    if not isinstance(holder, dict):
        return False
    text = holder.get("content")
    if isinstance(text, list):
        return _strip_think_parts(choice, text, _stripper(choice, strippers, prefilled), whole)
    if not isinstance(text, str):
        text = ""
        if choice.get("finish_reason") is None:
            return False
    st = _stripper(choice, strippers, prefilled)
    new = st.feed(text)
    if whole or choice.get("finish_reason") is not None:
        new += st.finish()
    if new == text:
        return False
    holder["content"] = new
    return True


def _stripper(choice: dict[str, Any], strippers: dict[int, ThinkStripper], prefilled: bool) -> ThinkStripper:
    idx = choice.get("index", 0)
    idx = idx if isinstance(idx, int) else 0
    st = strippers.get(idx)
    if st is None:
        st = strippers[idx] = ThinkStripper(prefilled)
    return st


def _strip_think_parts(choice: dict[str, Any], content: list[Any], st: ThinkStripper, whole: bool) -> bool:
    """``strip_think`` for a ``content`` that is a list of parts (Mistral's shape, which the relay also gives a
    string delta it puts a held-back thought into): the ``text`` parts are the answer's text, in order. Skipping
    them instead let the stripper release text it held from an earlier string delta after them (the answer's
    words out of order), or at the choice's end replace the whole list, and the answer text in it, by that
    held text."""
    changed = False
    for thinking, part, key in parts.slots(content):
        if not thinking:
            new = st.feed(part[key])
            if new != part[key]:
                part[key] = new
                changed = True
    if whole or choice.get("finish_reason") is not None:
        rest = st.finish()
        if rest:
            content.append(parts.text_part(rest))
            changed = True
    return changed


def strip_reasoning(choice: dict[str, Any]) -> bool:
    """Remove the reasoning fields from one choice's message or delta, in place; True when one was there.
    Both are looked at: a stream chunk with ``"message": null`` (or a stray message) beside its delta hid the
    delta, which is what the relay and the client read."""
    found = False
    for holder in (choice.get("message"), choice.get("delta")):
        if not isinstance(holder, dict):
            continue
        for k in REASONING_KEYS:
            if k in holder:
                del holder[k]
                found = True
        content = holder.get("content")
        if isinstance(content, list) and parts.drop_thinking(content):  # Mistral's thinking parts
            found = True
    return found
