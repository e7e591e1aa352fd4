"""Review of session 12 (docs: review-session12.md): vLLM's ``logprob_token_ids`` and the top-k asked beside it
share the tier's ``max_top_logprobs`` (both are read at every position); each was capped on its own before, so
a request read up to twice the allowance. End to end: tests/gateway/test_review_session12.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import HardeningConfig
from gateway.hardening import harden
from gateway.shape import harden_responses

MSG = [{"role": "user", "content": "x"}]
CAP3 = HardeningConfig(max_top_logprobs=3)
IDS = [11, 12, 13, 14, 15]


@pytest.mark.parametrize(("body", "chat", "ids", "change"), [
    ({"messages": MSG, "logprobs": True, "top_logprobs": 2, "logprob_token_ids": IDS}, True, [11],
     "capped logprob_token_ids 5->1"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": 20, "logprob_token_ids": IDS}, True, None,
     "removed logprob_token_ids (5 ids): a read of chosen tokens' logprobs"),
    ({"prompt": "a", "logprobs": 1, "logprob_token_ids": IDS}, False, [11, 12], "capped logprob_token_ids 5->2"),
    ({"prompt": "a", "logprobs": 0, "logprob_token_ids": IDS}, False, [11, 12, 13], "capped logprob_token_ids 5->3"),
    # the prompt's positions: prompt_logprobs k reads k there, beside the same ids
    ({"prompt": "a", "prompt_logprobs": 3, "logprob_token_ids": IDS}, False, None,
     "removed logprob_token_ids (5 ids): a read of chosen tokens' logprobs"),
    ({"messages": MSG, "logprobs": True, "logprob_token_ids": [11, 12]}, True, [11, 12], None),
])
def test_top_k_and_chosen_ids_share_the_allowance(body: dict[str, Any], chat: bool, ids: list[int] | None,
                                                  change: str | None) -> None:
    out, changes = harden(body, CAP3, chat=chat)
    assert out.get("logprob_token_ids") == ids
    assert (change in changes) if change else not changes, changes
    assert body["logprob_token_ids"] in (IDS, [11, 12])  # the caller's dict untouched


def test_responses_body_shares_the_allowance_too() -> None:
    body = {"model": "m", "input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 2,
            "logprob_token_ids": IDS}
    out, changes = harden_responses(body, CAP3, False)
    assert out.get("logprob_token_ids") == [11] and "capped logprob_token_ids 5->1" in changes
