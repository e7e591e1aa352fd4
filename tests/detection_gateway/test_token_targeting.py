"""vLLM's token-id fields through the REAL gateway with the official ``openai`` client (``extra_body``), the
shipped detector configuration and the simulated backend recording what reaches it.

``logprob_token_ids`` returns the logprobs of up to 128 chosen token ids at every position: the whole
vocabulary's logprobs at one position in |V| / 128 requests, with no ``logit_bias`` for the old rules to see.
A sweep of it is detected like a logit-bias sweep, and once the client's tier hardens requests the field no
longer reaches the backend; a classifier reading its fixed label tokens on ordinary prompts is untouched.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import openai
import pytest

from tests.support.harness import gateway_config, running_gateway, settled, sim_backend

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _prompts(n: int) -> list[str]:
    rows = [json.loads(x) for x in (DATA / "prompts.jsonl").read_text(encoding="utf-8").split("\n") if x]
    texts = [r["turns"][0] for r in rows if r["category"] != "harmless-redteam" and len(r["turns"][0]) < 1500]
    return random.Random(5).sample(texts, n)


@pytest.mark.slow
async def test_logprob_token_ids_sweep_is_detected_then_stripped_label_scoring_untouched() -> None:
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True},
                             limits={"default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}})
        async with running_gateway(cfg) as gw:
            # A classifier: ordinary prompts, logprobs of its two fixed label tokens, a few tokens of answer.
            good = gw.openai_client("labeler")
            for text in _prompts(25):
                await good.chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": text}], max_tokens=5, logprobs=True,
                    extra_body={"logprob_token_ids": [9642, 2822]})
                assert sim.stats.last_body.get("logprob_token_ids") == [9642, 2822]
            await good.close()

            # The sweep: one prompt, 128 new ids per request, one token of answer.
            bad = gw.openai_client("mallory")
            passed: list[bool] = []
            for i in range(40):
                before = sim.stats.requests
                try:
                    await bad.chat.completions.create(
                        model="sim", messages=[{"role": "user", "content": "Say hi"}], max_tokens=1,
                        logprobs=True, extra_body={"logprob_token_ids": list(range(128 * i, 128 * (i + 1)))})
                except openai.RateLimitError:  # the throttle tier's limits: nothing reached the backend
                    assert sim.stats.requests == before
                    await asyncio.sleep(0.15)
                    continue
                except openai.PermissionDeniedError:  # blocked
                    break
                passed.append("logprob_token_ids" in sim.stats.last_body)
            await bad.close()
            await settled(gw)

            assert passed[0], "tier 0 forwards the field as sent"
            assert False in passed, "the field was never stripped"
            first_stripped = passed.index(False)
            assert first_stripped <= 30, f"stripped only from request {first_stripped + 1}"
            assert not any(passed[first_stripped:]), passed  # hardening holds from then on
            mallory, labeler = [await gw.ctx.store.get_client(c) for c in ("mallory", "labeler")]
            assert mallory is not None and mallory.tier >= 1, mallory
            assert labeler is None or labeler.tier == 0, labeler
