"""The transform of a non-streaming Responses answer: ``transform_steps`` watermarks a body in place (one embedder
per text part), yielding between slices of a large body (``body.run_steps`` drives it); ``transform_body`` does it
at once. Both return the facts accounting needs, like the chat path's ``body.py``. The stream's counterpart is
``responses_relay.ResponsesRelay``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from typing import Any

from gateway.proxy.body import Transformed, drive, embedded_steps
from gateway.proxy.choice import ChoiceHook, EmbedderFactory
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.responses_output import Output, finish_reason
from gateway.proxy.responses_scrub import PART_TEXT
from gateway.proxy.usage import Usage


def transform_steps(body: dict[str, Any], embedder_factory: EmbedderFactory | None, hook: ChoiceHook | None, *,
                    strip_reasoning: bool = False, slice_chars: int | None = None,
                    withheld: Counter[str] | None = None, function_calls: bool = True,
                    fields: FieldPolicy | None = None) -> Generator[None, None, Transformed]:
    """Watermark a non-streaming Responses body in place (one embedder per text part), yielding between
    slices of ``slice_chars`` characters; returns (changed, usage, finish reasons, logprob positions,
    watermarked) like the chat path's ``transform_steps``."""
    out = Output(embedder_factory, hook, strip_reasoning, function_calls, fields)
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
    return drive(transform_steps(body, embedder_factory, hook, strip_reasoning=strip_reasoning, withheld=withheld,
                                 function_calls=function_calls, fields=fields))
