"""Signatures: what a backend answered to each probe, reduced to comparable features."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def normalise(text: str) -> str:
    """Lower-case and collapse whitespace: formatting noise is not model identity."""
    return _WS.sub(" ", text).strip().lower()


def shingles(text: str, n: int = 3) -> frozenset[str]:
    """Word n-gram shingles of the normalised text (a short text yields its unigrams)."""
    words = _WORD.findall(normalise(text))
    if len(words) < n:
        return frozenset(words)
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    probe_id: str
    text: str
    first_token_logprobs: Mapping[str, float] = field(default_factory=dict)  # token -> logprob (top-k)

    def to_json(self) -> dict[str, Any]:
        return {"probe_id": self.probe_id, "text": self.text, "first_token_logprobs": dict(self.first_token_logprobs)}


@dataclass(frozen=True, slots=True)
class Signature:
    model: str
    answers: tuple[ProbeAnswer, ...]

    def answer(self, probe_id: str) -> ProbeAnswer | None:
        for a in self.answers:
            if a.probe_id == probe_id:
                return a
        return None

    def dumps(self) -> str:
        return json.dumps({"model": self.model, "answers": [a.to_json() for a in self.answers]}, indent=2)

    @classmethod
    def loads(cls, text: str) -> Signature:
        data = json.loads(text)
        if not isinstance(data, dict) or "answers" not in data:
            raise ValueError("not a fingerprint signature: expected an object with 'model' and 'answers'")
        answers = tuple(
            ProbeAnswer(
                probe_id=str(a["probe_id"]),
                text=str(a.get("text", "")),
                first_token_logprobs={str(k): float(v) for k, v in (a.get("first_token_logprobs") or {}).items()},
            )
            for a in data["answers"]
        )
        return cls(model=str(data.get("model", "")), answers=answers)


def answer_from_response(probe_id: str, response: Mapping[str, Any]) -> ProbeAnswer:
    """Extract text and first-token top logprobs from an OpenAI chat completion body."""
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"probe {probe_id}: response has no choices[0]") from e
    message = choice.get("message") or {}
    text = message.get("content") or ""
    top: dict[str, float] = {}
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if content:
        for alt in content[0].get("top_logprobs") or []:
            top[str(alt.get("token", ""))] = float(alt.get("logprob", 0.0))
    return ProbeAnswer(probe_id=probe_id, text=str(text), first_token_logprobs=top)


def build_signature(model: str, answers: Iterable[ProbeAnswer]) -> Signature:
    ordered: Sequence[ProbeAnswer] = sorted(answers, key=lambda a: a.probe_id)
    return Signature(model=model, answers=tuple(ordered))
