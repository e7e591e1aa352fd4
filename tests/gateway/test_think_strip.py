"""``strip_reasoning`` also removes a chain of thought that a backend without a reasoning parser writes into the
answer as a leading ``<think>…</think>`` section (``gateway.reasoning_strip.ThinkStripper``), streamed or not."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from gateway.reasoning_strip import ThinkStripper
from tests.support.harness import app_backend, gateway_config, running_gateway

THOUGHT = "Okay, the user wants a laptop. It is not hard: a mid-range one. </thin is not a tag."
ANSWER = "Buy a mid-range laptop with a good keyboard. It is worth it."


def _strip(text: str, pieces: list[int], prefilled: bool = False) -> str:
    st_, out, i = ThinkStripper(prefilled), [], 0
    for n in pieces:
        out.append(st_.feed(text[i : i + n]))
        i += n
    out.append(st_.feed(text[i:]))
    return "".join(out) + st_.finish()


@pytest.mark.parametrize(("text", "want"), [
    (f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}", ANSWER),
    (f"\n  <think>{THOUGHT}</think>{ANSWER}", ANSWER),
    (ANSWER, ANSWER),
    (f"{ANSWER} Tags like <think>x</think> come later.", f"{ANSWER} Tags like <think>x</think> come later."),
    ("<thinking about it> is how I start.", "<thinking about it> is how I start."),
    (f"<think>{THOUGHT}", ""),  # never closed: all of it is the chain of thought
    (f"{THOUGHT}</think>\n\n{ANSWER}", f"{THOUGHT}</think>\n\n{ANSWER}"),  # no opening tag: not recognised
    ("<th", "<th"),
    ("", ""),
    ("   ", "   "),
])
def test_a_leading_think_section_is_removed_and_nothing_else(text: str, want: str) -> None:
    assert _strip(text, []) == want
    rnd = random.Random(len(text))
    for _ in range(50):
        assert _strip(text, [rnd.randint(1, 4) for _ in range(len(text) // 2)]) == want


@pytest.mark.parametrize(("text", "want"), [
    (f"{THOUGHT}\n</think>\n\n{ANSWER}", ANSWER),  # the template opened the section in the prompt
    (f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}", ANSWER),  # a template that lets the model open it
    (f"{THOUGHT}</think>{ANSWER} Later </think> stays.", f"{ANSWER} Later </think> stays."),
    (THOUGHT, ""),  # no </think>: all of it is the chain of thought (as vLLM's R1 parser reads it)
    ("</think>", ""),
    ("", ""),
])
def test_a_prefilled_section_is_removed_up_to_its_closing_tag(text: str, want: str) -> None:
    assert _strip(text, [], prefilled=True) == want
    rnd = random.Random(len(text))
    for _ in range(50):
        assert _strip(text, [rnd.randint(1, 4) for _ in range(len(text) // 2)], prefilled=True) == want


@given(st.text(alphabet="<>/thinkTHK ab\n", max_size=60), st.lists(st.integers(1, 5), max_size=30), st.booleans())
def test_any_chunking_gives_what_the_whole_text_gives(text: str, pieces: list[int], prefilled: bool) -> None:
    assert _strip(text, pieces, prefilled) == _strip(text, [], prefilled)


def _think_backend(prefilled: bool = False) -> web.Application:
    content = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"
    if prefilled:  # the chat template wrote "<think>\n" into the prompt: the answer holds only the closing tag
        content = f"{THOUGHT}\n</think>\n\n{ANSWER}"

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base = {"id": "x", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [{
                "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(0, len(content), 3):
            c = {"index": 0, "delta": {"content": content[i : i + 3]}, "finish_reason": None}
            await resp.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [c]})}\n\n"
                             .encode())
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await resp.write(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [end]})}\n\n"
                         .encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("watermark", [False, True])
@pytest.mark.parametrize("prefilled", [False, True])
async def test_a_throttled_client_gets_the_answer_without_the_think_section(
        tmp_path: Path, stream: bool, watermark: bool, prefilled: bool) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text("think-strip-test-secret-0123456789abcdef")
    wm = {"enabled": True, "secret_file": str(secret)} if watermark else {"enabled": False}
    async with app_backend(_think_backend(prefilled)) as url:
        cfg = gateway_config(url, watermark=wm)
        cfg["models"][0]["backends"][0]["think_prefilled"] = prefilled
        async with running_gateway(cfg) as gw:
            got = await _ask_both(gw, stream)
    assert "<think>" not in got["carol"] and "user wants" not in got["carol"]
    assert got["carol"].startswith("Buy a mid-range laptop") and got["carol"].endswith("worth it.")
    assert "user wants a laptop" in got["alice"]  # below throttle: served as written
    assert got["alice"].startswith("Okay" if prefilled else "<think>")


async def test_without_the_declaration_a_prefilled_section_is_served(tmp_path: Path) -> None:
    async with app_backend(_think_backend(prefilled=True)) as url, running_gateway(gateway_config(url)) as gw:
        got = await _ask_both(gw, stream=False)
    assert got["carol"] == got["alice"] and "user wants a laptop" in got["carol"]  # the documented limit


async def _ask_both(gw: Any, stream: bool) -> dict[str, str]:
    """carol (pinned at throttle) and alice (normal) ask the same question."""
    async with aiohttp.ClientSession() as s, s.put(
            gw.admin_url + "/admin/clients/carol/override", json={"tier": "throttle"},
            headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        assert r.status == 200
    got: dict[str, str] = {}
    for who in ("carol", "alice"):
        client = gw.openai_client(who)
        msgs: Any = [{"role": "user", "content": "Which laptop?"}]
        try:
            if stream:
                text = ""
                async for c in await client.chat.completions.create(model="sim", messages=msgs, stream=True):
                    text += "".join(ch.delta.content or "" for ch in c.choices)
            else:
                r2 = await client.chat.completions.create(model="sim", messages=msgs)
                text = r2.choices[0].message.content or ""
        finally:
            await client.close()
        got[who] = text
    return got
