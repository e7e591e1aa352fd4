"""Fixtures for the checker tests: real OpenAI-shaped aiohttp servers whose "weights" a test can switch.

``ModelServer`` answers ``/v1/chat/completions`` deterministically from (weights, prompt), with first-token
top logprobs when asked, the way a temperature-0 model server does. ``weights = "swapped"`` plays another
model behind the same URL; ``status = 503`` plays a backend that fails; ``api_key`` makes it demand a key;
``glitches = N`` answers the next N requests differently (a one-off divergence, as batching nondeterminism
produces). ``requests`` keeps (headers, body) of every chat request, in arrival order; ``echo_status`` makes it
answer every probe with that HTTP status and an error body that quotes the prompt (servers do that).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
         "kilo", "lima", "mike", "november", "oscar", "papa")


def answer(weights: str, prompt: str) -> tuple[str, dict[str, float]]:
    h = hashlib.sha256(f"{weights}\x00{prompt}".encode()).digest()
    text = " ".join(WORDS[b % len(WORDS)] for b in h[:14])
    probs = [0.6, 0.2, 0.1, 0.06, 0.04]
    top = {WORDS[(h[20] + i) % len(WORDS)]: math.log(p) for i, p in enumerate(probs)}
    return text, top


class ModelServer:
    def __init__(self) -> None:
        self.weights = "genuine"
        self.status = 200
        self.api_key: str | None = None
        self.glitches = 0  # the next N requests answer with other weights (nondeterminism that passes)
        self.models_seen: list[str] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.peers: list[int] = []  # the client-side port of every chat request's connection, in arrival order
        self.arrivals: list[float] = []  # time.monotonic() of every chat request, in arrival order
        self.echo_status: int | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.Response:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        if self.status != 200:
            return web.json_response({"error": {"message": "overloaded"}}, status=self.status)
        body: dict[str, Any] = await request.json()
        self.arrivals.append(time.monotonic())
        self.models_seen.append(str(body.get("model")))
        self.requests.append((dict(request.headers), body))
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.peers.append(peer[1] if peer else -1)
        if self.echo_status is not None:
            prompt = body["messages"][-1]["content"]
            return web.json_response({"error": {"message": f"cannot answer {prompt!r}"}}, status=self.echo_status)
        weights = self.weights
        if self.glitches > 0:
            self.glitches -= 1
            weights = "glitch"
        text, top = answer(weights, body["messages"][-1]["content"])
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs"):
            first = next(iter(top))
            choice["logprobs"] = {"content": [{"token": first, "logprob": top[first], "top_logprobs": [
                {"token": t, "logprob": lp} for t, lp in list(top.items())[: int(body.get("top_logprobs", 5))]
            ]}]}
        return web.json_response({"object": "chat.completion", "model": body.get("model"),
                                  "choices": [choice]})

    @property
    def prompts_seen(self) -> list[str]:
        return [body["messages"][-1]["content"] for _, body in self.requests]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ModelServer, ModelServer]]:
    """Two backends, both serving the genuine weights until a test swaps one."""
    a, b = ModelServer(), ModelServer()
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
