"""The transform step for the Responses API (``POST /v1/responses``): watermark every text part, keep the
typed event stream consistent, read the usage.

A Responses answer holds *items* (``output``): messages whose ``content`` parts are ``output_text`` (or
``refusal``), reasoning items with ``reasoning_text`` content and ``summary_text`` summaries, function calls.
Every text part gets its own watermark embedder (the client's key); function-call items are relayed as the
backend wrote them (their arguments are parsed by the client's code, as on the chat path).

The stream repeats each part's text in its ``done`` events (``response.output_text.done`` ``text``,
``response.content_part.done`` ``part``, ``response.output_item.done`` ``item``, and the whole answer in
``response.completed``). ``ResponsesRelay`` embeds the deltas with at most one held-back word per part,
flushes that word as a synthetic delta event just before the part's first ``done`` event, and rewrites every
``done`` event to carry exactly the text the client received in deltas: a client cannot diff the two to
recover the backend's own words. Since it may add (and drop) events, ``sequence_number`` is renumbered
consecutively. ``logprobs`` of a watermarked part are withheld (they would spell the unwatermarked tokens).

``strip_reasoning`` (the tier's hardening) removes reasoning items from the stream and the body; the
``output_index`` of the items after one is renumbered so the SDK's accumulated snapshot stays consistent.

Fail closed (``gateway/proxy/responses_scrub.py``): an event, item or part type the relay does not know, a
field beside the text, a malformed text event, the raw output messages of vLLM's ``enable_response_messages``
are withheld and counted (``withheld``), never relayed: text the gateway does not watermark.

Sans-IO: ``feed(chunk) -> bytes``, ``finish() -> bytes``; ``transform_steps`` does the same for a body.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from gateway.hooks import StreamEmbedder
from gateway.proxy.body import Transformed, embedded_steps
from gateway.proxy.choice import ChoiceHook, EmbedderFactory, answer_factory
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.relay import dumps_utf8, error_event
from gateway.proxy.responses_scrub import (
    ERROR_FIELDS,
    EVENT_FIELDS,
    ITEMS,
    PART_TEXT,
    RESPONSE_EVENT_FIELDS,
    Scrubber,
)
from gateway.proxy.sse import SSEComment, SSEDecoder, encode_comment, encode_event
from gateway.proxy.usage import Usage

# delta event -> (part list of the item, its index field, the done event, the done event's text field)
_DELTAS = {
    "response.output_text.delta": ("content", "content_index", "response.output_text.done", "text"),
    "response.refusal.delta": ("content", "content_index", "response.refusal.done", "refusal"),
    "response.reasoning_text.delta": ("content", "content_index", "response.reasoning_text.done", "text"),
    "response.reasoning_summary_text.delta": ("summary", "summary_index", "response.reasoning_summary_text.done",
                                              "text"),
}
_DONES = {done: (kind, idx, delta, fld) for delta, (kind, idx, done, fld) in _DELTAS.items()}
_PART_DONES = {"response.content_part.done": ("content", "content_index"),
               "response.reasoning_summary_part.done": ("summary", "summary_index")}
_RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.completed",
                              "response.incomplete", "response.failed", "response.queued"})
PartKey = tuple[int, str, int]  # (upstream output_index, "content" | "summary", index within that list)
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_ADDED = {"response.content_part.added": "content_index", "response.reasoning_summary_part.added": "summary_index"}
# Fail closed: an event of any other type is withheld (a newer backend's text event, an annotation, an audio
# transcript, a built-in or custom tool's input or output: text the gateway does not watermark). Function-call
# arguments are relayed verbatim by design (the client's code parses them; counted as a ``tools`` request).
_ITEM_EVENTS = frozenset({"response.output_item.added", "response.output_item.done",
                          "response.function_call_arguments.delta", "response.function_call_arguments.done",
                          *_DELTAS, *_DONES, *_PART_DONES, *_ADDED})


def _is_index(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _dumps(obj: Any) -> bytes:
    return dumps_utf8(obj, (",", ":"))


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


@dataclass(slots=True)
class _Part:
    emb: StreamEmbedder | None
    think: int  # this part's key for the hook's per-part <think> stripper (strip_reasoning)
    answer: bool
    delta_type: str  # the delta event that carries this part's text
    sent: list[str] = field(default_factory=list)  # the text the client received, in deltas
    closed: bool = False
    # the (hardened) logprobs the client received for this part, by position: its later copies carry these
    lps: list[Any] = field(default_factory=list)
    cut: bool = False  # strip_reasoning removed or held back text of the last piece fed: its tokens not sent yet
    thought: bool = False  # strip_reasoning removed text (a <think> section): the part's later copies of logprobs go
    fed: int = 0  # characters of answer text fed to the <think> stripper, and those it let through: a leading
    shown: int = 0  # newline or "<" is held back, then let through (no thought), so ``cut`` alone is no proof


class _Output(Scrubber):
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


_ANSWER_TYPES = frozenset({"response.output_text.delta", "response.refusal.delta"})


class ResponsesRelay(_Output):
    def __init__(self, embedder_factory: EmbedderFactory | None, *, hook: ChoiceHook | None = None,
                 strip_reasoning: bool = False, function_calls: bool = True,
                 fields: FieldPolicy | None = None) -> None:
        super().__init__(embedder_factory, hook, strip_reasoning, function_calls, fields)
        self._decoder = SSEDecoder()
        self._seq = 0
        self._parts: dict[PartKey, _Part] = {}
        self._index: dict[int, int | None] = {}  # upstream output_index -> the client's (None: dropped)
        self._ids: dict[int, Any] = {}  # upstream output_index -> its item id
        self._announced: set[PartKey] = set()  # parts the client got an ``added`` event for
        self._next_index = 0
        self.usage = Usage()
        self.finish_reasons: list[str] = []
        self.content_events = 0
        self.done = False
        self.upstream_error = False
        self.model: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for item in self._decoder.feed(chunk):
            if isinstance(item, SSEComment):  # a keep-alive, passed on without its text (the backend's words)
                if item.text:
                    self._withhold("comment_text", "the text of an SSE comment")
                out.append(encode_comment(b""))
                continue
            if item.data.strip() == b"[DONE]":  # not vLLM's, harmless: the end marker of other servers
                out.append(encode_event(item.data, item.event))
                continue
            try:
                obj = json.loads(item.data)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):  # raw text is text all the same: never relayed unwatermarked
                self._withhold("malformed_event", "a data line that is not a JSON object")
                continue
            for ev in self._event(obj):
                out.append(self._emit(ev, item.event))
        return b"".join(out)

    def finish(self) -> bytes:
        """Upstream EOF. After the terminal event nothing; otherwise the text the embedders still hold (the
        backend generated it; the client is charged for it) as delta events, and a terminating error."""
        if self.done or self.upstream_error:
            return b""
        out = [self._emit(ev, "") for key in list(self._parts) for ev in self._close(key)]
        return b"".join(out) + error_event("The upstream connection ended before the response was complete.",
                                           "stream_interrupted")

    def _emit(self, obj: dict[str, Any], event: str | None) -> bytes:
        if "type" in obj:
            obj["sequence_number"] = self._seq
            self._seq += 1
        t = obj.get("type")
        # the upstream's event name (vLLM writes the type); a synthetic event gets its own type as its name
        return encode_event(_dumps(obj), t if isinstance(t, str) and event is not None else event)

    def _event(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        t = obj.get("type")
        if t == "error" or (t is None and obj.get("error") is not None):
            self.upstream_error = True
            self._only(obj, ERROR_FIELDS, "an error event")
            # the words the embedders hold back were generated (and are charged): they go before the error, as
            # on chat (relay.py)
            return [*(ev for key in list(self._parts) for ev in self._close(key)), obj]
        if t in _RESPONSE_EVENTS:
            if not isinstance(obj.get("response"), dict):
                return self._withhold("malformed_event", f"{t} without a response object")
            self._only(obj, RESPONSE_EVENT_FIELDS, f"a {t} event")
            return [*self._response(obj["response"], t), obj]
        if t not in _ITEM_EVENTS:
            return self._withhold("unknown_event", f"an event of type {t!r}")
        oi = obj.get("output_index")
        if not _is_index(oi):
            return self._withhold("malformed_event", f"{t} without an integer output_index")
        # only an item event's item names the item (another event's ``item`` field is withheld as extra)
        item = obj.get("item") if t in ("response.output_item.added", "response.output_item.done") else None
        if t in ("response.output_item.added", "response.output_item.done") and not isinstance(item, dict):
            return self._withhold("malformed_event", f"{t} without an item")
        if oi not in self._index:
            self._index[oi] = None if item is not None and self._dropped(item) else self._next_index
            if self._index[oi] is not None:
                self._next_index += 1
        mapped = self._index[oi]
        if mapped is None:
            return []  # a reasoning item the tier strips, an unknown item: none of its events
        if isinstance(item, dict) and self._unknown(item):  # announced late as an unknown type
            self._index[oi] = None  # none of its later events either, nor its held-back words at the end
            for key, held in self._parts.items():
                held.closed = held.closed or key[0] == oi
            return []
        if t.startswith("response.function_call_arguments.") and not self._calls:
            return self._withhold("unknown_item", "a function call the request declared no tool for")
        obj["output_index"] = mapped
        self._only(obj, EVENT_FIELDS[t], f"a {t} event")
        self._ids.setdefault(oi, obj.get("item_id", item.get("id") if isinstance(item, dict) else None))
        if t == "response.function_call_arguments.delta" and obj.get("delta"):
            self.content_events += 1  # generated tokens too: what a stream dropped before its usage is charged
        if t in _DELTAS:
            return self._delta(obj, oi, t)
        if t in _DONES:
            return self._text_done(obj, oi, t)
        if t in _PART_DONES:
            kind, idx = _PART_DONES[t]
            i, part = obj.get(idx), obj.get("part")
            if not _is_index(i) or not isinstance(part, dict):
                return self._withhold("malformed_event", f"{t} without an index or a part")
            pre = self._final_part(part, (oi, kind, i))
            self._clean_part(part, False)
            return [*pre, obj]
        if t in _ADDED:
            part = obj.get("part")
            if not _is_index(obj.get(_ADDED[t])) or not isinstance(part, dict):
                return self._withhold("malformed_event", f"{t} without an index or a part")
            self._clean_part(part, True)
            self._announced.add((oi, "summary" if _ADDED[t] == "summary_index" else "content", obj[_ADDED[t]]))
            return [obj]
        if t == "response.output_item.added" and isinstance(item, dict):
            self._clean_item(item, True)
        elif t == "response.output_item.done" and isinstance(item, dict):
            pre = self._item(item, oi)
            self._clean_item(item, False)
            return [*pre, obj]
        return [obj]

    def _part(self, key: PartKey, delta_type: str) -> _Part:
        part = self._parts.get(key)
        if part is None:
            answer = delta_type in _ANSWER_TYPES
            part = self._parts[key] = _Part(self._embedder(answer), self._think_key(), answer, delta_type)
        return part

    def _feed(self, part: _Part, text: str, last: bool) -> str:
        part.cut = False
        if part.answer:
            kept = self._think(part.think, text, last)
            part.cut = kept != text
            part.fed, part.shown = part.fed + len(text), part.shown + len(kept)
            part.thought = part.thought or (last and part.shown < part.fed)
            text = kept
        new = part.emb.feed(text) if part.emb is not None else text
        if last and part.emb is not None:
            new += part.emb.finish()
        part.sent.append(new)
        return new

    def _delta(self, obj: dict[str, Any], oi: int, t: str) -> list[dict[str, Any]]:
        kind, idx, _, _ = _DELTAS[t]
        i, text = obj.get(idx), obj.get("delta")
        if not _is_index(i) or not isinstance(text, str):
            return self._withhold("malformed_event", f"{t} without an index or a string delta")
        part = self._part((oi, kind, i), t)
        if part.closed:  # text after its part was done: never relayed unwatermarked
            return []
        if text:
            self.content_events += 1
        obj["delta"] = self._feed(part, text, False)
        lp = obj.get("logprobs")
        if part.cut and part.emb is None and isinstance(lp, list):
            # text held back (or cut) by the <think> stripper: its tokens are not sent now; the part's later copies
            # carry them, hardened there, unless a section was removed. ``None`` keeps the positions aligned.
            part.lps.extend([None] * len(lp))
            obj["logprobs"] = []
            return [obj]
        self._logprobs(obj, part.emb is not None or part.cut)
        if part.emb is None and isinstance(obj.get("logprobs"), list):
            part.lps.extend(obj["logprobs"])
        return [obj] if obj["delta"] or part.emb is None else []

    def _synthetic(self, key: PartKey, part: _Part, text: str) -> dict[str, Any]:
        oi, kind, i = key
        ev: dict[str, Any] = {"type": part.delta_type, "item_id": self._ids.get(oi),
                              "output_index": self._index.get(oi, oi),
                              ("summary_index" if kind == "summary" else "content_index"): i, "delta": text,
                              "sequence_number": 0}
        if part.delta_type == "response.output_text.delta":
            ev["logprobs"] = []
        return ev

    def _close(self, key: PartKey) -> list[dict[str, Any]]:
        """Close a part: its held-back word as a synthetic delta event (none when nothing was held)."""
        part = self._parts[key]
        if part.closed:
            return []
        part.closed = True
        rest = self._feed(part, "", True)
        return [self._synthetic(key, part, rest)] if rest else []

    def _text_done(self, obj: dict[str, Any], oi: int, t: str) -> list[dict[str, Any]]:
        kind, idx, delta_type, fld = _DONES[t]
        i = obj.get(idx)
        if not _is_index(i):
            return self._withhold("malformed_event", f"{t} without an index")
        key = (oi, kind, i)
        part, out = self._settle(key, delta_type, obj.get(fld))
        obj[fld] = "".join(part.sent)
        self._copy_logprobs(obj, part)
        out.append(obj)
        return out

    def _final_part(self, part: dict[str, Any], key: PartKey) -> list[dict[str, Any]]:
        """A part in a ``done`` event or a finished item gets the text the client received for it; returns
        the delta events to send before (a part whose text the backend had not finished yet)."""
        t = part.get("type")
        spec = PART_TEXT.get(t) if isinstance(t, str) else None  # a list or object is unhashable: no crash
        if spec is None:
            return []
        fld = spec[0]
        delta_type = "response.reasoning_summary_text.delta" if key[1] == "summary" else (
            "response.output_text.delta" if part["type"] == "output_text" else
            "response.refusal.delta" if part["type"] == "refusal" else "response.reasoning_text.delta")
        got, pre = self._settle(key, delta_type, part.get(fld))
        part[fld] = "".join(got.sent)
        self._copy_logprobs(part, got)
        return pre

    def _copy_logprobs(self, holder: dict[str, Any], part: _Part) -> None:
        """A later copy of a part's logprobs (``output_text.done``, ``content_part.done``, a finished item, the
        final snapshot: vLLM repeats them) carries the values the client already got for those positions. The
        tier's noise drawn afresh on each copy would give several independent draws per token, whose mean
        averages the noise away; and each copy would be counted again. Positions not seen yet are hardened
        and counted once."""
        lp = holder.get("logprobs")
        if not lp or part.emb is not None or part.thought or not isinstance(lp, list):
            self._logprobs(holder, part.emb is not None or part.thought)
            return
        got = part.lps
        got.extend([None] * (len(lp) - len(got)))
        missing = [i for i, g in enumerate(got[:len(lp)]) if g is None]
        if missing:
            fresh: dict[str, Any] = {"logprobs": [lp[i] for i in missing]}
            self._logprobs(fresh, False)
            if len(fresh["logprobs"]) != len(missing):  # a cap of 0: none at all
                holder["logprobs"] = []
                return
            for i, h in zip(missing, fresh["logprobs"], strict=True):
                got[i] = h
        out = []
        for e, g in zip(lp, got, strict=False):
            if isinstance(e, dict) and isinstance(g, dict):
                tops = {a.get("token"): a for a in e.get("top_logprobs") or () if isinstance(a, dict)}
                e = {**e, **g, "top_logprobs": [{**tops.get(a.get("token"), {}), **a} if isinstance(a, dict) else a
                                                for a in g.get("top_logprobs") or ()]}
            else:
                e = g
            out.append(e)
        holder["logprobs"] = out

    def _settle(self, key: PartKey, delta_type: str, text: Any) -> tuple[_Part, list[dict[str, Any]]]:
        """A part at its end, and the delta events to send before its final text: one the backend never
        streamed is watermarked whole and sent as one delta; a streamed one is closed (held-back word flushed)."""
        part = self._parts.get(key)
        if part is not None:
            return part, self._close(key)
        part = self._part(key, delta_type)
        whole = self._feed(part, text if isinstance(text, str) else "", True)
        part.closed = True
        # a delta for a part the client was never told of (no ``content_part.added``: a backend that sent only
        # the item, or only the final snapshot) breaks the SDK's accumulator; the watermarked text is in the copy
        return part, [self._synthetic(key, part, whole)] if whole and key in self._announced else []

    def _item(self, item: dict[str, Any], oi: int) -> list[dict[str, Any]]:
        pre: list[dict[str, Any]] = []
        for kind in ("content", "summary"):
            parts = item.get(kind)
            for i, part in enumerate(parts if isinstance(parts, list) else ()):
                if isinstance(part, dict):
                    pre.extend(self._final_part(part, (oi, kind, i)))
        return pre

    def _response(self, response: dict[str, Any], t: str) -> list[dict[str, Any]]:
        m = response.get("model")
        if self.model is None and isinstance(m, str):
            self.model = m
        pre: list[dict[str, Any]] = []
        self._clean_response(response)
        output = response.get("output")
        if t not in _FINAL_EVENTS and isinstance(output, list) and output:
            # a snapshot before the answer (vLLM: empty); its text would precede the deltas that watermark it
            response["output"] = []
            self._withhold("snapshot_output", f"output in {t}")
        elif isinstance(output, list) and output:
            kept = []
            for oi, item in enumerate(output):
                if self._dropped(item):
                    continue
                if isinstance(item, dict):
                    self._ids.setdefault(oi, item.get("id"))
                    if oi not in self._index:
                        self._index[oi] = self._next_index
                        self._next_index += 1
                    pre.extend(self._item(item, oi))
                    self._clean_item(item, False)
                kept.append(item)
            response["output"] = kept
        u = response.get("usage")
        if isinstance(u, dict):
            self.usage.update({"prompt_tokens": u.get("input_tokens"), "completion_tokens": u.get("output_tokens")})
        if t in ("response.completed", "response.incomplete"):
            self.done = True
            fr = finish_reason(response)
            if fr is not None:
                self.finish_reasons.append(fr)
        elif t == "response.failed":
            self.upstream_error = True
        if t in _FINAL_EVENTS:
            # parts the backend never closed (no done events, an output without them): their held-back words go
            # before the terminal event, or they would never reach the client (finish() sends nothing after it)
            pre.extend(ev for key in list(self._parts) for ev in self._close(key))
        return pre


def transform_steps(body: dict[str, Any], embedder_factory: EmbedderFactory | None, hook: ChoiceHook | None, *,
                    strip_reasoning: bool = False, slice_chars: int | None = None,
                    withheld: Counter[str] | None = None, function_calls: bool = True,
                    fields: FieldPolicy | None = None) -> Generator[None, None, Transformed]:
    """Watermark a non-streaming Responses body in place (one embedder per text part), yielding between
    slices of ``slice_chars`` characters; returns (changed, usage, finish reasons, logprob positions,
    watermarked) like the chat path's ``transform_steps``."""
    out = _Output(embedder_factory, hook, strip_reasoning, function_calls, fields)
    usage = Usage()
    u = body.get("usage")
    if isinstance(u, dict):
        usage.update({"prompt_tokens": u.get("input_tokens"), "completion_tokens": u.get("output_tokens")})
    fr = finish_reason(body)
    if usage.completion_tokens is None and isinstance(body.get("output"), list):
        # no usage: charged what it generated (as the chat path's ``_text_tokens``), counting what is withheld
        usage.completion_tokens = max(1, _generated_chars(body["output"]) // 4)
    # re-encoded whenever anything may have changed (the text, a logprob's noise): comparing would cost more
    changed = embedder_factory is not None or hook is not None
    out._clean_response(body)
    output = body.get("output")
    if isinstance(output, list):
        kept = [item for item in output if not out._dropped(item)]
        if len(kept) != len(output):
            body["output"] = kept
            changed = True
        # vLLM computes a non-streamed message's logprobs over all generated tokens, the chain of thought's
        # first: a stripped thought would still be spelled in them, so they go with it (as on chat)
        thought = strip_reasoning and any(isinstance(i, dict) and i.get("type") == "reasoning" for i in output)
        for item in kept:
            if not isinstance(item, dict):
                continue
            for kind in ("content", "summary"):
                parts = item.get(kind)
                for part in parts if isinstance(parts, list) else ():
                    t = part.get("type") if isinstance(part, dict) else None
                    spec = PART_TEXT.get(t) if isinstance(t, str) else None  # a list is unhashable: no crash
                    if spec is None or not isinstance(part.get(spec[0]), str):
                        continue
                    fld, answer = spec
                    text = part[fld]
                    cut = False
                    if answer:
                        shown = out._think(out._think_key(), text, True)
                        cut, text = shown != text, shown  # a <think> section: its tokens go with it
                    emb = out._embedder(answer)
                    if emb is not None:
                        text = yield from embedded_steps(emb, text, slice_chars)
                    part[fld] = text
                    out._logprobs(part, emb is not None or thought or cut)
            out._clean_item(item, False)
    changed = changed or bool(out.withheld) or out.fields_removed
    if withheld is not None:
        withheld.update(out.withheld)
    return changed, usage, [fr] if fr else [], out.logprob_positions, out.watermarked


def _generated_chars(output: list[Any]) -> int:
    """The characters of text in a response's output items: their parts' text and a call's arguments."""
    n = 0
    for item in output:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("arguments"), str):
            n += len(item["arguments"])
        for kind in ("content", "summary"):
            parts = item.get(kind)
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict):
                    n += sum(len(v) for k in ("text", "refusal") if isinstance(v := part.get(k), str))
    return n


def transform_body(body: dict[str, Any], embedder_factory: EmbedderFactory | None, hook: ChoiceHook | None, *,
                   strip_reasoning: bool = False, withheld: Counter[str] | None = None,
                   function_calls: bool = True, fields: FieldPolicy | None = None) -> Transformed:
    steps = transform_steps(body, embedder_factory, hook, strip_reasoning=strip_reasoning, withheld=withheld,
                            function_calls=function_calls, fields=fields)
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result: Transformed = done.value
        return result

