"""Adversarial review of the fingerprint feature: the verdict a check gives for each way a backend can answer.

Matcher cases call the sans-IO ``compare`` directly; the checker and CLI cases use real aiohttp servers on
loopback. Each test here failed before the fix it names (or pins a behaviour the docs promise).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fingerprint import DEFAULT_PROBES, ProbeAnswer, Signature, build_signature, compare
from fingerprint.signature import answer_from_response
from gateway.cli import main
from gateway.config import FingerprintConfig, ModelConfig, RoutingConfig
from gateway.fingerprint_client import probe_backend
from gateway.fingerprinting import FingerprintChecker
from gateway.routing.router import Router
from tests.fingerprint.conftest import ModelServer, answer
from tests.fingerprint.test_admin import AUTH, admin  # noqa: F401  (the real admin app and gateway context)

MODEL = "m"

TEXTS = {p.id: f"answer {i} to {p.id}: the genuine model says something characteristic here"
         for i, p in enumerate(DEFAULT_PROBES)}
TOP5 = {"The": math.log(0.6), "A": math.log(0.2), "I": math.log(0.1), "It": math.log(0.06), "This": math.log(0.04)}


def sig(texts: dict[str, str], lp: dict[str, float] | None = None, model: str = MODEL) -> Signature:
    return build_signature(model, [ProbeAnswer(k, v, dict(lp or {})) for k, v in texts.items()])


def top(k: int) -> dict[str, float]:
    return dict(list(TOP5.items())[:k])


# --- matcher --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fewer_top_logprobs_from_the_genuine_model_still_match(k: int) -> None:
    # A server that caps top_logprobs (or a proxy in front of it) returns the head of the same distribution.
    # Renormalising a top-1 list over its own mass made it look like a point mass: TV 0.4 > 0.35, a veto.
    result = compare(sig(TEXTS, TOP5), sig(TEXTS, top(k)))
    assert result.verdict == "match", result.reasons
    assert result.similarity > 0.95


def test_tie_order_and_tiny_logit_noise_still_match() -> None:
    # batch-variant logits: two tied tokens swap places at the tail, and every logprob moves by ~1e-3
    noisy = {t: v + 0.001 * (i % 2) for i, (t, v) in enumerate(TOP5.items())}
    noisy = dict(reversed(list(noisy.items())))  # order of the list is not meaningful
    noisy["This"], noisy["It"] = noisy["It"], noisy["This"]
    result = compare(sig(TEXTS, TOP5), sig(TEXTS, noisy))
    assert result.verdict == "match" and result.similarity > 0.9


def test_logprob_agreement_does_not_mask_a_text_mismatch() -> None:
    # A fine-tune or sibling model with the same tokenizer often starts its answers like the genuine one:
    # the first-token distributions agree while every answer differs. With logprobs off this is a mismatch;
    # turning the sharper check on must not turn it into "inconclusive".
    other = {k: f"a completely unrelated reply number {i} from other weights entirely" for i, k in enumerate(TEXTS)}
    text_only = compare(sig(TEXTS), sig(other))
    assert text_only.verdict == "mismatch"
    with_lp = compare(sig(TEXTS, TOP5), sig(other, TOP5))
    assert with_lp.verdict == "mismatch", (with_lp.similarity, with_lp.reasons)


def test_quantisation_drift_threshold() -> None:
    # The documented boundary: identical greedy text, first-token distributions moved by TV d. A median d up to
    # max_logprob_distance (0.35) is tolerated; beyond it the verdict is mismatch whatever the text says.
    def moved(d: float) -> dict[str, float]:
        p = {t: math.exp(v) for t, v in TOP5.items()}
        p["The"] -= d
        p["Zed"] = d  # d of the mass moves to a token outside the genuine top-5
        return {t: math.log(v) for t, v in p.items() if v > 0}

    # (moved(x) is a TV distance of 0.012 / 0.328 / 0.380 from the genuine top-5.) With identical text there
    # is no inconclusive band: the similarity is 1 - d/2 >= 0.8 up to the veto, which decides alone.
    assert compare(sig(TEXTS, TOP5), sig(TEXTS, moved(0.03))).verdict == "match"
    assert compare(sig(TEXTS, TOP5), sig(TEXTS, moved(0.3))).verdict == "match"
    far = compare(sig(TEXTS, TOP5), sig(TEXTS, moved(0.35)))
    assert far.verdict == "mismatch" and "first-token distributions moved" in far.reasons[0]


def test_empty_answers_are_no_evidence_either_way() -> None:
    # A 200 with empty content (a content filter, a reasoning model whose text went elsewhere, max_tokens hit)
    # says nothing about the weights: not a mismatch against a full reference ...
    empty = {k: "" for k in TEXTS}
    r = compare(sig(TEXTS, TOP5), sig(empty))
    assert r.verdict == "inconclusive", r.reasons
    assert "0 of 8" in r.reasons[0]
    # ... and an empty reference (recorded from such a backend) never makes an empty backend a "match"
    r = compare(sig(empty), sig(empty))
    assert r.verdict == "inconclusive", r.reasons
    # a few empty probes are skipped; the rest decide
    r = compare(sig(TEXTS), sig({**TEXTS, "banner": "", "cutoff": "   "}))
    assert r.verdict == "match" and len(r.probes) == 6


def test_token_spelling_of_another_engine_is_not_another_model() -> None:
    # The same weights behind an engine that passes byte-level BPE markers through ("ĠThe") instead of decoding
    # them (" The"): identical text, disjoint token strings. That was TV 1.0 on every probe: a logprob veto.
    decoded = {" The": math.log(0.6), " A": math.log(0.3), " I": math.log(0.1)}
    raw = {"ĠThe": math.log(0.6), "ĠA": math.log(0.3), "ĠI": math.log(0.1)}
    result = compare(sig(TEXTS, decoded), sig(TEXTS, raw))
    assert result.verdict == "match" and result.similarity == pytest.approx(1.0)
    # ... while a really different first-token distribution still counts
    other = {"ĠHello": math.log(0.6), "ĠHi": math.log(0.3), "ĠHey": math.log(0.1)}
    assert compare(sig(TEXTS, decoded), sig(TEXTS, other)).verdict == "mismatch"


def test_reference_recorded_with_other_probe_prompts_is_inconclusive_not_a_mismatch() -> None:
    # An upgrade that rewords a probe (same id) must not eject every backend against old references: the
    # answers are to another question. The prompt is stored in the reference and compared.
    current = build_signature(MODEL, [ProbeAnswer(p.id, TEXTS[p.id], prompt=p.prompt, max_tokens=p.max_tokens)
                                      for p in DEFAULT_PROBES])
    old = build_signature(MODEL, [ProbeAnswer(p.id, f"unrelated answer {i} to an older wording of the probe",
                                              prompt="an older wording", max_tokens=p.max_tokens)
                                  for i, p in enumerate(DEFAULT_PROBES)])
    r = compare(Signature.loads(old.dumps()), current)
    assert r.verdict == "inconclusive" and "re-record" in r.reasons[-1]
    # a reference without prompts (an older file format) is still compared as before
    legacy = Signature.loads(json.dumps({"model": MODEL, "answers": [
        {"probe_id": a.probe_id, "text": a.text, "first_token_logprobs": {}} for a in current.answers]}))
    assert compare(legacy, current).verdict == "match"
    assert json.loads(current.dumps())["answers"][0]["prompt"]  # recorded files carry the prompt


@pytest.mark.parametrize(("text", "field"), [
    ("not json at all", "JSON"),
    ("[]", "answers"),
    ('{"model": "m", "answers": 5}', "answers"),
    ('{"model": "m", "answers": []}', "non-empty"),  # nothing to compare: never "0 of 0 answered"
    ('{"model": "m", "answers": [1]}', "answers[0]"),
    ('{"model": "m", "answers": [{"text": "x"}]}', "answers[0].probe_id"),
    ('{"model": "m", "answers": [{"probe_id": "a", "first_token_logprobs": [1, 2]}]}',
     "answers[0].first_token_logprobs"),
    ('{"model": "m", "answers": [{"probe_id": "a", "first_token_logprobs": {"x": "high"}}]}',
     "answers[0].first_token_logprobs"),
    ('{"model": "m", "answers": [{"probe_id": "a", "first_token_logprobs": {"x": 5000}}]}',
     "answers[0].first_token_logprobs"),
])
def test_corrupt_reference_is_a_value_error_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError) as e:
        Signature.loads(text)
    assert field in str(e.value)


@pytest.mark.parametrize("body", [
    [1],
    {"choices": ["x"]},
    {"choices": [{"message": "hello"}]},
    {"choices": [{"message": {"content": "hi"}, "logprobs": {"content": ["x"]}}]},
    {"choices": [{"message": {"content": "hi"}, "logprobs": {"content": [{"top_logprobs": [
        {"token": "a", "logprob": None}]}]}}]},
    {"choices": [{"message": {"content": "hi"}, "logprobs": {"content": [{"top_logprobs": [
        {"token": "a", "logprob": 1e6}]}]}}]},
])
def test_malformed_backend_answer_is_a_value_error(body: Any) -> None:
    with pytest.raises(ValueError, match="probe p"):
        answer_from_response("p", body)


# --- the checker against real servers -------------------------------------------------------------------


class OddServer(ModelServer):
    """The genuine weights, served with a quirk: ``mode`` picks it."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.in_flight = 0
        self.max_in_flight = 0
        self.unhang = asyncio.Event()
        self.weights_served = "genuine"
        self.fail_probes: set[str] = set()  # probe prompts answered with HTTP 500

    async def close(self) -> None:
        self.unhang.set()  # let a hung handler finish, or the runner's cleanup waits for it
        await super().close()

    async def _chat(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return web.json_response({"error": {"message": "bad key"}}, status=401)
            if self.mode == "hang":
                await self.unhang.wait()
            if self.mode == "slow":
                await asyncio.sleep(0.15)
            body: dict[str, Any] = await request.json()
            prompt = body["messages"][-1]["content"]
            if prompt in self.fail_probes:
                return web.json_response({"error": {"message": "overloaded"}}, status=500)
            text, lps = answer(self.weights_served, prompt)
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
            k = {"top1": 1, "strip": 0}.get(self.mode, 5)
            if body.get("logprobs") and k:
                choice["logprobs"] = {"content": [{"token": "x", "logprob": -0.1, "top_logprobs": [
                    {"token": t, "logprob": v} for t, v in list(lps.items())[:k]]}]}
            if self.mode == "empty":
                choice["message"]["content"] = None
            if self.mode == "garbled":
                return web.json_response({"choices": ["oops"]})
            if self.mode == "huge":
                choice["message"]["content"] = "x" * (2 << 20)
            return web.json_response({"choices": [choice]})
        finally:
            self.in_flight -= 1


@pytest.fixture
async def genuine_ref(tmp_path: Path) -> AsyncIterator[Path]:
    srv = ModelServer()
    await srv.start()
    try:
        path = tmp_path / "ref.json"
        path.write_text((await probe_backend(srv.url, MODEL)).dumps(), encoding="utf-8")
        yield path
    finally:
        await srv.close()


async def _check(mode: str, ref: Path, **cfg: Any) -> tuple[Any, Router, float]:
    srv = OddServer(mode)
    await srv.start()
    t0 = time.monotonic()
    try:
        mc = ModelConfig.model_validate({"name": MODEL, "backends": [
            {"name": "odd", "url": srv.url, "fingerprint_reference": str(ref)}]})
        router = Router([mc], RoutingConfig(), health_checks=False)
        checker = FingerprintChecker(FingerprintConfig(**{"timeout_s": 2, **cfg}), router)
        (check,) = await checker.check_now()
        return check, router, time.monotonic() - t0
    finally:
        await srv.close()


@pytest.mark.parametrize("mode", ["top1", "strip"])
async def test_genuine_backend_with_fewer_or_no_logprobs_matches(genuine_ref: Path, mode: str) -> None:
    check, _, _ = await _check(mode, genuine_ref)
    assert check.verdict == "match", check.reasons


@pytest.mark.parametrize(("mode", "reason"), [("empty", "probes answered"), ("garbled", "probe")])
async def test_empty_or_garbled_answers_are_inconclusive_never_quarantined(
    genuine_ref: Path, mode: str, reason: str
) -> None:
    check, router, _ = await _check(mode, genuine_ref)
    assert check.verdict == "inconclusive" and not check.quarantined, check
    assert reason in check.reasons[0]
    assert router.quarantined(MODEL, "odd") is None


async def test_huge_answer_is_not_read_into_memory(genuine_ref: Path) -> None:
    check, router, _ = await _check("huge", genuine_ref)
    assert check.verdict == "inconclusive" and "bytes" in check.reasons[0]
    assert router.quarantined(MODEL, "odd") is None


async def test_nondeterminism_on_a_few_probes_still_matches(genuine_ref: Path) -> None:
    # batch-variant answers on 3 of 8 probes: the median holds and nothing is re-probed
    srv = ModelServer()
    srv.glitches = 3
    await srv.start()
    try:
        mc = ModelConfig.model_validate({"name": MODEL, "backends": [
            {"name": "g", "url": srv.url, "fingerprint_reference": str(genuine_ref)}]})
        router = Router([mc], RoutingConfig(), health_checks=False)
        (check,) = await FingerprintChecker(FingerprintConfig(timeout_s=2), router).check_now()
    finally:
        await srv.close()
    assert check.verdict == "match" and len(srv.models_seen) == len(DEFAULT_PROBES)


async def _check_srv(srv: OddServer, ref: Path) -> tuple[Any, Router]:
    await srv.start()
    try:
        mc = ModelConfig.model_validate({"name": MODEL, "backends": [
            {"name": "odd", "url": srv.url, "fingerprint_reference": str(ref)}]})
        router = Router([mc], RoutingConfig(), health_checks=False)
        (check,) = await FingerprintChecker(FingerprintConfig(timeout_s=2), router).check_now()
        return check, router
    finally:
        await srv.close()


async def test_a_swapped_backend_cannot_hide_behind_one_failing_probe(genuine_ref: Path) -> None:
    # One probe answered 500 used to void the whole check (inconclusive): other weights that fail one probe
    # per round stayed in rotation for good. The probes that answered decide, min_probes permitting.
    srv = OddServer("top5")
    srv.weights_served, srv.fail_probes = "swapped", {DEFAULT_PROBES[0].prompt}
    check, router = await _check_srv(srv, genuine_ref)
    assert check.verdict == "mismatch" and check.quarantined, check.reasons
    assert "1 of 8 probes failed" in check.reasons and any("HTTP 500" in r for r in check.reasons)
    assert router.quarantined(MODEL, "odd") is not None


async def test_failed_probes_are_no_evidence(genuine_ref: Path) -> None:
    srv = OddServer("top5")  # genuine, two probes failing: the other six match
    srv.fail_probes = {p.prompt for p in DEFAULT_PROBES[:2]}
    check, _ = await _check_srv(srv, genuine_ref)
    assert check.verdict == "match", check.reasons
    srv = OddServer("top5")  # swapped, but only 3 answer (< min_probes 4): not enough to eject
    srv.weights_served, srv.fail_probes = "swapped", {p.prompt for p in DEFAULT_PROBES[:5]}
    check, router = await _check_srv(srv, genuine_ref)
    assert check.verdict == "inconclusive" and not check.quarantined
    assert "only 3 of 8 probes answered" in check.reasons[0] and "5 of 8 probes failed" in check.reasons
    assert router.quarantined(MODEL, "odd") is None


async def test_hanging_backend_is_inconclusive_within_the_timeout(genuine_ref: Path) -> None:
    check, router, elapsed = await _check("hang", genuine_ref, timeout_s=0.3)
    assert elapsed < 2.0
    assert check.verdict == "inconclusive" and "Timeout" in check.reasons[0]
    assert router.quarantined(MODEL, "odd") is None


async def test_reference_recorded_under_another_name_is_named_when_it_does_not_match(
    genuine_ref: Path, tmp_path: Path
) -> None:
    # The same weights may be served under another alias (a second provider): no verdict from the name alone.
    # But a backend pointed at another model's reference mismatches, and the reasons must say why.
    other = tmp_path / "other.json"
    data = json.loads(genuine_ref.read_text())
    data["model"] = "some-other-model"
    other.write_text(json.dumps(data))
    check, _, _ = await _check("top5", other)
    assert check.verdict == "match"
    srv = ModelServer()
    srv.weights = "swapped"
    await srv.start()
    try:
        mc = ModelConfig.model_validate({"name": MODEL, "backends": [
            {"name": "x", "url": srv.url, "fingerprint_reference": str(other)}]})
        router = Router([mc], RoutingConfig(), health_checks=False)
        (check,) = await FingerprintChecker(FingerprintConfig(timeout_s=2), router).check_now()
    finally:
        await srv.close()
    assert check.verdict == "mismatch"
    note = check.reasons[1]
    assert str(other) in note and "'model'" in note and "some-other-model" in note
    quarantine = router.quarantined(MODEL, "x")
    assert quarantine is not None and quarantine == f"fingerprint mismatch: {check.reasons[0]}"


async def test_slow_rounds_do_not_pile_up(genuine_ref: Path) -> None:
    srv = OddServer("slow")
    await srv.start()
    mc = ModelConfig.model_validate({"name": MODEL, "backends": [
        {"name": "odd", "url": srv.url, "fingerprint_reference": str(genuine_ref)}]})
    router = Router([mc], RoutingConfig(), health_checks=False)
    checker = FingerprintChecker(FingerprintConfig(interval_s=0.01, timeout_s=2), router)
    try:
        await checker.start()
        on_demand = [asyncio.create_task(checker.check_now()) for _ in range(3)]  # admin calls meanwhile
        await asyncio.gather(*on_demand)
        assert srv.max_in_flight <= len(DEFAULT_PROBES)  # one round at a time, however slow
    finally:
        await checker.close()
        await srv.close()


async def test_reload_that_drops_the_reference_keeps_the_quarantine_visible(genuine_ref: Path) -> None:
    srv = ModelServer()
    srv.weights = "swapped"
    await srv.start()
    try:
        def cfg(ref: str | None) -> ModelConfig:
            return ModelConfig.model_validate({"name": MODEL, "backends": [
                {"name": "x", "url": srv.url, "fingerprint_reference": ref}, {"name": "y", "url": srv.url}]})
        router = Router([cfg(str(genuine_ref))], RoutingConfig(), health_checks=False)
        checker = FingerprintChecker(FingerprintConfig(timeout_s=2), router)
        (check,) = await checker.check_now()
        assert check.quarantined
        router.reload([cfg(None)])  # the operator stops checking it
        assert await checker.check_now() == []
    finally:
        await srv.close()
    # fail closed (it was confirmed to serve other weights), but listed where the operator looks for it
    assert router.quarantined(MODEL, "x") is not None
    (entry,) = checker.snapshot()["backends"]
    assert entry["backend"] == "x" and entry["verdict"] == "unchecked" and entry["reference"] is None
    assert entry["quarantine"].startswith("fingerprint mismatch")


async def test_a_verdict_about_a_server_replaced_by_a_reload_is_not_applied(genuine_ref: Path) -> None:
    # The backend's URL changes (a reload) while its check runs: the answers came from the old server, and
    # quarantining by name would take the new, unprobed one out of rotation.
    old, new = OddServer("slow"), ModelServer()
    old.weights_served = "swapped"
    await old.start()
    await new.start()

    def cfg(url: str) -> ModelConfig:
        return ModelConfig.model_validate({"name": MODEL, "backends": [
            {"name": "x", "url": url, "fingerprint_reference": str(genuine_ref)}]})

    try:
        router = Router([cfg(old.url)], RoutingConfig(), health_checks=False)
        checker = FingerprintChecker(FingerprintConfig(timeout_s=2), router)
        running = asyncio.create_task(checker.check_now())
        await asyncio.sleep(0.05)  # the first probes are in flight at the old server
        router.reload([cfg(new.url)])
        (stale,) = await running
        assert stale.verdict == "mismatch" and stale.url == old.url
        assert router.quarantined(MODEL, "x") is None and not stale.quarantined
        assert checker.last(MODEL, "x") is None  # nothing recorded about the new server
        (fresh,) = await checker.check_now()
        assert fresh.verdict == "match" and fresh.url == new.url
    finally:
        await old.close()
        await new.close()


# --- CLI --------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_server() -> Iterator[tuple[str, OddServer]]:
    srv = OddServer("top5")
    srv.api_key = "s3cret-backend-key"
    loop = asyncio.new_event_loop()
    loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield srv.url, srv
    asyncio.run_coroutine_threadsafe(srv.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["fingerprint", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_secret_is_never_printed_and_unset_env_is_named(
    cli_server: tuple[str, OddServer], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, srv = cli_server
    ref = tmp_path / "ref.json"
    monkeypatch.delenv("FP_REVIEW_KEY", raising=False)
    code, out, err = _cli(["record", "--url", url, "--model", MODEL, "--api-key-env", "FP_REVIEW_KEY",
                           "-o", str(ref)], capsys)
    assert code == 2 and "FP_REVIEW_KEY" in err and not ref.exists()
    monkeypatch.setenv("FP_REVIEW_KEY", "s3cret-backend-key")
    code, out, err = _cli(["record", "--url", url, "--model", MODEL, "--api-key-env", "FP_REVIEW_KEY",
                           "-o", str(ref)], capsys)
    assert code == 0 and "s3cret" not in out + err
    srv.api_key = "rotated"
    code, out, err = _cli(["check", "--url", url, "--model", MODEL, "--api-key-env", "FP_REVIEW_KEY",
                           "--reference", str(ref), "--json"], capsys)
    assert code == 2 and "HTTP 401" in err and "s3cret" not in out + err
    assert json.loads(out) == {"verdict": None, "error": err.strip().removeprefix("ipgate fingerprint: ")}


@pytest.mark.parametrize(("content", "field"), [
    ("{broken", "JSON"),
    ('{"model": "m", "answers": [{"text": "x"}]}', "answers[0].probe_id"),
    ('{"model": "m", "answers": [{"probe_id": "a", "first_token_logprobs": [1]}]}',
     "answers[0].first_token_logprobs"),
])
def test_cli_corrupt_reference_names_file_and_field(
    cli_server: tuple[str, OddServer], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    content: str, field: str,
) -> None:
    url, srv = cli_server
    srv.api_key = None
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _, err = _cli(["check", "--url", url, "--model", MODEL, "--reference", str(bad)], capsys)
    assert code == 2 and str(bad) in err and field in err


def test_cli_record_errors_are_exit_2_without_traceback(
    cli_server: tuple[str, OddServer], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url, srv = cli_server
    srv.api_key = None
    out_path = tmp_path / "no" / "such" / "dir" / "ref.json"
    code, _, err = _cli(["record", "--url", url, "--model", MODEL, "-o", str(out_path)], capsys)
    assert code == 2 and str(out_path) in err
    (tmp_path / "adir").mkdir()  # the rename onto a directory fails after the temp file was written
    code, _, err = _cli(["record", "--url", url, "--model", MODEL, "-o", str(tmp_path / "adir")], capsys)
    assert code == 2 and "adir" in err
    assert [p.name for p in tmp_path.iterdir()] == ["adir"]  # no stray temp file
    srv.mode = "garbled"
    code, _, err = _cli(["record", "--url", url, "--model", MODEL, "-o", str(tmp_path / "r.json")], capsys)
    assert code == 2 and "probe" in err
    srv.mode = "empty"  # a reference of empty answers would match any broken backend: refuse to write it
    code, _, err = _cli(["record", "--url", url, "--model", MODEL, "-o", str(tmp_path / "e.json")], capsys)
    assert code == 2 and "empty" in err and not (tmp_path / "e.json").exists()


def test_cli_check_json_shape_and_model_note(
    cli_server: tuple[str, OddServer], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url, srv = cli_server
    srv.api_key = None
    ref = tmp_path / "ref.json"
    assert _cli(["record", "--url", url, "--model", MODEL, "-o", str(ref)], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.json"]  # written via a temp file, renamed
    code, out, err = _cli(["check", "--url", url, "--model", "suspect-name", "--reference", str(ref),
                           "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["verdict"] == "match"
    assert set(data) == {"verdict", "similarity", "probes", "reasons"}
    assert {"probe", "text_similarity", "logprob_distance"} == set(data["probes"][0])
    assert "suspect-name" in err and "'m'" in err  # the names differ: said, but a suspect API may rename


def test_cli_check_decides_on_the_probes_that_answered_record_needs_all(
    cli_server: tuple[str, OddServer], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url, srv = cli_server
    srv.api_key = None
    ref = tmp_path / "ref.json"
    assert _cli(["record", "--url", url, "--model", MODEL, "-o", str(ref)], capsys)[0] == 0
    srv.fail_probes = {DEFAULT_PROBES[0].prompt}
    code, _, err = _cli(["record", "--url", url, "--model", MODEL, "-o", str(tmp_path / "r2.json")], capsys)
    assert code == 2 and "HTTP 500" in err and not (tmp_path / "r2.json").exists()
    code, out, err = _cli(["check", "--url", url, "--model", MODEL, "--reference", str(ref), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["verdict"] == "match" and len(data["probes"]) == 7
    assert any("HTTP 500" in r for r in data["reasons"]) and "warning: probe" in err
    srv.fail_probes = {p.prompt for p in DEFAULT_PROBES}
    code, out, err = _cli(["check", "--url", url, "--model", MODEL, "--reference", str(ref), "--json"], capsys)
    assert code == 2 and json.loads(out)["verdict"] is None and "7 more" in err


def test_cli_rejects_a_url_without_scheme(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _cli(["record", "--url", "gpu-1:8000", "--model", "m", "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and "--url" in err and "gpu-1:8000" in err


def test_cli_rejects_a_non_positive_timeout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # aiohttp treats a zero total timeout as "no timeout": --timeout 0 would wait forever on a hung backend
    with pytest.raises(SystemExit) as e:
        main(["fingerprint", "record", "--url", "http://127.0.0.1:9", "--model", "m", "-o",
              str(tmp_path / "x"), "--timeout", "0"])
    assert e.value.code == 2 and "--timeout" in capsys.readouterr().err


# --- admin API ------------------------------------------------------------------------------------------


async def test_admin_unknown_names_are_404_naming_the_parameter(admin: Any) -> None:  # noqa: F811
    client, _, _ = admin
    cases = [
        ("post", "/admin/fingerprint/check?model=nope", 404, "model"),
        ("post", "/admin/fingerprint/check?model=nope&backend=a", 404, "model"),
        ("post", "/admin/fingerprint/check?model=m&backend=zzz", 404, "backend"),
        ("post", "/admin/fingerprint/nope/a/release", 404, "model"),
        ("get", "/admin/fingerprint?model=", 404, "model"),
    ]
    for method, path, status, param in cases:
        resp = await client.request(method, path, headers=AUTH)
        assert resp.status == status, path
        err = (await resp.json())["error"]
        assert err["param"] == param, path
        assert ("nope" if param == "model" and "nope" in path else "") in err["message"], path
    # releasing a backend that is not quarantined is not an error, and says so
    rel = await (await client.post("/admin/fingerprint/m/a/release", headers=AUTH)).json()
    assert rel["released"] is False and rel["quarantine"] is None


def test_fingerprint_config_bounds_min_probes_and_exposes_the_logprob_cutoff() -> None:
    from gateway.config import ConfigError, parse_config

    models = {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}]}
    cfg = parse_config({**models, "fingerprint": {"max_logprob_distance": 0.2}}, source="<t>", env={})
    assert cfg.fingerprint.max_logprob_distance == 0.2 and cfg.fingerprint.min_probes == 4
    with pytest.raises(ConfigError, match="min_probes"):
        parse_config({**models, "fingerprint": {"min_probes": 9}}, source="<t>", env={})
