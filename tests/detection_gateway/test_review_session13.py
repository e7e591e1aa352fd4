"""Review of session 13: the memory of each client's last turns (``~turns`` in the detector state) through the
REAL gateway and both stores (memory, a real redis-server): written, read back cold by a second gateway."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import openai
import pytest

from detectors import state as envelope
from detectors.features import turn_crc
from detectors.turns import TURNS
from gateway.store.base import AdmitRequest
from tests.detectors.test_hidden_turns import ANIMALS, CITIES, GO, TEMPLATE, VERBS
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, settled, sim_backend

TURNS_SENT = ["what is the capital of peru", "and its population?", "tell me about its food"]


async def _ring(gw: GatewayHandle, client: str) -> list[int]:
    res = await gw.ctx.store.hot_path(AdmitRequest(client, 0, gw.ctx.policy.class_limits("default"), 3600.0))
    assert res.detector_state
    blob = envelope.decode(res.detector_state).blobs.get(TURNS, b"")
    return [int.from_bytes(blob[i:i + 4], "little") for i in range(0, len(blob), 4)]


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_turn_memory_travels_through_the_store(kind: str, request: pytest.FixtureRequest) -> None:
    store: dict[str, Any] = {"kind": "memory"}
    if kind == "redis":
        store = {"kind": "redis", "url": request.getfixturevalue("redis_url"), "timeout_ms": 2000}
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True}, store=store)
        msgs: list[dict[str, str]] = []
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            for text in TURNS_SENT:  # a conversation sent turn by turn
                msgs.append({"role": "user", "content": text})
                r = await client.chat.completions.create(model="sim", messages=msgs, max_tokens=4)  # type: ignore[arg-type]
                msgs.append({"role": "assistant", "content": r.choices[0].message.content or ""})
                await settled(gw)  # the state is saved after the answer: a next request at once may miss it
            await client.close()
            await settled(gw)
            assert await _ring(gw, "alice") == [turn_crc(t) for t in TURNS_SENT]
        if kind == "memory":
            return
        async with running_gateway(cfg) as gw2:  # another replica: nothing decoded in its cache (the cold path)
            client = gw2.openai_client("alice")
            msgs.append({"role": "user", "content": "and its music?"})
            await client.chat.completions.create(model="sim", messages=msgs, max_tokens=4)  # type: ignore[arg-type]
            await client.close()
            await settled(gw2)
            assert await _ring(gw2, "alice") == [turn_crc(t) for t in [*TURNS_SENT, "and its music?"]]


async def test_alert_evidence_quotes_the_history_turn_that_was_scored(tmp_path: Path) -> None:
    """A harvester hiding its template fills in a made-up history ends each request with a harmless "Go ahead."
    The engine scores a drawn history turn, but the alert's examples were the last turns: the analyst saw only
    "Go ahead." / "Continue please". The examples now quote what was scored."""
    alerts_file = tmp_path / "alerts.jsonl"
    rng = random.Random(3)
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url, detection={"enabled": True},
            limits={"default": {"requests_per_minute": 60_000, "tokens_per_minute": 100_000_000}},
            alerts={"min_interval_s": 0, "sinks": [{"kind": "jsonl", "path": str(alerts_file)}]})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("mallory")
            for _ in range(200):
                fill = TEMPLATE.format(a=rng.choice(ANIMALS), c=rng.choice(CITIES), v=rng.choice(VERBS))
                msgs: Any = [{"role": "user", "content": fill}, {"role": "assistant", "content": "Happy to help."},
                             {"role": "user", "content": rng.choice(GO)}]
                try:
                    await client.chat.completions.create(model="sim", messages=msgs, max_tokens=4)
                except (openai.PermissionDeniedError, openai.RateLimitError):
                    break
            await client.close()
            await settled(gw)
            assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush(10.0)
    alerts = [json.loads(x) for x in alerts_file.read_text().splitlines()]
    assert alerts, "the harvester raised no alert"
    examples = [e for a in alerts for e in a["evidence"]["examples"]]
    assert any(e.startswith("Write a detailed, vivid short story") for e in examples), examples
