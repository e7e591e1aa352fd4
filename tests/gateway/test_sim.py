"""The simulated model server on its own: labelled as a simulation, deterministic text, failure injection."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp

from gateway.sim import LABEL
from gateway.sim.corpus import load_corpus
from tests.support.harness import free_port, sim_backend

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


async def test_models_label_and_determinism() -> None:
    async with sim_backend() as sim, aiohttp.ClientSession() as s:
        async with s.get(sim.url + "/v1/models") as r:
            assert (await r.json())["data"][0]["description"] == LABEL
        texts = []
        for _ in range(2):
            async with s.post(sim.url + "/v1/chat/completions", json=CHAT) as r:
                texts.append((await r.json())["choices"][0]["message"]["content"])
        assert texts[0] == texts[1] and len(texts[0].split()) == 5
        async with s.get(sim.url + "/sim/stats") as r:
            assert (await r.json())["completed"] == 2


def test_corpus_is_shipped_and_excludes_red_team_data() -> None:
    corpus = load_corpus()
    assert len(corpus) == 200
    assert not any(e.source.startswith("hh-rlhf") for e in corpus)
    assert all("".join(e.tokens) == e.text for e in corpus)


async def test_fail_rate_and_status() -> None:
    async with sim_backend(fail_rate=1.0, fail_status=503) as sim, aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 503 and (await r.json())["error"]["type"] == "server_error"
        assert sim.stats.failed == 1


async def test_stream_usage_and_rate() -> None:
    async with sim_backend(tokens_per_s=100) as sim, aiohttp.ClientSession() as s:
        body = {**CHAT, "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True}}
        t0 = asyncio.get_running_loop().time()
        async with s.post(sim.url + "/v1/chat/completions", json=body) as r:
            raw = await r.read()
        assert asyncio.get_running_loop().time() - t0 >= 0.09  # 10 tokens at 100/s
        events = [e[len(b"data: "):] for e in raw.strip().split(b"\n\n")]
        assert events[-1] == b"[DONE]"
        usage = json.loads(events[-2])
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10
        assert sim.stats.completed == 1


def test_cli_starts_and_serves() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "sim-backend", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import time
        import urllib.request

        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1) as r:
                    assert LABEL in r.read().decode()
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("sim-backend did not start")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert LABEL in out  # labelled in its logs too
