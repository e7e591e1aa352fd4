"""What the Responses relay (``gateway/proxy/responses_relay.py``) withholds: it fails closed.

A backend is a boundary the gateway does not own: a newer vLLM (or another OpenAI-compatible server) may
write text where the relay does not look for it — a new event or item type, a field beside the text, the raw
output messages vLLM returns under ``enable_response_messages``. Text the gateway does not watermark is never
relayed: ``Scrubber`` removes it and counts it by kind (a fixed set of kinds: the backend's own type names
would make the metric's labels unbounded), logging once per kind per process.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.proxy.fields import FieldPolicy

log = logging.getLogger(__name__)

# text part type -> its text field; whether it is the answer (False: reasoning, watermarked even when the
# answer must stay verbatim)
PART_TEXT = {"output_text": ("text", True), "refusal": ("refusal", True), "reasoning_text": ("text", False),
              "summary_text": ("text", False)}
# the item types the relay watermarks (message, reasoning) or relays by design (function_call); others withheld
ITEMS = frozenset({"message", "reasoning", "function_call"})
# fields of a response object that repeat the output outside its items: vLLM's enable_response_messages (raw
# output tokens), a convenience output_text some servers add; never relayed (the SDK computes output_text)
_RESPONSE_COPIES = ("output_messages", "input_messages", "output_text")
# The fields relayed of a text part, a message or reasoning item and an item event (the openai SDK's types):
# any other field of theirs (a newer backend's raw text or token ids beside the text) is withheld. Function-call
# items are relayed as written (their arguments are verbatim by design).
_PART_FIELDS = {"output_text": frozenset({"type", "text", "annotations", "logprobs"}),
                "refusal": frozenset({"type", "refusal"}), "reasoning_text": frozenset({"type", "text"}),
                "summary_text": frozenset({"type", "text"})}
_ITEM_FIELDS = {"message": frozenset({"id", "type", "role", "status", "content", "phase"}),
                "reasoning": frozenset({"id", "type", "summary", "content", "encrypted_content", "status"})}
# Per event type (the openai SDK's event types): a field of another type's shape (a ``text`` on a delta event, a
# ``delta`` on a done event, a ``part`` or ``item`` where none belongs) is not rewritten by the relay, so it is
# withheld; a single allowlist for all types relayed such a field verbatim.
_IDS = frozenset({"type", "sequence_number", "item_id", "output_index"})
_CONTENT, _SUMMARY = _IDS | {"content_index"}, _IDS | {"summary_index"}
EVENT_FIELDS = {
    "response.output_text.delta": _CONTENT | {"delta", "logprobs", "obfuscation"},
    "response.output_text.done": _CONTENT | {"text", "logprobs"},
    "response.refusal.delta": _CONTENT | {"delta", "obfuscation"},
    "response.refusal.done": _CONTENT | {"refusal"},
    "response.reasoning_text.delta": _CONTENT | {"delta", "obfuscation"},
    "response.reasoning_text.done": _CONTENT | {"text"},
    "response.reasoning_summary_text.delta": _SUMMARY | {"delta", "obfuscation"},
    "response.reasoning_summary_text.done": _SUMMARY | {"text"},
    "response.content_part.added": _CONTENT | {"part"},
    "response.content_part.done": _CONTENT | {"part"},
    "response.reasoning_summary_part.added": _SUMMARY | {"part"},
    "response.reasoning_summary_part.done": _SUMMARY | {"part"},
    "response.output_item.added": _IDS | {"item"},
    "response.output_item.done": _IDS | {"item"},
    # the arguments are relayed verbatim by design (counted as a tools request); nothing beside them
    "response.function_call_arguments.delta": _IDS | {"delta", "obfuscation"},
    "response.function_call_arguments.done": _IDS | {"arguments", "name"},
}
RESPONSE_EVENT_FIELDS = frozenset({"type", "sequence_number", "response"})
ERROR_FIELDS = frozenset({"type", "sequence_number", "code", "message", "param", "error"})
_logged: set[str] = set()


class Scrubber:
    """Removes from events, items, parts and response objects what the relay does not watermark."""

    withheld: Counter[str]
    fields: FieldPolicy | None = None  # deployment-internal fields of the response object (proxy config)
    fields_removed = False  # something was removed from a response object (null copies too): re-encode it

    def _withhold(self, kind: str, detail: str) -> list[dict[str, Any]]:
        """Text the gateway cannot watermark: never relayed; logged once per kind per process, counted by kind
        (a fixed set: the detail is the backend's and would make the metric's labels unbounded)."""
        self.withheld[kind] += 1
        if kind not in _logged:
            _logged.add(kind)
            log.warning("responses relay: withheld %s from the backend (text the gateway does not watermark; "
                        "counted in ipgate_responses_withheld_total{what=%r}; logged once)", detail[:100], kind)
        return []

    def _clean_response(self, response: dict[str, Any]) -> None:
        for name in _RESPONSE_COPIES:
            if name in response:
                # a null copy holds no text: removed as before, but neither counted nor logged (vLLM 0.33 writes
                # input_messages and output_messages, null unless asked for, into every response object)
                self.fields_removed = True  # the body is re-encoded without it
                if response.pop(name) is not None:
                    self._withhold("response_copy", f"the response's {name}")
        if response.get("output") is not None and not isinstance(response["output"], list):
            response["output"] = []  # a string or object is text all the same: the relay reads only a list
            self.fields_removed = True
            self._withhold("malformed_event", "a response's output that is not a list")
        if self.fields is not None and self.fields.scrub_response(response):
            self.fields_removed = True

    def _only(self, obj: dict[str, Any], allowed: frozenset[str], what: str) -> None:
        extra = [k for k in obj if k not in allowed]
        for k in extra:
            del obj[k]
        if extra:
            self._withhold("unknown_field", f"field {extra[0]!r} of {what}")

    def _clean_part(self, part: dict[str, Any], blank: bool) -> None:
        """A part of a kept item: an unknown part type keeps only its type (its fields may hold text);
        ``blank``: a known part's text emptied (an ``added`` event: the deltas carry the text)."""
        t = part.get("type")
        spec = PART_TEXT.get(t) if isinstance(t, str) else None
        if spec is None or not isinstance(t, str):
            part.clear()
            part["type"] = t if isinstance(t, str) else None
            self._withhold("unknown_part", f"a content part of type {t!r}")
            return
        self._only(part, _PART_FIELDS[t], f"a {t} part")
        if not isinstance(part.get(spec[0]), str | None):  # the SDK's shape is a string: nothing else is relayed
            part[spec[0]] = ""
            self._withhold("malformed_event", f"a {t} part whose text is not a string")
        if blank and part.get(spec[0]):
            part[spec[0]] = ""
            self._withhold("added_text", "text in an added event")
        if blank and part.get("logprobs"):  # they spell the text too, unhardened: the deltas carry them
            part["logprobs"] = []
            self._withhold("added_text", "logprobs in an added event")
        if part.get("annotations"):  # citations' titles are free text; vLLM writes none
            part["annotations"] = []
            self._withhold("annotations", "annotations")

    def _clean_item(self, item: dict[str, Any], blank: bool) -> None:
        t = item.get("type")
        allowed = _ITEM_FIELDS.get(t) if isinstance(t, str) else None  # a list is unhashable: no crash
        if allowed is not None:
            self._only(item, allowed, f"a {t} item")
        for kind in ("content", "summary"):
            parts = item.get(kind)
            if parts is None:
                continue
            if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
                # a bare string (the list, or a part of it) is text the relay never watermarked
                parts = item[kind] = [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
                self._withhold("malformed_event", f"an item's {kind} that is not a list of objects")
            for part in parts:
                self._clean_part(part, blank)
        if item.get("encrypted_content") is not None:  # opaque to us: it could be the thought in clear
            item["encrypted_content"] = None
            self._withhold("encrypted_content", "a reasoning item's encrypted_content")
