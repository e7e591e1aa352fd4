"""The transform of a non-streaming answer: ``transform_body`` watermarks (and logprob-hardens) a JSON body in
place and returns the facts accounting needs; ``transform_body_async`` does it in slices for a large body, letting
the event loop run other requests between them. The stream's counterpart is ``relay.StreamRelay``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from typing import Any

from gateway.hooks import StreamEmbedder
from gateway.proxy import parts
from gateway.proxy.choice import (
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
from gateway.proxy.usage import Usage

Transformed = tuple[bool, Usage, list[str], int, bool]  # changed, usage, finish reasons, logprob positions, watermarked


def transform_body(endpoint: Endpoint, body: dict[str, Any], embedder_factory: EmbedderFactory | None,
                   choice_hook: ChoiceHook | None = None, fields: FieldPolicy | None = None) -> Transformed:
    """Watermark (and logprob-harden) a non-streaming body in place, withholding ``fields``' answer fields.
    Returns (changed, usage, finish_reasons, logprob positions, watermarked)."""
    return drive(transform_steps(endpoint, body, embedder_factory, choice_hook, fields=fields))


def drive(steps: Generator[None, None, Transformed]) -> Transformed:
    """Run a sliced transform to its result at once (a body small enough not to need the event loop's turns)."""
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


def embedded_steps(emb: StreamEmbedder, text: str, slice_chars: int | None) -> Generator[None, None, str]:
    if slice_chars is None or len(text) <= slice_chars:
        return emb.feed(text) + emb.finish()
    out = []
    for i in range(0, len(text), slice_chars):
        out.append(emb.feed(text[i : i + slice_chars]))
        yield
    out.append(emb.finish())
    return "".join(out)


CHOICE_CHARS = 64  # what one choice costs at least, in characters of slice_chars (its hook, its bookkeeping)


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
    done = 0  # characters (and per-choice overhead) worked on since the last turn of the event loop
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        # Many small choices (a batch x n) are as much work as one long text: yield every slice_chars of them too,
        # counting each choice as CHOICE_CHARS at least (128 000 one-token choices held the loop for 6.3 s)
        done += CHOICE_CHARS
        if slice_chars is not None and done >= slice_chars:
            done = 0
            yield
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
                new = yield from embedded_steps(thinking, holder[keys[0]], slice_chars)
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
                part[k] = yield from embedded_steps(e, part[k], slice_chars)
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
        new = yield from embedded_steps(emb, holder[key], slice_chars)
        done += len(new)
        if new != holder[key]:
            holder[key] = new
            changed = True
    if choice_hook is not None and body.get("prompt_logprobs") is not None:
        # vLLM's chat answer carries the prompt's logprobs at the top level, beside the choices: the tier's cap and
        # noise apply there as on a completions choice's (served exactly, they bypassed logprob_noise)
        top = {"prompt_logprobs": body["prompt_logprobs"]}
        if choice_hook(top):
            body["prompt_logprobs"] = top["prompt_logprobs"]
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
