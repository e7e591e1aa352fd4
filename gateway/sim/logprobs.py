"""Logprobs shaped like the real API, in the chat and the legacy completions forms (the sim's sampled token
always ranks first among its alternatives)."""

from __future__ import annotations

from typing import Any

from gateway.sim.corpus import alternatives, token_logprob, tokenize


def chat_logprobs(tokens: list[str], start: int, top: int) -> dict[str, Any]:
    content = []
    for i, t in enumerate(tokens, start):
        alts = alternatives(t, i, max(top, 1))
        content.append({
            "token": t, "logprob": alts[0][1], "bytes": list(t.encode()),
            "top_logprobs": [{"token": a, "logprob": lp, "bytes": list(a.encode())} for a, lp in alts[:top]],
        })
    return {"content": content, "refusal": None}


def echoed_logprobs(prompt: str, top: int, rest: dict[str, Any]) -> dict[str, Any]:
    """``echo: true``: the prompt's tokens come first (vLLM's prompt logprobs, none for the first token, which
    has no context), then ``rest``; text offsets count from the start of the prompt."""
    toks = tokenize(prompt)
    head = completion_logprobs(toks, -len(toks), top, 0)
    if toks:
        head["token_logprobs"][0] = head["top_logprobs"][0] = None
    return {k: head[k] + rest[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def completion_logprobs(tokens: list[str], start: int, top: int, offset: int) -> dict[str, Any]:
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [token_logprob(t, i) for i, t in enumerate(tokens, start)],
        # vLLM returns a position's first ``logprobs + 1`` candidates, the sampled token among them; the sim's
        # sampled token always ranks first, so that is ``logprobs`` entries, and the sampled one alone for 0
        "top_logprobs": [dict(alternatives(t, i, max(top, 1))[: max(top, 1)]) for i, t in enumerate(tokens, start)],
        "text_offset": offsets,
    }
