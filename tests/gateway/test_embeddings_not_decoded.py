"""With detection on, an embeddings answer is not decoded whole (it holds no finish reason nor logprobs for
detection): a 2 048 x 4 096 float batch (87 MB) took 1.4 s of json.loads on the event loop, stalling every client
of the worker. Its usage is still read and charged."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

import gateway.respond
from tests.support.harness import gateway_config, running_gateway, sim_backend


async def test_an_embeddings_answer_is_not_decoded_for_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = json.loads

    def loads(s: Any, *a: Any, **k: Any) -> Any:
        decoded.append(len(s))
        return real(s, *a, **k)

    body = {"model": "sim", "input": ["a"] * 64, "dimensions": 256, "encoding_format": "float"}
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, detection={"enabled": True})) as gw, \
            aiohttp.ClientSession() as s:
        monkeypatch.setattr(gateway.respond.json, "loads", loads)  # (the json module: the sim's reads count too)
        async with s.post(gw.url + "/v1/embeddings", json=body,
                          headers={"Authorization": "Bearer " + gw.token("alice")}) as r:
            raw = await r.read()
        monkeypatch.undo()
        assert r.status == 200 and len(raw) > 100_000
        assert not [n for n in decoded if n > 100_000], decoded
        usage = real(raw)["usage"]
    assert usage["prompt_tokens"] > 0
