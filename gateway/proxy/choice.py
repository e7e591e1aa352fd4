"""What the relays share about one choice of an answer: the embedder factories and the response-side hook, the
side channels watermarked beside the answer (reasoning, refusal), and withholding the tokens that would spell the
text as the backend wrote it. Used by the stream relay (``relay.py``), the body transform (``body.py``) and the
Responses relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.hooks import StreamEmbedder

EmbedderFactory = Callable[[], StreamEmbedder | None]
ChoiceHook = Callable[[dict[str, Any]], bool]  # edits one choice in place (logprob hardening); True if changed

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
