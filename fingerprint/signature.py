"""Signatures: what a backend answered to each probe, reduced to comparable features."""

from __future__ import annotations

import json
import math
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


# Logprobs are <= 0; a little above 0 is float rounding on the server. Anything else (a string, NaN, a huge
# positive number that overflows exp()) is a corrupt file or a broken backend, and must not reach the matcher.
_MAX_LOGPROB = 1e-3

# A probe's max_tokens bound (``probeset.parse_probe_set`` enforces it on a probe file, ``Signature.loads`` on a
# reference): a reference's probes are sent again every round, so a hand-edited value must not turn a check into
# a long generation (or a request every backend refuses).
MAX_PROBE_TOKENS = 1024


def _logprob(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number (a logprob), not {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v > _MAX_LOGPROB:
        raise ValueError(f"{where} must be a logprob (<= 0), not {v!r}")
    return v


def _logprob_map(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object of token -> logprob, not {type(value).__name__}")
    return {str(k): _logprob(v, f"{where}[{k!r}]") for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    probe_id: str
    text: str
    first_token_logprobs: Mapping[str, float] = field(default_factory=dict)  # token -> logprob (top-k)
    # The probe as sent (prompt and max_tokens): a reference recorded with another version of a probe answers
    # another question, so comparing the two would be a false mismatch. "" / 0: unknown (older files).
    prompt: str = ""
    max_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"probe_id": self.probe_id, "text": self.text,
                               "first_token_logprobs": dict(self.first_token_logprobs)}
        if self.prompt:
            out["prompt"], out["max_tokens"] = self.prompt, self.max_tokens
        return out

    def same_probe(self, other: ProbeAnswer) -> bool:
        """False only when both sides know the probe they answered and it differs."""
        if not self.prompt or not other.prompt:
            return True
        return (self.prompt, self.max_tokens) == (other.prompt, other.max_tokens)


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
        """Parse a signature file; a ValueError names the field that is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a fingerprint signature: not valid JSON ({e})") from e
        except RecursionError as e:  # not a ValueError: it went out of `ipgate check` as an internal error
            raise ValueError("not a fingerprint signature: not valid JSON (nested too deeply)") from e
        if not isinstance(data, dict) or "answers" not in data:
            raise ValueError("not a fingerprint signature: expected an object with 'model' and 'answers'")
        if not isinstance(data["answers"], list) or not data["answers"]:
            raise ValueError("not a fingerprint signature: 'answers' must be a non-empty list")
        model = data.get("model", "")
        if not isinstance(model, str):
            raise ValueError("not a fingerprint signature: 'model' must be a string")
        answers = []
        for i, a in enumerate(data["answers"]):
            where = f"answers[{i}]"
            if not isinstance(a, dict):
                raise ValueError(f"not a fingerprint signature: {where} must be an object")
            if not isinstance(a.get("probe_id"), str) or not a["probe_id"]:
                raise ValueError(f"not a fingerprint signature: {where}.probe_id is missing or not a string")
            text_value = a.get("text") or ""
            prompt = a.get("prompt") or ""
            max_tokens = a.get("max_tokens") or 0
            if not isinstance(text_value, str) or not isinstance(prompt, str) or not isinstance(max_tokens, int):
                raise ValueError(f"not a fingerprint signature: {where}.text/prompt/max_tokens have wrong types")
            if isinstance(max_tokens, bool) or not 0 <= max_tokens <= MAX_PROBE_TOKENS:  # 0: not recorded
                raise ValueError(f"not a fingerprint signature: {where}.max_tokens must be an integer from 1 to "
                                 f"{MAX_PROBE_TOKENS}")
            answers.append(ProbeAnswer(
                probe_id=a["probe_id"], text=text_value,
                first_token_logprobs=_logprob_map(a.get("first_token_logprobs"), f"{where}.first_token_logprobs"),
                prompt=prompt, max_tokens=max_tokens,
            ))
        return cls(model=model, answers=tuple(answers))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    raise ValueError(f"message.content is a {type(content).__name__}")


def answer_from_response(
    probe_id: str, response: Any, *, prompt: str = "", max_tokens: int = 0
) -> ProbeAnswer:
    """Extract text and first-token top logprobs from an OpenAI chat completion body.

    Any shape other than the documented one is a ValueError naming the probe: a broken or foreign backend
    gives an inconclusive check, never a crash or an answer read from the wrong place.
    """
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"probe {probe_id}: response has no choices[0]") from e
    try:
        message = choice.get("message") or {}
        text = _content_text(message.get("content"))
        top: dict[str, float] = {}
        content = ((choice.get("logprobs") or {}).get("content")) or []
        if content:
            for j, alt in enumerate(content[0].get("top_logprobs") or []):
                top[str(alt.get("token", ""))] = _logprob(alt.get("logprob"), f"top_logprobs[{j}].logprob")
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        raise ValueError(f"probe {probe_id}: malformed answer: {e}") from e
    return ProbeAnswer(probe_id=probe_id, text=text, first_token_logprobs=top, prompt=prompt,
                       max_tokens=max_tokens)


def build_signature(model: str, answers: Iterable[ProbeAnswer]) -> Signature:
    ordered: Sequence[ProbeAnswer] = sorted(answers, key=lambda a: a.probe_id)
    return Signature(model=model, answers=tuple(ordered))
