"""Review of session 12's additions (docs: /work/team/docs/review-session12.md), through the REAL gateway with
the simulated vLLM (or a real aiohttp backend) recording what reaches it, and the official ``openai`` client.

1. ``logprob_token_ids`` beside ``top_logprobs`` (or legacy ``logprobs: k``): each was capped at the tier's
   ``max_top_logprobs`` on its own, so a request read twice the allowance per position (k top logprobs + k
   chosen ones). They now share it: the chosen ids get what the top-k leaves.
2. A Responses API ``logit_bias`` was never validated (chat and completions validate theirs): ``{"7": "100"}``
   passed a tier's ``max_abs_logit_bias`` clamp (only numbers are clamped) and vLLM coerces "100" to 100.
3. A backend's ``Retry-After`` of thousands of digits made ``int()`` raise: a 500 instead of the 503.
4. ``AzureOpenAI`` (``base_url`` at the gateway) sends ``?api-version=...`` on ``/responses``: refused since the
   query-parameter check; that one parameter is now accepted (and dropped), every other one still refused.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway, sim_backend

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi"}]
THROTTLE = 2  # index of the default "throttle" tier


def _capped_tier(url: str) -> dict[str, Any]:
    """One tier that caps logprobs at 3 per position and nothing else (no XOR rule)."""
    return gateway_config(url, policy={"flag_tier": "capped", "tiers": [
        {"name": "capped", "hardening": {"max_top_logprobs": 3}}]})


async def _post(gw: GatewayHandle, client: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(
        gw.url + path, json=body, headers={"Authorization": "Bearer " + gw.token(client)}
    ) as r:
        return r.status, await r.json()


def _reads_per_position(sent: dict[str, Any], chat: bool) -> int:
    """What the backend is asked to return per output position: the top-k plus the chosen ids."""
    top = sent.get("top_logprobs", 0) if chat else sent.get("logprobs", 0)
    return int(top or 0) + len(sent.get("logprob_token_ids") or [])


@pytest.mark.parametrize(("path", "body", "chat"), [
    ("/v1/chat/completions",
     {"messages": MSG, "logprobs": True, "top_logprobs": 3, "logprob_token_ids": [11, 12, 13, 14]}, True),
    ("/v1/completions", {"prompt": "Say hi", "logprobs": 3, "logprob_token_ids": [11, 12, 13, 14]}, False),
])
async def test_top_logprobs_and_logprob_token_ids_share_the_tiers_allowance(path: str, body: dict[str, Any],
                                                                           chat: bool) -> None:
    async with sim_backend() as sim, running_gateway(_capped_tier(sim.url)) as gw:
        status, _ = await _post(gw, "eve", path, {"model": "sim", "max_tokens": 1, **body})
        assert status == 200
        sent = sim.stats.last_body
        assert _reads_per_position(sent, chat) <= 3, sent
        assert (sent.get("top_logprobs") if chat else sent.get("logprobs")) == 3, sent  # the ordinary top-k kept


async def test_logprob_token_ids_keep_what_the_top_k_leaves() -> None:
    async with sim_backend() as sim, running_gateway(_capped_tier(sim.url)) as gw:
        body = {"model": "sim", "messages": MSG, "max_tokens": 1, "logprobs": True, "top_logprobs": 1,
                "logprob_token_ids": [11, 12, 13, 14]}
        assert (await _post(gw, "eve", "/v1/chat/completions", body))[0] == 200
        assert sim.stats.last_body["logprob_token_ids"] == [11, 12]
        body = {"model": "sim", "messages": MSG, "max_tokens": 1, "logprob_token_ids": [11, 12, 13, 14]}
        assert (await _post(gw, "eve", "/v1/chat/completions", body))[0] == 200
        assert sim.stats.last_body["logprob_token_ids"] == [11, 12, 13]  # no top-k asked: the whole allowance


@pytest.mark.parametrize("bias", [{"7": "100"}, {"7": [100]}, {"07": 100}, {"seven": 5}, {"7": 101}, []])
async def test_responses_logit_bias_is_validated_like_chat(bias: Any) -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        await gw.ctx.store.set_override("eve", None, THROTTLE, 3600)
        status, resp = await _post(gw, "eve", "/v1/responses",
                                   {"model": "sim", "input": "Say hi", "max_output_tokens": 4, "logit_bias": bias})
        assert status == 400, (resp, sim.stats.last_body)
        assert resp["error"]["param"].startswith("logit_bias"), resp
        assert sim.stats.requests == 0


async def test_responses_numeric_logit_bias_is_still_clamped_at_throttle() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        await gw.ctx.store.set_override("eve", None, THROTTLE, 3600)
        status, _ = await _post(gw, "eve", "/v1/responses",
                                {"model": "sim", "input": "Say hi", "max_output_tokens": 4, "logit_bias": {"7": 100}})
        assert status == 200
        assert sim.stats.last_body["logit_bias"] == {"7": 10}


def _overloaded(retry_after: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "overloaded", "type": "server_error", "param": None,
                                            "code": None}}, status=503, headers={"Retry-After": retry_after})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app


@pytest.mark.parametrize(("value", "expected"), [
    ("9" * 5000, "60"),  # int() refuses strings over 4 300 digits (sys.get_int_max_str_digits)
    ("12", "12"), ("0", "0"), ("-5", None), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("1.5", None),
    ("\u0661\u0662", None),  # Arabic-Indic digits: not delta-seconds
])
async def test_backend_retry_after_is_bounded_whatever_its_spelling(value: str, expected: str | None) -> None:
    async with app_backend(_overloaded(value)) as url, \
            running_gateway(gateway_config(url, routing={"retries": 0})) as gw:
        client = gw.openai_client("alice")
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3)
        await client.close()
        assert e.value.status_code == 503, e.value
        assert e.value.response.headers.get("retry-after") == expected


async def test_azure_openai_client_responses_through_the_gateway() -> None:
    """``AzureOpenAI(base_url=...)`` puts ``api-version`` on every request; ``/responses`` is not one of its
    deployment routes, so it reaches the gateway's ``/v1/responses`` as is (it worked before the refusal)."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = openai.AsyncAzureOpenAI(base_url=gw.url + "/v1", api_version="2025-04-01-preview",
                                         azure_ad_token=gw.token("alice"), max_retries=0)
        r = await client.responses.create(model="sim", input="Say hi", max_output_tokens=8)
        await client.close()
        assert r.output_text
        assert sim.stats.completed == 1
