"""Review session 15 (CLI): defects found in the ``ipgate`` subcommands, each test failing before its fix.

Real parts: a real redis-server with a password, real files, pipes and the console script's ``main``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.auth.authenticator import Authenticator
from gateway.cli import main
from gateway.config import AuthConfig, JwtConfig
from gateway.principal import Principal
from gateway.telemetry.metrics import Metrics
from tests.conftest import RedisProcess
from tests.support.harness import free_port

REDIS_PASSWORD = "s3cret-redis-pw-0123456789"


@pytest.fixture
def redis_with_password() -> Iterator[RedisProcess]:
    rp = RedisProcess(extra_args=("--requirepass", REDIS_PASSWORD)).start()
    yield rp
    rp.stop()


# -- 1. `ipgate check --connect` printed the Redis password ----------------------------------------------------


@pytest.mark.parametrize("reachable", [True, False])
@pytest.mark.parametrize("as_json", [False, True])
def test_check_connect_never_prints_the_redis_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    redis_with_password: RedisProcess, reachable: bool, as_json: bool,
) -> None:
    port = redis_with_password.port if reachable else free_port()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    cfg = {"store": {"kind": "redis", "url": url}, "auth": {"jwt": None}, "watermark": {"enabled": False},
           "models": [{"name": "sim", "backends": [{"name": "b0", "url": f"http://127.0.0.1:{free_port()}"}]}]}
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.delenv("IPGATE_ADMIN_TOKEN", raising=False)
    main(["check", "--config", str(path), "--connect", *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert REDIS_PASSWORD not in out + err
    store = [line for line in (out + err).splitlines() if "Redis at" in line]
    assert store, out  # the finding is still there, naming the host and port
    assert f"redis://:***@127.0.0.1:{port}/0" in store[0]
    assert ("answers PING" in store[0]) is reachable


# -- 2. `ipgate token`: "chat, embed" gave the role " embed"; a token the gateway refuses was minted -------------

JWT_SECRET = "review15-jwt-secret-0123456789abcdef0123"


async def _authenticate(token: str) -> Principal:
    auth = Authenticator.from_config(AuthConfig(jwt=JwtConfig(), api_keys={"reload_interval_s": 0}),
                                     metrics=Metrics(CollectorRegistry()), env={"IPGATE_JWT_SECRET": JWT_SECRET})
    return await auth.authenticate("Bearer " + token)


async def test_token_roles_typed_with_spaces_are_the_roles_the_gateway_grants(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IPGATE_JWT_SECRET", JWT_SECRET)
    assert main(["token", "--client", "acme-app", "--roles", "chat, embed , admin,"]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.decode(token, options={"verify_signature": False})["roles"] == ["chat", "embed", "admin"]
    principal = await _authenticate(token)
    assert principal.roles == frozenset({"chat", "embed", "admin"})


@pytest.mark.parametrize(("flag", "value"), [("--client", ""), ("--client", "   "), ("--client", "a\nb"),
                                             ("--tenant", "t\x00")])
async def test_token_the_gateway_would_refuse_is_not_minted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str, value: str,
) -> None:
    monkeypatch.setenv("IPGATE_JWT_SECRET", JWT_SECRET)
    argv = ["token", "--client", value] if flag == "--client" else ["token", "--client", "c", flag, value]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"ipgate token: {flag}:") and "internal error" not in err


async def test_a_token_minted_by_the_cli_is_accepted(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard: the checks above refuse only what the gateway refuses (a space inside an id is printable)."""
    monkeypatch.setenv("IPGATE_JWT_SECRET", JWT_SECRET)
    assert main(["token", "--client", "acme app", "--tenant", "acme"]) == 0
    principal = await _authenticate(capsys.readouterr().out.strip())
    assert (principal.client_id, principal.tenant) == ("acme app", "acme")


def test_token_ttl_too_long_for_a_float_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPGATE_JWT_SECRET", JWT_SECRET)
    assert main(["token", "--client", "c", "--ttl", "9" * 400 + "d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ipgate token: --ttl:") and "internal error" not in err


# -- 3. `ipgate traffic --prompts`: a bad line was an "internal error" naming neither file nor line ------------

GOOD_PROMPT = '{"id": "p1", "category": "chat", "turns": ["How do I bake bread at home?"]}'


@pytest.mark.parametrize(("bad", "why"), [
    ("[1, 2]", "expected a JSON object"),
    ('"a string"', "expected a JSON object"),
    ("not json", "not valid JSON"),
    ('{"category": "chat", "turns": ["hi"]}', "field 'id' is missing"),
    ('{"id": "p2", "category": "chat", "turns": 5}', "field 'turns' must be a list"),
    ('{"id": "p2", "category": "chat", "turns": null}', "field 'turns' must be a list"),
    ('{"id": "p2", "category": "chat", "turns": "hello"}', "field 'turns' must be a list"),
])
def test_traffic_names_the_bad_line_of_a_prompt_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       bad: str, why: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(f"{GOOD_PROMPT}\n\n{bad}\n", encoding="utf-8")
    out = tmp_path / "trace.jsonl"
    assert main(["traffic", "-o", str(out), "--prompts", str(prompts), "--benign", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ipgate traffic: --prompts {prompts}:3: {why}"), err
    assert not out.exists()


def test_traffic_reads_a_prompt_corpus_with_a_byte_order_mark(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b"\xef\xbb\xbf" + GOOD_PROMPT.encode() + b"\r\n")
    out = tmp_path / "trace.jsonl"
    assert main(["traffic", "-o", str(out), "--prompts", str(prompts), "--benign", "2"]) == 0
    bodies = [json.loads(line)["body"] for line in out.read_text(encoding="utf-8").splitlines()]
    firsts = [b["messages"][0]["content"] for b in bodies]
    assert firsts and all(c.startswith("How do I bake bread at home?") for c in firsts), firsts[:3]


# -- 4. `ipgate apikey create --append` to a path it cannot write: "internal error" -------------------------------


@pytest.mark.parametrize("where", ["missing-dir", "directory"])
def test_apikey_append_to_an_unwritable_path_is_a_clear_error_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str,
) -> None:
    path = tmp_path / "no-such-dir" / "keys.txt" if where == "missing-dir" else tmp_path
    assert main(["apikey", "create", "--client", "batch-1", "--append", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no key handed out that no key file holds
    assert err.startswith(f"ipgate apikey: --append {path}: cannot write: ") and "internal error" not in err


# -- 5. `verify --jsonl` / `watermark --jsonl` held the whole file in memory (about 4x its size) ------------------

WM_SECRET = "review15-watermark-secret-0123456789abcdef"


def _peak_bytes(argv: list[str]) -> tuple[int, int]:
    """The exit code, and the peak of Python allocations while ``ipgate ARGV`` runs (stdout to /dev/null)."""
    with open(os.devnull, "w", encoding="utf-8") as null, contextlib.redirect_stdout(null):
        tracemalloc.start()
        try:
            code = main(argv)
            return code, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


@pytest.mark.parametrize("command", ["verify", "watermark"])
def test_bulk_jsonl_is_streamed_not_loaded_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 command: str) -> None:
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", WM_SECRET)
    big = tmp_path / "bulk.jsonl"
    with big.open("w", encoding="utf-8") as f:  # 8 MB in 400 rows of 20 kB (empty texts: scoring costs nothing)
        for i in range(400):
            f.write(json.dumps({"id": f"{i:06d}" + "x" * 20_000, "text": "", "client": "alice"}) + "\n")
    argv = ["verify", "--client", "alice"] if command == "verify" else ["watermark"]
    warm = tmp_path / "warm.jsonl"  # the scheme's own tables are loaded once, outside the measurement
    warm.write_text('{"id": 1, "text": "A short warm-up text.", "client": "alice"}\n', encoding="utf-8")
    _peak_bytes([*argv, "--jsonl", str(warm)])
    code, peak = _peak_bytes([*argv, "--jsonl", str(big)])
    assert code == (1 if command == "verify" else 0)
    assert peak < 1_000_000, f"{peak / 1e6:.1f} MB allocated for an 8 MB file"


@pytest.mark.parametrize("command", ["verify", "watermark"])
def test_bulk_jsonl_still_checks_every_line_before_the_first_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str,
) -> None:
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", WM_SECRET)
    rows = tmp_path / "rows.jsonl"
    good = json.dumps({"id": "a", "text": "The big dog ran fast.", "client": "alice"})
    rows.write_bytes(("\ufeff" + good + "\r\n").encode() + (good + "\n").encode() * 50 + b'{"id": "z"}\n')
    argv = ["verify", "--client", "alice"] if command == "verify" else ["watermark"]
    assert main([*argv, "--jsonl", str(rows)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"{rows}:52: field 'text' must be a string" in err
    data = ("\ufeff" + good + "\r\n").encode() + (good + "\n").encode() * 50 + b'{"id": "\xff"}\n'
    rows.write_bytes(data)
    assert main([*argv, "--jsonl", str(rows)]) == 2
    out, err = capsys.readouterr()
    bad_byte = data.index(b"\xff")
    assert out == "" and f"input file {rows}: not UTF-8 text (byte {bad_byte})" in err


# -- 6. `ipgate replay`: a trace with a byte-order mark was refused at record 1 ------------------------------------


@pytest.mark.parametrize("sorted_trace", [True, False])
def test_replay_reads_a_trace_with_a_byte_order_mark(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     sorted_trace: bool) -> None:
    records = [{"ts": 1_700_000_000 + (i if sorted_trace else -i), "client": f"c{i % 2}",
                "endpoint": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]}} for i in range(6)]
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    text = "".join(json.dumps(r) + "\r\n" for r in records)
    plain.write_text(text, encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert main(["replay", str(plain), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["replay", str(marked), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert expected["summary"]["records"] == 6


# -- 7. `ipgate sim-backend` on a taken port: "internal error" ----------------------------------------------------


def test_sim_backend_on_a_taken_port_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["sim-backend", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"ipgate sim-backend: cannot listen on 127.0.0.1:{port}: " in err and "internal error" not in err
    assert main(["sim-backend", "--port", "70000"]) == 2
    assert "cannot listen on 127.0.0.1:70000" in capsys.readouterr().err


# -- 8. `verify --config`: the config's watermark.kgw_tokenizer_file was ignored (the admin API uses it) -----------


@pytest.mark.parametrize("scheme", ["auto", "kgw"])
def test_verify_with_config_uses_its_kgw_tokenizer_like_the_admin_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], scheme: str,
) -> None:
    from watermark.kgw.params import KgwParams

    kgw_tests = importlib.import_module("tests.watermark.test_kgw_detect")  # its small BPE tokenizer + green text
    ring = kgw_tests.RING
    tokenizer, text = kgw_tests._tokenizer_and_green_text(tmp_path, KgwParams(), ring.key("alice").key)
    leak = tmp_path / "leak.txt"
    leak.write_text(text, encoding="utf-8")
    clients = tmp_path / "clients.txt"
    clients.write_text("bob\nalice\ncarol\n", encoding="utf-8")
    monkeypatch.setenv("REVIEW15_WM_SECRET", ring.master.decode())
    cfg: dict[str, Any] = {"watermark": {"enabled": True, "scheme": "kgw", "secret_env": "REVIEW15_WM_SECRET",
                         "kgw_tokenizer_file": str(tokenizer)},
           "models": [{"name": "sim", "backends": [{"name": "b0", "url": "http://127.0.0.1:9"}]}]}
    config = tmp_path / "ipgate.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code = main(["verify", str(leak), "--config", str(config), "--clients", str(clients), "--scheme", scheme,
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    verdict = json.loads(out)
    assert verdict["watermarked"] and verdict["client"] == "alice" and verdict["scheme"] == "kgw"
    # a tokenizer file that cannot be loaded is named by its field
    cfg["watermark"]["kgw_tokenizer_file"] = str(tmp_path / "missing.json")
    config.write_text(yaml.safe_dump(cfg))
    assert main(["verify", str(leak), "--config", str(config), "--clients", str(clients), "--scheme", scheme]) == 2
    assert "watermark.kgw_tokenizer_file" in capsys.readouterr().err


# -- 9. `verify` of an empty input said "not watermarked" (exit 1), as `--jsonl` of an empty file did --------------


@pytest.mark.parametrize("content", [b"", b"\n", b" \r\n\t\n"])
@pytest.mark.parametrize("from_stdin", [False, True])
def test_verify_of_an_empty_input_is_an_error_not_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], content: bytes,
    from_stdin: bool,
) -> None:
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", WM_SECRET)
    path = tmp_path / "leak.txt"
    path.write_bytes(content)
    if from_stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content), encoding="utf-8"))
    assert main(["verify", "-" if from_stdin else str(path), "--client", "alice", "--json"]) == 2
    out, err = capsys.readouterr()
    assert "no text to verify" in err and ("stdin" if from_stdin else str(path)) in err
    # --json: stdout is the error object, never a verdict (no "watermarked": false)
    assert json.loads(out) == {"watermarked": None, "error": err.removeprefix("ipgate verify: ").strip()}


def test_verify_of_a_short_text_is_still_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Guard: a text with nothing to score is "not watermarked" (exit 1): there is no evidence of a mark."""
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", WM_SECRET)
    path = tmp_path / "leak.txt"
    path.write_text("ok\n", encoding="utf-8")
    assert main(["verify", str(path), "--client", "alice", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["watermarked"] is False


@pytest.mark.parametrize("flag", ["--port", "--admin-port"])
def test_demo_with_a_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", flag, "99999"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a port in 1-65535" in err and "internal error" not in err


def test_check_masks_a_backend_url_password_and_keeps_the_rest_of_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    cfg = {"auth": {"jwt": None}, "watermark": {"enabled": False},
           "models": [{"name": "sim", "backends": [{"name": "b0", "url": f"http://ops:{REDIS_PASSWORD}@127.0.0.1:{port}"}]}]}
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.delenv("IPGATE_ADMIN_TOKEN", raising=False)
    main(["check", "--config", str(path), "--connect"])
    out, err = capsys.readouterr()
    assert REDIS_PASSWORD not in out + err
    assert f"http://ops:***@127.0.0.1:{port}/v1/models: " in out  # the health probe's finding, path intact


def test_a_bulk_file_changed_between_the_check_and_the_run_is_an_error(tmp_path: Path) -> None:
    from gateway.cli.wm_common import CliError, read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n', encoding="utf-8")
    rows = read_jsonl(str(path), ("text",))
    assert len(rows) == 2 and [r["id"] for r in rows] == [1, 2] and [r["id"] for r in rows] == [1, 2]
    with path.open("a", encoding="utf-8") as f:  # a log still being written to
        f.write('{"id": 3, "text": "c"}\n')
    with pytest.raises(CliError, match="changed while it was read"):
        list(rows)
    path.write_text('{"id": 1, "text": "a"}\n', encoding="utf-8")  # rotated: fewer rows
    with pytest.raises(CliError, match=r"\(2 rows checked, 1 read\)"):
        list(rows)


# -- 10. `fingerprint record --probes` with a byte-order mark: "line 1: not valid JSON" ------------------------------

backends = importlib.import_module("tests.fingerprint.test_cli").backends  # two real aiohttp chat backends


def test_fingerprint_record_reads_a_probe_set_with_a_byte_order_mark(
    backends: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IPGATE_CONFIG", raising=False)
    probes = tmp_path / "probes.jsonl"
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Name the colour number {i}."}) for i in range(8)]
    probes.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")  # as Windows editors save it
    ref = tmp_path / "ref.json"
    code = main(["fingerprint", "record", "--url", backends["genuine"], "--model", "m", "--probes", str(probes),
                 "-o", str(ref)])
    assert code == 0, capsys.readouterr().err
    assert [a["probe_id"] for a in json.loads(ref.read_text())["answers"]] == [f"p{i}" for i in range(8)]


# -- 11. `replay` / `audit verify` reports on a stdout that cannot encode an id: half a report, "internal error" ----


def _ascii_stdout(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))  # PYTHONIOENCODING=ascii
    return raw


def test_replay_report_names_a_non_ascii_client_on_an_ascii_stdout(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.jsonl"
    assert main(["traffic", "-o", str(trace), "--benign", "1", "--attack", "logit_probe=1"]) == 0
    trace.write_text(trace.read_text(encoding="utf-8").replace('"logit_probe-0"', '"José-prober"'), encoding="utf-8")
    raw = _ascii_stdout(monkeypatch)
    assert main(["replay", str(trace)]) == 0
    sys.stdout.flush()
    assert "  Jos\\xe9-prober: tier 3" in raw.getvalue().decode("ascii")


def test_audit_report_names_a_non_ascii_writer_on_an_ascii_stdout(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.audit.chain import Chain

    chain = Chain("hôte:1:abc")
    records = [chain.seal({"action": "reload", "n": i}) for i in range(3)]
    records[1]["n"] = 99  # edited after it was written
    audit = tmp_path / "audit.jsonl"
    audit.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    raw = _ascii_stdout(monkeypatch)
    assert main(["audit", "verify", str(audit)]) == 1
    sys.stdout.flush()
    assert f"BROKEN: first bad line {audit}:2 (writer h\\xf4te:1:abc)" in raw.getvalue().decode("ascii")


@pytest.mark.parametrize("argv", [["check"], ["serve"], ["verify", "-"], ["watermark", "--client", "a"],
                                  ["replay", "trace.jsonl"], ["token", "--client", "a"],
                                  ["apikey", "create", "--client", "a", "--limits", "free"]])
def test_an_empty_config_path_is_refused_not_read_as_absent(argv: list[str], capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--config "$UNSET"`` used to count as no --config: serve and check went on with $IPGATE_CONFIG or the
    default path, verify and watermark without the config's key versions and recipients."""
    monkeypatch.setenv("IPGATE_CONFIG", str(tmp_path / "other.yaml"))
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--config", ""])
    assert exit_.value.code == 2 and "--config: empty path" in capsys.readouterr().err
