"""Review session 15 (configuration and reload): a reload that would change nothing it reports as applied says
which fields need a restart, a reload the gateway could not serve is refused (the running configuration stays),
values that cannot work (an infinite timeout or TTL, a NaN cap) are configuration errors naming the field, YAML
that PyYAML or Python cannot build is a marked error (never an "internal error"), and a SIGHUP while ``ipgate
serve`` is still importing does not kill it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from gateway.admin.routing import reload_from_config
from gateway.cli import main as cli_main
from gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from gateway.server import reload_models
from tests.support.harness import app_backend, gateway_config, running_gateway, sim_backend
from tests.support.lexical import ANSWER
from tests.watermark.test_gateway_e2e import fake_backend

BASE: dict[str, Any] = {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:1"}]}]}


def _err(data: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="f.yaml", env=env or {})
    return str(e.value)


async def _ask(client: openai.AsyncOpenAI, prompt: str = "x") -> str:
    r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": prompt}])
    return r.choices[0].message.content or ""


def _as_running(cfg: dict[str, Any], running: GatewayConfig) -> GatewayConfig:
    """``cfg`` parsed, with the harness's auth/admin (which it rewrites at start-up) as the running ones."""
    return parse_config(cfg, source="<t>", env={}).model_copy(update={"auth": running.auth, "admin": running.admin})


# --- reload: restart_required ----------------------------------------------------------------------------------


async def test_a_reload_that_turns_a_models_watermark_on_under_scheme_none_says_it_needs_a_restart() -> None:
    """``watermark: {enabled: true, scheme: none}`` with no model asking for a scheme starts no watermarking at
    all. A reload giving a model ``watermark_scheme: lexical`` changes no other section, so it answered
    ``restart_required: []`` ("applied") while the model's answers went on leaving unwatermarked: the
    fail-open session 14 closed for a running watermark, still open when none runs."""
    async with app_backend(fake_backend()) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "none"})
        async with running_gateway(cfg) as gw:
            assert gw.ctx.watermarking is None
            client = gw.openai_client("alice")
            assert await _ask(client, "Which laptop should I buy?") == ANSWER
            assert reload_from_config(gw.ctx, _as_running(cfg, gw.ctx.config))["restart_required"] == []
            cfg["models"][0]["watermark_scheme"] = "lexical"
            cfg["models"].append({"name": "sim2", "watermark_scheme": "none", "backends": [{"name": "c", "url": url}]})
            result = reload_from_config(gw.ctx, _as_running(cfg, gw.ctx.config))
            assert result["restart_required"] == ["models.sim.watermark_scheme"]
            assert result["models"] == ["sim", "sim2"]
            assert await _ask(client, "Which laptop should I buy?") == ANSWER  # still unwatermarked: named
            await client.close()
        # watermarking off altogether: a model's scheme changes nothing, before or after a restart
        cfg = gateway_config(url, watermark={"enabled": False, "scheme": "lexical"})
        async with running_gateway(cfg) as gw:
            cfg["models"][0]["watermark_scheme"] = "kgw"
            assert reload_from_config(gw.ctx, _as_running(cfg, gw.ctx.config))["restart_required"] == []


# --- reload: a backend credential no request can carry -----------------------------------------------------------


async def test_a_reload_whose_backend_key_has_a_newline_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Kubernetes secret created from a file (``kubectl create secret --from-file``) keeps the file's trailing
    newline, and ``env: valueFrom: secretKeyRef`` hands it to the variable as is. Environment values are used
    exactly as set (documented), so the backend's ``Authorization`` header carried a newline: aiohttp refuses
    it ("header injection"), and every request routed to the backend was a 500 ``internal_error`` with a
    traceback. A reload adding such a backend said "applied"; it is refused now, naming the variable (never the
    value), and the running configuration stays."""
    monkeypatch.setenv("IPGATE_TEST_BACKEND_KEY", "sk-good")
    monkeypatch.setenv("IPGATE_TEST_BACKEND_KEY_K8S", "sk-s3cr3t\n")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url)
        cfg["models"][0]["backends"][0]["api_key_env"] = "IPGATE_TEST_BACKEND_KEY"
        async with running_gateway(cfg) as gw:
            client = gw.openai_client()
            await _ask(client)
            cfg["models"][0]["backends"][0]["api_key_env"] = "IPGATE_TEST_BACKEND_KEY_K8S"
            path = tmp_path / "ipgate.yaml"
            path.write_text(yaml.safe_dump(cfg))
            with caplog.at_level(logging.ERROR, logger="gateway.server"):
                assert await reload_models(gw.ctx, path) is False
            msgs = [r.getMessage() for r in caplog.records if "reload ignored" in r.getMessage()]
            assert msgs and "IPGATE_TEST_BACKEND_KEY_K8S" in msgs[0] and "backend b0" in msgs[0], msgs
            assert "s3cr3t" not in caplog.text
            assert gw.ctx.config.models[0].backends[0].api_key_env == "IPGATE_TEST_BACKEND_KEY"
            await _ask(client)  # still served with the running key
            assert sim.stats.last_headers.get("Authorization") == "Bearer sk-good"
            await client.close()


# --- values that cannot work --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["detection.state_ttl_s", "watermark.recipient_ttl_s", "alerts.min_interval_s",
                                   "alerts.dedup_window_s"])
@pytest.mark.parametrize("value", [".inf", "1e300", ".nan"])
def test_a_ttl_the_store_cannot_take_is_a_config_error(field: str, value: str) -> None:
    """``detection.state_ttl_s: .inf`` (YAML's "forever") was accepted: both stores turn a TTL into integer
    micro/milliseconds, ``int(inf)`` raised OverflowError on every state save (detection state never kept:
    every client scored from scratch, with only a log line per request), and Redis refuses an expiry of
    ``1e300`` s. The alert windows are store leases too (each alert fell back to "deciding locally"). Each field
    is bounded (at most 100 years) and named."""
    section, key = field.split(".")
    msg = _err({**BASE, section: {key: yaml.safe_load(value) if value != "1e300" else 1e300}})
    assert f"f.yaml: {field}:" in msg, msg
    parse_config({**BASE, section: {key: 10 * 365 * 86400.0}}, env={})  # ten years: fine


@pytest.mark.parametrize(("key", "value"), [
    ("max_abs_logit_bias", float("nan")), ("max_abs_logit_bias", -5.0), ("max_abs_logit_bias", float("inf")),
    ("max_n", 0), ("max_n", -1), ("max_logit_bias_entries", -1), ("logprob_noise", float("inf")),
    ("logprob_noise", float("nan")),
])
def test_a_hardening_cap_that_cannot_cap_is_a_config_error(key: str, value: float) -> None:
    """``max_abs_logit_bias: .nan`` passed (no constraint on the field): ``abs(v) > nan`` is never true, so the
    tier clamped nothing (a suspicious client's logit bias went through whole: fail-open). A negative one
    flipped every bias's sign; ``max_n: 0``/``-1`` rewrote ``n`` to a value every backend refuses (every request
    of the tier a backend 400); ``max_logit_bias_entries: -1`` kept all entries but the last; ``logprob_noise:
    .inf`` turned returned logprobs into ``-Infinity``/``NaN``, which are not JSON."""
    data = {**BASE, "policy": {"tiers": [{"name": "normal"}, {"name": "t", "hardening": {key: value}}],
                               "flag_tier": "t"}}
    msg = _err(data)
    assert f"f.yaml: policy.tiers.1.hardening.{key}:" in msg, msg


def test_hardening_caps_at_their_limits_are_accepted() -> None:
    cfg = parse_config({**BASE, "policy": {"tiers": [{"name": "normal", "hardening": {
        "max_abs_logit_bias": 0, "max_n": 1, "max_logit_bias_entries": 0, "max_top_logprobs": 0,
        "logprob_noise": 0.5}}], "flag_tier": "normal"}}, env={})
    h = cfg.policy.tiers[0].hardening
    assert (h.max_abs_logit_bias, h.max_n, h.max_logit_bias_entries, h.max_top_logprobs) == (0, 1, 0, 0)


# --- YAML nested beyond what the reader can take -------------------------------------------------------------------


async def test_yaml_nested_a_thousand_deep_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PyYAML composes and constructs nodes recursively: ``models: [[[[...]]]]`` a thousand deep (or an
    override holding it) raised RecursionError. ``ipgate check``/``serve`` said "internal error", and a reload
    of such a file (SIGHUP, or the admin API's 500 instead of its 400 naming the file) escaped the handler that
    keeps the running configuration and logs why."""
    deep = "[" * 1200 + "]" * 1200
    path = tmp_path / "ipgate.yaml"
    path.write_text(f"models: {deep}\n")
    with pytest.raises(ConfigError, match=r"nested more than 64 levels deep") as e:
        load_config(path, env={})
    assert str(e.value).startswith(f"{path}: ")
    with pytest.raises(ConfigError, match=r"^IPGATE_MODELS: nested more than 64 levels deep"):
        parse_config(BASE, env={"IPGATE_MODELS": deep})
    assert cli_main(["check", "--config", str(path)]) == 2
    assert "internal error" not in capsys.readouterr().err
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        gw.ctx.config_path = str(path)
        assert await reload_models(gw.ctx, path) is False
        async with aiohttp.ClientSession() as s, s.post(gw.admin_url + "/admin/routing/reload",
                          headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
            assert r.status == 400, await r.text()
            assert "nested more than 64 levels deep" in (await r.json())["error"]["message"]
        assert gw.ctx.models == {"sim"}


@pytest.mark.parametrize("where", ["alerts.store_max_len", "alerts.sinks.0.max_len"])
def test_a_list_length_redis_cannot_take_is_a_config_error(where: str) -> None:
    """Redis parses MAXLEN and LTRIM bounds as 64-bit integers: ``store_max_len: 1e30`` (an integral float,
    which pydantic takes as an int) made every LTRIM fail after its LPUSH in the same MULTI, so the recent
    alerts list grew without bound; a sink's ``max_len`` failed every XADD (every alert to it lost)."""
    big = 10**30
    sink = {"kind": "redis_stream"}
    alerts: dict[str, Any] = {"store_max_len": big} if where == "alerts.store_max_len" else \
        {"sinks": [{**sink, "max_len": big}]}
    assert f"f.yaml: {where}:" in _err({**BASE, "alerts": alerts})
    parse_config({**BASE, "alerts": {"store_max_len": 10**6, "sinks": [{**sink, "max_len": 10**8}]}}, env={})


@pytest.mark.parametrize(("where", "key"), [
    ("backend", "first_byte_timeout_s"), ("backend", "connect_timeout_s"), ("health", "timeout_s"),
    ("fingerprint", "timeout_s"), ("jwt", "jwks_timeout_s"), ("sink", "timeout_s"), ("canary", "hold_s"),
    ("server", "drain_timeout_s"),
])
@pytest.mark.parametrize("value", [float("inf"), "1e400"])
def test_an_infinite_number_is_a_config_error_in_every_section(where: str, key: str, value: float | str) -> None:
    """``first_byte_timeout_s: .inf`` (YAML's "never give up on a long generation") was accepted: aiohttp's
    timeout rounding raised OverflowError, so every non-streamed request to the backend was a 500
    ``internal_error`` (``connect_timeout_s: .inf``: every request). Fields were made finite one by one as
    each crash was found (weights, rates); every number in the configuration is finite now, named with its
    path. ``"1e400"`` is the same infinity once parsed (an override's value, a quoted YAML string)."""
    data: dict[str, Any] = {"models": [{"name": "m", "backends": [
        {"name": "b", "url": "https://127.0.0.1:1"}, {"name": "c", "url": "https://127.0.0.1:2"}]}]}
    backend, path = data["models"][0]["backends"][0], ""
    if where == "backend":
        backend[key], path = value, f"models.0.backends.0.{key}"
    elif where == "canary":
        data["models"][0]["canary"] = {"backend": "c", "steps": [{"weight": 10, key: value}]}
        path = f"models.0.canary.steps.0.{key}"
    elif where == "health":
        data["routing"], path = {"health": {key: value}}, f"routing.health.{key}"
    elif where == "jwt":
        data["auth"], path = {"jwt": {key: value}}, f"auth.jwt.{key}"
    elif where == "sink":
        data["alerts"] = {"sinks": [{"kind": "webhook", "url": "https://h/x", key: value}]}
        path = f"alerts.sinks.0.{key}"
    else:
        data[where], path = {key: value}, f"{where}.{key}"
    msg = _err(data)
    assert f"f.yaml: {path}: Input should be a finite number" in msg, msg
    if where == "backend":
        backend[key] = 1e9  # a very large finite value still says "never"
        assert getattr(parse_config(data, env={}).models[0].backends[0], key) == 1e9


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b"])
def test_a_control_character_in_the_file_is_one_line_naming_line_and_column(tmp_path: Path, char: str) -> None:
    """A control character pasted into the file (a terminal's BEL or escape sequence) is refused by PyYAML's
    reader, whose message spans two lines and gives an offset into ``"<unicode string>"``, not the file's line:
    the one error line per problem that ``ipgate serve``/``check`` print (and the reload log line) broke in two."""
    path = tmp_path / "ipgate.yaml"
    path.write_bytes(f"\ufeffmodels:\n  - name: m{char}\n    backends: []\n".encode())
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert str(e.value) == (f"{path}:2:12: not valid YAML: control character #x{ord(char):04x} (YAML allows tab, "
                            "line breaks and printable characters only)")


@pytest.mark.parametrize(("text", "where", "problem"), [
    ("models:\n  - name: 2024-02-30\n", "2:11", "day is out of range for month"),
    ("models:\n  - name: 2024-13-01\n", "2:11", "month must be in 1..12"),
    ("server:\n  max_body_bytes: " + "9" * 5000 + "\n", "2:19",
     "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"),
])
def test_a_scalar_python_cannot_build_is_a_config_error_naming_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, problem: str
) -> None:
    """YAML resolves ``2024-02-30`` as a date (a model or tenant named like a date, a version string) and a long
    digit string as an int; Python then refused to build them with a bare ValueError that escaped every handler:
    ``ipgate check``/``serve`` said "internal error", SIGHUP's reload logged an exception in a callback, the
    admin reload answered 500. Same for an override's value."""
    path = tmp_path / "ipgate.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert str(e.value) == f"{path}:{where}: not valid YAML: {problem} (quote it to pass it as a string)"
    assert cli_main(["check", "--config", str(path)]) == 2
    assert "internal error" not in capsys.readouterr().err
    value = text.split(": ")[-1].strip()
    with pytest.raises(ConfigError, match=r"^IPGATE_MODELS__0__NAME: not a valid YAML value \(ConstructorError"):
        parse_config(BASE, env={"IPGATE_MODELS__0__NAME": value})
    assert parse_config(BASE, env={"IPGATE_MODELS__0__NAME": f"'{value}'"}).models[0].name == value


def test_an_override_value_with_a_duplicate_key_is_refused_like_the_file() -> None:
    """Override values were read with ``yaml.safe_load``, which keeps the last of two equal keys: the strict
    reader of the file (session 14) now reads them too."""
    with pytest.raises(ConfigError, match=r"^IPGATE_STORE: not a valid YAML value"):
        parse_config(BASE, env={"IPGATE_STORE": "{kind: redis, kind: memory}"})


@pytest.mark.parametrize("text", ["models: !!bool x\n", "models: !!int\n", "models: {1: !!map ~}\n",
                                  "models: !!map [1]\n", "models: !!timestamp .nan\n", "models: [!!float x]\n"])
def test_an_explicit_tag_its_value_does_not_fit_is_a_config_error(tmp_path: Path, text: str) -> None:
    """PyYAML's constructors fail with KeyError, IndexError, AttributeError, TypeError or ValueError on an explicit
    tag whose value does not fit it: each escaped as an "internal error" (a 500 from the admin reload)."""
    path = tmp_path / "ipgate.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}:1:\d+: not valid YAML: "):
        load_config(path, env={})


# --- a SIGHUP while ipgate serve is still importing ----------------------------------------------------------------

# ``ipgate serve`` that sends itself a SIGHUP once its command runs, before the server is imported and the config
# file read: a reload request arriving in the first second of a start (`systemctl reload` right after `start`)
HUP_DRIVER = (
    "import os, signal, sys\n"
    "import gateway.cli.serve as s\n"
    "orig = s.find_config\n"
    "def early(*a, **k):\n"
    "    os.kill(os.getpid(), signal.SIGHUP)\n"
    "    return orig(*a, **k)\n"
    "s.find_config = early\n"
    "from gateway.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_sighup_while_serve_is_still_importing_does_not_kill_it(tmp_path: Path, workers: int) -> None:
    """SIGHUP's default action ends the process, and ``ipgate serve`` installed its handler only once the server
    was imported and the file read (the worker's in ``_serve_listeners``, the supervisor's in ``_supervise``):
    a reload request during that first half second or more killed the gateway (exit by signal 1), though the
    README says a SIGHUP reaching a starting worker is applied once it has started. Now ignored from the
    moment the command runs (the file is read after it anyway)."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.support.harness import free_port

    port, admin = free_port(), free_port()
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url)
        cfg.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}")
        cfg["auth"] = {"jwt": None}
        cfg["admin"] = {"token_env": None}
        path = tmp_path / "ipgate.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-c", HUP_DRIVER, "serve", "--config", str(path), "--workers",
                                 str(workers)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"exit {proc.returncode}: {(tmp_path / 'serve.log').read_text()}"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            log.close()


async def test_a_backend_key_with_a_newline_at_start_up_is_not_a_500(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key from an env var filled from a Kubernetes secret file keeps its trailing newline, which no HTTP header
    can carry: at start-up (where an unreadable key does not stop the gateway) the backend fails over like one
    whose key cannot be read, never a 500 for the client, and its health check fails alone."""
    monkeypatch.setenv("IPGATE_TEST_BACKEND_KEY_K8S", "sk-abc\n")
    async with sim_backend() as bad, sim_backend() as good:
        cfg = gateway_config(bad.url, good.url)
        cfg["models"][0]["backends"][0]["api_key_env"] = "IPGATE_TEST_BACKEND_KEY_K8S"
        async with running_gateway(cfg) as gw:
            for i in range(8):  # sticky per client: several clients reach b0
                c = gw.openai_client(f"client-{i}")
                try:
                    await c.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}])
                except openai.APIStatusError as e:  # failed over, or no budget left to: never a 500
                    assert e.status_code in (502, 503), e.status_code
                finally:
                    await c.close()
            checker = gw.ctx.router._checker
            assert checker is not None
            problem = await checker.probe(gw.ctx.config.models[0].backends[0])
            assert problem is not None and "line break" in problem


@pytest.mark.parametrize("raw", ["", "  ", "\n"])
def test_an_empty_override_is_refused_not_read_as_null(raw: str) -> None:
    """``IPGATE_AUTH__JWT__AUDIENCE=`` (a template expanding an unset variable) used to set the audience to null,
    dropping the audience check without a word; ``null`` still sets null on purpose."""
    from gateway.config.loader import _apply_env

    with pytest.raises(ConfigError, match="IPGATE_AUTH__JWT__AUDIENCE is set but empty"):
        _apply_env({"auth": {"jwt": {"audience": "ipgate"}}}, {"IPGATE_AUTH__JWT__AUDIENCE": raw})
    data: dict[str, Any] = {"auth": {"jwt": {"audience": "ipgate"}}}
    _apply_env(data, {"IPGATE_AUTH__JWT__AUDIENCE": "null"})
    assert data["auth"]["jwt"]["audience"] is None


async def test_the_admin_reload_re_reads_the_api_key_file_with_one_worker(tmp_path: Path) -> None:
    """SIGHUP re-reads the API key file; the admin reload did so only under --workers (as a SIGHUP to every
    worker): with one worker a key revoked in the file kept working after ``POST /admin/routing/reload``."""
    from gateway.auth.apikeys import format_line, generate_key, hash_key

    keep, revoke = generate_key(), generate_key()
    keys = tmp_path / "keys.txt"
    keys.write_text(format_line(hash_key(keep), "keep") + "\n" + format_line(hash_key(revoke), "revoke") + "\n")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url)
        cfg["auth"]["api_keys"] = {"file": str(keys), "reload_interval_s": 0}
        path = tmp_path / "ipgate.yaml"
        path.write_text(yaml.safe_dump(cfg))
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            gw.ctx.config_path = str(path)
            body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

            async def status(key: str) -> int:
                async with s.post(gw.url + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {key}"}) as r:
                    return r.status

            assert await status(revoke) == 200
            keys.write_text(format_line(hash_key(keep), "keep") + "\n")
            async with s.post(gw.admin_url + "/admin/routing/reload",
                              headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
                assert r.status == 200, await r.text()
            assert await status(revoke) == 401 and await status(keep) == 200
