"""API keys (hash-only file, reload) and the ``token`` / ``apikey`` CLI commands, round-tripped through auth."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.auth.apikeys import ApiKeyTable, format_line, generate_key, hash_key
from gateway.cli import apikey as apikey_cli
from gateway.cli import token as token_cli
from gateway.config import ConfigError
from gateway.errors import AuthenticationFailed
from gateway.principal import Principal


def _run_cli(module: Any, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ipgate")
    module.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


async def test_api_key_round_trip(tmp_path: Path, make_auth: Any, failures: Any) -> None:
    key = generate_key()
    assert key.startswith("sk-") and len(key) > 40
    path = tmp_path / "keys.txt"
    line = format_line(hash_key(key), "batch-1", "acme", frozenset({"chat", "embed"}))
    path.write_text(f"# comment line\n\n{line}  # trailing comment\n")
    auth = make_auth(None, api_key_file=str(path))
    p = await auth.authenticate("Bearer " + key)
    assert p == Principal("batch-1", "acme", frozenset({"chat", "embed"}), "api_key")
    assert key not in path.read_text()
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("Bearer " + key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert failures("unknown_api_key") == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sk-abc client\n", "looks like a raw key"),
        ("abcd client\n", "64-character"),
        ("a" * 64 + "\n", "got 1 fields"),
        ("a" * 64 + " bad|client\n", "client_id"),
        ("a" * 64 + " c1\n" + "a" * 64 + " c2\n", "duplicate"),
    ],
)
def test_bad_key_file_names_the_line(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        ApiKeyTable.parse(text, source="keys.txt")
    assert "keys.txt:" in str(info.value)


def test_minimal_line_and_dash_tenant() -> None:
    key = generate_key()
    table = ApiKeyTable.parse(f"{hash_key(key)} solo\n{hash_key(key + 'x')} other - admin\n", source="k")
    assert table.lookup(key) == Principal("solo", None, frozenset(), "api_key")
    assert table.lookup(key + "x") == Principal("other", None, frozenset({"admin"}), "api_key")


async def test_reload_on_change_keeps_old_table_on_error(tmp_path: Path, make_auth: Any) -> None:
    k1, k2 = generate_key(), generate_key()
    path = tmp_path / "keys.txt"
    path.write_text(format_line(hash_key(k1), "one") + "\n")
    auth = make_auth(None, api_key_file=str(path))
    assert not auth.reload_api_keys()  # unchanged

    path.write_text(format_line(hash_key(k2), "two") + "\n")
    os.utime(path, ns=(1, 10**18))  # make sure the stamp differs even on coarse-mtime filesystems
    assert auth.reload_api_keys()
    assert (await auth.authenticate("Bearer " + k2)).client_id == "two"
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("Bearer " + k1)  # revoked by removing its line

    path.write_text("garbage\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert not auth.reload_api_keys()
    assert (await auth.authenticate("Bearer " + k2)).client_id == "two"


async def test_background_reload(tmp_path: Path, metrics: Any) -> None:
    from gateway.auth.authenticator import Authenticator
    from gateway.config import AuthConfig

    key = generate_key()
    path = tmp_path / "keys.txt"
    path.write_text("")
    auth = Authenticator.from_config(
        AuthConfig(jwt=None, api_keys={"file": str(path), "reload_interval_s": 0.02}), metrics=metrics
    )
    await auth.start()
    try:
        path.write_text(format_line(hash_key(key), "late") + "\n")
        os.utime(path, ns=(1, 10**18))
        import asyncio

        for _ in range(100):
            await asyncio.sleep(0.02)
            try:
                assert (await auth.authenticate("Bearer " + key)).client_id == "late"
                break
            except AuthenticationFailed:
                continue
        else:
            pytest.fail("key file change was not picked up")
    finally:
        await auth.close()


async def test_cli_token_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_auth: Any,
    jwt_cfg: Any, hs_secret: str,
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", hs_secret)
    config = tmp_path / "ipgate.yaml"
    config.write_text(
        "auth:\n  jwt:\n    algorithms: [HS256]\n    secret_env: TEST_JWT_SECRET\n    audience: ipgate\n"
        "    issuer: https://idp.test\n"
        "models:\n  - name: sim\n    backends:\n      - {name: a, url: 'http://127.0.0.1:1'}\n"
    )
    code = _run_cli(token_cli, ["token", "--client", "cli-client", "--tenant", "t1", "--roles", "chat,admin",
                                "--ttl", "15m", "--config", str(config)])
    out = capsys.readouterr().out.strip()
    assert code == 0
    claims = jwt.decode(out, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    auth = make_auth(jwt_cfg())  # the gateway's view: same secret, audience and issuer
    p = await auth.authenticate("Bearer " + out)
    assert p == Principal("cli-client", "t1", frozenset({"chat", "admin"}), "jwt")


def test_cli_token_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPGATE_JWT_SECRET", raising=False)
    assert _run_cli(token_cli, ["token", "--client", "c"]) == 2
    assert "IPGATE_JWT_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("IPGATE_JWT_SECRET", "s" * 40)
    assert _run_cli(token_cli, ["token", "--client", "c", "--ttl", "soon"]) == 2
    assert "--ttl" in capsys.readouterr().err
    # a bearer token lives until its exp: a lifetime of millennia is refused, naming the bound
    for ttl in ("367d", "99999999999d"):
        assert _run_cli(token_cli, ["token", "--client", "c", "--ttl", ttl]) == 2
        err = capsys.readouterr().err
        assert "--ttl: at most 366d" in err and "apikey" in err
    assert _run_cli(token_cli, ["token", "--client", "c", "--ttl", "366d"]) == 0


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)])
def test_parse_ttl(text: str, seconds: int) -> None:
    assert token_cli.parse_ttl(text) == seconds


async def test_cli_apikey_create_append(capsys: pytest.CaptureFixture[str], tmp_path: Path, make_auth: Any) -> None:
    path = tmp_path / "keys.txt"
    assert _run_cli(apikey_cli, ["apikey", "create", "--client", "svc", "--tenant", "acme", "--roles", "chat",
                                 "--append", str(path)]) == 0
    out = capsys.readouterr().out
    key = next(w for w in out.split() if w.startswith("sk-"))
    assert key not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    auth = make_auth(None, api_key_file=str(path))
    assert (await auth.authenticate("Bearer " + key)) == Principal("svc", "acme", frozenset({"chat"}), "api_key")


def test_cli_apikey_create_prints_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(apikey_cli, ["apikey", "create", "--client", "svc"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    key = lines[0].split()[-1]
    assert lines[-1] == f"{hash_key(key)} svc"
