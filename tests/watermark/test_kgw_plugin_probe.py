"""A ``watermark_capable`` backend must really run the KGW plugin: the gateway probes it (``gateway/kgw_probe.py``)
and, until the plugin is verified, watermarks that backend's responses with the lexical scheme instead.

Backends are real aiohttp servers; the one that emulates a plugin-loaded vLLM answers with the plugin's own
validator (``watermark.kgw.vllm_plugin.validate_extra_args``), in vLLM's 400 error shape."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import gateway.route
from gateway.cli import main as cli_main
from gateway.config import BackendConfig
from gateway.kgw_probe import KgwPluginProbe
from tests.support.harness import GatewayHandle, app_backend, eventually, gateway_config, running_gateway, sim_backend
from tests.support.lexical import ANSWER
from watermark.keys import KeyRing, parse_master_secret
from watermark.kgw import directives
from watermark.kgw.params import KgwParams
from watermark.kgw.vllm_plugin import validate_extra_args
from watermark.lexical import LexicalScheme
from watermark.verify import candidate_keys, verify

SECRET = "probe-test-master-secret-0123456789abcdef"
MASTER = parse_master_secret(SECRET)
OTHER = parse_master_secret("another-master-secret-0123456789abcdef")
RING = KeyRing(MASTER, 1)
CLIENTS = ["alice", "bob", "carol"]
PLUGIN_OK = ("ipgate_watermark_plugin_ok", {"model": "sim", "backend": "b0"})
FAILURES = ("ipgate_watermark_plugin_probe_failures_total", {"model": "sim", "backend": "b0"})


# --- the plugin's side: it refuses the probe, and says so recognisably ---------------------------------------


@pytest.mark.parametrize(("master", "mode_secret"), [(MASTER, "match"), (OTHER, "differs"), (None, "absent")])
def test_every_plugin_refuses_the_probe_with_its_report(master: bytes | None, mode_secret: str) -> None:
    xargs = directives.probe_xargs(MASTER)
    with pytest.raises(ValueError) as e:
        validate_extra_args(xargs, KgwParams(), master)
    report = directives.read_probe_refusal(str(e.value))
    assert report == directives.ProbeReport("g0.25-h4-selfhash", mode_secret)  # type: ignore[arg-type]
    assert str(e.value).startswith(directives.REFUSAL_MARK)
    # the mark never appears in what the gateway sends, so an engine echoing the request cannot pass
    assert directives.REFUSAL_MARK not in json.dumps(KgwPluginProbe(KgwParams(), MASTER, "derive")
                                                     .request(_backend_cfg(), "sim")[1].decode())


def test_every_refusal_of_the_plugin_carries_the_mark_and_real_directives_still_pass() -> None:
    good = directives.vllm_xargs(RING.key("alice"), KgwParams())
    validate_extra_args(good, KgwParams(), MASTER)  # accepted: no exception
    validate_extra_args({"unrelated": 1}, KgwParams(), None)  # not ours: untouched
    for bad in ({**good, "ipgate_kgw_client": "bob"}, {**good, "ipgate_kgw_spec": "g0.5-h4-selfhash"},
                {"ipgate_kgw_spec": "probe"}, {**good, directives.F_PROBE: "x"}):
        with pytest.raises(ValueError, match="^" + directives.REFUSAL_MARK):
            validate_extra_args(bad, KgwParams(), MASTER)
    # the engine side (make_row_state -> parse) never treats a probe as a directive either
    with pytest.raises(ValueError, match="liveness probe"):
        directives.parse({directives.F_PROBE: "x"}, KgwParams())


def _backend_cfg(**kw: Any) -> BackendConfig:
    return BackendConfig.model_validate({"name": "b0", "url": "http://127.0.0.1:9", "watermark_capable": True, **kw})


def _plugin_400(params: KgwParams, master: bytes | None, shape: str = "new") -> bytes:
    try:
        validate_extra_args(directives.probe_xargs(MASTER), params, master)
    except ValueError as e:
        msg = str(e)
    if shape == "old":  # vLLM before the ErrorInfo wrapper
        return json.dumps({"object": "error", "message": msg, "type": "BadRequestError", "code": 400}).encode()
    return json.dumps({"error": {"message": msg, "type": "BadRequestError", "param": None, "code": 400}}).encode()


ECHO_422 = json.dumps({"detail": [{"type": "extra_forbidden", "loc": ["body", "vllm_xargs"],
                                   "msg": "Extra inputs are not permitted",
                                   "input": directives.probe_xargs(MASTER)}]}).encode()


@pytest.mark.parametrize(("mode", "status", "raw", "ok", "reason"), [
    ("derive", 400, _plugin_400(KgwParams(), MASTER), True, "verified"),
    ("derive", 400, _plugin_400(KgwParams(), MASTER, "old"), True, "verified"),
    ("derive", 200, b'{"choices": [{"text": "x"}]}', False, "not_loaded"),
    ("derive", 422, ECHO_422, False, "not_the_plugin"),
    ("derive", 400, ECHO_422, False, "not_the_plugin"),
    ("derive", 400, b'{"error": {"message": "ipgate_kgw_probe: unexpected field"}}', False, "not_the_plugin"),
    ("derive", 404, b'{"error": {"message": "The model `sim` does not exist."}}', False, "not_the_plugin"),
    ("derive", 400, b'{"error": {"message": "ipgate-kgw-plugin: unknown watermark directive field(s)"}}', False,
     "old_plugin"),
    ("derive", 400, _plugin_400(KgwParams(gamma=0.5), MASTER), False, "spec_mismatch"),
    ("derive", 400, _plugin_400(KgwParams(), OTHER), False, "secret_mismatch"),
    ("derive", 400, _plugin_400(KgwParams(), None), False, "secret_absent"),
    ("key", 400, _plugin_400(KgwParams(), None), True, "verified"),  # key mode needs no secret on the host
    ("key", 400, _plugin_400(KgwParams(), OTHER), True, "verified"),
    ("derive", 503, b"overloaded", None, "no_verdict"),
    ("derive", 429, b"slow down", None, "no_verdict"),
    ("derive", 401, b"bad key", None, "no_verdict"),
    ("derive", 302, b"", None, "no_verdict"),
])
def test_the_probe_verdict(mode: Any, status: int, raw: bytes, ok: bool | None, reason: str) -> None:
    v = KgwPluginProbe(KgwParams(), MASTER, mode).judge(status, raw)
    assert (v.ok, v.reason) == (ok, reason), v


def test_the_probe_request_uses_the_backends_model_and_costs_one_token_at_most() -> None:
    probe = KgwPluginProbe(KgwParams(), MASTER, "derive")
    url, body = probe.request(_backend_cfg(upstream_model="llama-3"), "sim")
    sent = json.loads(body)
    assert url == "http://127.0.0.1:9/v1/completions" and sent["model"] == "llama-3" and sent["max_tokens"] == 1
    assert sent["vllm_xargs"] == directives.probe_xargs(MASTER) and sent["stream"] is False
    url, body = probe.request(_backend_cfg(url="http://h:1/v1", kgw_probe_endpoint="chat"), "sim")
    assert url == "http://h:1/v1/chat/completions" and json.loads(body)["model"] == "sim"


# --- end to end: a real gateway, a real backend, the official openai client ----------------------------------


@dataclass
class Engine:
    """What the fake vLLM does: ``plugin`` = loaded with ipgate's plugin; ``status`` = answer every request
    with this status instead (e.g. 503 while it restarts)."""

    plugin: bool
    status: int | None = None
    spec: KgwParams = field(default_factory=KgwParams)
    master: bytes | None = MASTER
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def generate(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self.bodies.append(body)
            if self.status is not None:
                return web.json_response({"error": {"message": "restarting"}}, status=self.status)
            if self.plugin:
                try:
                    validate_extra_args(body.get("vllm_xargs"), self.spec, self.master)
                except ValueError as e:
                    return web.json_response({"error": {"message": str(e), "type": "BadRequestError",
                                                        "param": None, "code": 400}}, status=400)
            return await _answer(request, body)

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model"}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", generate)
        app.router.add_post("/v1/completions", generate)
        app.router.add_get("/v1/models", models)
        return app

    def generations(self) -> list[dict[str, Any]]:
        return [b for b in self.bodies if "messages" in b]


async def _answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    base = {"id": "x", "created": int(time.time()), "model": body["model"]}
    usage = {"prompt_tokens": 5, "completion_tokens": 300, "total_tokens": 305}
    if "messages" not in body:  # the probe, on an engine that does not refuse it: one token
        return web.json_response({**base, "object": "text_completion", "usage": usage,
                                  "choices": [{"index": 0, "text": " The", "finish_reason": "length"}]})
    if not body.get("stream"):
        return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    for i in range(0, len(ANSWER), 7):
        delta = {"index": 0, "delta": {"content": ANSWER[i : i + 7]}, "finish_reason": None}
        await resp.write(f"data: {json.dumps({**chunk, 'choices': [delta]})}\n\n".encode())
    end = {"index": 0, "delta": {}, "finish_reason": "stop"}
    await resp.write(f"data: {json.dumps({**chunk, 'choices': [end]})}\n\n".encode())
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


def _config(url: str, secret_file: Path, *, interval_s: float = 30.0, **backend: Any) -> dict[str, Any]:
    cfg = gateway_config(url, watermark={"enabled": True, "scheme": "kgw", "secret_file": str(secret_file)},
                         routing={"health": {"interval_s": interval_s, "timeout_s": 1.0}})
    cfg["models"][0]["backends"][0].update({"watermark_capable": True, **backend})
    return cfg


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "wm.secret"
    p.write_text(SECRET + "\n")
    return p


async def _ask(gw: GatewayHandle, client_id: str, stream: bool) -> str:
    client = gw.openai_client(client_id)
    msgs = [{"role": "user", "content": "Which laptop should I buy?"}]
    try:
        if not stream:
            r = await client.chat.completions.create(model="sim", messages=msgs)  # type: ignore[arg-type]
            return r.choices[0].message.content or ""
        s: Any = await client.chat.completions.create(model="sim", messages=msgs, stream=True)  # type: ignore[arg-type]
        return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
    finally:
        await client.close()


def _attributed(text: str) -> str | None:
    v = verify(text, candidate_keys(RING, CLIENTS), [LexicalScheme(MASTER)], fpr=1e-4)
    return v.client if v.watermarked else None


def _sample(gw: GatewayHandle, metric: tuple[str, dict[str, str]]) -> float | None:
    value: float | None = gw.ctx.metrics.registry.get_sample_value(*metric)
    return value



async def _backend_view(gw: GatewayHandle) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            gw.admin_url + "/admin/routing", headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        assert r.status == 200
        body = await r.json()
    backend: dict[str, Any] = body["models"]["sim"]["backends"][0]
    return backend


async def test_a_capable_backend_without_the_plugin_gets_the_lexical_watermark(
        secret_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The silent failure this closes: the engine ignores vllm_xargs and answers unwatermarked text. The probe
    finds out before the first request; every response then carries the lexical watermark of its client."""
    engine = Engine(plugin=False)
    with caplog.at_level(logging.INFO):
        async with app_backend(engine.app()) as url, running_gateway(_config(url, secret_file)) as gw:
            alice = await _ask(gw, "alice", stream=False)
            alice_s = await _ask(gw, "alice", stream=True)
            bob = await _ask(gw, "bob", stream=True)
            view = await _backend_view(gw)
            assert _sample(gw, PLUGIN_OK) == 0 and _sample(gw, FAILURES) == 1
            assert _sample(gw, ("ipgate_watermark_responses_total", {"scheme": "lexical"})) == 3
            assert _sample(gw, ("ipgate_watermark_responses_total", {"scheme": "kgw"})) is None
    assert alice != ANSWER and alice_s == alice and bob != alice
    assert _attributed(alice) == "alice" and _attributed(bob) == "bob"
    assert _attributed(ANSWER) is None
    # no directive went to the engine for the real requests, and nothing asked it to skip the watermark
    assert [b for b in engine.generations() if "vllm_xargs" in b] == []
    assert view["kgw_plugin"] == "not_loaded" and view["watermark_in_engine"] is False
    assert "--logits-processors" in view["kgw_plugin_detail"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "KGW plugin" in r.getMessage()]
    assert len(errors) == 1 and "backend b0" in errors[0].getMessage()
    # and the security team's tool attributes the leaked text to the right client
    leak = tmp_path / "leak.txt"
    leak.write_text(bob)
    clients = tmp_path / "clients.txt"
    clients.write_text("\n".join(CLIENTS) + "\n")
    capsys.readouterr()
    code = await asyncio.to_thread(cli_main, ["verify", str(leak), "--clients", str(clients), "--secret-file",
                                              str(secret_file), "--fpr", "1e-4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["client"] == "bob" and out["scheme"] == "lexical", out


async def test_with_the_plugin_loaded_the_engine_watermarks_as_before(secret_file: Path) -> None:
    """The bundled sim emulating a plugin-loaded vLLM: verified at start-up, so the very first request
    carries the KGW directive and its text is not rewritten post hoc."""
    async with sim_backend(kgw_plugin=True, kgw_secret=MASTER) as sim, \
            running_gateway(_config(sim.url, secret_file)) as gw:
        assert _sample(gw, PLUGIN_OK) == 1 and sim.stats.refused == 1  # the start-up probe
        client = gw.openai_client("alice")
        r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        view = await _backend_view(gw)
        assert _sample(gw, FAILURES) in (None, 0.0)
        # counted as served with the watermark, under the engine's scheme (the post-hoc one never ran)
        assert _sample(gw, ("ipgate_watermark_responses_total", {"scheme": "kgw"})) == 1
        assert _sample(gw, ("ipgate_watermark_responses_total", {"scheme": "lexical"})) is None
    xargs = sim.stats.last_body["vllm_xargs"]
    assert xargs["ipgate_kgw_client"] == "alice" and xargs["ipgate_kgw_spec"] == "g0.25-h4-selfhash"
    assert view["kgw_plugin"] == "verified" and view["watermark_in_engine"] is True
    async with sim_backend() as plain, aiohttp.ClientSession() as http, http.post(
            plain.url + "/v1/chat/completions",
            json={"model": "sim", "messages": [{"role": "user", "content": "hi"}]}) as direct:
        raw = (await direct.json())["choices"][0]["message"]["content"]
    assert r.choices[0].message.content == raw  # in-engine scheme: no post-hoc rewrite


async def test_embeddings_get_no_directive_and_do_not_make_a_recipient(secret_file: Path) -> None:
    """Vectors carry no watermark: an embeddings request to a plugin engine goes without vllm_xargs, and a
    client that only embeds is not recorded as a watermark recipient (every recipient is one more hypothesis
    in a verification without a client list)."""
    async with sim_backend(kgw_plugin=True, kgw_secret=MASTER) as sim, \
            running_gateway(_config(sim.url, secret_file)) as gw:
        client = gw.openai_client("dora")
        r = await client.embeddings.create(model="sim", input=["a vector, not text"])
        await client.close()
        assert r.data and "vllm_xargs" not in sim.stats.last_body
        await asyncio.sleep(0.05)  # accounting runs after the answer
        assert await gw.ctx.store.recipients() == {}


@pytest.mark.parametrize(("engine", "reason"), [
    (Engine(plugin=True, spec=KgwParams(gamma=0.5)), "spec_mismatch"),
    (Engine(plugin=True, master=OTHER), "secret_mismatch"),
    (Engine(plugin=True, master=None), "secret_absent"),
])
async def test_a_misconfigured_plugin_is_not_trusted_either(secret_file: Path, engine: Engine, reason: str) -> None:
    """Loaded but unable to serve the gateway's directives (every request would be a 502): lexical instead."""
    async with app_backend(engine.app()) as url, running_gateway(_config(url, secret_file)) as gw:
        text = await _ask(gw, "carol", stream=False)
        assert (await _backend_view(gw))["kgw_plugin"] == reason
    assert "vllm_xargs" not in engine.generations()[0]
    assert _attributed(text) == "carol"


async def test_an_engine_that_echoes_the_request_in_a_400_is_not_the_plugin(secret_file: Path) -> None:
    async def strict(request: web.Request) -> web.Response:
        body = await request.json()
        if "vllm_xargs" in body:
            return web.json_response({"error": {"message": f"unknown field vllm_xargs: {body['vllm_xargs']}"}},
                                     status=400)
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "sim",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": ANSWER}}]})

    app = web.Application()
    app.router.add_post("/v1/completions", strict)
    app.router.add_post("/v1/chat/completions", strict)
    async with app_backend(app) as url, running_gateway(_config(url, secret_file)) as gw:
        text = await _ask(gw, "alice", stream=False)
        assert (await _backend_view(gw))["kgw_plugin"] == "not_the_plugin"
    assert _attributed(text) == "alice"


async def test_recovery_and_relapse_follow_the_probe(secret_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Plugin missing -> lexical; the engine restarts with it -> KGW in the engine; restarting (503s) is no
    verdict and not a failure, but the old verdict no longer holds; back without it -> lexical and one new
    ERROR. One log line per change, not one per probe."""
    engine = Engine(plugin=False)
    async with app_backend(engine.app()) as url, \
            running_gateway(_config(url, secret_file, interval_s=0.05)) as gw:
        pool = gw.ctx.router.pool("sim")
        state = pool.state("b0")
        assert state.engine_watermark() is False
        await eventually(lambda: (_sample(gw, FAILURES) or 0) >= 3)  # probed every round while it fails
        with caplog.at_level(logging.INFO, logger="gateway.routing.pool"):
            engine.plugin = True
            await eventually(lambda: state.engine_watermark())
            assert _sample(gw, PLUGIN_OK) == 1
            await _ask(gw, "alice", stream=False)
            assert engine.generations()[-1]["vllm_xargs"]["ipgate_kgw_client"] == "alice"
            failures = _sample(gw, FAILURES)
            engine.status = 503
            await eventually(lambda: state.plugin_ok is None)
            assert _sample(gw, FAILURES) == failures and _sample(gw, PLUGIN_OK) == 0
            assert (await _backend_view(gw))["kgw_plugin"] == "unknown"
            engine.status, engine.plugin = None, False
            await eventually(lambda: state.plugin_ok is False)
            n = len(engine.bodies)
            await eventually(lambda: len(engine.bodies) >= n + 5)  # several more failed probes
            text = await _ask(gw, "bob", stream=True)
            assert "vllm_xargs" not in engine.generations()[-1]
    assert _attributed(text) == "bob"
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gateway.routing.pool"]
    assert [lvl for lvl, _ in msgs] == [logging.ERROR, logging.INFO, logging.WARNING, logging.ERROR], msgs


async def test_a_reload_probes_a_new_capable_backend_at_once(secret_file: Path) -> None:
    from gateway.config import ModelConfig

    async with sim_backend() as plain, sim_backend(kgw_plugin=True, kgw_secret=MASTER) as wm:
        cfg = _config(plain.url, secret_file)
        cfg["models"][0]["backends"][0]["watermark_capable"] = False
        async with running_gateway(cfg) as gw:
            model = ModelConfig.model_validate(
                {"name": "sim", "backends": [{"name": "b0", "url": wm.url, "watermark_capable": True}]})
            gw.ctx.router.reload([model])  # health interval is 30 s: only the reload's kick probes it now
            await eventually(lambda: gw.ctx.router.pool("sim").state("b0").engine_watermark())
            assert wm.stats.refused == 1


async def test_probe_off_trusts_the_flag_and_says_so(secret_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(plugin=False)
    with caplog.at_level(logging.WARNING, logger="gateway.routing.router"):
        async with app_backend(engine.app()) as url, \
                running_gateway(_config(url, secret_file, kgw_probe=False)) as gw:
            await _ask(gw, "alice", stream=False)
            assert (await _backend_view(gw))["kgw_plugin"] == "trusted"
    assert engine.generations()[0]["vllm_xargs"]["ipgate_kgw_client"] == "alice"
    assert [b for b in engine.bodies if "messages" not in b] == []  # never probed
    assert any("without a check" in r.getMessage() for r in caplog.records)


def test_the_sim_cli_takes_the_plugin_settings_like_an_engine_host(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``ipgate sim-backend --kgw-plugin`` reads IPGATE_KGW_PARAMS like the plugin: a bad one stops it at once."""
    monkeypatch.setenv("IPGATE_KGW_PARAMS", "g2-h4-selfhash")
    assert cli_main(["sim-backend", "--kgw-plugin", "--port", "0"]) == 2
    assert "ipgate_kgw_spec" in capsys.readouterr().err


def test_the_pool_logs_each_change_once_and_leases_keep_their_scheme(caplog: pytest.LogCaptureFixture) -> None:
    """Table of verdicts in a row -> (lease in engine?, ERROR lines so far, failures counted so far)."""
    from gateway.config import HealthConfig, ModelConfig
    from gateway.kgw_probe import PluginVerdict
    from gateway.routing.pool import Outcome, Pool
    from gateway.telemetry.metrics import Metrics

    metrics = Metrics()
    model = ModelConfig.model_validate({"name": "sim", "backends": [
        {"name": "b0", "url": "http://127.0.0.1:9", "watermark_capable": True}]})
    pool = Pool(model, HealthConfig(), metrics=metrics)
    pool.publish_all()  # as the router does for each pool it installs
    b = pool.state("b0").cfg
    ok, gone = PluginVerdict(True, "verified", "ok"), PluginVerdict(None, "no_verdict", "timed out")
    missing, spec = PluginVerdict(False, "not_loaded", "200"), PluginVerdict(False, "spec_mismatch", "spec")
    steps = [(None, False, 0, 0), (missing, False, 1, 1), (missing, False, 1, 2), (spec, False, 2, 3),
             (gone, False, 2, 3), (spec, False, 2, 4), (ok, True, 2, 4), (ok, True, 2, 4), (gone, False, 2, 4),
             (missing, False, 3, 5)]
    held = pool.acquire("alice")
    assert held.engine_watermark is False
    with caplog.at_level(logging.INFO, logger="gateway.routing.pool"):
        for verdict, in_engine, errors, failures in steps:
            if verdict is not None:
                pool.set_plugin_verdict("b0", b, verdict)
            lease = pool.acquire("alice")
            assert lease.engine_watermark is in_engine, verdict
            lease.release(Outcome(True, 200, 0.01))
            assert sum(r.levelno == logging.ERROR for r in caplog.records) == errors, verdict
            assert (metrics.registry.get_sample_value(*FAILURES) or 0) == failures, verdict
            assert metrics.registry.get_sample_value(*PLUGIN_OK) == (1 if in_engine else 0)
    assert held.engine_watermark is False  # a lease keeps the scheme it started with
    held.release(Outcome(True, 200, 0.01))
    # a verdict about a backend that a reload has since replaced is dropped
    pool.set_plugin_verdict("b0", BackendConfig.model_validate(b.model_dump()), ok)
    assert pool.state("b0").engine_watermark() is False


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_directive_is_served_again_lexically_and_reprobes_the_plugin(
        secret_file: Path, stream: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified engine restarted with another master secret refuses every directive. Before the next
    health round (30 s here) every request was a 502, then the first one still was; now the refused request
    goes again at once without the directive and its answer carries the client's lexical watermark, and the
    refusal re-probes the plugin, whose report moves the backend to the lexical watermark for what follows."""
    monkeypatch.setattr(gateway.route, "_REFUSALS_LOGGED", {})  # once per process: forget other tests' lines
    engine = Engine(plugin=True)
    async with app_backend(engine.app()) as url, running_gateway(_config(url, secret_file)) as gw:
        state = gw.ctx.router.pool("sim").state("b0")
        assert state.engine_watermark() is True
        engine.master = b"another master secret, 32 bytes!"
        with caplog.at_level(logging.ERROR, logger="gateway.route"):
            first = await _ask(gw, "alice", stream=stream)
        assert "vllm_xargs" not in engine.generations()[-1]  # the refused try generated nothing; this one ran
        assert _attributed(first) == "alice"
        metric = ("ipgate_watermark_directive_refusals_total", {"model": "sim", "backend": "b0"})
        assert _sample(gw, metric) == 1.0
        await eventually(lambda: state.plugin_reason == "secret_mismatch", 3.0)
        sent = len(engine.bodies)
        text = await _ask(gw, "alice", stream=stream)
        assert len(engine.bodies) == sent + 1  # no refused try any more: the probe's verdict holds
        assert "vllm_xargs" not in engine.generations()[-1]
        assert _sample(gw, metric) == 1.0
        (backend,) = gw.ctx.router.snapshot()["models"]["sim"]["backends"]
    assert _attributed(text) == "alice"
    assert backend["consecutive_failures"] == 0  # the engine serves fine without a directive: not ejected
    assert sum("refused the watermark directive" in r.getMessage() for r in caplog.records) == 1


async def test_concurrent_refused_directives_are_all_served(secret_file: Path) -> None:
    """Requests already in flight when the plugin changed each pay one refused try, none an error, and the
    re-probe is started once."""
    engine = Engine(plugin=True)
    async with app_backend(engine.app()) as url, running_gateway(_config(url, secret_file)) as gw:
        probes = sum("ipgate_kgw_probe" in json.dumps(b) for b in engine.bodies)
        engine.master = b"another master secret, 32 bytes!"
        who = CLIENTS * 2
        texts = await asyncio.gather(*(_ask(gw, c, stream=bool(i % 2)) for i, c in enumerate(who)))
        assert [_attributed(t) for t in texts] == who
        await eventually(lambda: gw.ctx.router.pool("sim").state("b0").plugin_reason == "secret_mismatch", 3.0)
        assert sum("ipgate_kgw_probe" in json.dumps(b) for b in engine.bodies) == probes + 1


async def test_refusals_cannot_turn_into_a_probe_storm(secret_file: Path) -> None:
    """Forced re-probes are rate-limited per backend, and a refusal whose probe still verifies the plugin
    (one a client provoked) changes nothing."""
    engine = Engine(plugin=True)
    async with app_backend(engine.app()) as url, running_gateway(_config(url, secret_file)) as gw:
        router = gw.ctx.router
        state = router.pool("sim").state("b0")
        probes = len(engine.bodies)
        assert router.recheck_plugin("sim", "b0") is True
        assert [router.recheck_plugin("sim", "b0") for _ in range(50)] == [False] * 50
        await eventually(lambda: len(engine.bodies) == probes + 1)
        await asyncio.sleep(0.1)
        assert len(engine.bodies) == probes + 1 and state.engine_watermark() is True
        assert router.recheck_plugin("sim", "nope") is False and router.recheck_plugin("nope", "b0") is False
