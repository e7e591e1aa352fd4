"""The bundled simulator as a reasoning model (``ipgate sim-backend --reasoning``): its chain of thought comes
before the answer, and through the gateway both carry the client's watermark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.harness import gateway_config, running_gateway, sim_backend
from watermark.keys import KeyRing, parse_master_secret
from watermark.lexical import LexicalScheme

SECRET = "sim-reasoning-test-secret-0123456789abcdef"


RING = KeyRing(parse_master_secret(SECRET), 1)
SCHEME = LexicalScheme(RING.master)


def _embedded(client: str, text: str) -> str:
    emb = SCHEME.embedder(RING.key(client))
    return emb.feed(text) + emb.finish()


@pytest.mark.parametrize("stream", [False, True])
async def test_the_sim_reasons_and_the_gateway_watermarks_the_thought(tmp_path: Path, stream: bool) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with sim_backend(reasoning=True) as sim, running_gateway(
            gateway_config(sim.url, watermark={"enabled": True, "secret_file": str(secret)})) as gw:
        client = gw.openai_client("bob")
        msgs: Any = [{"role": "user", "content": "Explain how a bicycle stays upright."}]
        try:
            if stream:
                thought = answer = ""
                seen_answer_first = False
                async for c in await client.chat.completions.create(model="sim", messages=msgs, stream=True,
                                                                     max_tokens=400):
                    for ch in c.choices:
                        piece = (ch.delta.model_extra or {}).get("reasoning") or ""
                        seen_answer_first = seen_answer_first or bool(piece and answer)
                        thought += piece
                        answer += ch.delta.content or ""
                assert not seen_answer_first  # the whole thought precedes the answer
            else:
                r = await client.chat.completions.create(model="sim", messages=msgs, max_tokens=400)
                thought = (r.choices[0].message.model_extra or {})["reasoning"]
                answer = r.choices[0].message.content or ""
        finally:
            await client.close()
    async with sim_backend(reasoning=True) as direct, aiohttp.ClientSession() as s, s.post(
            direct.url + "/v1/chat/completions",
            json={"model": "sim", "messages": msgs, "max_tokens": 400}) as r2:
        raw = (await r2.json())["choices"][0]["message"]
    assert raw["reasoning"] and raw["content"] and raw["reasoning"] != raw["content"]
    assert thought == _embedded("bob", raw["reasoning"]) and answer == _embedded("bob", raw["content"])
    assert thought != raw["reasoning"]  # the thought did change: it carries bob's watermark
