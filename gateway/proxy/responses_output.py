"""What the Responses API's stream relay (``responses_relay.py``) and body transform (``responses_body.py``)
share: ``Output``, the state of one answer's output (an embedder per text part, the tier's ``<think>``
stripping and logprob hardening through the hook, the items that are not relayed, what was withheld), and
``finish_reason``, the chat-style finish reason of a finished response."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.hooks import StreamEmbedder
from gateway.proxy.choice import ChoiceHook, EmbedderFactory, answer_factory
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.responses_scrub import ITEMS, Scrubber


def finish_reason(response: dict[str, Any]) -> str | None:
    """The chat-style finish reason of a finished response (detection and the access log read those)."""
    status = response.get("status")
    if status == "completed":
        return "stop"
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "length" if reason == "max_output_tokens" else str(reason or "incomplete")
    return None


class Output(Scrubber):
    """What the stream relay and the body transform share: per-part embedders, the hook, dropped items."""

    def __init__(self, factory: EmbedderFactory | None, hook: ChoiceHook | None, strip_reasoning: bool,
                 function_calls: bool, fields: FieldPolicy | None = None) -> None:
        self.fields = fields
        self._factory = factory
        self._answers = answer_factory(factory)
        self._hook = hook
        self._strip = strip_reasoning
        self._calls = function_calls  # the request declared tools: function-call items are its to receive
        self._thinks = 0
        self.watermarked = False
        self.logprob_positions = 0
        self.withheld: Counter[str] = Counter()  # what was not relayed, by kind (the caller counts it)

    def _embedder(self, answer: bool) -> StreamEmbedder | None:
        factory = self._answers if answer else self._factory
        emb = factory() if factory is not None else None
        self.watermarked = self.watermarked or emb is not None
        return emb

    def _think_key(self) -> int:
        self._thinks += 1
        return self._thinks

    def _think(self, key: int, text: str, last: bool) -> str:
        """The tier's ``<think>`` stripping on an answer's text (a backend without a reasoning parser writes
        the chain of thought into it); the hook keeps one stripper per key."""
        if self._hook is None:
            return text
        choice: dict[str, Any] = {"index": key, "delta": {"content": text}, "finish_reason": "stop" if last else None}
        self._hook(choice)
        out = choice["delta"].get("content")
        return out if isinstance(out, str) else ""

    def _logprobs(self, holder: dict[str, Any], withheld: bool) -> None:
        """A part's (or event's) ``logprobs``: withheld when its text is watermarked post hoc (the tokens would
        spell the backend's own text), else hardened by the tier's hook and counted."""
        lp = holder.get("logprobs")
        if not lp:
            return
        if not isinstance(lp, list):  # not the SDK's shape: the tier's hardening cannot read it
            holder["logprobs"] = []
            self._withhold("malformed_event", "logprobs that are not a list")
            return
        if withheld:
            holder["logprobs"] = []
            return
        if self._hook is not None:
            choice: dict[str, Any] = {"index": -1, "logprobs": {"content": lp}}
            self._hook(choice)
            if not isinstance(choice.get("logprobs"), dict):  # a cap of 0: none at all
                holder["logprobs"] = []
                return
        self.logprob_positions += len(lp)

    def _dropped(self, item: Any) -> bool:
        """Reasoning items under strip_reasoning; items of a type the relay does not know (their text), and
        items that are not objects (a bare string is text all the same)."""
        if not isinstance(item, dict):
            self._withhold("unknown_item", "an output item that is not an object")
            return True
        if self._unknown(item):
            return True
        return self._strip and item.get("type") == "reasoning"

    def _unknown(self, item: dict[str, Any]) -> bool:
        """An item the relay does not relay: a type it does not know (its text is not watermarked), or a
        function call the request gave the model no tool for (its arguments are free text, verbatim)."""
        t = item.get("type")
        if isinstance(t, str) and t in ITEMS and (t != "function_call" or self._calls):
            return False
        self._withhold("unknown_item", f"an output item of type {t!r}" if t != "function_call" else
                       "a function call the request declared no tool for")
        return True
