"""Review of the extension-field policy (gateway/proxy/fields.py) from both sides, through the REAL gateway and
the bundled simulator answering as vLLM 0.33 does, with the official openai client: the vLLM extensions that
legitimate users commonly send reach the backend unchanged on every endpoint (none is refused, stripped or
rewritten), and a Responses answer whose copies of the output are null (vLLM writes ``input_messages`` and
``output_messages`` into every response object) is not counted as withheld text."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support.harness import GatewayHandle, gateway_config, running_gateway, sim_backend

MSGS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about rivers."}]

# What vLLM users send through extra_body (vLLM 0.33's own request fields, plus the removed guided_* ones that
# older clients still send and vLLM ignores)
LEGITIMATE: dict[str, Any] = {
    "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False},
    "structured_outputs": {"choice": ["yes", "no"]}, "guided_json": {"type": "object"},
    "include_reasoning": False, "skip_special_tokens": False, "stop_token_ids": [2, 3], "return_token_ids": True,
    "echo": False, "add_generation_prompt": True, "continue_final_message": False, "cache_salt": "my-own-salt",
    "documents": [{"title": "Rivers", "text": "The Nile is long."}], "mm_processor_kwargs": {"num_crops": 4},
}


async def _each_endpoint(client: openai.AsyncOpenAI, extra: dict[str, Any]) -> None:
    await client.chat.completions.create(model="sim", messages=MSGS, max_tokens=5, extra_body=extra)
    async for _ in await client.chat.completions.create(model="sim", messages=MSGS, max_tokens=5, stream=True,
                                                        extra_body=extra):
        pass
    await client.completions.create(model="sim", prompt="Rivers", max_tokens=5, extra_body=extra)
    await client.responses.create(model="sim", input="Rivers", max_output_tokens=5, extra_body=extra)


async def test_common_vllm_extensions_reach_the_backend_unchanged() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client("alice")
        try:
            for name, value in LEGITIMATE.items():
                before = sim.stats.requests
                await _each_endpoint(client, {name: value})
                assert sim.stats.requests == before + 4, name
                assert sim.stats.last_body.get(name) == value, (name, sim.stats.last_body.get(name))
        finally:
            await client.close()
        reg = gw.ctx.metrics.registry
        assert not [s for m in reg.collect() if m.name == "ipgate_request_fields_refused"
                    for s in m.samples if s.name.endswith("_total") and s.value]


def _copies_counted(gw: GatewayHandle) -> float:
    return gw.ctx.metrics.registry.get_sample_value("ipgate_responses_withheld_total",
                                                     {"what": "response_copy"}) or 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_null_output_copies_are_not_counted_as_withheld_text(stream: bool) -> None:
    """Every vLLM 0.33 response object holds ``input_messages: null`` and ``output_messages: null``: nothing
    was withheld, so nothing is counted or logged (each answer counted 2, each stream 6, drowning the metric
    that says a backend wrote text the gateway could not watermark)."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client("alice")
        try:
            if stream:
                async for _ in await client.responses.create(model="sim", input="Rivers", max_output_tokens=5,
                                                             stream=True):
                    pass
            else:
                r = await client.responses.create(model="sim", input="Rivers", max_output_tokens=5)
                assert r.output_text  # the SDK's computed property is not shadowed by a relayed key
        finally:
            await client.close()
        assert _copies_counted(gw) == 0
