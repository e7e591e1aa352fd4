"""Review session 16, area embeddings-completions: `/v1/embeddings` and the legacy `/v1/completions` end to end
(docs: /work/team/docs/review-session16-embeddings-completions.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from gateway.config import HardeningConfig
from gateway.errors import InvalidRequest
from gateway.proxy.parse import parse_request
from gateway.response_hardening import harden_choice_logprobs
from tests.support.harness import app_backend, gateway_config, running_gateway, sim_backend

# --- finding 2: vLLM's prompt_logprobs came back without the tier's noise and cap -------------------------------

# vLLM's shape (CompletionResponseChoice.prompt_logprobs): one entry per prompt token, None for the first, else
# {token id: {"logprob", "rank", "decoded_token"}} with the prompt's own token first, then the top k.
_PROMPT_LOGPROBS: list[dict[str, dict[str, Any]] | None] = [
    None,
    {"9906": {"logprob": -7.25, "rank": 812, "decoded_token": " quick"},
     "279": {"logprob": -1.5, "rank": 1, "decoded_token": " the"},
     "264": {"logprob": -2.0, "rank": 2, "decoded_token": " a"},
     "420": {"logprob": -2.5, "rank": 3, "decoded_token": " this"}},
    {"14198": {"logprob": -3.125, "rank": 4, "decoded_token": " brown"},
     "4251": {"logprob": -0.75, "rank": 1, "decoded_token": " red"},
     "2579": {"logprob": -1.25, "rank": 2, "decoded_token": " big"},
     "3776": {"logprob": -2.75, "rank": 3, "decoded_token": " black"}},
]


SEEN: web.AppKey[list[dict[str, Any]]] = web.AppKey("seen", list)


def _vllm_completions() -> web.Application:
    """A vLLM-like /v1/completions that answers ``prompt_logprobs`` as vLLM does (here: ignoring the cap)."""
    seen: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        choice: dict[str, Any] = {"index": 0, "text": " fox", "logprobs": None, "finish_reason": "length"}
        if "prompt_logprobs" in body:
            choice["prompt_logprobs"] = json.loads(json.dumps(_PROMPT_LOGPROBS))
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "sim",
                                  "choices": [choice],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    app = web.Application()
    app[SEEN] = seen
    app.router.add_post("/v1/completions", completions)
    return app


def _values(pl: list[Any]) -> list[float]:
    return [e["logprob"] for pos in pl if pos for e in pos.values()]


async def test_prompt_logprobs_get_the_tiers_noise_and_cap() -> None:
    """The tier's ``logprob_noise`` covered the answer's logprobs and the echoed prompt's (legacy ``echo`` with
    ``logprobs``), but not vLLM's ``prompt_logprobs``: the same read of a prompt the client chose (the echo
    channel of logit stealing, without ``echo``) came back exact, so a noised tier was defeated by asking
    for the prompt's logprobs instead. It is noised now, and capped like the answer's (the prompt's own token
    and the ``max_top_logprobs`` best)."""
    policy = {"tiers": [{"name": "normal", "hardening": {"max_top_logprobs": 2, "logprob_noise": 0.5}},
                        {"name": "throttle", "limits": "suspicious"}], "flag_tier": "throttle"}
    backend = _vllm_completions()
    body = {"model": "sim", "prompt": "the quick brown", "max_tokens": 1, "prompt_logprobs": 5}
    async with app_backend(backend) as url, running_gateway(gateway_config(url, policy=policy)) as gw, \
            aiohttp.ClientSession() as s, s.post(gw.url + "/v1/completions", json=body,
                                                 headers={"Authorization": "Bearer " + gw.token("alice")}) as r:
        assert r.status == 200
        got = (await r.json())["choices"][0]["prompt_logprobs"]
    assert backend[SEEN][0]["prompt_logprobs"] == 2  # the request side already capped it
    assert got[0] is None and len(got) == 3
    for pos, raw in zip(got[1:], _PROMPT_LOGPROBS[1:], strict=True):
        assert raw is not None
        first = next(iter(raw))
        assert next(iter(pos)) == first  # the prompt's own token stays, first
        others = sorted((t for t in raw if t != first), key=lambda t: int(raw[t]["rank"]))
        assert set(pos) == {first, *others[:2]}  # and the 2 best of the others
        assert all(e["logprob"] <= 0 for e in pos.values())
    raw_values = {(i, t): e["logprob"] for i, p in enumerate(_PROMPT_LOGPROBS) if p for t, e in p.items()}
    assert [raw_values[(i, t)] for i, p in enumerate(got) if p for t in p] != _values(got)  # noise added


def test_prompt_logprobs_go_when_the_tier_allows_no_logprobs() -> None:
    import random

    choice: dict[str, Any] = {"index": 0, "text": "x", "logprobs": None,
                              "prompt_logprobs": json.loads(json.dumps(_PROMPT_LOGPROBS))}
    assert harden_choice_logprobs(choice, HardeningConfig(max_top_logprobs=0), random.Random(1))
    assert choice["prompt_logprobs"] is None
    untouched: dict[str, Any] = {"index": 0, "text": "x", "prompt_logprobs": json.loads(json.dumps(_PROMPT_LOGPROBS))}
    assert not harden_choice_logprobs(untouched, HardeningConfig(max_top_logprobs=5), random.Random(1))
    assert untouched["prompt_logprobs"] == _PROMPT_LOGPROBS


# --- finding 3: negative token ids in prompts and embeddings inputs reached the engine --------------------------


@pytest.mark.parametrize(("endpoint", "body", "field"), [
    ("embeddings", {"input": [-1, 5]}, "input"),
    ("embeddings", {"input": [[3, 4], [-7]]}, "input"),
    ("completions", {"prompt": [5, -1]}, "prompt"),
    ("completions", {"prompt": [[5], [-2, 3]]}, "prompt"),
    ("completions", {"prompt": "hi", "stop_token_ids": [-1]}, "stop_token_ids"),
    ("completions", {"prompt": "hi", "stop_token_ids": [2.0]}, "stop_token_ids"),
    ("completions", {"prompt": "hi", "stop_token_ids": "2"}, "stop_token_ids"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "stop_token_ids": [3, -5]}, "stop_token_ids"),
])
def test_token_ids_must_be_non_negative_integers(endpoint: Any, body: dict[str, Any], field: str) -> None:
    """A token id is an index into the model's embedding and logits rows: a negative one passed vLLM's
    vocabulary check (upper bound only, until vLLM #51795) into the engine, where it is used as an index, and
    ``stop_token_ids`` were not checked at all (vLLM #54195: one request killed the engine). The gateway
    refuses the other id fields' negatives already; these are refused the same way (400 naming the field)."""
    with pytest.raises(InvalidRequest) as info:
        parse_request(endpoint, json.dumps({"model": "m", **body}).encode(), {"m"})
    assert info.value.param == field and field in str(info.value)


@pytest.mark.parametrize(("endpoint", "body"), [
    ("embeddings", {"input": [0, 5]}),
    ("embeddings", {"input": [[3, 4], [0]]}),
    ("completions", {"prompt": [[5], [2, 3]], "stop_token_ids": [0, 7]}),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "stop_token_ids": []}),
])
def test_valid_token_ids_still_pass(endpoint: Any, body: dict[str, Any]) -> None:
    parse_request(endpoint, json.dumps({"model": "m", **body}).encode(), {"m"})


async def test_negative_embedding_ids_never_reach_the_backend() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        with pytest.raises(openai.BadRequestError) as info:
            await client.embeddings.create(model="sim", input=[[1, 2], [-1]])
        assert "input" in str(info.value)
        assert sim.stats.requests == 0
        await client.close()


# --- finding 1: a stray `messages` on /v1/completions hid the prompt from detection -----------------------------


def test_detection_reads_a_completions_prompt_not_a_stray_messages_field() -> None:
    """Detection recognised a chat body by its ``messages`` whatever the endpoint: a completions request with
    ``messages: []`` (or one harmless user turn) beside its prompt was scored by those messages -- the prompt,
    and legacy ``logprobs: k``, unread -- while the completions server ignores ``messages`` and answers the
    prompt. The body goes upstream unchanged; detection reads it without the chat fields."""
    from detectors.features import extract

    prompt = "Explain topic number 7 to a student in grade 5. Think step by step and show your full reasoning."
    for stray in ([], [{"role": "user", "content": "hello"}]):
        body = {"model": "m", "prompt": prompt, "messages": stray, "logprobs": 5, "max_tokens": 2000,
                "max_completion_tokens": 1}
        raw = json.dumps(body).encode()
        parsed = parse_request("completions", raw, {"m"})
        assert parsed.body == body and parsed.raw == raw  # what the backend gets is untouched
        feats = extract("/v1/completions", parsed.seen, 0.0)
        plain = extract("/v1/completions", {"model": "m", "prompt": prompt, "logprobs": 5, "max_tokens": 2000}, 0.0)
        assert (feats.prompt_words, feats.logprobs, feats.top_logprobs, feats.max_tokens, feats.cot) == \
            (plain.prompt_words, True, 5, 2000, True)
    assert parse_request("completions", json.dumps({"model": "m", "prompt": "x"}).encode(), {"m"}).view is None


async def test_a_completions_harvester_hiding_behind_messages_is_flagged() -> None:
    """The template harvester of test_responses_api.py on /v1/completions, each request with ``messages: []``:
    never flagged before (every request read as an empty prompt), throttled or blocked now."""
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, detection={"enabled": True}, limits={
            "default": {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000},
            "suspicious": {"requests_per_minute": 600, "tokens_per_minute": 1_000_000, "burst_requests": 3}})
        async with running_gateway(cfg) as g:
            client = g.openai_client("harvey")
            statuses = []
            for i in range(100):
                text = (f"You are an expert tutor. Explain topic number {i % 13} to a student in grade "
                        f"{5 + i % 7}. Think step by step and show your full reasoning, then write {3 + i % 6} "
                        "quiz questions.")
                try:
                    await client.completions.create(model="sim", prompt=text, max_tokens=20,
                                                    extra_body={"messages": []})
                    statuses.append(200)
                except openai.RateLimitError:
                    statuses.append(429)
                    await asyncio.sleep(0.03)
                except openai.PermissionDeniedError:
                    statuses.append(403)
                    break
            assert statuses[0] == 200 and (429 in statuses or 403 in statuses), statuses
            rec = await g.ctx.store.get_client("harvey")
            assert rec is not None and rec.tier >= 2
            assert sim.stats.last_body is not None and sim.stats.last_body.get("messages") == []
            await client.close()


# --- finding 4: empty embeddings inputs: work for the backend, nothing for the reservation ----------------------


@pytest.mark.parametrize(("inp", "field"), [("", "input"), (["a", "", "b"], "input[1]"), ([""] * 1000, "input[0]")])
def test_an_empty_embeddings_input_is_refused(inp: Any, field: str) -> None:
    """OpenAI's API refuses an empty input string. The gateway let it through, and the reservation is
    characters / 4: a 4 MB body of 1.4 M empty strings reserved 1 token while the backend embedded each (its
    special tokens at least), so a client's burst of 100 such requests (the default class) was admitted at
    once."""
    with pytest.raises(InvalidRequest) as info:
        parse_request("embeddings", json.dumps({"model": "m", "input": inp}).encode(), {"m"})
    assert info.value.param == field and "empty" in str(info.value)
    parse_request("embeddings", json.dumps({"model": "m", "input": [" ", "a"]}).encode(), {"m"})
    parse_request("completions", json.dumps({"model": "m", "prompt": ["", "a"]}).encode(), {"m"})  # (valid there)


async def test_empty_embeddings_inputs_never_reach_the_backend() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        client = gw.openai_client()
        with pytest.raises(openai.BadRequestError) as info:
            await client.embeddings.create(model="sim", input=["ok", ""])
        assert "input[1]" in str(info.value)
        assert sim.stats.requests == 0
        r = await client.embeddings.create(model="sim", input=["ok", "fine"])
        assert len(r.data) == 2
        await client.close()
