"""Review session 14 (configuration and reload): ``IPGATE_*`` overrides whose value or shape is bad, and YAML
aliases that expand without bound, are configuration errors that name the variable or file, never an "internal
error" (or minutes of CPU); a reload the gateway could not serve is refused and the running configuration
stays; a reload that changes what only a restart applies says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.admin.routing import reload_from_config
from gateway.cli import main as cli_main
from gateway.config import ConfigError, load_config, parse_config
from gateway.server import reload_models
from tests.support.harness import app_backend, gateway_config, running_gateway, sim_backend
from tests.support.lexical import ANSWER
from tests.watermark.test_gateway_e2e import SECRET as WM_SECRET
from tests.watermark.test_gateway_e2e import fake_backend

BASE: dict[str, Any] = {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:1"}]}]}


def _err(data: dict[str, Any], env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="f.yaml", env=env)
    return str(e.value)


@pytest.mark.parametrize("value", ["[", "{a: [", "*s3cr3t-Pa55", "!!python/object:os.system x", "a\nb: [c", "'x"])
def test_an_override_that_is_not_yaml_names_its_variable_and_not_its_value(value: str) -> None:
    """``yaml.safe_load`` of the value raised its own error: ``ipgate check``/``serve`` answered "internal error:
    ParserError ... [" (no variable named, the value quoted: it may be a password in a Redis URL)."""
    msg = _err(BASE, {"IPGATE_STORE__URL": value})
    assert msg.startswith("IPGATE_STORE__URL: not a valid YAML value"), msg
    assert "single quotes" in msg
    assert "s3cr3t" not in msg and "os.system" not in msg and "[c" not in msg


def test_a_quoted_override_passes_as_a_string() -> None:
    cfg = parse_config({**BASE, "store": {"kind": "redis"}},
                       env={"IPGATE_STORE__URL": "'*redis://h:6379/0'"})
    assert cfg.store.url == "*redis://h:6379/0"


@pytest.mark.parametrize("seg", ["²", "9" * 5000, "٣"])
def test_a_list_index_int_refuses_is_not_an_index(seg: str) -> None:
    """``"²".isdigit()`` is True but ``int("²")`` raises, and so does a 5 000-digit number (int's digit limit):
    both escaped as ValueError (internal error)."""
    assert "is not an index in it" in _err(BASE, {f"IPGATE_MODELS__{seg}__NAME": "x"})
    assert "is not an index in it" in _err(BASE, {f"IPGATE_MODELS__0__BACKENDS__{seg}": "x"})


def test_an_override_into_a_scalar_list_element_is_a_config_error() -> None:
    """``models: ["x"]`` with ``IPGATE_MODELS__0__NAME``: the element is a string; setting a field in it raised
    TypeError ("'str' object does not support item assignment"). The override sets the field in a fresh mapping
    (as for a scalar where the file has a section), and validation names what is still missing."""
    msg = _err({"models": ["x"]}, {"IPGATE_MODELS__0__NAME": "y"})
    assert "models.0.backends: Field required" in msg
    cfg = parse_config({"models": ["x"]}, env={"IPGATE_MODELS__0__NAME": "m",
                                                 "IPGATE_MODELS__0__BACKENDS": "[{name: b, url: 'http://h:1'}]"})
    assert cfg.models[0].name == "m" and cfg.models[0].backends[0].url == "http://h:1"


def test_ipgate_check_reports_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(BASE))
    monkeypatch.setenv("IPGATE_SERVER__DRAIN_TIMEOUT_S", "[")
    assert cli_main(["check", "--config", str(path), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert [f["message"] for f in out["findings"]] == [
        "IPGATE_SERVER__DRAIN_TIMEOUT_S: not a valid YAML value (ParserError at character 2); to pass it as a "
        "string, put it in single quotes"]
    # serve refuses to start with the same line (it was "ipgate serve: internal error: ParserError ...")
    assert cli_main(["serve", "--config", str(path)]) == 2
    assert "ipgate serve: IPGATE_SERVER__DRAIN_TIMEOUT_S: not a valid YAML value" in capsys.readouterr().err


LAUGHS = "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, n in zip(["", *"abcdefg"], "abcdefgh", strict=True)
) + "models: *h\n"


@pytest.mark.parametrize("text", [LAUGHS, "models: &a [*a]\n", "x: &x {y: *x}\nmodels: []\n"],
                         ids=["aliases-of-aliases", "a-list-that-holds-itself", "a-mapping-that-holds-itself"])
def test_yaml_aliases_that_expand_without_bound_are_a_config_error(text: str, tmp_path: Path) -> None:
    """Eight levels of nine aliases (400 bytes) expanded to 43 million values when the loader copied the data: a
    minute of CPU and 2.2 GB (on the event loop, in a running gateway's SIGHUP reload; a ninth level is killed
    for memory). An alias that contains itself was a RecursionError ("internal error"; a SIGHUP reload logged a
    traceback). Both are configuration errors naming the file, found at once."""
    path = tmp_path / "ipgate.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="more than 1000000 values or 64 levels of nesting") as e:
        load_config(path, env={})
    assert str(e.value).startswith(f"{path}: ")
    with pytest.raises(ConfigError, match=r"^IPGATE_MODELS: more than 1000000 values"):  # in an override too
        parse_config(BASE, env={"IPGATE_MODELS": "&a [*a]"})


def test_aliases_a_real_configuration_uses_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ipgate.yaml"
    path.write_text("models:\n  - name: m0\n    backends:\n      - &b {name: b, url: 'http://127.0.0.1:1'}\n"
                    + "".join(f"  - {{name: m{i}, backends: [*b, {{<<: *b, name: c}}]}}\n" for i in range(1, 200)))
    cfg = load_config(path, env={})
    assert len(cfg.models) == 200 and [b.name for b in cfg.models[-1].backends] == ["b", "c"]


# --- reload --------------------------------------------------------------------------------------------------


async def _ask(client: openai.AsyncOpenAI, prompt: str = "x") -> str:
    r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": prompt}])
    return r.choices[0].message.content or ""


async def test_a_reload_naming_an_unreadable_backend_key_file_keeps_the_running_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload (SIGHUP, or the admin API: the same code) whose backend ``api_key_file`` cannot be read was
    applied: every request routed to that backend was then a 500 internal_error (``Upstream.plan`` raised the
    ConfigError on the request path) until the health checks took it out of rotation, and with one backend the
    model was down. A file the reload cannot read is refused like an unusable TLS file: the running
    configuration stays, and the log says why."""
    key = tmp_path / "backend.key"
    key.write_text("k1\n")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url)
        cfg["models"][0]["backends"][0]["api_key_file"] = str(key)
        async with running_gateway(cfg) as gw:
            client = gw.openai_client()
            await _ask(client)
            cfg["models"][0]["backends"][0]["api_key_file"] = str(tmp_path / "rotated.key")  # a typo'd path
            path = tmp_path / "ipgate.yaml"
            path.write_text(yaml.safe_dump(cfg))
            with caplog.at_level(logging.ERROR, logger="gateway.server"):
                assert await reload_models(gw.ctx, path) is False
            assert any("reload ignored, the running configuration stays" in r.getMessage()
                       and "rotated.key" in r.getMessage() and "backend b0 api key" in r.getMessage()
                       for r in caplog.records)
            assert gw.ctx.config.models[0].backends[0].api_key_file == str(key)
            await _ask(client)  # still served with the running key
            (tmp_path / "rotated.key").write_text("k2\n")  # the file in place: the same reload applies
            assert await reload_models(gw.ctx, path) is True
            assert gw.ctx.config.models[0].backends[0].api_key_file == str(tmp_path / "rotated.key")
            await _ask(client)
            await client.close()


async def test_a_reload_that_changes_a_models_watermark_scheme_says_it_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model's ``watermark_scheme`` is read once, at start-up. A reload that turned a model's watermark on
    (``none`` -> the section's ``lexical``) answered ``restart_required: []`` and "applied", while the model's
    answers went on leaving unwatermarked: a fail-open the operator could not see. It is named now."""
    (tmp_path / "wm.secret").write_text(WM_SECRET)
    async with app_backend(fake_backend()) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "lexical",
                                             "secret_file": str(tmp_path / "wm.secret")})
        cfg["models"][0]["watermark_scheme"] = "none"
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            assert await _ask(client, "Which laptop should I buy?") == ANSWER
            running = gw.ctx.config
            same = parse_config(cfg, source="<t>", env={}).model_copy(
                update={"auth": running.auth, "admin": running.admin})
            assert reload_from_config(gw.ctx, same)["restart_required"] == []  # nothing changed: nothing named
            cfg["models"][0]["watermark_scheme"] = None  # the watermark section decides: lexical
            cfg["models"].append({"name": "sim2", "watermark_scheme": "kgw", "backends": [{"name": "c", "url": url}]})
            new = parse_config(cfg, source="<t>", env={}).model_copy(
                update={"auth": running.auth, "admin": running.admin})
            with caplog.at_level(logging.WARNING, logger="gateway.admin.routing"):
                result = reload_from_config(gw.ctx, new)
            assert result["restart_required"] == ["models.sim.watermark_scheme", "models.sim2.watermark_scheme"]
            assert any("models.sim.watermark_scheme" in r.getMessage() for r in caplog.records)
            assert result["models"] == ["sim", "sim2"]  # the rest of `models` is applied
            # what the restart would change is still as it was (and is named again by the next reload)
            assert await _ask(client, "Which laptop should I buy?") == ANSWER
            assert reload_from_config(gw.ctx, new)["restart_required"] == result["restart_required"]
            await client.close()
