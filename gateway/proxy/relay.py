"""The transform step: upstream response bytes in, client bytes out, with the facts accounting needs.

``StreamRelay`` is sans-IO: ``feed(chunk) -> bytes`` and ``finish() -> bytes``. It keeps SSE framing intact,
passes comments (``: ping``) through, runs one watermark ``StreamEmbedder`` per choice over the content
deltas and one over its reasoning deltas (see ``REASONING_KEYS``), handles the usage chunk (see
``usage.py``), and notices whether the upstream ended with ``[DONE]``.
A stream that ends without ``[DONE]`` was cut: ``finish()`` then returns a terminating error event, never a
clean end. ``body.transform_body`` does the same for a non-streaming JSON body; what both share about one
choice is in ``choice.py``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.hooks import StreamEmbedder
from gateway.proxy import parts
from gateway.proxy.choice import (
    REASONING_KEYS,
    SIDE_KEYS,
    ChoiceHook,
    EmbedderFactory,
    answer_factory,
    logprob_positions,
    reasoning_groups,
    withhold_tokens,
)
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.parse import Endpoint
from gateway.proxy.sse import DONE, SSEComment, SSEDecoder, SSETooLarge, encode_comment, encode_event
from gateway.proxy.usage import Usage, split_usage_chunk

_DONE_EVENT = b"data: [DONE]\n\n"


# What a plain content chunk never contains: a usage object, a finish reason, an error.
_NEEDS_DECODING = re.compile(rb'"usage":\s*\{|"finish_reason":\s*"|"error"')


def error_event(message: str, code: str, etype: str = "upstream_error") -> bytes:
    """The terminating event for a stream that cannot finish (the openai client raises on it)."""
    err = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return b"data: " + json.dumps(err).encode() + b"\n\n"


def dumps_utf8(obj: Any, separators: tuple[str, str] | None = None) -> bytes:
    """JSON as UTF-8. An upstream string may hold an unpaired surrogate (from a ``\\udXXX`` escape) that UTF-8
    cannot encode: such a document is sent ASCII-escaped, as the upstream itself had written it."""
    try:
        return json.dumps(obj, separators=separators, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=separators).encode()


def _dumps(obj: Any) -> bytes:
    return dumps_utf8(obj, (",", ":"))


class StreamRelay:
    __slots__ = ("_answers", "_chat", "_client_usage", "_decoder", "_embedders", "_factory", "_fast", "_fields",
                 "_hook", "_ids", "_listed", "_max_choices", "_model_name", "_needs_decoding", "_part_thinking",
                 "_reasoned", "_thinking", "content_events", "done", "finish_reasons", "logprob_positions", "model",
                 "upstream_error", "usage", "watermarked")

    def __init__(self, endpoint: Endpoint, client_usage: bool, embedder_factory: EmbedderFactory | None,
                 *, details: bool = True, choice_hook: ChoiceHook | None = None,
                 fields: FieldPolicy | None = None, model_name: str | None = None,
                 max_choices: int | None = None) -> None:
        """``details`` False (no detection, trace not sampled): chunks that carry only content are relayed
        without JSON decoding; those with usage, a finish reason or an error are still decoded.
        ``choice_hook`` runs on every choice of every chunk (response-side logprob hardening).
        ``fields``: deployment-internal answer fields withheld from every chunk that may hold one.
        ``model_name``: the name every chunk's ``model`` is written with (the backend knows the model by another,
        its ``upstream_model``: relayed, the name disclosed the real weights); None: as the backend wrote it.
        ``max_choices``: the choices the request may be answered with (``ratelimit.choices_at_most``). The state
        kept per choice (watermark embedders, reasoning channels, finish reasons) is bounded by it: a stream naming
        more choices is malformed (``SSETooLarge``). Without the bound a backend that gave every chunk a new index
        grew the gateway ~1.1 KB per ~170-byte chunk (watermark on), without end. None: no bound."""
        self._decoder = SSEDecoder()
        self._hook = choice_hook
        self._fields = fields if fields is not None and fields.pattern is not None else None
        # the fast path's one scan per chunk: what needs decoding anyway, or a field to withhold
        self._needs_decoding = _NEEDS_DECODING if self._fields is None or self._fields.pattern is None else \
            re.compile(_NEEDS_DECODING.pattern + b"|" + self._fields.pattern.pattern)
        self._model_name = model_name
        self._max_choices = max_choices
        self._fast = not details and embedder_factory is None and choice_hook is None and model_name is None
        self._chat = endpoint == "chat"
        self._client_usage = client_usage
        self._factory = embedder_factory  # the reasoning channels' (and, unless ReasoningOnly, the answer's)
        self._answers = answer_factory(embedder_factory)
        self._embedders: dict[int, StreamEmbedder | None] = {}
        self._reasoned: set[int] = set()  # choices whose reasoning was watermarked: their tokens are withheld
        # reasoning channels: (choice, first key) -> (its embedder, the keys it writes: one, or both mirrored)
        self._thinking: dict[tuple[int, str], tuple[StreamEmbedder, tuple[str, ...]]] = {}
        self._listed: set[int] = set()  # choices whose content comes as a list of parts (``parts``)
        self._part_thinking: dict[int, StreamEmbedder] = {}  # their thinking parts' embedder, until the answer
        self.usage = Usage()
        self.finish_reasons: list[str] = []
        self.content_events = 0  # pieces of content streamed (a floor for completion tokens on abort)
        self.logprob_positions = 0
        self.done = False
        self.upstream_error = False
        self.model: str | None = None
        # the upstream's chunk id and creation time, for the chunks the relay writes itself (held-back tails):
        # both are required in a chunk, and strict clients (Mistral's SDK, typed ones) reject one without them
        self._ids: dict[str, Any] = {}
        self.watermarked = False  # at least one choice ran through an embedder


    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for item in self._decoder.feed(chunk):
            if isinstance(item, SSEComment):
                out.append(encode_comment(item.text))
                continue
            data = item.data
            if data == DONE:
                out.extend(self._flush_all(None))
                self.done = True
                out.append(_DONE_EVENT)
                continue
            out.extend(self._event(data, item.event))
        return b"".join(out)

    def finish(self) -> bytes:
        """Upstream EOF. Returns the tail to send: nothing after ``[DONE]``, else the text the watermark
        embedders still hold (the backend generated it; the client is charged for it) and a terminating
        error."""
        if self.done:
            return b""
        if self.upstream_error:  # the backend's error event ended it: what it sent after is closed, no more
            return b"".join(self._flush_all(None))
        return b"".join(self._flush_all(None)) + error_event(
            "The upstream connection ended before the response was complete.", "stream_interrupted")

    def _event(self, data: bytes, event: str | None) -> list[bytes]:
        if self._fast and self._needs_decoding.search(data) is None:
            self.content_events += 1
            return [encode_event(data, event)]
        internal = self._fields is not None and self._fields.may_hold(data)
        try:
            chunk = json.loads(data)
        except ValueError:
            return [encode_event(data, event)]  # not ours to judge: pass it through
        if not isinstance(chunk, dict):
            return [encode_event(data, event)]
        if chunk.get("error") is not None:  # some servers put "error": null on ordinary chunks
            self.upstream_error = True
            # the words the embedders hold back were generated (and are charged): they go before the error
            return [*self._flush_all(None), encode_event(data, event)]
        if self.model is None:
            self.model = chunk.get("model")
        if not self._ids:
            self._ids = {k: chunk[k] for k in ("id", "created") if k in chunk}
        changed = internal and self._fields is not None and self._fields.scrub(chunk)
        if self._model_name is not None and "model" in chunk and chunk["model"] != self._model_name:
            chunk["model"] = self._model_name
            changed = True
        if "usage" in chunk and chunk["usage"] is not None:
            content, usage_chunk, usage = split_usage_chunk(chunk, self._client_usage)
            if usage is not None:
                self.usage.update(usage)
            out = []
            if content is not None:
                out.extend(self._choices_event(content, True, event))
            if usage_chunk is not None:
                out.append(encode_event(_dumps(usage_chunk), event))
            return out
        return self._choices_event(chunk, changed, event, data)

    def _choices_event(self, chunk: dict[str, Any], changed: bool, event: str | None,
                       raw: bytes | None = None) -> list[bytes]:
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            holder: dict[str, Any] | None = choice.get("delta") if self._chat else choice
            # "" is no finish: SGLang <= 0.4.3 and Ollama wrote "finish_reason": "" on every chunk, and reading it
            # as the end stopped the watermark after the first delta
            fr = choice.get("finish_reason") or None
            idx = choice.get("index", 0)
            if holder is None and fr is not None and self._chat and self._holds(idx):
                # a finish chunk without a delta: the text still held back goes in it, not after the finish
                holder = choice["delta"] = {}
            text = holder.get("content" if self._chat else "text") if isinstance(holder, dict) else None
            # a tool call's argument pieces are generated tokens too (the fast path counts their chunks as well):
            # uncounted, a stream dropped after its finish chunk, before the usage chunk, cost no output tokens
            listed = self._chat and isinstance(text, list)
            if (isinstance(text, str) and text) or (isinstance(text, list) and self._chat and parts.slots(text)) or (
                    isinstance(holder, dict) and self._chat and (any(
                    isinstance(holder.get(k), str) and holder[k] for k in SIDE_KEYS)
                    or holder.get("tool_calls") or holder.get("function_call"))):
                self.content_events += 1
            emb = self._embedder(idx, self._answers) if self._answers is not None else None
            if self._factory is not None and self._chat and isinstance(holder, dict):
                # a reasoning channel closes when the answer starts or the choice ends: its held-back word first.
                # The answer starts with text, or with a tool call that no reasoning accompanies (a forced
                # tool_choice streams no text at all; a call beside reasoning pieces is not the end of them)
                closing = fr is not None or (isinstance(text, str) and bool(text)) or (
                    isinstance(text, list) and parts.answers(text)) or (
                    bool(holder.get("tool_calls") or holder.get("function_call"))
                    and not any(isinstance(holder.get(k), str) and holder[k] for k in REASONING_KEYS))
                if self._reason(idx, holder, closing):
                    changed = True
            if (emb is not None or idx in self._reasoned) and withhold_tokens(choice):
                changed = True
            self.logprob_positions += logprob_positions(choice, self._chat)
            if self._factory is not None and isinstance(holder, dict) and (listed or idx in self._listed):
                if self._parts(idx, choice, holder, text, emb, fr is not None):
                    changed = True
            elif emb is not None and isinstance(holder, dict):
                new = emb.feed(text) if isinstance(text, str) else ""
                if fr is not None:
                    new += emb.finish()
                    # finished; text a backend still sends for this choice gets a fresh embedder (and is closed
                    # at [DONE]), never relayed as written
                    del self._embedders[idx]
                if new != (text or ""):
                    holder["content" if self._chat else "text"] = new
                    changed = True
            if fr is not None and (self._max_choices is None or len(self.finish_reasons) < self._max_choices):
                self.finish_reasons.append(str(fr))
            if self._hook is not None and self._hook(choice):
                changed = True
        if changed or raw is None:
            return [encode_event(_dumps(chunk), event)]
        return [encode_event(raw, event)]

    def _reason(self, idx: int, holder: dict[str, Any], closing: bool) -> bool:
        """Watermark the reasoning fields of one choice's delta in place; ``closing`` also flushes this choice's
        reasoning channels into it. True when the delta changed."""
        assert self._factory is not None
        changed = False
        for keys in reasoning_groups(holder):
            ch = (idx, keys[0])
            if ch not in self._thinking:
                emb = self._factory()
                if emb is None:
                    return False
                self._room(self._thinking, 4)  # (a choice has a channel or two: reasoning_content, reasoning)
                self._room(self._reasoned, 1, idx)
                self._thinking[ch] = (emb, keys)
                self._reasoned.add(idx)
                self.watermarked = True
            emb = self._thinking[ch][0]
            new = emb.feed(holder[keys[0]])
            if new != holder[keys[0]]:
                for k in keys:
                    holder[k] = new
                changed = True
        if closing:
            for ch in [c for c in self._thinking if c[0] == idx]:
                emb, keys = self._thinking.pop(ch)
                rest = emb.finish()
                if rest:
                    for k in keys:
                        before = holder.get(k)
                        holder[k] = (before if isinstance(before, str) else "") + rest
                    changed = True
        return changed

    def _parts(self, idx: int, choice: dict[str, Any], holder: dict[str, Any], text: Any,
               emb: StreamEmbedder | None, finishing: bool) -> bool:
        """Watermark a delta of a choice that streams its ``content`` as a list of parts (see ``parts``), in
        place: text parts through the choice's answer embedder, thinking parts through a reasoning embedder of
        their own, which closes when the answer starts (its held-back word in a thinking part before the text).
        A string delta of such a choice (Mistral streams the answer's text as strings after the thinking parts)
        stays a string unless a thinking part must go in with it. True if the delta changed."""
        if text is not None and not isinstance(text, str | list):
            return False  # not a content this relay knows: relayed as written
        self._room(self._listed, 1, idx)
        self._listed.add(idx)
        as_list = isinstance(text, list)
        content: list[Any] = text if isinstance(text, list) else [parts.text_part(text)] if (
            isinstance(text, str) and text) else []
        changed = reshaped = withheld = False
        for thinking, part, key in parts.slots(content):
            if thinking:
                th = self._part_thinking.get(idx)
                if th is None:
                    th = self._factory() if self._factory is not None else None
                    if th is None:
                        continue
                    self._room(self._reasoned, 1, idx)
                    self._part_thinking[idx] = th
                    self._reasoned.add(idx)
                    self.watermarked = True
                    # the tokens would spell the unwatermarked thought (the chunk is written again for that
                    # alone where the embedder changed nothing yet)
                    withheld = withhold_tokens(choice)
                new = th.feed(part[key])
            else:
                tail = self._close_part_thinking(idx)
                if tail:
                    at = next(i for i, p in enumerate(content) if p is part)
                    content.insert(at, parts.thinking_part(tail))
                    reshaped = True
                if emb is None:
                    continue
                new = emb.feed(part[key])
            if new != part[key]:
                part[key] = new
                changed = True
        if finishing:
            tail = self._close_part_thinking(idx)
            if tail:
                content.append(parts.thinking_part(tail))
                reshaped = True
            if emb is not None:
                rest = emb.finish()
                del self._embedders[idx]  # text a backend still sends for this choice gets a fresh embedder
                if rest:
                    content.append(parts.text_part(rest))
                    changed = True
        if as_list or reshaped:
            if changed or reshaped:
                holder["content"] = content
                return True
            return withheld
        joined = "".join(p["text"] for p in content)
        if joined == (text or ""):
            return withheld
        holder["content"] = joined
        return True

    def _close_part_thinking(self, idx: int) -> str:
        th = self._part_thinking.pop(idx, None)
        return th.finish() if th is not None else ""

    def _holds(self, idx: int) -> bool:
        """Whether choice ``idx`` has an embedder (answer or reasoning) that may still hold text back."""
        return (self._embedders.get(idx) is not None or any(c[0] == idx for c in self._thinking)
                or idx in self._part_thinking)

    def _embedder(self, idx: int, factory: EmbedderFactory) -> StreamEmbedder | None:
        if idx not in self._embedders:
            self._room(self._embedders, 1)
            emb = self._embedders[idx] = factory()
            self.watermarked = self.watermarked or emb is not None
        return self._embedders[idx]

    def _room(self, held: dict[Any, Any] | set[Any], per_choice: int, key: Any = None) -> None:
        """``SSETooLarge`` when a new entry in ``held`` (per-choice state; ``key``: none if already in it) would hold
        more than ``per_choice`` entries per choice the request may be answered with."""
        if self._max_choices is not None and len(held) >= per_choice * self._max_choices and (
                key is None or key not in held):
            raise SSETooLarge(f"the stream names more choices than the request's {self._max_choices}")

    def _flush_all(self, event: str | None) -> list[bytes]:
        """[DONE] arrived while embedders still hold text (no finish_reason seen): emit it as chunks."""
        out = []
        for (idx, _), (thinking, keys) in self._thinking.items():
            rest = thinking.finish()
            if rest:
                tail: dict[str, Any] = {"index": idx, "delta": dict.fromkeys(keys, rest), "finish_reason": None}
                if self._hook is not None:  # the tier's hardening (strip_reasoning) applies to this tail too
                    self._hook(tail)
                if not tail["delta"]:
                    continue
                obj = {**self._ids, "object": "chat.completion.chunk", "model": self.model, "choices": [tail]}
                out.append(encode_event(_dumps(obj), event))
        self._thinking.clear()
        for idx, th in self._part_thinking.items():
            rest = th.finish()
            if rest:
                tail = {"index": idx, "delta": {"content": [parts.thinking_part(rest)]}, "finish_reason": None}
                if self._hook is not None:
                    self._hook(tail)
                if not tail["delta"].get("content"):
                    continue
                obj = {**self._ids, "object": "chat.completion.chunk", "model": self.model, "choices": [tail]}
                out.append(encode_event(_dumps(obj), event))
        self._part_thinking.clear()
        # every embedder goes (as at a choice's finish): text a backend still sends after an error event or
        # [DONE] gets a fresh one, never relayed as written
        embedders, self._embedders = self._embedders, {}
        for idx, emb in embedders.items():
            if emb is None:
                continue
            rest = emb.finish()
            if rest:
                choice: dict[str, Any] = ({"index": idx, "delta": {"content": rest}, "finish_reason": None}
                                          if self._chat else {"index": idx, "text": rest, "finish_reason": None})
                if self._hook is not None:  # the tier's hardening (a <think> section) applies to this tail too
                    self._hook(choice)
                obj = {**self._ids, "object": "chat.completion.chunk" if self._chat else "text_completion",
                       "model": self.model, "choices": [choice]}
                out.append(encode_event(_dumps(obj), event))
        return out
