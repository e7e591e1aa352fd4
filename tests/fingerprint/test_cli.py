"""``ipgate fingerprint`` against real local HTTP servers that play a genuine and a swapped model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.cli import main


def _answer(model_seed: str, prompt: str) -> str:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    h = hashlib.sha256((model_seed + prompt).encode()).digest()
    return " ".join(words[b % len(words)] for b in h[:12])


def _app(model_seed: str) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        text = _answer(model_seed, body["messages"][-1]["content"])
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backends() -> Iterator[dict[str, str]]:
    loop = asyncio.new_event_loop()
    urls: dict[str, str] = {}
    runners: list[web.AppRunner] = []

    async def start() -> None:
        for name, seed in (("genuine", "weights-v1"), ("swapped", "other-weights")):
            runner = web.AppRunner(_app(seed))
            await runner.setup()
            port = _free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
            urls[name] = f"http://127.0.0.1:{port}"

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield urls

    async def stop() -> None:
        for r in runners:
            await r.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_record_then_check(backends: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = tmp_path / "ref.json"
    assert main(["fingerprint", "record", "--url", backends["genuine"], "--model", "m", "-o", str(ref)]) == 0
    capsys.readouterr()
    assert main(["fingerprint", "check", "--url", backends["genuine"], "--model", "m",
                 "--reference", str(ref), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "match"
    assert main(["fingerprint", "check", "--url", backends["swapped"], "--model", "m",
                 "--reference", str(ref), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "mismatch" and out["similarity"] < 0.5


def test_unreachable_backend_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    code = main(["fingerprint", "record", "--url", f"http://127.0.0.1:{port}", "--model", "m",
                 "-o", str(tmp_path / "x.json"), "--timeout", "2"])
    assert code == 2
    assert "ipgate fingerprint:" in capsys.readouterr().err
