"""Review of the request-path fixes of session 14 (14c): each test reproduces a defect found in review (it failed
before its fix) (/work/team/docs/review-session14c-proxy-fixes.md). Real parts: the in-process gateway, real
aiohttp backends, the official ``openai`` client."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, lexical_gateway, running_gateway
from tests.support.lexical import ANSWER
from tests.support.responses_events import sse, stream_events

SECRET = "session14c-review-master-secret-0123456789"
WORDS = ANSWER.split(" ")
MSGS: list[Any] = [{"role": "user", "content": "x"}]


def _ev(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _c(idx: int, content: str | None, fr: str | None = None, **delta: Any) -> bytes:
    d: dict[str, Any] = dict(delta)
    if content is not None:
        d["content"] = content
    return _ev({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "sim",
                "choices": [{"index": idx, "delta": d, "finish_reason": fr}]})


def _chat_backend(script: list[bytes]) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for b in script:
            await resp.write(b)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


# --- 1. text after the backend's error event went out unwatermarked ---------------------------------------------

async def test_text_a_backend_sends_after_its_error_event_is_watermarked(tmp_path: Path) -> None:
    """Defect: the error event now flushes the words the embedders hold back (today's fix), but the flush left
    every choice without an embedder (``None``: "finished"), so whatever the backend streamed after its error
    event (or after ``[DONE]``) was relayed exactly as the backend wrote it, without the client's watermark."""
    script = [_c(0, "", role="assistant")] + [_c(0, w + " ") for w in WORDS[:30]]
    script += [_ev({"error": {"message": "boom", "type": "internal", "code": 500}})]
    script += [_c(0, w + " ") for w in WORDS[30:]] + [_c(0, "", "stop"), b"data: [DONE]\n\n"]
    async with lexical_gateway(_chat_backend(script), SECRET, tmp_path) as gw, aiohttp.ClientSession() as s, \
            s.post(gw.url + "/v1/chat/completions", json={"model": "sim", "messages": MSGS, "stream": True},
                   headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
        raw = await r.text()
    before, after = raw.split('"boom"', 1)
    texts = ["".join(json.loads(ln[6:])["choices"][0]["delta"].get("content") or ""
                     for ln in part.splitlines() if ln.startswith("data: {") and '"choices"' in ln)
             for part in (before, after)]
    assert texts[0].split()[-1] == WORDS[29]  # the words held back went before the error event
    assert texts[1] and texts[1] != " ".join(WORDS[30:]) + " "  # before: the backend's own text, verbatim
    assert " ".join(WORDS[30:]) not in raw


async def test_n2_stream_with_choices_finishing_apart_is_watermarked_and_ordered(tmp_path: Path) -> None:
    """Guard for today's relay change (a finished choice's embedder is dropped, not marked finished): with n=2,
    choice 0 finishing early, nothing for it follows its finish and both answers are watermarked."""
    script = [_c(0, "", role="assistant"), _c(1, "", role="assistant")]
    for i, w in enumerate(WORDS):
        script.append(_c(1, w + " "))
        if i < 40:
            script.append(_c(0, w + " "))
        if i == 40:
            script.append(_c(0, "", "stop"))
    script += [_c(1, "", "length"), b"data: [DONE]\n\n"]
    async with lexical_gateway(_chat_backend(script), SECRET, tmp_path) as gw:
        client = gw.openai_client()
        texts = {0: "", 1: ""}
        finished: dict[int, str] = {}
        async for ch in await client.chat.completions.create(model="sim", messages=MSGS, stream=True, n=2):
            for c in ch.choices:
                assert c.index not in finished, (c, finished)
                texts[c.index] += c.delta.content or ""
                if c.finish_reason:
                    finished[c.index] = c.finish_reason
        await client.close()
    assert finished == {0: "stop", 1: "length"}
    assert texts[0] != " ".join(WORDS[:40]) + " " and texts[1] != ANSWER + " "


# --- 2. strip_reasoning: an answer that starts with a newline lost its logprobs ----------------------------------

def _token_events(pieces: list[str]) -> list[dict[str, Any]]:
    """A vLLM-like Responses stream whose deltas are one token each, every later copy carrying the same
    positions (as vLLM's)."""
    text = "".join(pieces)
    events = stream_events("sim", text, logprobs=True, step=len(text))
    lps = [{"token": p, "logprob": -0.25, "top_logprobs": [{"token": p, "logprob": -0.25}]} for p in pieces]
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    at = events.index(delta)
    events[at:at + 1] = [{**delta, "delta": p, "logprobs": [copy.deepcopy(lps[k])]} for k, p in enumerate(pieces)]

    def fill(o: Any) -> None:
        if isinstance(o, dict):
            if o.get("type") == "output_text" and "logprobs" in o:
                o["logprobs"] = copy.deepcopy(lps)
            for v in o.values():
                fill(v)
        elif isinstance(o, list):
            for v in o:
                fill(v)

    for e in events:
        if e["type"] != "response.output_text.delta" and not e["type"].endswith(".added"):
            fill(e)
    for k, e in enumerate(events):
        e["sequence_number"] = k
    return events


def _responses_backend(events: list[dict[str, Any]]) -> web.Application:
    """A Responses backend that streams ``events`` (SSE) to every request."""
    async def responses(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(events))
        return resp

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


async def _stream_stripped(events: list[dict[str, Any]]) -> str:
    """The raw SSE a client gets for ``events`` through a gateway whose first tier strips reasoning."""
    app = _responses_backend(events)
    policy = {"tiers": [{"name": "normal", "hardening": {"strip_reasoning": True}},
                        {"name": "suspicious"}, {"name": "throttle"}, {"name": "block", "block": True}]}
    body = {"model": "sim", "input": "hi", "stream": True, "include": ["message.output_text.logprobs"]}
    async with app_backend(app) as url, running_gateway(gateway_config(url, policy=policy)) as gw, \
            aiohttp.ClientSession() as s, s.post(gw.url + "/v1/responses", json=body,
                                                 headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
        raw = (await r.read()).decode()
    return raw


async def test_strip_reasoning_keeps_the_logprobs_of_an_answer_that_starts_with_a_newline() -> None:
    """Defect: under ``strip_reasoning`` any piece the ``<think>`` stripper held back counted as a stripped thought.
    It holds back a leading newline (or "<") until it knows no ``<think>`` follows, so an answer starting "\\n\\n"
    (most chat models') lost the logprobs of its first words and every later copy of its logprobs
    (``content_part.done``, ``response.completed``: ``[]``), though nothing was stripped."""
    pieces = ["\n\n", "The", " answer", " is", " forty", " two", "."]

    app = _responses_backend(_token_events(pieces))
    policy = {"tiers": [{"name": "normal", "hardening": {"strip_reasoning": True, "logprob_noise": 0.5}},
                        {"name": "suspicious"}, {"name": "throttle"}, {"name": "block", "block": True}]}
    async with app_backend(app) as url, running_gateway(gateway_config(url, policy=policy)) as gw:
        client = gw.openai_client()
        sent: list[tuple[str, float]] = []
        async with await client.responses.create(model="sim", input="hi", stream=True, top_logprobs=1,
                                                 include=["message.output_text.logprobs"]) as s:
            async for ev in s:
                if ev.type == "response.output_text.delta":
                    sent += [(lp.token, lp.logprob) for lp in ev.logprobs or []]
                elif ev.type == "response.completed":
                    final = ev.response
        await client.close()
    part = final.output[0].content[0]  # type: ignore[union-attr,index]
    assert part.text == "".join(pieces)  # type: ignore[union-attr]
    done = [(lp.token, lp.logprob) for lp in part.logprobs or []]  # type: ignore[union-attr]
    assert [t for t, _ in done] == pieces  # before: []
    assert dict(sent).items() <= dict(done).items()  # the values the deltas carried, not fresh noise
    assert len({v for _, v in done}) > 1  # hardened (noised) all the same


async def test_a_stripped_think_section_still_withholds_the_logprobs() -> None:
    """Guard for the fix above: a real ``<think>`` section removed still takes the part's logprobs with it."""
    pieces = ["<think>", " secret", " plan", "</think>", "The", " answer", "."]

    raw = await _stream_stripped(_token_events(pieces))
    assert '"text":"The answer."' in raw
    assert "secret" not in raw and "plan" not in raw and "think>" not in raw, raw


# --- 3. Responses: the words held back were lost at the backend's error event ----------------------------------

async def test_responses_stream_sends_the_held_back_words_before_the_backends_error_event(tmp_path: Path) -> None:
    """Defect: the chat relay now sends the words the watermark holds back before a backend's error event; the
    Responses relay still dropped them (generated and charged, never received): the answer's last word(s) went
    missing whenever vLLM ended a stream with its ``error`` event."""
    text = " ".join(WORDS[:40])
    events = [e for e in stream_events("sim", text, step=7) if not e["type"].endswith(".done")
              and e["type"] != "response.completed"]
    events.append({"type": "error", "code": "internal_error", "message": "boom", "param": None,
                   "sequence_number": len(events)})

    app = _responses_backend(events)
    async with lexical_gateway(app, SECRET, tmp_path) as gw, aiohttp.ClientSession() as s, \
            s.post(gw.url + "/v1/responses", json={"model": "sim", "input": "hi", "stream": True},
                   headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
        raw = (await r.read()).decode()
    before = raw.split('"boom"', 1)[0]
    got = "".join(json.loads(ln[6:]).get("delta", "") for ln in before.splitlines()
                  if ln.startswith("data: ") and "output_text.delta" in ln)
    assert got.split()[-1] == WORDS[39], got[-80:]  # before: the last word held back, never sent


# --- 4. Responses: logprobs in an ``added`` part went out raw --------------------------------------------------

async def test_logprobs_in_an_added_part_are_not_relayed() -> None:
    """Defect: an ``added`` event's part has its text blanked (the deltas carry it, watermarked and hardened), but
    its ``logprobs`` were relayed as the backend wrote them: unhardened, and under ``strip_reasoning`` (or a
    watermark) they spelled what is withheld, token by token."""
    pieces = ["<think>", " secret", " plan", "</think>", "The", " answer", "."]
    events = _token_events(pieces)
    added = next(e for e in events if e["type"] == "response.content_part.added")
    added["part"]["logprobs"] = [{"token": p, "logprob": -0.25, "top_logprobs": []} for p in pieces]

    raw = await _stream_stripped(events)
    assert '"text":"The answer."' in raw
    assert "secret" not in raw, raw
