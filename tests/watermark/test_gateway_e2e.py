"""End to end: the real gateway, a real aiohttp backend, the official openai client, then ``ipgate verify``."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.cli import verify as verify_cli
from gateway.cli import watermark as watermark_cli
from tests.support.harness import app_backend, gateway_config, running_gateway
from tests.support.lexical import ANSWER

SECRET = "e2e-watermark-master-secret-0123456789"


def fake_backend() -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        content = json.dumps({"answer": ANSWER}) if body.get("response_format") else ANSWER
        base = {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"]}
        usage = {"prompt_tokens": 5, "completion_tokens": 300, "total_tokens": 305}
        if not body.get("stream"):
            return web.json_response({**base, "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        for i in range(0, len(content), 5):  # small deltas, split mid-word
            delta = {"index": 0, "delta": {"content": content[i : i + 5]}, "finish_reason": None}
            await resp.write(f"data: {json.dumps({**chunk, 'choices': [delta]})}\n\n".encode())
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await resp.write(f"data: {json.dumps({**chunk, 'choices': [end]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "wm.secret"
    p.write_text(SECRET + "\n")
    return p


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ipgate")
    sub = p.add_subparsers(dest="command", required=True)
    verify_cli.register(sub)
    watermark_cli.register(sub)
    args = p.parse_args(argv)
    code: int = args.func(args)
    return code


async def _ask(gw: Any, client_id: str, stream: bool, **extra: Any) -> str:
    client = gw.openai_client(client_id)
    msg = [{"role": "user", "content": "Which laptop should I buy?"}]
    try:
        if not stream:
            r = await client.chat.completions.create(model="sim", messages=msg, **extra)
            return r.choices[0].message.content or ""
        s = await client.chat.completions.create(model="sim", messages=msg, stream=True, **extra)
        return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
    finally:
        await client.close()


@pytest.fixture
async def gateway(secret_file: Path, tmp_path: Path) -> AsyncIterator[Any]:
    async with app_backend(fake_backend()) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "lexical",
                                             "secret_file": str(secret_file),
                                             "recipients_file": str(tmp_path / "recipients.txt")})
        async with running_gateway(cfg) as gw:
            yield gw


async def test_stream_and_non_stream_verify_to_the_right_client(gateway: Any, secret_file: Path,
                                                                tmp_path: Path, capsys: Any) -> None:
    alice = await _ask(gateway, "alice", stream=False)
    alice_s = await _ask(gateway, "alice", stream=True)
    bob = await _ask(gateway, "bob", stream=True)
    assert alice != ANSWER and alice_s == alice  # streamed and non-streamed output are the same text
    assert bob != alice
    clients = tmp_path / "clients.txt"
    clients.write_text("alice\nbob\ncarol\n")
    for name, text in (("alice", alice), ("bob", bob)):
        f = tmp_path / f"{name}.txt"
        f.write_text(text)
        capsys.readouterr()
        code = _cli(["verify", str(f), "--clients", str(clients), "--secret-file", str(secret_file),
                     "--fpr", "1e-4", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["watermarked"] and out["client"] == name, out
    # bob's response is not alice's, and the unmarked original is nobody's
    (tmp_path / "orig.txt").write_text(ANSWER)
    assert _cli(["verify", str(tmp_path / "bob.txt"), "--client", "alice", "--secret-file", str(secret_file),
                 "--fpr", "1e-3"]) == 1
    assert _cli(["verify", str(tmp_path / "orig.txt"), "--clients", str(clients), "--secret-file",
                 str(secret_file), "--fpr", "1e-3"]) == 1
    # both clients were recorded as recipients (in the store, and in the recipients file)
    for _ in range(50):
        rec = await gateway.ctx.store.recipients()
        if {"alice", "bob"} <= set(rec):
            break
        await asyncio.sleep(0.02)
    assert rec["alice"] == [1] and rec["bob"] == [1]
    assert set((tmp_path / "recipients.txt").read_text().split()) == {"alice", "bob"}
    # it lists who was served watermarked text: created readable by the gateway's user only, as the alert file
    assert (tmp_path / "recipients.txt").stat().st_mode & 0o777 == 0o600


async def test_json_output_is_not_watermarked(gateway: Any) -> None:
    got = await _ask(gateway, "alice", stream=False, response_format={"type": "json_object"})
    assert json.loads(got) == {"answer": ANSWER}
    got_s = await _ask(gateway, "alice", stream=True, response_format={"type": "json_object"})
    assert json.loads(got_s) == {"answer": ANSWER}


async def test_admin_verify_endpoint(gateway: Any) -> None:
    alice = await _ask(gateway, "alice", stream=False)
    headers = {"Authorization": f"Bearer {gateway.admin_token}"}
    async with aiohttp.ClientSession() as http:
        url = gateway.admin_url + "/admin/watermark/verify"
        async with http.post(url, json={"text": alice, "clients": ["bob", "alice"], "fpr": 1e-4},
                             headers=headers) as r:
            body = await r.json()
            assert r.status == 200 and body["watermarked"] and body["client"] == "alice"
            assert {"p_value", "scheme", "scored", "candidates"} <= set(body)
        for _ in range(50):  # recorded recipients are the default candidates
            if "alice" in await gateway.ctx.store.recipients():
                break
            await asyncio.sleep(0.02)
        async with http.post(url, json={"texts": [alice, alice]}, headers=headers) as r:
            body = await r.json()
            assert r.status == 200 and body["client"] == "alice" and body["texts"] == 2
        async with http.post(url, json={"text": 5}, headers=headers) as r:
            body = await r.json()
            assert r.status == 400 and body["error"]["param"] == "text"
        async with http.post(url, json={"text": "x", "scheme": "kgw"}, headers=headers) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "scheme"
        async with http.post(url, json={"text": "x"}) as r:
            assert r.status == 401
