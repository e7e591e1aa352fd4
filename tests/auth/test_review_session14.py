"""Review session 14 of authentication (docs: /work/team/docs/review-session14-auth-admin.md).

- A JWKS endpoint that resets the connection (an overloaded IdP or load balancer) raised ConnectionResetError,
  which urllib does not wrap and the fetch did not catch: start-up failed, and once running the background
  refresh task died for good, so keys the IdP removed kept verifying until a restart (and ``close()``
  re-raised the error at shutdown).
- A JOSE header nested deeper than the JSON parser's stack (``[[[[...``, sent by anyone) was an "unexpected"
  RecursionError: reason ``verify_error`` and a WARNING line per request, meant for library bugs.
- ``auth.jwt.algorithms: []`` crashed with an IndexError, and a ``jwks_url`` that ``urlsplit`` cannot parse
  (``http://[::1/jwks``) with a ValueError (``ipgate check``: "internal error"; ``serve``: a traceback),
  instead of a configuration error naming the field.
- An API key file that is not UTF-8 (a Latin-1 "é" in a comment) raised UnicodeDecodeError, which no caller
  expects: a crash at start-up, and at reload it ended the polling task for good, so keys removed from the
  file later were never revoked (and SIGHUP's reload stopped at it).
- The key file's change stamp was taken after the first read: an edit (a revocation) that landed while the
  gateway read the file at start-up carried the stamp already "in force" and was never read.
- A key file saved with a UTF-8 byte order mark (Windows editors) was refused: "the first field must be a
  64-character SHA-256 hex digest" about a line that looks right.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth.apikeys import ApiKeyFile, ApiKeyTable, format_line, generate_key, hash_key
from gateway.auth.authenticator import Authenticator
from gateway.auth.jwks import JwksKeys
from gateway.auth.jwt import JwtVerifier, TokenRejected, load_static_key
from gateway.cli import main
from gateway.config import AuthConfig, ConfigError
from gateway.errors import AuthenticationFailed
from gateway.telemetry.metrics import Metrics


@dataclass
class FlakyIdp:
    """A JWKS endpoint that serves ``keys``, or (``reset``) answers each request with a TCP reset."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    reset: bool = False
    served: int = 0
    resets: int = 0


@pytest.fixture
async def idp() -> AsyncIterator[FlakyIdp]:
    state = FlakyIdp()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if state.reset:
            state.resets += 1
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            writer.transport.abort()
            return
        state.served += 1
        body = json.dumps({"keys": state.keys}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    # The fetch under test is a blocking urllib call in a worker thread, so this loop is free to serve it.
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/jwks.json"
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {k: rsa.generate_private_key(public_exponent=65537, key_size=2048) for k in ("a", "b")}


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}


async def _until(cond: Any, what: str) -> None:
    for _ in range(250):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_connection_reset_at_start_up_is_a_failed_fetch_not_a_crash(
        idp: FlakyIdp, keys: Any, claims: Any, jwt_cfg: Any, metrics: Metrics) -> None:
    idp.reset, idp.keys = True, [_jwk(keys["a"], "a")]
    cfg = jwt_cfg(algorithms=["RS256"], jwks_url=idp.url)
    jwks = JwksKeys(idp.url, cfg.algorithms, refetch_interval_s=0, metrics=metrics)
    auth = Authenticator(jwt=JwtVerifier(cfg, key=None, jwks=jwks), api_keys=None, metrics=metrics)
    await auth.start()  # was: ConnectionResetError out of start-up
    try:
        assert idp.resets == 1
        assert metrics.registry.get_sample_value("ipgate_jwks_fetches_total", {"outcome": "error"}) == 1
        token = "Bearer " + jwt.encode(claims(), keys["a"], algorithm="RS256", headers={"kid": "a"})
        with pytest.raises(AuthenticationFailed):  # the IdP still resets: an unknown key, a plain 401
            await auth.authenticate(token)
        assert metrics.registry.get_sample_value("ipgate_auth_failures_total", {"reason": "unknown_key"}) == 1
        idp.reset = False  # the IdP recovers: the next unknown kid fetches the set
        assert (await auth.authenticate(token)).client_id == "client-1"
    finally:
        await auth.close()


async def test_the_refresher_outlives_a_reset_and_still_drops_removed_keys(
        idp: FlakyIdp, keys: Any, claims: Any, jwt_cfg: Any) -> None:
    idp.keys = [_jwk(keys["a"], "a")]
    cfg = jwt_cfg(algorithms=["RS256"], jwks_url=idp.url)
    jwks = JwksKeys(idp.url, cfg.algorithms, refetch_interval_s=3600, cache_ttl_s=0.05)
    verifier = JwtVerifier(cfg, key=None, jwks=jwks)
    token_a = jwt.encode(claims(), keys["a"], algorithm="RS256", headers={"kid": "a"})
    await verifier.start()
    try:
        await verifier.verify(token_a)
        idp.reset = True
        await _until(lambda: idp.resets >= 2, "two reset fetches")
        idp.keys, idp.reset, served = [_jwk(keys["b"], "b")], False, idp.served
        await _until(lambda: idp.served > served, "a fetch after the resets")  # the loop is still running
        with pytest.raises(TokenRejected) as info:
            await verifier.verify(token_a)
        assert info.value.reason == "unknown_key"
    finally:
        await verifier.close()  # was: re-raised the ConnectionResetError that ended the task


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("header", [b"[" * 3000, b'{"alg": "HS256", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"])
async def test_a_deeply_nested_header_is_malformed_and_logs_no_warning(
        make_auth: Any, jwt_cfg: Any, failures: Any, header: bytes, caplog: pytest.LogCaptureFixture) -> None:
    auth = make_auth(jwt_cfg())
    caplog.set_level(logging.WARNING)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {_b64(header)}.e30.c2ln")
    assert failures("malformed") == 1 and failures("verify_error") == 0
    assert not caplog.records, caplog.text  # anyone can send this: a warning per request is a log flood


def test_an_empty_algorithm_list_is_a_config_error_naming_the_field(jwt_cfg: Any, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt\.algorithms"):
        load_static_key(jwt_cfg(algorithms=[]), env={"TEST_JWT_SECRET": "x" * 64})
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:9"}]}],
                                    "auth": {"jwt": {"algorithms": []}}, "watermark": {"enabled": False}}))
    assert main(["check", "--config", str(path)]) == 2  # was: "ipgate check: internal error: IndexError"
    out, err = capsys.readouterr()
    assert "error    auth         auth.jwt.algorithms: the list is empty" in out, out
    assert "1 error(s)" in err and "internal error" not in err, err


def test_a_key_file_that_is_not_utf8_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_bytes(format_line(hash_key(generate_key()), "acme").encode() + b"\n# caf\xe9 team\n")
    with pytest.raises(ConfigError, match=r"keys\.txt:2: not UTF-8 text \(byte 0xe9\)"):
        ApiKeyFile(path)


async def test_a_non_utf8_key_file_at_reload_keeps_the_keys_and_later_revocations_still_apply(
        tmp_path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    keep, revoke = generate_key(), generate_key()
    path = tmp_path / "keys.txt"
    lines = [format_line(hash_key(keep), "keep"), format_line(hash_key(revoke), "gone")]
    path.write_text("\n".join(lines) + "\n")
    auth = Authenticator.from_config(AuthConfig(jwt=None, api_keys={"file": str(path), "reload_interval_s": 0.02}),
                                     metrics=metrics)
    await auth.start()
    try:
        caplog.set_level(logging.ERROR, logger="gateway.auth.apikeys")
        path.write_bytes(("\n".join(lines) + "\n# r\xe9voqu\xe9\n").encode("latin-1"))
        await _until(lambda: "not UTF-8" in caplog.text, "the reload error")
        assert (await auth.authenticate("Bearer " + revoke)).client_id == "gone"  # the previous table stays
        assert auth.reload_api_keys() is False  # SIGHUP's call: no exception either
        path.write_text(lines[0] + "\n")  # the operator fixes the file and revokes a key: the poller sees it
        for _ in range(250):
            try:
                await auth.authenticate("Bearer " + revoke)
            except AuthenticationFailed:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the revocation was never read: the reload task is gone")
        assert (await auth.authenticate("Bearer " + keep)).client_id == "keep"
        assert caplog.text.count("not UTF-8") == 1  # logged once, not once per poll
    finally:
        await auth.close()


def test_a_key_revoked_while_the_file_is_first_read_is_revoked_at_the_next_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keep, revoke = generate_key(), generate_key()
    path = tmp_path / "keys.txt"
    path.write_text(format_line(hash_key(keep), "keep") + "\n" + format_line(hash_key(revoke), "gone") + "\n")
    real_load = ApiKeyTable.load

    def load_then_revoke(p: Any, classes: Any = None) -> ApiKeyTable:
        table = real_load(p, classes)
        if len(table) == 2:  # the operator's edit lands just after the gateway read the file
            path.write_text(format_line(hash_key(keep), "keep") + "\n")
        return table

    monkeypatch.setattr(ApiKeyTable, "load", load_then_revoke)
    keys_file = ApiKeyFile(path)
    assert keys_file.table.lookup(revoke) is not None
    assert keys_file.reload_if_changed() is True  # was False: the stamp was the edited file's
    assert keys_file.table.lookup(revoke) is None and keys_file.table.lookup(keep) is not None


def test_a_key_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "keys.txt"
    path.write_bytes(b"\xef\xbb\xbf" + format_line(hash_key(key), "acme").encode() + b"\r\n")  # Notepad's UTF-8
    principal = ApiKeyFile(path).table.lookup(key)  # was: "keys.txt:1: the first field must be a 64-character ..."
    assert principal is not None and principal.client_id == "acme"


@pytest.mark.parametrize("url", ["http://[::1/jwks.json", "https://[idp.example.com]/jwks"])
def test_an_unparsable_jwks_url_is_a_config_error_naming_the_field(jwt_cfg: Any, url: str) -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt\.jwks_url: not a URL"):  # was: ValueError, "internal error"
        JwtVerifier.from_config(jwt_cfg(algorithms=["RS256"], jwks_url=url))
