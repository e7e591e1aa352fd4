"""The transform step: upstream response bytes in, client bytes out, with the facts accounting needs.

``StreamRelay`` is sans-IO: ``feed(chunk) -> bytes`` and ``finish() -> bytes``. It keeps SSE framing intact,
passes comments (``: ping``) through, runs one watermark ``StreamEmbedder`` per choice over the content
deltas and one over its reasoning deltas (see ``REASONING_KEYS``), handles the usage chunk (see
``usage.py``), and notices whether the upstream ended with ``[DONE]``.
A stream that ends without ``[DONE]`` was cut: ``finish()`` then returns a terminating error event, never a
clean end. ``transform_body`` does the same for a non-streaming JSON body.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Generator
from typing import Any

from gateway.hooks import StreamEmbedder
from gateway.proxy import parts
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.parse import Endpoint
from gateway.proxy.sse import DONE, SSEComment, SSEDecoder, encode_comment, encode_event
from gateway.proxy.usage import Usage, split_usage_chunk

EmbedderFactory = Callable[[], StreamEmbedder | None]
ChoiceHook = Callable[[dict[str, Any]], bool]  # edits one choice in place (logprob hardening); True if changed

_DONE_EVENT = b"data: [DONE]\n\n"
# A reasoning model's chain of thought, beside ``content`` in a chat message or delta: vLLM writes ``reasoning``
# (``reasoning_content`` before 0.11, and both, with the same text, in between); DeepSeek's API and SGLang write
# ``reasoning_content``. It is the output distillation wants most, so it is watermarked like the answer.
REASONING_KEYS = ("reasoning", "reasoning_content")
# A refusal (OpenAI's ``message.refusal`` / ``delta.refusal``) is generated prose beside ``content``: watermarked
# as a channel of its own, like the reasoning (also when the answer is structured output, whose format does not
# constrain it), but never stripped with the reasoning. Relayed as written it was unwatermarked text from any
# backend that writes its answers there.
SIDE_KEYS = (*REASONING_KEYS, "refusal")


class ReasoningOnly:
    """An ``EmbedderFactory`` for an answer that must stay exactly as the backend wrote it (structured output, a
    forced tool call) from a reasoning model: only its chain of thought is watermarked. The format constrains
    the answer, not the reasoning beside it (vLLM applies the grammar after the reasoning ends), and the
    reasoning is the output distillation wants most."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[], StreamEmbedder | None]) -> None:
        self._make = make

    def __call__(self) -> StreamEmbedder | None:
        return self._make()


def answer_factory(factory: EmbedderFactory | None) -> EmbedderFactory | None:
    """The factory for the answer's text (``content``/``text``): None where only the reasoning is watermarked."""
    return None if isinstance(factory, ReasoningOnly) else factory


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
                 "_hook", "_ids", "_listed", "_needs_decoding", "_part_thinking", "_reasoned", "_thinking",
                 "content_events", "done", "finish_reasons", "logprob_positions", "model", "upstream_error", "usage",
                 "watermarked")

    def __init__(self, endpoint: Endpoint, client_usage: bool, embedder_factory: EmbedderFactory | None,
                 *, details: bool = True, choice_hook: ChoiceHook | None = None,
                 fields: FieldPolicy | None = None) -> None:
        """``details`` False (no detection, trace not sampled): chunks that carry only content are relayed
        without JSON decoding; those with usage, a finish reason or an error are still decoded.
        ``choice_hook`` runs on every choice of every chunk (response-side logprob hardening).
        ``fields``: deployment-internal answer fields withheld from every chunk that may hold one."""
        self._decoder = SSEDecoder()
        self._hook = choice_hook
        self._fields = fields if fields is not None and fields.pattern is not None else None
        # the fast path's one scan per chunk: what needs decoding anyway, or a field to withhold
        self._needs_decoding = _NEEDS_DECODING if self._fields is None or self._fields.pattern is None else \
            re.compile(_NEEDS_DECODING.pattern + b"|" + self._fields.pattern.pattern)
        self._fast = not details and embedder_factory is None and choice_hook is None
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
            if fr is not None:
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
            emb = self._embedders[idx] = factory()
            self.watermarked = self.watermarked or emb is not None
        return self._embedders[idx]

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


def reasoning_groups(message: dict[str, Any]) -> list[tuple[str, ...]]:
    """The reasoning fields of a chat message or delta that hold text, grouped by what they hold: both keys
    in one group when they carry the same text (a server writing the old and the new name), so that the two
    copies get the same watermarked text and cannot be diffed against each other; then a ``refusal`` holding
    text, as a channel of its own (``SIDE_KEYS``)."""
    keys = [k for k in REASONING_KEYS if isinstance(message.get(k), str) and message[k]]
    groups: list[tuple[str, ...]] = [tuple(keys)] if len(keys) == 2 and message[keys[0]] == message[keys[1]] \
        else [(k,) for k in keys]
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        groups.append(("refusal",))  # a channel of its own (see SIDE_KEYS)
    return groups


def logprob_positions(choice: dict[str, Any], chat: bool) -> int:
    """Token positions that carry logprobs in this choice (what detection counts as served)."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return 0
    seq = lp.get("content") if chat else lp.get("tokens")
    return len(seq) if isinstance(seq, list) else 0


def withhold_tokens(choice: dict[str, Any]) -> bool:
    """A post-hoc (lexical) watermark rewrites the text, but the backend's tokens would still spell the original:
    ``logprobs`` lists them, and vLLM's ``token_ids`` (``return_token_ids``) numbers them for the model's public
    tokenizer. A client could rebuild the unwatermarked text from either, so a watermarked choice is served
    with ``logprobs: null`` and without ``token_ids``. Returns True when something was withheld. (KGW, applied
    in the sampler, does not need this: the tokens are the watermarked text.)"""
    withheld = False
    if choice.get("logprobs") is not None:
        choice["logprobs"] = None
        withheld = True
    if "token_ids" in choice:
        del choice["token_ids"]
        withheld = True
    return withheld


Transformed = tuple[bool, Usage, list[str], int, bool]  # changed, usage, finish reasons, logprob positions, watermarked


def transform_body(endpoint: Endpoint, body: dict[str, Any], embedder_factory: EmbedderFactory | None,
                   choice_hook: ChoiceHook | None = None, fields: FieldPolicy | None = None) -> Transformed:
    """Watermark (and logprob-harden) a non-streaming body in place, withholding ``fields``' answer fields.
    Returns (changed, usage, finish_reasons, logprob positions, watermarked)."""
    steps = transform_steps(endpoint, body, embedder_factory, choice_hook, fields=fields)
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result: Transformed = done.value
        return result


async def transform_body_async(endpoint: Endpoint, body: dict[str, Any], embedder_factory: EmbedderFactory | None,
                               choice_hook: ChoiceHook | None = None, *, slice_chars: int,
                               fields: FieldPolicy | None = None) -> Transformed:
    """``transform_body`` for a large body: each text is embedded ``slice_chars`` at a time, and the event loop
    runs other requests between slices. Watermarking is pure Python: a 28 000-word answer embedded at once
    held the loop for ≈ 130 ms, stalling every other stream and request of the process. The result is the
    same (an embedder fed in pieces writes what it writes fed at once)."""
    return await run_steps(transform_steps(endpoint, body, embedder_factory, choice_hook, slice_chars=slice_chars,
                                           fields=fields))


async def run_steps(steps: Generator[None, None, Transformed]) -> Transformed:
    """Drive a sliced transform to its result, letting the event loop run other requests between slices."""
    try:
        while True:
            next(steps)
            await asyncio.sleep(0)
    except StopIteration as done:
        result: Transformed = done.value
        return result


def _embedded(emb: StreamEmbedder, text: str, slice_chars: int | None) -> Generator[None, None, str]:
    if slice_chars is None or len(text) <= slice_chars:
        return emb.feed(text) + emb.finish()
    out = []
    for i in range(0, len(text), slice_chars):
        out.append(emb.feed(text[i : i + slice_chars]))
        yield
    out.append(emb.finish())
    return "".join(out)


def transform_steps(endpoint: Endpoint, body: dict[str, Any], embedder_factory: EmbedderFactory | None,
                    choice_hook: ChoiceHook | None = None, *, slice_chars: int | None = None,
                    fields: FieldPolicy | None = None) -> Generator[None, None, Transformed]:
    """The work of ``transform_body``, yielding between slices of ``slice_chars`` characters of text (never
    with ``slice_chars`` None); its return value is the result."""
    usage = Usage()
    u = body.get("usage")
    if isinstance(u, dict):
        usage.update(u)
    changed = fields is not None and fields.scrub(body)
    watermarked = False
    reasons: list[str] = []
    positions = 0
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        fr = choice.get("finish_reason")
        if fr is not None:
            reasons.append(str(fr))
        emb = None
        holder = choice.get("message") if endpoint == "chat" else choice
        key = "content" if endpoint == "chat" else "text"
        answers = answer_factory(embedder_factory)
        if answers is not None and endpoint != "embeddings" and isinstance(holder, dict) and isinstance(
                holder.get(key), str):
            emb = answers()
        if embedder_factory is not None and endpoint == "chat" and isinstance(holder, dict):
            for keys in reasoning_groups(holder):
                thinking = embedder_factory()
                if thinking is None:
                    break
                watermarked = changed = True
                new = yield from _embedded(thinking, holder[keys[0]], slice_chars)
                for k in keys:
                    holder[k] = new
                if withhold_tokens(choice):
                    changed = True
        content = holder.get(key) if isinstance(holder, dict) else None
        if embedder_factory is not None and endpoint == "chat" and isinstance(content, list):
            # Mistral's list of parts: the text parts as the answer, the thinking parts as reasoning
            for in_thought, part, k in parts.slots(content):
                make = embedder_factory if in_thought else answers
                e = make() if make is not None else None
                if e is None:
                    continue
                watermarked = changed = True
                part[k] = yield from _embedded(e, part[k], slice_chars)
                if withhold_tokens(choice):
                    changed = True
        if emb is not None and withhold_tokens(choice):
            changed = True
        positions += logprob_positions(choice, endpoint == "chat")
        if choice_hook is not None and choice_hook(choice):
            changed = True
        if emb is None or not isinstance(holder, dict):
            continue
        watermarked = True
        new = yield from _embedded(emb, holder[key], slice_chars)
        if new != holder[key]:
            holder[key] = new
            changed = True
    if usage.prompt_tokens is None and usage.completion_tokens is None and (
            isinstance(choices, list) or isinstance(body.get("data"), list)):
        usage.completion_tokens = _generated_tokens(choices)  # an answer without usage (not an error body)
    return changed, usage, reasons, positions, watermarked


def _generated_tokens(choices: Any) -> int:
    """What an answer without ``usage`` generated, estimated as the reservation's prompt estimate is
    (characters / 4, at least one per choice); an embeddings answer (no choices) generated nothing. The account
    step adds the prompt estimate, so such an answer does not keep its whole reservation."""
    n = 0
    for c in choices if isinstance(choices, list) else ():
        if not isinstance(c, dict):
            continue
        msg = c.get("message")
        texts = [c.get("text")] + ([msg.get(k) for k in ("content", *SIDE_KEYS)]
                                   if isinstance(msg, dict) else [])
        if isinstance(msg, dict) and isinstance(msg.get("tool_calls"), list):
            texts += [json.dumps(t) for t in msg["tool_calls"]]
        listed = parts.chars(msg["content"]) if isinstance(msg, dict) and isinstance(msg.get("content"), list) else 0
        n += max(1, (sum(len(x) for x in texts if isinstance(x, str)) + listed) // 4)
    return n
