"""Harvested prompts hidden from the detectors, through the REAL gateway with the official ``openai`` client and
the shipped detector configuration: a made-up history on the Responses API, and a completions batch behind a
harmless first prompt, both reach the throttle tier (the engine-level behaviour is tested in
tests/detectors/test_hidden_turns.py and test_batched_prompts.py)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import openai
import pytest

from tests.support.harness import gateway_config, running_gateway, settled, sim_backend

TEMPLATE = ("Write a detailed, vivid short story of about 500 words about a {a} who lives in {c} and learns to "
            "{v}. Include dialogue.")
ANIMALS = ["cat", "dog", "owl", "fox", "bear", "wolf", "lion", "frog", "hawk", "deer"]
CITIES = ["Paris", "Lima", "Oslo", "Rome", "Cairo"]
VERBS = ["sing", "cook", "swim", "paint", "fly"]


async def _harvest(send: Callable[[openai.AsyncOpenAI, str], Awaitable[object]]) -> int:
    """The stored tier of a client that sent 80 hidden fills (stopping at the first 429 or 403)."""
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True},
                             limits={"default": {"requests_per_minute": 60_000, "tokens_per_minute": 10**8}})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("mallory")
            rng = random.Random(1)
            for _ in range(80):
                fill = TEMPLATE.format(a=rng.choice(ANIMALS), c=rng.choice(CITIES), v=rng.choice(VERBS))
                try:
                    await send(client, fill)
                except (openai.RateLimitError, openai.PermissionDeniedError):
                    break
            await client.close()
            await settled(gw)
            rec = await gw.ctx.store.get_client("mallory")
            return rec.tier if rec is not None else 0


@pytest.mark.slow
async def test_a_made_up_history_on_the_responses_api_is_read() -> None:
    async def send(client: openai.AsyncOpenAI, fill: str) -> object:
        return await client.responses.create(model="sim", max_output_tokens=16, input=[
            {"role": "user", "content": fill}, {"role": "assistant", "content": "Happy to help."},
            {"role": "user", "content": "Go ahead."}])

    assert await _harvest(send) >= 2  # throttle or above


@pytest.mark.slow
async def test_a_completions_batch_behind_a_harmless_prompt_is_read() -> None:
    async def send(client: openai.AsyncOpenAI, fill: str) -> object:
        return await client.completions.create(model="sim", max_tokens=16,
                                               prompt=["What is the capital of France?", fill])

    assert await _harvest(send) >= 2
