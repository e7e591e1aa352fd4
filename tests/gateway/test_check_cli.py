"""``ipgate check``: a configuration is validated with the constructors ``serve`` uses, every problem reported
at once and named by field; ``--connect`` asks Redis, the backends (health path, KGW plugin) and the JWKS URL.
Real parts: a real redis-server, real aiohttp backends (the bundled simulator, with and without the emulated KGW
plugin), a real JWKS endpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.cli import main as cli_main
from gateway.config import parse_config
from gateway.preflight import Finding, offline, online
from tests.support.harness import app_backend, free_port, sim_backend

JWT_SECRET = "check-test-jwt-secret-0123456789abcdef"
WM_SECRET = "check-test-watermark-secret-0123456789abcdef"
GOOD_ENV = {"IPGATE_JWT_SECRET": JWT_SECRET, "IPGATE_WATERMARK_SECRET": WM_SECRET}


def _cfg(url: str = "http://127.0.0.1:18000", **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"models": [{"name": "sim", "backends": [{"name": "b0", "url": url}]}]}
    cfg.update(over)
    return cfg


def _run(tmp_path: Path, cfg: dict[str, Any] | str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, Any]:
    path = tmp_path / "ipgate.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    code = cli_main(["check", "--config", str(path), "--json", *flags])
    return code, json.loads(capsys.readouterr().out)


def _levels(findings: list[dict[str, str]] | list[Finding], level: str) -> list[str]:
    out = []
    for f in findings:
        lv, area, msg = (f["level"], f["area"], f["message"]) if isinstance(f, dict) else (f.level, f.area, f.message)
        if lv == level:
            out.append(f"{area}: {msg}")
    return out


def test_every_missing_secret_is_reported_at_once_by_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IPGATE_JWT_SECRET", "IPGATE_WATERMARK_SECRET", "IPGATE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    code, out = _run(tmp_path, _cfg(), capsys)
    errors = _levels(out["findings"], "error")
    assert code == 2 and out["ok"] is False and out["errors"] == 2, out
    assert any(e.startswith("auth:") and "IPGATE_JWT_SECRET" in e for e in errors), errors
    assert any(e.startswith("watermark:") and "IPGATE_WATERMARK_SECRET" in e for e in errors), errors


def test_a_good_config_passes_and_strict_turns_warnings_into_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    code, out = _run(tmp_path, _cfg(watermark={"recipients_file": str(tmp_path / "recipients.txt")}), capsys)
    assert (code, out["ok"], out["errors"], out["warnings"]) == (0, True, 0, 0), out
    code, out = _run(tmp_path, _cfg(), capsys)  # memory store, no recipients file: verify --config sees none
    assert code == 0 and [w.split(":")[0] for w in _levels(out["findings"], "warning")] == ["watermark"]
    probe_off = _cfg(models=[{"name": "sim", "backends": [{"name": "b0", "url": "http://h:1",
                                                          "watermark_capable": True, "kgw_probe": False}]}],
                     watermark={"recipients_file": str(tmp_path / "recipients.txt")})
    code, out = _run(tmp_path, probe_off, capsys)
    assert code == 0 and any("kgw_probe off" in w for w in _levels(out["findings"], "warning")), out
    # an unset backend credential starts (requests go without it) but is surely not what was meant
    cfg = _cfg(models=[{"name": "sim", "backends": [{"name": "b0", "url": "http://h:1", "api_key_env": "NO_SUCH"}]}],
               watermark={"recipients_file": str(tmp_path / "recipients.txt")})
    code, out = _run(tmp_path, cfg, capsys)
    assert code == 0 and _levels(out["findings"], "warning") == [
        "backend sim/b0: api_key_env NO_SUCH is not set: requests go without a credential"]
    code, _ = _run(tmp_path, cfg, capsys, "--strict")
    assert code == 1


def test_bad_files_and_values_are_errors_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("IPGATE_ADMIN_TOKEN", "short")
    keys = tmp_path / "keys.txt"
    keys.write_text("not-a-hash client\n")
    cfg = _cfg(
        auth={"api_keys": {"file": str(keys)}},
        # (a missing directory is created on the first write; a file where a directory must go is not)
        alerts={"sinks": [{"kind": "jsonl", "path": str(tmp_path / "a-file" / "sub" / "alerts.jsonl")}]},
        detection={"combiner_file": str(tmp_path / "missing.json")},
        models=[{"name": "sim", "backends": [{"name": "b0", "url": "http://h:1",
                                              "fingerprint_reference": str(tmp_path / "ref.json")}]}],
    )
    (tmp_path / "ref.json").write_text("{}")
    (tmp_path / "a-file").write_text("")
    code, out = _run(tmp_path, cfg, capsys)
    errors = _levels(out["findings"], "error")
    assert code == 2
    for area, needle in [("auth", str(keys)), ("admin", "admin.token_env"), ("alerts", "a-file"),
                         ("detection", "detection.combiner_file"), ("backend sim/b0", "fingerprint_reference")]:
        assert any(e.startswith(area + ":") and needle in e for e in errors), (area, errors)
    assert len(errors) == 5, errors


def test_a_config_that_does_not_parse_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(tmp_path, "models: [\n", capsys)
    assert code == 2 and len(out["findings"]) == 1 and "not valid YAML" in out["findings"][0]["message"]
    code, out = _run(tmp_path, _cfg(url="ftp://x"), capsys)
    assert code == 2 and "models.0.backends.0.url" in out["findings"][0]["message"]


def test_several_schema_problems_are_one_finding_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README: `ipgate check` "prints every problem at once, each naming its field". Schema problems were one
    finding whose message held them all on embedded lines ("invalid configuration:\n  ..."), counted as one
    error: a CI job reading --json saw errors: 1 and had to split a message to find the fields."""
    cfg = _cfg(url="ftp://x", bogus=1)
    cfg["models"][0]["backends"][0]["weight"] = -1
    code, out = _run(tmp_path, cfg, capsys)
    messages = [f["message"] for f in out["findings"]]
    assert code == 2 and out["errors"] == 3 and len(messages) == 3, out
    for field in ("models.0.backends.0.url", "models.0.backends.0.weight", "bogus"):
        assert sum(f"ipgate.yaml: {field}:" in m for m in messages) == 1, (field, messages)
    assert not any("\n" in m for m in messages)
    assert cli_main(["check", "--config", str(tmp_path / "ipgate.yaml")]) == 2  # the text report: a line each
    out_text = capsys.readouterr().out
    assert len([line for line in out_text.splitlines() if line.startswith("error")]) == 3, out_text


def test_the_human_report_lists_findings_and_ends_with_a_verdict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(_cfg(watermark={"scheme": "kgw", "recipients_file": str(tmp_path / "r.txt")},
                                        server={"workers": 2})))
    assert cli_main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{path}: 0 error(s), 2 warning(s): configuration OK"
    warnings = [line for line in out if line.startswith("warning")]
    assert any("model sim" in w and "no backend is watermark_capable" in w for w in warnings), out
    assert any("store" in w and "2 workers with the memory store" in w for w in warnings), out


async def test_connect_asks_redis_backends_the_kgw_plugin_and_jwks(redis_url: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "use": "sig"}

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    dead = f"http://127.0.0.1:{free_port()}"
    from watermark.keys import parse_master_secret

    async with sim_backend() as plain, sim_backend(kgw_plugin=True, kgw_secret=parse_master_secret(WM_SECRET)) as wm, \
            sim_backend(kgw_plugin=True, kgw_secret=parse_master_secret("another secret, 0123456789abcdef")) as other, \
            app_backend(app) as idp:
        cfg = parse_config({
            "store": {"kind": "redis", "url": redis_url},
            "alerts": {"sinks": [{"kind": "redis_stream", "name": "siem"},
                                 {"kind": "redis_stream", "name": "gone",
                                  "url": f"redis://:hunter2@127.0.0.1:{free_port()}/0", "timeout_s": 0.5}]},
            "auth": {"jwt": {"algorithms": ["RS256"], "jwks_url": idp + "/jwks.json", "secret_env": None}},
            "watermark": {"scheme": "kgw"},
            "models": [{"name": "sim", "backends": [
                {"name": "plain", "url": plain.url + "/v1"},
                {"name": "wm", "url": wm.url, "watermark_capable": True},
                {"name": "other", "url": other.url, "watermark_capable": True},
                {"name": "dead", "url": dead},
            ]}],
        }, env=GOOD_ENV)
        found = await online(cfg, env=GOOD_ENV)
    ok, warnings, errors = (_levels(found, lv) for lv in ("ok", "warning", "error"))
    assert any(o.startswith("store:") and "answers PING" in o for o in ok), ok
    assert "auth: JWKS " + idp + "/jwks.json: 1 usable key(s)" in ok
    assert any(o.startswith("backend sim/plain:") and "answers" in o for o in ok), ok
    assert "backend sim/wm: KGW plugin verified: responses are watermarked in the engine" in ok
    assert any(w.startswith("backend sim/other: KGW plugin not verified (secret_mismatch") for w in warnings), warnings
    assert "alerts: redis_stream sink siem: its Redis answers PING" in ok
    assert [e.split(":")[0] for e in errors] == ["alerts", "backend sim/dead"], errors
    assert "redis_stream sink gone" in errors[0] and "hunter2" not in errors[0]  # no password in the report


async def test_connect_reports_a_redis_that_does_not_answer_and_a_jwks_without_keys() -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_get("/jwks.json", empty)
    async with app_backend(app) as idp, sim_backend() as plain:
        cfg = parse_config({
            "store": {"kind": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"},
            "auth": {"jwt": {"algorithms": ["RS256"], "jwks_url": idp + "/jwks.json", "secret_env": None}},
            "watermark": {"enabled": False},
            "models": [{"name": "sim", "backends": [{"name": "b0", "url": plain.url}]}],
        }, env={})
        found = await asyncio.wait_for(online(cfg, env={}), 10)
    errors = _levels(found, "error")
    assert any(e.startswith("store:") and "did not answer PING" in e for e in errors), errors
    assert any(e.startswith("auth:") and "no usable RS256 signing key" in e for e in errors), errors
    assert len(errors) == 2, errors


def test_offline_never_writes_or_connects(tmp_path: Path) -> None:
    """Nothing listens and nothing is written: not the alert file, the access log or the recipients file."""
    files = [tmp_path / "alerts.jsonl", tmp_path / "access.log", tmp_path / "recipients.txt"]
    cfg = parse_config(_cfg(
        store={"kind": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"},
        alerts={"sinks": [{"kind": "jsonl", "path": str(files[0])}]},
        telemetry={"access_log_file": str(files[1])},
        watermark={"recipients_file": str(files[2])},
    ), env=GOOD_ENV)
    found = offline(cfg, env=GOOD_ENV)
    assert _levels(found, "error") == [] and not any(f.exists() for f in files)


def test_check_and_serve_find_the_config_through_ipgate_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config both take $IPGATE_CONFIG (containers, systemd units), else /etc/ipgate/ipgate.yaml; with
    none of them they stop with exit 2 naming where they looked, never with a traceback."""
    import gateway.cli.findconfig as findconfig

    monkeypatch.setattr(findconfig, "DEFAULT_CONFIG", tmp_path / "absent.yaml")
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("IPGATE_CONFIG", raising=False)
    assert cli_main(["check", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "no configuration: pass --config FILE (looked in --config, $IPGATE_CONFIG" in err
    answer = json.loads(out)  # --json: stdout is one object in every case, for CI to parse
    assert answer["ok"] is False and answer["errors"] == 1 and "no configuration" in answer["findings"][0]["message"]
    assert cli_main(["serve"]) == 2
    assert "ipgate serve: no configuration" in capsys.readouterr().err

    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(_cfg()))
    monkeypatch.setenv("IPGATE_CONFIG", str(path))
    code = cli_main(["check", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] is True, out

    path.write_text("models: [")  # found through the environment and broken: an error that says so
    assert cli_main(["check", "--json"]) == 2
    (finding,) = json.loads(capsys.readouterr().out)["findings"]
    assert finding["level"] == "error" and "found through $IPGATE_CONFIG" in finding["message"], finding


def test_one_engine_reached_with_different_cache_salts_is_a_warning(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    url = "http://127.0.0.1:18000"
    cfg = {"models": [{"name": "a", "backends": [{"name": "b0", "url": url, "cache_salt": "client"}]},
                      {"name": "b", "backends": [{"name": "b1", "url": url + "/"}]}]}
    _, out = _run(tmp_path, cfg, capsys)
    (warning,) = [w for w in _levels(out["findings"], "warning") if "cache_salt" in w]
    assert "client: a/b0; none: b/b1" in warning, warning
    cfg["models"][1]["backends"][0]["cache_salt"] = "client"
    _, out = _run(tmp_path, cfg, capsys)
    assert not [w for w in _levels(out["findings"], "warning") if "cache_salt" in w]


def test_directories_the_writers_create_are_no_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The alert JSONL sink and the recipients file create their directory on the first write, so `ipgate
    check` (the unit's ExecReload) must not refuse a config `ipgate serve` runs with; the access log and the
    audit file do not, and a missing directory stays an error for them."""
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    cfg = _cfg(alerts={"sinks": [{"kind": "jsonl", "path": str(tmp_path / "new" / "alerts.jsonl")}]},
               watermark={"recipients_file": str(tmp_path / "new2" / "deeper" / "recipients.txt")},
               telemetry={"access_log_file": str(tmp_path / "missing" / "access.log")})
    code, out = _run(tmp_path, cfg, capsys)
    assert code == 2  # (the access log)
    errors = _levels(out["findings"], "error")
    assert [e for e in errors if "alerts" in e or "recipients" in e] == [], errors
    assert any("telemetry.access_log_file" in e and "does not exist" in e for e in errors), errors


def test_a_suspicious_entry_without_its_in_flight_cap_is_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A `limits.suspicious` written in the file replaces the built-in entry whole: without max_in_flight the
    throttle and block tiers allow the default 64 requests in flight per client, not the built-in 4 (what
    deploy/ipgate.yaml did). It starts, so a warning naming the field."""
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    wm = {"recipients_file": str(tmp_path / "recipients.txt")}
    default = {"requests_per_minute": 600, "tokens_per_minute": 200000}
    rates = {"requests_per_minute": 30, "tokens_per_minute": 10000}
    code, out = _run(tmp_path, _cfg(watermark=wm, limits={"default": default, "suspicious": rates}), capsys)
    warnings = _levels(out["findings"], "warning")
    assert code == 0 and len(warnings) == 1, warnings
    assert "limits.suspicious" in warnings[0] and "throttle, block" in warnings[0] and "64" in warnings[0]
    for fine in ({"default": default}, {"default": default, "suspicious": {**rates, "max_in_flight": 4}},
                 {"default": default, "suspicious": {**rates, "max_in_flight": None}}):
        code, out = _run(tmp_path, _cfg(watermark=wm, limits=fine), capsys)
        assert _levels(out["findings"], "warning") == [], (fine, out)
    # a tier that caps in-flight itself at or below the built-in 4 needs nothing more
    tiers = [{"name": "normal"}, {"name": "throttle", "limits": "suspicious", "max_in_flight": 2}]
    code, out = _run(tmp_path, _cfg(watermark=wm, limits={"default": default, "suspicious": rates},
                                    policy={"tiers": tiers}), capsys)
    assert _levels(out["findings"], "warning") == [], out
