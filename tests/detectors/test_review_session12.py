"""Review of session 12 (docs: /work/team/docs/review-session12.md): detection of vLLM's token-id fields.

``_bias`` keys a request's targeting by the first ``MAX_BIAS_TOKENS`` (512) entries of ``allowed_token_ids`` /
``bad_words`` only (the list is sliced before it is sorted and hashed), so a list whose first 512 entries stay
fixed while the rest sweeps read as the same targeting on every request: no "changing bias" evidence. A
``logit_bias`` keys all of its entries; now the lists are keyed whole too.
"""

from __future__ import annotations

import pytest

from detectors.features import MAX_BIAS_TOKENS, extract

MSG = [{"role": "user", "content": "Say hi"}]


@pytest.mark.parametrize("field", ["allowed_token_ids", "bad_words"])
def test_a_change_past_the_first_512_entries_changes_the_targeting_key(field: str) -> None:
    fixed: list[int] | list[str] = list(range(1000, 1000 + MAX_BIAS_TOKENS))
    if field == "bad_words":
        fixed = [f"w{i}" for i in fixed]
    tail_a: list[int] | list[str] = [5, 6] if field == "allowed_token_ids" else ["x", "y"]
    tail_b: list[int] | list[str] = [7, 8] if field == "allowed_token_ids" else ["z", "t"]
    a = extract("chat", {"messages": MSG, field: [*fixed, *tail_a], "max_tokens": 1}, 0.0)
    b = extract("chat", {"messages": MSG, field: [*fixed, *tail_b], "max_tokens": 1}, 0.0)
    assert a.bias_key != b.bias_key


def test_logit_bias_change_past_the_first_512_entries_changes_the_key() -> None:
    """The contrast that holds today: every logit_bias entry is in the key."""
    fixed = {str(i): -100 for i in range(1000, 1000 + MAX_BIAS_TOKENS)}
    a = extract("chat", {"messages": MSG, "logit_bias": {**fixed, "5": 100}, "max_tokens": 1}, 0.0)
    b = extract("chat", {"messages": MSG, "logit_bias": {**fixed, "7": 100}, "max_tokens": 1}, 0.0)
    assert a.bias_key != b.bias_key
