"""Completions prompts as token ids are unreadable to every content detector: with detection on the REAL
gateway refuses them (400 naming ``prompt``) unless ``detection.token_id_prompts: allow`` or the client is on
the admin allowlist; text prompts and batches of text prompts pass. The official ``openai`` client, the
simulated backend recording what reaches it."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.harness import gateway_config, running_gateway, settled, sim_backend


def _refused(gw: Any) -> float:
    v = gw.ctx.metrics.registry.get_sample_value("ipgate_request_fields_refused_total", {"field": "prompt"})
    return v or 0.0


@pytest.mark.parametrize("prompt", [[101, 2023, 2003, 102], [[101, 2023], [101, 2003, 102]]])
async def test_token_id_prompts_are_refused_with_detection_on(prompt: Any) -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, detection={"enabled": True})) as gw:
        client = gw.openai_client("tok")
        with pytest.raises(openai.BadRequestError) as e:
            await client.completions.create(model="sim", prompt=prompt, max_tokens=5)
        assert e.value.status_code == 400
        err = e.value.body
        assert isinstance(err, dict) and err["param"] == "prompt" and err["code"] == "token_id_prompt", err
        assert "token-id prompts" in err["message"] and "Traceback" not in err["message"]
        assert sim.stats.requests == 0 and _refused(gw) == 1
        # text, and a batch of text prompts, pass
        await client.completions.create(model="sim", prompt="Say hi", max_tokens=5)
        await client.completions.create(model="sim", prompt=["Say hi", "Say bye"], max_tokens=5)
        assert sim.stats.requests == 2 and _refused(gw) == 1
        await client.close()
        await settled(gw)


async def test_token_id_prompts_pass_when_allowed_by_config_allowlist_or_without_detection() -> None:
    async with sim_backend() as sim:
        on = gateway_config(sim.url, detection={"enabled": True})
        async with running_gateway(on) as gw:
            await gw.ctx.store.set_override("harness", "allow", None, 3600)  # an internal eval harness
            client = gw.openai_client("harness")
            await client.completions.create(model="sim", prompt=[101, 2023, 102], max_tokens=5)
            assert sim.stats.last_body["prompt"] == [101, 2023, 102]
            await client.close()
            await settled(gw)
        for cfg in (gateway_config(sim.url, detection={"enabled": True, "token_id_prompts": "allow"}),
                    gateway_config(sim.url, detection={"enabled": False})):
            async with running_gateway(cfg) as gw:
                client = gw.openai_client("tok")
                before = sim.stats.requests
                await client.completions.create(model="sim", prompt=[101, 2023, 102], max_tokens=5)
                assert sim.stats.requests == before + 1 and _refused(gw) == 0
                await client.close()
                await settled(gw)
