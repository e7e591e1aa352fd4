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

Sans-IO: ``feed(chunk) -> bytes``, ``finish() -> bytes``; ``responses_body.transform_steps`` does the same for a
body.

Layout: this module reads the event stream (which event is what, the output_index renumbering, the terminal
events); ``responses_parts.py`` holds the per-part state (``PartStream``, a base of ``ResponsesRelay``);
``responses_output.py`` what the stream and the body transform (``responses_body.py``) share.
"""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from gateway.proxy.choice import ChoiceHook, EmbedderFactory
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.relay import dumps_utf8, error_event
from gateway.proxy.responses_output import finish_reason
from gateway.proxy.responses_parts import KEEP_ENTRY, KEEP_LOGPROB, KEEP_PIECE, Part, PartKey, PartStream
from gateway.proxy.responses_scrub import ERROR_FIELDS, EVENT_FIELDS, RESPONSE_EVENT_FIELDS
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


class ResponsesRelay(PartStream):
    def __init__(self, embedder_factory: EmbedderFactory | None, *, hook: ChoiceHook | None = None,
                 strip_reasoning: bool = False, function_calls: bool = True,
                 fields: FieldPolicy | None = None, model_name: str | None = None) -> None:
        super().__init__(embedder_factory, hook, strip_reasoning, function_calls, fields)
        self._model_name = model_name  # the response objects' ``model`` (see ``StreamRelay``); None: as written
        self._decoder = SSEDecoder()
        self._seq = 0
        self._parts: dict[PartKey, Part] = {}
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
        self._kept = 0  # what the stream keeps for its done copies (``PartStream.keep``)

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
            pre = self._response(obj["response"], t)
            if self._model_name is not None and "model" in obj["response"]:
                obj["response"]["model"] = self._model_name
            return [*pre, obj]
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
            self.keep(KEEP_ENTRY)  # (with its _ids entry: an endless run of new indices is bounded too)
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
            key = (oi, "summary" if _ADDED[t] == "summary_index" else "content", obj[_ADDED[t]])
            if key not in self._announced:
                self.keep(KEEP_ENTRY)
                self._announced.add(key)
            return [obj]
        if t == "response.output_item.added" and isinstance(item, dict):
            self._clean_item(item, True)
        elif t == "response.output_item.done" and isinstance(item, dict):
            pre = self._item(item, oi)
            self._clean_item(item, False)
            return [*pre, obj]
        return [obj]

    def _delta(self, obj: dict[str, Any], oi: int, t: str) -> list[dict[str, Any]]:
        kind, idx, _, _ = _DELTAS[t]
        i, text = obj.get(idx), obj.get("delta")
        if not _is_index(i) or not isinstance(text, str):
            return self._withhold("malformed_event", f"{t} without an index or a string delta")
        part = self._part((oi, kind, i), t)
        if part.closed:  # text after its part was done: never relayed unwatermarked
            return []
        lp = obj.get("logprobs")
        # Every part's text (and logprobs) is kept for its done copies, so an endless stream of deltas (a broken
        # or hostile backend) grew the gateway without limit, 1:1 with what it relayed. The backend's own
        # response.completed carries all of it and is refused over MAX_EVENT_BYTES (a logprob entry is >= 32
        # bytes of JSON there): a stream keeping twice that can never complete, and ends as malformed now.
        self.keep(len(text) + KEEP_PIECE + KEEP_LOGPROB * (len(lp) if isinstance(lp, list) else 0))
        if text:
            self.content_events += 1
        obj["delta"] = self._feed(part, text, False)
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
