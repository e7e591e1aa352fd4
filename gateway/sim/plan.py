"""What a chat or legacy completions request will generate, decided before the first byte: the corpus answer of
each choice, its chain of thought (``reasoning``), its forced tool call or constrained JSON, the token budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.sim import structured
from gateway.sim.corpus import CorpusEntry, count_tokens, pick
from gateway.sim.state import SimOptions


def _prompt_text(endpoint: str, body: Mapping[str, Any]) -> str:
    if endpoint == "chat":
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return "\n".join(parts)
    return _completion_prompts(body)[0]


def _completion_prompts(body: Mapping[str, Any]) -> list[str]:
    """The prompts of a legacy completions request: a list of strings or of token-id lists is a batch, one
    prompt per item, as vLLM serves it (``checks.check_request`` has refused every other shape)."""
    p = body.get("prompt", "")
    if isinstance(p, str):
        return [p]
    if p and all(isinstance(x, str) for x in p):
        return list(p)
    if p and all(isinstance(x, list) for x in p):
        return [" ".join(map(str, x)) for x in p]
    return [" ".join(map(str, p))]


@dataclass(slots=True)
class Generation:
    """One request's planned output."""

    entries: list[CorpusEntry]
    max_tokens: int
    prompt_tokens: int
    thoughts: list[CorpusEntry] | None = None  # reasoning: one chain of thought per choice
    calls: list[str | None] = field(default_factory=list)  # per choice: the forced tool (gateway/sim/structured.py)
    echoes: list[str] = field(default_factory=list)  # legacy ``echo: true``: per choice, the prompt it answers
    required_call: bool = False  # ``tool_choice: "required"``: a completed call ends with "tool_calls"

    def call(self, i: int) -> str | None:
        return self.calls[i] if self.calls else None

    def echo(self, i: int) -> str | None:
        return self.echoes[i] if self.echoes else None

    # max_tokens caps every generated token, the chain of thought included (vLLM's reasoning parser only
    # splits the output text): the answer gets what the thought leaves.

    def tokens(self, i: int) -> list[str]:
        return list(self.entries[i].tokens[: max(self.max_tokens - len(self.thought(i)), 0)])

    def thought(self, i: int) -> list[str]:
        return list(self.thoughts[i].tokens[: self.max_tokens]) if self.thoughts else []

    def finish(self, i: int) -> str:
        if len(self.entries[i].tokens) + (len(self.thoughts[i].tokens) if self.thoughts else 0) > self.max_tokens:
            return "length"
        # vLLM's resolve_finish_reason: "tool_calls" for a call the model ended on its own, except for a forced
        # named tool (OpenAI reports "stop" there); a cut call stays "length"
        return "tool_calls" if self.required_call and self.call(i) else "stop"


def plan(endpoint: str, body: Mapping[str, Any], opts: SimOptions) -> Generation:
    n = int(body.get("n") or 1)
    mt = body.get("max_completion_tokens") or body.get("max_tokens") or opts.default_max_tokens
    if endpoint != "chat":  # a batch of prompts: choice index = prompt index * n + sequence index (as vLLM)
        prompts = _completion_prompts(body)
        return Generation([pick(p, i) for p in prompts for i in range(n)], int(mt),
                          sum(count_tokens(p) + 3 for p in prompts),
                          echoes=[p for p in prompts for _ in range(n)] if body.get("echo") is True else [])
    prompt = _prompt_text(endpoint, body)
    thoughts = [pick(prompt + "\x1fthink", i) for i in range(n)] if opts.reasoning else None
    entries = [pick(prompt, i) for i in range(n)]
    constrained = [structured.constrain(body, e) for e in entries]
    return Generation([e for e, _ in constrained], int(mt), count_tokens(prompt) + 3, thoughts,
                      [call for _, call in constrained], required_call=body.get("tool_choice") == "required")


def logprob_request(endpoint: str, body: Mapping[str, Any]) -> int | None:
    """Number of top alternatives wanted, or None when logprobs are not requested."""
    if endpoint == "chat":
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    lp = body.get("logprobs")
    return None if lp is None else int(lp)
