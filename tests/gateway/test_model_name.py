"""Answers name the model by the gateway's name when the backend knows it by another (``upstream_model``):
relayed as the backend wrote it, the name disclosed the real weights to every client (and, where a pool's
backends differ, which one answered: a canary). Chat (whole and streamed), completions, embeddings and the
Responses API (body and events), through the official client; a real simulated backend."""

from __future__ import annotations

import pytest

from tests.support.harness import gateway_config, running_gateway, sim_backend

INTERNAL = "internal-llama-70b-canary-v2"


@pytest.mark.parametrize("detection", [False, True])
async def test_the_backends_own_model_name_never_reaches_the_client(detection: bool) -> None:
    async with sim_backend(model=INTERNAL) as sim:
        cfg = gateway_config(sim.url, detection={"enabled": detection})
        cfg["models"][0]["backends"][0]["upstream_model"] = INTERNAL
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            msgs = [{"role": "user", "content": "hi"}]
            names = {(await client.chat.completions.create(model="sim", messages=msgs, max_tokens=3)).model}
            names |= {ch.model async for ch in await client.chat.completions.create(
                model="sim", messages=msgs, max_tokens=3, stream=True)}
            names.add((await client.completions.create(model="sim", prompt="hi", max_tokens=3)).model)
            names |= {ch.model async for ch in await client.completions.create(
                model="sim", prompt="hi", max_tokens=3, stream=True)}
            names.add((await client.embeddings.create(model="sim", input="hi")).model)
            names.add((await client.responses.create(model="sim", input="hi", max_output_tokens=16)).model)
            async with client.responses.stream(model="sim", input="hi", max_output_tokens=16) as events:
                async for ev in events:
                    if hasattr(ev, "response"):
                        names.add(ev.response.model)
            await client.close()
    assert names == {"sim"}, names


async def test_a_backend_without_upstream_model_answers_as_it_does() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client("alice")
        r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3)
        await client.close()
    assert r.model == "sim"
