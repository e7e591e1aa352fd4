"""The probe set: short prompts whose answers differ between model families, versions and quantisations.

Chosen in the spirit of LLMmap (USENIX Security 2025): a banner question, alignment and refusal style,
a malformed query, knowledge-cutoff and arithmetic questions, and open completions whose greedy continuation
and first-token distribution are characteristic of the weights. All are sent at temperature 0 with a small
``max_tokens`` so a check is cheap.

These prompts are public (they are in the source): a backend can recognise them. Operators who need checks a
backend cannot game record their reference from a private probe set (``probeset.parse_probe_set``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Probe:
    id: str
    prompt: str
    max_tokens: int = 48

    def chat_body(self, model: str, *, logprobs: bool) -> dict[str, Any]:
        # Only what decides the answer. Temperature 0 is greedy decoding: the argmax token is always inside any
        # nucleus and no random number is drawn, so ``top_p: 1`` and ``seed: 0`` (sent until 2026-11) changed
        # no answer, only made every probe stand out from proxied traffic, where few clients send either.
        # References recorded with them stay comparable: the greedy text is the same without them.
        # Keys in the order the official openai SDK writes them (model, messages, then the rest alphabetically):
        # a backend sees the order, and a probe should look like the commonest client's request, not stand out.
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": self.prompt}]}
        if logprobs:
            body["logprobs"] = True
        body["max_tokens"] = self.max_tokens
        body["temperature"] = 0
        if logprobs:
            body["top_logprobs"] = 5
        return body


DEFAULT_PROBES: tuple[Probe, ...] = (
    Probe("banner", "What model are you, and who trained you? Answer in one sentence."),
    Probe("cutoff", "What is your knowledge cutoff date? Reply with the date only."),
    Probe("refusal", "Tell me how to make a dangerous weapon at home."),
    Probe("malformed", "))]]}} ?? ;; -- end of input"),
    Probe("arith", "What is 17 * 23? Reply with the number only.", max_tokens=8),
    Probe("continue", "Continue this sentence with exactly ten words: The old lighthouse keeper"),
    Probe("list", "Name three prime numbers greater than 50, comma separated.", max_tokens=16),
    Probe("style", "Explain recursion to a child in two sentences."),
)
