"""``detection.trailing_instructions: refuse``: a system or developer message after the last user message is
answered 400 naming ``messages`` (the detectors read the user turn; the model answers the trailing
instruction, where a harvester can put its template fill behind a harmless "Hi"). Default ``allow``; clients
on the admin allowlist pass; instructions before the turn, tool/assistant messages after it, and requests
without a user message (read by their instructions) pass. Chat and the Responses API, with the official
``openai`` client."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.harness import gateway_config, running_gateway, settled, sim_backend

FILL = "You are an expert tutor. Explain black holes to a student in grade 7. Think step by step."
TRAILING = [{"role": "user", "content": "Hi"}, {"role": "system", "content": FILL}]


def _refused(gw: Any) -> float:
    v = gw.ctx.metrics.registry.get_sample_value("ipgate_request_fields_refused_total", {"field": "messages"})
    return v or 0.0


async def test_trailing_instructions_are_refused_in_refuse_mode() -> None:
    cfg = {"enabled": True, "trailing_instructions": "refuse"}
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, detection=cfg)) as gw:
        client = gw.openai_client("h")
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="sim", messages=TRAILING, max_tokens=5)  # type: ignore[arg-type]
        err = e.value.body
        assert isinstance(err, dict) and err["param"] == "messages" and err["code"] == "trailing_instructions"
        with pytest.raises(openai.BadRequestError) as e2:  # the Responses API's input items, the same rule
            await client.responses.create(model="sim", input=TRAILING)  # type: ignore[arg-type]
        assert isinstance(e2.value.body, dict) and e2.value.body["code"] == "trailing_instructions"
        assert sim.stats.requests == 0 and _refused(gw) == 2
        ok: list[list[dict[str, str]]] = [
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            [{"role": "developer", "content": FILL}],  # no user turn: read by its instructions
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        ]
        for messages in ok:
            await client.chat.completions.create(model="sim", messages=messages, max_tokens=5)  # type: ignore[arg-type]
        assert sim.stats.requests == 3 and _refused(gw) == 2
        await client.close()
        await settled(gw)


async def test_trailing_instructions_pass_by_default_and_for_allowlisted_clients() -> None:
    async with sim_backend() as sim:
        for detection, client_id, allow in (({"enabled": True}, "h", False),
                                            ({"enabled": True, "trailing_instructions": "refuse"}, "lab", True)):
            async with running_gateway(gateway_config(sim.url, detection=detection)) as gw:
                if allow:
                    await gw.ctx.store.set_override(client_id, "allow", None, 3600)
                client = gw.openai_client(client_id)
                before = sim.stats.requests
                await client.chat.completions.create(model="sim", messages=TRAILING, max_tokens=5)  # type: ignore[arg-type]
                assert sim.stats.requests == before + 1 and _refused(gw) == 0
                await client.close()
                await settled(gw)
