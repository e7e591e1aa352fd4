"""All features on (detection, lexical watermark, alerts) through the gateway with the openai client:
responses are still well-formed, streamed and non-streamed, and the accounting reaches the store."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.harness import gateway_config, running_gateway, sim_backend

MSG = [{"role": "user", "content": "How do I bake sourdough bread at home?"}]


async def test_full_feature_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WM_SECRET_TEST", "watermark-test-secret-0123456789abcdef")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True},
                             watermark={"enabled": True, "scheme": "lexical", "secret_env": "WM_SECRET_TEST"})
        async with running_gateway(cfg) as gw:
            assert gw.ctx.detection is not None and gw.ctx.watermarking is not None
            client = gw.openai_client("baker")
            r = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=60)
            text = r.choices[0].message.content or ""
            assert len(text.split()) >= 40
            stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=60,
                                                          stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert streamed == text  # same key, same client, same text: the watermark is deterministic
            await client.close()
            for _ in range(50):
                if not gw.ctx.background:
                    break
                await asyncio.sleep(0.02)
            rec = await gw.ctx.store.get_client("baker")
            assert rec is not None  # detection state was saved off the hot path
            assert "baker" in await gw.ctx.store.recipients()
