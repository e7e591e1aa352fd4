"""Private, rotating probe sets against real aiohttp servers: the genuine sim, a backend that recognises the
public probes, and the conftest's recording ``ModelServer``."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fingerprint import DEFAULT_PROBES, Probe, Signature, parse_probe_set
from gateway.cli import main
from gateway.config import FingerprintConfig, ModelConfig, RoutingConfig, parse_config
from gateway.fingerprint_client import probe_backend
from gateway.fingerprinting import FingerprintChecker
from gateway.preflight import offline
from gateway.routing.router import Router
from tests.fingerprint.conftest import ModelServer, answer
from tests.support.harness import app_backend, sim_backend

MODEL = "m"
PUBLIC_PROMPTS = {p.prompt for p in DEFAULT_PROBES}
TOPICS = ("tides", "bread yeast", "glaciers", "chess openings", "solar eclipses", "bee colonies", "jazz chords",
          "compound interest", "volcano types", "the printing press", "octopus camouflage", "desert rain",
          "sourdough", "bridge cables", "lunar phases", "river deltas", "coral reefs", "wind turbines",
          "paper making", "migrating birds", "salt marshes", "telescope mirrors", "tea processing", "ice cores")


def write_probes(path: Path, n: int) -> tuple[Probe, ...]:
    """A private set of ``n`` ordinary-looking questions (the kind of prompt real traffic carries)."""
    lines = [json.dumps({"id": f"q{i:02d}", "prompt": f"In two sentences, how do {TOPICS[i]} work?",
                         **({"max_tokens": 24} if i % 3 == 0 else {})}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return parse_probe_set(path.read_text(encoding="utf-8"))


def recogniser_app(genuine_url: str, seen: list[str]) -> web.Application:
    """A dishonest backend: the bundled (public) probe prompts go to the genuine model, anything else is served
    by a cheaper model of its own."""

    async def chat(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        prompt = body["messages"][-1]["content"]
        seen.append(prompt)
        if prompt in PUBLIC_PROMPTS:
            async with aiohttp.ClientSession() as s, s.post(genuine_url + "/v1/chat/completions", json=body) as r:
                return web.json_response(await r.json(), status=r.status)
        text, _ = answer("cheap-model", prompt)
        return web.json_response({"object": "chat.completion", "model": body.get("model"), "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def router_for(ref: Path, **urls: str) -> Router:
    cfg = ModelConfig.model_validate({"name": MODEL, "backends": [
        {"name": name, "url": url, "upstream_model": "sim", "fingerprint_reference": str(ref)}
        for name, url in urls.items()]})
    return Router([cfg], RoutingConfig(), health_checks=False)


async def record(url: str, path: Path, probes: tuple[Probe, ...] = DEFAULT_PROBES) -> Path:
    path.write_text((await probe_backend(url, MODEL, probes=probes)).dumps(), encoding="utf-8")
    return path


async def cli(*argv: str) -> int:
    # The CLI runs its own event loop (asyncio.run): in a thread, while this loop serves the test's backends.
    return await asyncio.to_thread(main, list(argv))


async def test_a_backend_that_recognises_the_public_probes_is_caught_only_by_a_private_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []
    probes_file = tmp_path / "private.jsonl"
    private = write_probes(probes_file, 24)
    async with sim_backend() as genuine, sim_backend(seed=7) as honest, \
            app_backend(recogniser_app(genuine.url, seen)) as cheat_url:
        pub, priv = tmp_path / "public.json", tmp_path / "private.json"
        assert await cli("fingerprint", "record", "--url", genuine.url, "--model", "sim", "-o", str(pub)) == 0
        assert await cli("fingerprint", "record", "--url", genuine.url, "--model", "sim", "--probes",
                         str(probes_file), "-o", str(priv)) == 0
        out = capsys.readouterr()
        assert "wrote a signature of 24 probes" in out.out and "keep it secret" in out.out
        assert not any(p.prompt in out.out + out.err for p in private)  # prompts are never printed
        # the private reference answers every probe of the set, holds its prompts, and is owner-only
        ref = Signature.loads(priv.read_text(encoding="utf-8"))
        assert {(a.probe_id, a.prompt, a.max_tokens) for a in ref.answers} == {
            (p.id, p.prompt, p.max_tokens) for p in private}
        assert all(a.text for a in ref.answers)
        assert stat.S_IMODE(priv.stat().st_mode) == 0o600

        verdicts = {}
        for name, path in (("public", pub), ("private", priv)):
            router = router_for(path, honest=honest.url, cheat=cheat_url)
            checker = FingerprintChecker(FingerprintConfig(timeout_s=5), router)
            verdicts[name] = {c.backend: c for c in await checker.check_now()}
            await router.close()
        assert verdicts["public"]["honest"].verdict == "match"
        assert verdicts["public"]["cheat"].verdict == "match"  # the public probes are recognised
        assert verdicts["private"]["honest"].verdict == "match"
        caught = verdicts["private"]["cheat"]
        assert caught.verdict == "mismatch" and caught.quarantined and caught.probes_sent == 8
        assert not any(p.prompt in json.dumps(caught.to_json()) for p in private)

        # by hand: `check` asks the reference's own probes, all of them or a random --sample
        seen.clear()
        assert await cli("fingerprint", "check", "--url", cheat_url, "--model", "sim", "--reference", str(priv),
                         "--json", "--sample", "5") == 1
        result = json.loads(capsys.readouterr().out)
        assert result["verdict"] == "mismatch" and len(result["probes"]) == 5
        assert len(seen) == 5 and len(set(seen)) == 5 and set(seen) <= {p.prompt for p in private}
        assert await cli("fingerprint", "check", "--url", honest.url, "--model", "sim", "--reference",
                         str(priv), "--json") == 0
        assert len(json.loads(capsys.readouterr().out)["probes"]) == 24


async def test_each_round_sends_a_fresh_sample_and_the_rounds_cover_the_set(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    a, _ = servers
    private = write_probes(tmp_path / "p.jsonl", 20)
    ref = await record(a.url, tmp_path / "ref.json", private)
    router = router_for(ref, a=a.url)
    checker = FingerprintChecker(FingerprintConfig(probes_per_check=6, timeout_s=5), router)
    union: set[str] = set()
    rounds: set[frozenset[str]] = set()
    for _ in range(60):
        a.requests.clear()
        (check,) = await checker.check_now()
        sent = a.prompts_seen
        assert check.verdict == "match" and check.probes_sent == 6
        assert len(sent) == 6 and len(set(sent)) == 6 and set(sent) <= {p.prompt for p in private}
        union |= set(sent)
        rounds.add(frozenset(sent))
    assert union == {p.prompt for p in private}  # P(some probe never drawn in 60 rounds) ~ 20 * 0.7^60 ~ 1e-8
    assert len(rounds) > 50  # C(20, 6) = 38 760 possible rounds: repeats are rare


async def test_the_confirming_round_draws_a_fresh_sample(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    a, b = servers
    private = write_probes(tmp_path / "p.jsonl", 20)
    ref = await record(a.url, tmp_path / "ref.json", private)
    b.weights = "swapped"
    router = router_for(ref, b=b.url)
    checker = FingerprintChecker(FingerprintConfig(probes_per_check=6, timeout_s=5), router)
    pairs = []
    for _ in range(3):
        b.requests.clear()
        (check,) = await checker.check_now()
        sent = b.prompts_seen
        assert check.verdict == "mismatch" and check.probes_sent == 6
        assert len(sent) == 12  # two rounds of 6: the first, then the confirmation
        first, second = set(sent[:6]), set(sent[6:])
        assert len(first) == 6 and len(second) == 6
        pairs.append((first, second))
    assert any(f != s for f, s in pairs)  # the same 6 of 20 three times running: p ~ (1/38760)^3


async def test_old_reference_files_still_load_and_check(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    a, b = servers
    path = await record(a.url, tmp_path / "new.json")
    data = json.loads(path.read_text())
    for ans in data["answers"]:  # the format before prompts were stored
        ans.pop("prompt"), ans.pop("max_tokens")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    b.weights = "swapped"
    a.requests.clear()
    router = router_for(old, a=a.url, b=b.url)
    results = {c.backend: c for c in await FingerprintChecker(FingerprintConfig(timeout_s=5), router).check_now()}
    assert results["a"].verdict == "match" and results["b"].verdict == "mismatch"
    assert sorted(a.prompts_seen) == sorted(PUBLIC_PROMPTS)  # the bundled probes stand in for the ids
    # a reference whose probes can no longer be asked (unknown ids, no prompts): inconclusive, says why
    data["answers"] = [{"probe_id": "gone", "text": "x"}]
    old.write_text(json.dumps(data))
    (check,) = await FingerprintChecker(FingerprintConfig(timeout_s=5), router).check_now(MODEL, "a")
    assert check.verdict == "inconclusive" and "re-record it" in check.reasons[0]


async def test_a_reference_smaller_than_probes_per_check_sends_all_and_says_so(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = servers
    ref = await record(a.url, tmp_path / "ref.json")
    checker = FingerprintChecker(FingerprintConfig(probes_per_check=12, timeout_s=5), router_for(ref, a=a.url))
    with caplog.at_level(logging.WARNING, logger="gateway.fingerprinting"):
        for _ in range(2):
            a.requests.clear()
            (check,) = await checker.check_now()
            assert check.verdict == "match" and check.probes_sent == 8 and len(a.requests) == 8
            assert "only 8 probes (probes_per_check 12)" in check.reasons[-1]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no rotation" in m for m in messages) == 1  # once per change, not per round
    assert sum("only the bundled public probes" in m for m in messages) == 1


async def test_probe_requests_look_like_proxied_ones(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    a, _ = servers
    ref = await record(a.url, tmp_path / "ref.json")
    a.requests.clear()
    await FingerprintChecker(FingerprintConfig(timeout_s=5), router_for(ref, a=a.url)).check_now()
    ids = set()
    for raw, body in a.requests:
        headers = {k.lower(): v for k, v in raw.items()}
        assert "user-agent" not in headers and headers["accept-encoding"] == "identity"
        rid = headers["x-request-id"]
        assert len(rid) == 24 and int(rid, 16) >= 0
        ids.add(rid)
        assert "seed" not in body and "top_p" not in body and body["temperature"] == 0
    assert len(ids) == len(a.requests) == 8


def _fp_findings(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f.level, f.message) for f in offline(parse_config(cfg, env={}), env={})
            if "fingerprint" in f.message]


async def test_ipgate_check_warns_on_public_probes_and_refuses_too_few_for_a_round(
    servers: tuple[ModelServer, ModelServer], tmp_path: Path
) -> None:
    a, _ = servers
    public = await record(a.url, tmp_path / "public.json")
    private = await record(a.url, tmp_path / "private.json", write_probes(tmp_path / "p.jsonl", 20))
    exact = await record(a.url, tmp_path / "exact.json", write_probes(tmp_path / "e.jsonl", 8))
    mixed = await record(a.url, tmp_path / "mixed.json", (*write_probes(tmp_path / "x.jsonl", 10),
                                                          *DEFAULT_PROBES[:2]))

    def cfg(ref: Path, **fp: Any) -> dict[str, Any]:
        return {"models": [{"name": MODEL, "backends": [
            {"name": "a", "url": a.url, "fingerprint_reference": str(ref)}]}], "fingerprint": fp}

    (pub,) = _fp_findings(cfg(public))
    assert pub[0] == "warning" and "only the bundled public probes" in pub[1]
    assert _fp_findings(cfg(private)) == []
    assert _fp_findings(cfg(private, probes_per_check=12)) == []
    (too_few,) = _fp_findings(cfg(private, probes_per_check=21))
    assert too_few[0] == "error" and "has 20 probes, fewer than fingerprint.probes_per_check (21)" in too_few[1]
    (same,) = _fp_findings(cfg(exact))
    assert same[0] == "warning" and "every round sends all of them" in same[1]
    (some,) = _fp_findings(cfg(mixed))
    assert some[0] == "warning" and "2 of its 12 probes are bundled public ones" in some[1]


@pytest.fixture
async def echoing_admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """The real admin app over a gateway whose backends are checked with a private set: one genuine, one
    swapped, one that answers every probe with an error body quoting the prompt."""
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.admin.app import build_admin_app
    from gateway.app import open_context

    servers = [ModelServer() for _ in range(3)]
    for s in servers:
        await s.start()
    genuine, swapped, echo = servers
    private = write_probes(tmp_path / "p.jsonl", 16)
    ref = await record(genuine.url, tmp_path / "ref.json", private)
    swapped.weights, echo.echo_status = "swapped", 400
    monkeypatch.setenv("IPGATE_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("IPGATE_ADMIN_TOKEN", "admin-test-token")
    cfg = parse_config({
        "detection": {"enabled": False}, "watermark": {"enabled": False},
        "routing": {"health": {"interval_s": 60}}, "fingerprint": {"timeout_s": 2},
        "models": [{"name": MODEL, "backends": [
            {"name": n, "url": s.url, "fingerprint_reference": str(ref)}
            for n, s in zip(("genuine", "swapped", "echo"), servers, strict=True)]}],
    }, env={})
    try:
        async with open_context(cfg) as ctx, TestClient(TestServer(build_admin_app(ctx))) as client:
            yield client, private
    finally:
        for s in servers:
            await s.close()


async def test_private_prompts_never_reach_the_admin_api_or_the_logs(
    echoing_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, private = echoing_admin
    auth = {"Authorization": "Bearer admin-test-token"}
    with caplog.at_level(logging.DEBUG):
        resp = await client.post("/admin/fingerprint/check", headers=auth)
        checked = await resp.text()
        listed = await (await client.get("/admin/fingerprint", headers=auth)).text()
    results = {r["backend"]: r for r in json.loads(checked)["results"]}
    assert results["genuine"]["verdict"] == "match" and results["swapped"]["verdict"] == "mismatch"
    assert results["echo"]["verdict"] == "inconclusive"
    assert "HTTP 400" in results["echo"]["reasons"][0] and "withheld" in results["echo"]["reasons"][0]
    assert json.loads(listed)["probes_per_check"] == 8
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for p in private:
        head = p.prompt[:24]
        assert head not in checked and head not in listed and head not in logs, p.id
