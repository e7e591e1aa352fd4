"""Adversarial review of configuration loading and the server process model (ipgate serve, --workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, load_config, parse_config, read_secret
from tests.support.harness import JWT_SECRET, free_port, gateway_config
from tests.support.process import GatewayProcess, child_pids

BASE: dict[str, Any] = {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:1"}]}]}


def _err(data: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="f.yaml", env=env or {})
    return str(e.value)


# --- configuration -----------------------------------------------------------------------------------------


def test_listen_port_out_of_range_is_a_config_error_naming_the_field() -> None:
    # it used to pass validation and crash at bind() with an OverflowError traceback (exit 1)
    assert "f.yaml: admin_listen:" in _err({**BASE, "admin_listen": "127.0.0.1:70000"})
    assert "out of range" in _err({**BASE, "listen": "127.0.0.1:99999"})


def test_duplicate_yaml_keys_are_refused_but_merge_keys_work(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("store: {kind: redis}\nmodels: [{name: m, backends: [{name: b, url: 'http://x'}]}]\n"
                   "store: {kind: memory}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3:1: .*duplicate key 'store'"):
        load_config(dup, env={})
    nested = tmp_path / "nested.yaml"
    nested.write_text("models:\n  - name: m\n    backends: [{name: b, url: 'http://x', weight: 1, weight: 0}]\n")
    with pytest.raises(ConfigError, match="duplicate key 'weight'"):
        load_config(nested, env={})
    merge = tmp_path / "merge.yaml"
    merge.write_text("models:\n  - name: m\n    backends:\n"
                     "      - &b1 {name: b, url: 'http://x', connect_timeout_s: 2}\n"
                     "      - {<<: *b1, name: c, connect_timeout_s: 3}\n")
    cfg = load_config(merge, env={})
    assert [(b.name, b.url, b.connect_timeout_s) for b in cfg.models[0].backends] == [
        ("b", "http://x", 2.0), ("c", "http://x", 3.0)]


def test_file_encoding_and_top_level_type(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"# caf\xe9\nmodels: []\n")
    with pytest.raises(ConfigError, match="not UTF-8"):  # was a UnicodeDecodeError traceback
        load_config(latin1, env={})
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(BASE).encode())
    assert load_config(bom, env={}).models[0].name == "m"
    for text in ("[]", "- a\n", "42\n", "false\n"):
        (tmp_path / "t.yaml").write_text(text)
        with pytest.raises(ConfigError, match="top level must be a mapping"):
            load_config(tmp_path / "t.yaml", env={})


def test_env_name_fields_refuse_a_pasted_secret_without_echoing_it() -> None:
    secret = "hunter2-very-secret/value=="
    for data in (
        {**BASE, "auth": {"jwt": {"secret_env": secret}}},
        {**BASE, "watermark": {"secret_env": secret}},
        {**BASE, "admin": {"token_env": secret}},
        {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://x", "api_key_env": secret}]}]},
        {**BASE, "alerts": {"sinks": [{"kind": "webhook", "url": "http://x", "secret_env": secret}]}},
    ):
        msg = _err(data)
        assert "NAME of an environment variable" in msg and secret not in msg, msg
    assert parse_config({**BASE, "admin": {"token_env": "MY_ADMIN_TOKEN_2"}}, env={}).admin.token_env


def test_env_overrides_name_their_variable_index_lists_and_refuse_typos() -> None:
    msg = _err(BASE, env={"IPGATE_STORE__KIND": "mem"})
    assert "store.kind:" in msg and "(set by IPGATE_STORE__KIND)" in msg
    assert "(set by IPGATE_STORE__KINDD)" in _err(BASE, env={"IPGATE_STORE__KINDD": "redis"})
    # IPGATE_<typo>__X has the override shape: refused instead of silently ignored
    assert "IPGATE_SOTRE__KIND: 'sotre' is not a configuration section" in _err(
        BASE, env={"IPGATE_SOTRE__KIND": "redis"})
    # secrets the config names by variable are not overrides
    assert parse_config(BASE, env={"IPGATE_JWT_SECRET": "x" * 40}).store.kind == "memory"
    # a list element can be overridden (it used to turn `models` into a dict: "models: Input should be a list")
    cfg = parse_config(BASE, env={"IPGATE_MODELS__0__BACKENDS__0__WEIGHT": "0.5"})
    assert cfg.models[0].backends[0].weight == 0.5
    assert "not an index" in _err(BASE, env={"IPGATE_MODELS__3__NAME": "x"})
    assert "models.0.backends.0.weight:" in _err(BASE, env={"IPGATE_MODELS__0__BACKENDS__0__WEIGHT": "-1"})


def test_overrides_do_not_write_into_the_callers_mapping() -> None:
    data: dict[str, Any] = {**BASE, "store": {"kind": "memory"}}
    parse_config(data, env={"IPGATE_STORE__KIND": "redis"})
    assert data["store"] == {"kind": "memory"}


def test_values_that_only_failed_at_run_time_are_config_errors() -> None:
    assert "server.overhead_header:" in _err({**BASE, "server": {"overhead_header": "x-overhead\r\nx-evil: 1"}})
    assert "models.0.backends.0.url:" in _err(
        {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://"}]}]})
    assert "telemetry.otlp_endpoint:" in _err({**BASE, "telemetry": {"otlp_endpoint": "otel:4318"}})
    assert "models:" in _err({"models": [BASE["models"][0], BASE["models"][0]]})  # not "(top level)"
    # 10**30 passed validation and made aiohttp drop every connection (its parser limit overflowed)
    assert "server.max_header_bytes:" in _err({**BASE, "server": {"max_header_bytes": 10**30}})
    assert "server.workers:" in _err({**BASE, "server": {"workers": 100_000}})


def test_secret_files_bom_crlf_and_binary(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    for raw in (b"s3cret-value\n", b"s3cret-value\r\n", b"\xef\xbb\xbfs3cret-value\r\n"):
        f.write_bytes(raw)
        assert read_secret(None, str(f), what="auth.jwt") == "s3cret-value"
    f.write_bytes(b"\x8f\xff\x00secret-bytes")
    with pytest.raises(ConfigError, match="not UTF-8") as e:  # was a UnicodeDecodeError traceback
        read_secret(None, str(f), what="auth.jwt")
    assert "secret-bytes" not in str(e.value)


# --- ipgate serve as a process -----------------------------------------------------------------------------


def _serve(path: Path, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), *extra],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "IPGATE_JWT_SECRET": JWT_SECRET})


def test_serve_bad_files_exit_2_with_one_line_on_stderr(tmp_path: Path) -> None:
    cases = {
        "port.yaml": yaml.safe_dump({**BASE, "listen": "127.0.0.1:99999"}).encode(),
        "latin1.yaml": b"# caf\xe9\n" + yaml.safe_dump(BASE).encode(),
        "dup.yaml": yaml.safe_dump(BASE).encode() + b"models: []\n",
        "broken.yaml": b"models: [\n",
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        r = _serve(tmp_path / name)
        assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and r.stdout == "", (name, r.stdout, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ipgate serve:")]
        assert len(lines) == 1 and name in lines[0], (name, r.stderr)

    # a file the config names that cannot be opened is not "cannot listen" (the port was fine)
    cfg = {**BASE, "detection": {"enabled": False}, "watermark": {"enabled": False},
           "listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}",
           "telemetry": {"access_log_file": str(tmp_path / "no-such-dir" / "access.log")}}
    (tmp_path / "log.yaml").write_text(yaml.safe_dump(cfg))
    r = _serve(tmp_path / "log.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"ipgate serve: cannot open {tmp_path / 'no-such-dir' / 'access.log'}: No such file" in r.stderr, r.stderr


def test_workers_with_the_port_taken_exit_2_instead_of_restarting_forever(tmp_path: Path) -> None:
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        cfg = gateway_config("http://127.0.0.1:1")
        cfg["auth"]["jwt"]["secret_env"] = "IPGATE_JWT_SECRET"
        cfg["listen"] = f"127.0.0.1:{held.getsockname()[1]}"
        cfg["admin_listen"] = f"127.0.0.1:{free_port()}"
        path = tmp_path / "ipgate.yaml"
        path.write_text(yaml.safe_dump(cfg))
        r = _serve(path, "--workers", "2", timeout=20)  # before the fix: restarts every second, never exits
        assert r.returncode == 2, r.stderr[-2000:]
        assert "cannot listen" in r.stderr and "restarting" not in r.stderr
    finally:
        held.close()



def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_while_a_dead_worker_waits_for_its_restart_stops_everything(tmp_path: Path) -> None:
    gw = GatewayProcess(gateway_config("http://127.0.0.1:1"), tmp_path, workers=2).start()
    try:
        assert gw.proc is not None
        workers = child_pids(gw.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        time.sleep(0.4)  # the supervisor has seen the death and is in its 1 s pause before the restart
        gw.signal(signal.SIGTERM)
        rc = gw.wait(timeout=20)  # before the fix: the restarted worker was never told to stop: a hang
        assert rc in (0, 1)
        deadline = time.monotonic() + 5
        while any(_alive(w) for w in child_pids(gw.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers[1:])
    finally:
        for w in child_pids(gw.proc.pid if gw.proc else -1):
            os.kill(w, signal.SIGKILL)
        gw.stop()



def test_sighup_with_a_bad_file_keeps_the_running_config_and_logs_once(tmp_path: Path) -> None:
    gw = GatewayProcess(gateway_config("http://127.0.0.1:1"), tmp_path).start()
    try:
        good = gw.config_path.read_bytes()
        assert b"routing:" in good
        # not UTF-8 (was an "Exception in callback" traceback); a second `routing:` section (was applied
        # silently: the last of two duplicate keys won)
        for n, bad in enumerate((b"# caf\xe9\n" + good, good + b"routing: {retries: 0}\n"), start=1):
            gw.config_path.write_bytes(bad)
            gw.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while gw.output().count("reload ignored") < n and time.monotonic() < deadline:
                if "Traceback" in gw.output():
                    break
                time.sleep(0.05)
        out = gw.output()
        assert out.count("reload ignored") == 2, out[-3000:]
        assert "Traceback" not in out and "Exception in callback" not in out, out[-3000:]
        assert gw.ready() == 200 and gw.proc is not None and gw.proc.poll() is None
    finally:
        gw.stop()


# --- ipgate apikey create --append ----------------------------------------------------------------------------


def _apikey(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "apikey", "create", *args], capture_output=True,
                          text=True, timeout=30)


def test_apikey_append_keeps_the_key_file_loadable(tmp_path: Path) -> None:
    from gateway.auth.apikeys import ApiKeyTable, hash_key

    keys = tmp_path / "keys.txt"
    # a hand-edited file whose last line has no newline: the appended line used to merge with it
    keys.write_text("# ops keys\n" + "a" * 64 + " legacy")
    keys.chmod(0o600)
    r = _apikey("--client", "acme", "--roles", "chat, embed", "--append", str(keys))  # ", " used to add a field
    assert r.returncode == 0, r.stderr
    key = r.stdout.split("store it now): ", 1)[1].split()[0]
    table = ApiKeyTable.load(keys)  # the whole file must still parse (ConfigError otherwise)
    assert len(table) == 2
    assert hash_key(key) in keys.read_text()
    principal = table.lookup(key)
    assert principal is not None and principal.client_id == "acme" and principal.roles == {"chat", "embed"}
    r = _apikey("--client", "acme", "--roles", "chat#admin", "--append", str(keys))  # '#' would cut the role
    assert r.returncode == 2 and "--roles" in r.stderr
    new = tmp_path / "new.txt"
    assert _apikey("--client", "x", "--append", str(new)).returncode == 0
    assert new.stat().st_mode & 0o777 == 0o600
    keys.chmod(0o666)
    r = _apikey("--client", "y", "--append", str(keys))
    assert r.returncode == 0 and "writable by group or others" in r.stderr


async def test_model_listing_and_unknown_paths_are_counted_without_their_paths() -> None:
    """Path scans and credential probing on /v1/models must show in the metrics and the access log; the raw
    path is never a label (unbounded, and the scanner's words)."""
    import aiohttp

    from tests.support.harness import gateway_config, running_gateway, sim_backend

    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        async with aiohttp.ClientSession() as s:
            answers = []
            for path in ("/wp-admin/setup.php", "/.env", "/v1/secret-admin"):
                async with s.get(gw.url + path) as r:
                    answers.append((r.status, r.headers))
            async with s.get(gw.url + "/v1/chat/completions") as r:
                answers.append((r.status, r.headers))
            async with s.get(gw.url + "/v1/models") as r:
                answers.append((r.status, r.headers))
            async with s.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {gw.token('a')}"}) as r:
                answers.append((r.status, r.headers))
        assert [st for st, _ in answers] == [404, 404, 404, 405, 401, 200]
        for _, h in answers:  # every answer of the public listener carries its id and the gateway's own time
            assert h.get("X-Request-Id") and float(h["x-ipgate-overhead-ms"]) >= 0
        reg = gw.ctx.metrics.registry

        def count(route: str, status: str) -> float:
            return reg.get_sample_value("ipgate_requests_total",
                                        {"route": route, "model": "-", "backend": "-", "status": status}) or 0.0

        assert count("-", "404") == 3 and count("-", "405") == 1
        assert count("/v1/models", "401") == 1 and count("/v1/models", "200") == 1
        routes = {s.labels.get("route") for m in reg.collect() for s in m.samples if "route" in s.labels}
        assert not any(r and ("wp-admin" in r or ".env" in r or "secret" in r) for r in routes), routes


def test_workers_log_at_the_level_given_to_the_supervisor(tmp_path: Path) -> None:
    """`--log-level WARNING --workers 2`: the workers' INFO lines ("ipgate serving on ...") stay out too."""
    cfg = gateway_config("http://127.0.0.1:9")
    with GatewayProcess(cfg, tmp_path, workers=2, extra_args=("--log-level", "WARNING")) as gw:
        time.sleep(0.5)
        out = gw.output()
    assert " INFO " not in out, out[-2000:]
