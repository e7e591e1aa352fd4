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

Sans-IO: ``feed(chunk) -> bytes``, ``finish() -> bytes``; ``transform_steps`` does the same for a body.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from gateway.hooks import StreamEmbedder
from gateway.proxy.relay import (
    ChoiceHook,
    EmbedderFactory,
    Transformed,
    _embedded,
    answer_factory,
    dumps_utf8,
    error_event,
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
# text part type -> its text field; whether it is the answer (False: reasoning, watermarked even when the
# answer must stay verbatim)
_PART_TEXT = {"output_text": ("text", True), "refusal": ("refusal", True), "reasoning_text": ("text", False),
              "summary_text": ("text", False)}
_RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.completed",
                              "response.incomplete", "response.failed", "response.queued"})

PartKey = tuple[int, str, int]  # (upstream output_index, "content" | "summary", index within that list)


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


class _Output:
    """What the stream relay and the body transform share: per-part embedders, the hook, dropped items."""

    def __init__(self, factory: EmbedderFactory | None, hook: ChoiceHook | None, strip_reasoning: bool) -> None:
        self._factory = factory
        self._answers = answer_factory(factory)
        self._hook = hook
        self._strip = strip_reasoning
        self._thinks = 0
        self.watermarked = False
        self.logprob_positions = 0

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
        if not isinstance(lp, list) or not lp:
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
        return self._strip and isinstance(item, dict) and item.get("type") == "reasoning"


_ANSWER_TYPES = frozenset({"response.output_text.delta", "response.refusal.delta"})


class ResponsesRelay(_Output):
    def __init__(self, embedder_factory: EmbedderFactory | None, *, hook: ChoiceHook | None = None,
                 strip_reasoning: bool = False) -> None:
        super().__init__(embedder_factory, hook, strip_reasoning)
        self._decoder = SSEDecoder()
        self._seq = 0
        self._parts: dict[PartKey, _Part] = {}
        self._index: dict[int, int | None] = {}  # upstream output_index -> the client's (None: dropped)
        self._ids: dict[int, Any] = {}  # upstream output_index -> its item id
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
            if isinstance(item, SSEComment):
                out.append(encode_comment(item.text))
                continue
            try:
                obj = json.loads(item.data)
            except ValueError:
                out.append(encode_event(item.data, item.event))  # not ours to judge: pass it through
                continue
            if not isinstance(obj, dict):
                out.append(encode_event(item.data, item.event))
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
            return [obj]
        oi = obj.get("output_index")
        if isinstance(oi, int) and not isinstance(oi, bool):
            if oi not in self._index:
                item = obj.get("item")
                self._index[oi] = None if self._dropped(item) else self._next_index
                if self._index[oi] is not None:
                    self._next_index += 1
            mapped = self._index[oi]
            if mapped is None:
                return []  # a reasoning item the tier strips: none of its events
            obj["output_index"] = mapped
            item = obj.get("item")
            self._ids.setdefault(oi, obj.get("item_id", item.get("id") if isinstance(item, dict) else None))
            if t in _DELTAS:
                return self._delta(obj, oi, t)
            if t in _DONES:
                return self._text_done(obj, oi, t)
            if t in _PART_DONES:
                kind, idx = _PART_DONES[t]
                i, part = obj.get(idx), obj.get("part")
                if isinstance(i, int) and isinstance(part, dict):
                    return [*self._final_part(part, (oi, kind, i)), obj]
                return [obj]
            if t == "response.output_item.done" and isinstance(item, dict):
                return [*self._item(item, oi), obj]
            return [obj]
        if t in _RESPONSE_EVENTS and isinstance(obj.get("response"), dict):
            return [*self._response(obj["response"], t), obj]
        return [obj]

    def _part(self, key: PartKey, delta_type: str) -> _Part:
        part = self._parts.get(key)
        if part is None:
            answer = delta_type in _ANSWER_TYPES
            part = self._parts[key] = _Part(self._embedder(answer), self._think_key(), answer, delta_type)
        return part

    def _feed(self, part: _Part, text: str, last: bool) -> str:
        if part.answer:
            text = self._think(part.think, text, last)
        new = part.emb.feed(text) if part.emb is not None else text
        if last and part.emb is not None:
            new += part.emb.finish()
        part.sent.append(new)
        return new

    def _delta(self, obj: dict[str, Any], oi: int, t: str) -> list[dict[str, Any]]:
        kind, idx, _, _ = _DELTAS[t]
        i, text = obj.get(idx), obj.get("delta")
        if not isinstance(i, int) or not isinstance(text, str):
            return [obj]
        part = self._part((oi, kind, i), t)
        if part.closed:  # text after its part was done: never relayed unwatermarked
            return []
        if text:
            self.content_events += 1
        obj["delta"] = self._feed(part, text, False)
        self._logprobs(obj, part.emb is not None)
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
        if not isinstance(i, int):
            return [obj]
        key = (oi, kind, i)
        out: list[dict[str, Any]] = []
        if key not in self._parts:  # a part the backend never streamed: its whole text, watermarked, as a delta
            part = self._part(key, delta_type)
            text = obj.get(fld)
            whole = self._feed(part, text if isinstance(text, str) else "", True)
            part.closed = True
            if whole:
                out.append(self._synthetic(key, part, whole))
        else:
            out.extend(self._close(key))
            part = self._parts[key]
        obj[fld] = "".join(part.sent)
        self._logprobs(obj, part.emb is not None)
        out.append(obj)
        return out

    def _final_part(self, part: dict[str, Any], key: PartKey) -> list[dict[str, Any]]:
        """A part in a ``done`` event or a finished item gets the text the client received for it; returns
        the delta events to send before (a part whose text the backend had not finished yet)."""
        spec = _PART_TEXT.get(part.get("type", ""))
        if spec is None:
            return []
        fld = spec[0]
        got = self._parts.get(key)
        pre: list[dict[str, Any]] = []
        if got is None:  # never streamed: watermarked as a whole and sent as one delta
            kind = key[1]
            delta_type = "response.reasoning_summary_text.delta" if kind == "summary" else (
                "response.output_text.delta" if part["type"] == "output_text" else
                "response.refusal.delta" if part["type"] == "refusal" else "response.reasoning_text.delta")
            got = self._part(key, delta_type)
            text = part.get(fld)
            whole = self._feed(got, text if isinstance(text, str) else "", True)
            got.closed = True
            if whole:
                pre.append(self._synthetic(key, got, whole))
        else:
            pre = self._close(key)
        part[fld] = "".join(got.sent)
        self._logprobs(part, got.emb is not None)
        return pre

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
        output = response.get("output")
        if isinstance(output, list) and output:
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
        return pre


def transform_steps(body: dict[str, Any], embedder_factory: EmbedderFactory | None, hook: ChoiceHook | None, *,
                    strip_reasoning: bool = False,
                    slice_chars: int | None = None) -> Generator[None, None, Transformed]:
    """Watermark a non-streaming Responses body in place (one embedder per text part), yielding between
    slices of ``slice_chars`` characters; returns (changed, usage, finish reasons, logprob positions,
    watermarked) like the chat path's ``transform_steps``."""
    out = _Output(embedder_factory, hook, strip_reasoning)
    usage = Usage()
    u = body.get("usage")
    if isinstance(u, dict):
        usage.update({"prompt_tokens": u.get("input_tokens"), "completion_tokens": u.get("output_tokens")})
    fr = finish_reason(body)
    # re-encoded whenever anything may have changed (the text, a logprob's noise): comparing would cost more
    changed = embedder_factory is not None or hook is not None
    output = body.get("output")
    if isinstance(output, list):
        kept = [item for item in output if not out._dropped(item)]
        if len(kept) != len(output):
            body["output"] = kept
            changed = True
        for item in kept:
            if not isinstance(item, dict):
                continue
            for kind in ("content", "summary"):
                parts = item.get(kind)
                for part in parts if isinstance(parts, list) else ():
                    spec = _PART_TEXT.get(part.get("type", "")) if isinstance(part, dict) else None
                    if spec is None or not isinstance(part.get(spec[0]), str):
                        continue
                    fld, answer = spec
                    text = part[fld]
                    if answer:
                        text = out._think(out._think_key(), text, True)
                    emb = out._embedder(answer)
                    if emb is not None:
                        text = yield from _embedded(emb, text, slice_chars)
                    part[fld] = text
                    out._logprobs(part, emb is not None)
    return changed, usage, [fr] if fr else [], out.logprob_positions, out.watermarked


def transform_body(body: dict[str, Any], embedder_factory: EmbedderFactory | None, hook: ChoiceHook | None, *,
                   strip_reasoning: bool = False) -> Transformed:
    steps = transform_steps(body, embedder_factory, hook, strip_reasoning=strip_reasoning)
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result: Transformed = done.value
        return result

