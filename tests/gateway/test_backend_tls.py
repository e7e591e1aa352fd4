"""TLS to the backends: an engine on https with a private CA that also requires a client certificate (mutual
TLS, so only the gateway can reach it). With ``tls_ca_file`` + ``tls_cert_file``/``tls_key_file`` the REAL
gateway's proxied requests, health checks and fingerprint probes all get through; without the client
certificate the engine refuses the handshake and the client gets the gateway's 503, never an unwatermarked
direct answer; unusable files are a start-up error naming the backend and the file."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import openai
import pytest

from gateway.config import BackendConfig, ConfigError, FingerprintConfig, ModelConfig, RoutingConfig
from gateway.fingerprinting import FingerprintChecker
from gateway.routing.router import Router
from gateway.sim.server import SimOptions, build_sim_app
from tests.gateway.test_tls import Ca
from tests.support.harness import app_backend, gateway_config, running_gateway

MSG = [{"role": "user", "content": "Say hi"}]


def _engine_context(ca: Ca) -> ssl.SSLContext:
    cert, key = ca.issue("engine", stem="engine")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=str(ca.path))
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: a client certificate from this CA or no handshake
    return ctx


async def test_mutual_tls_to_a_private_ca_engine(tmp_path: Path) -> None:
    ca = Ca(tmp_path)
    client_cert, client_key = ca.issue("ipgate-gateway", stem="client")
    async with app_backend(build_sim_app(SimOptions()), ssl_context=_engine_context(ca)) as url:
        good = {"name": "b0", "url": url, "tls_ca_file": str(ca.path), "tls_cert_file": str(client_cert),
                "tls_key_file": str(client_key)}
        cfg = gateway_config(url, models=[{"name": "sim", "backends": [good]}])
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            r = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)
            assert r.choices[0].message.content
            stream = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4, stream=True)
            assert [c async for c in stream]
            await client.close()
            checker = gw.ctx.router._checker
            assert checker is not None
            pool = gw.ctx.router.pool("sim")
            assert await checker.probe(pool.backends[0].cfg) is None  # health checks get through

        # the CA alone: the engine wants a client certificate, so the handshake fails: a 503, nothing served
        no_cert = {"name": "b0", "url": url, "tls_ca_file": str(ca.path)}
        async with running_gateway(gateway_config(url, models=[{"name": "sim", "backends": [no_cert]}])) as gw:
            client = gw.openai_client("alice")
            with pytest.raises(openai.APIStatusError) as e:
                await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)
            assert e.value.status_code in (502, 503), e.value
            await client.close()


async def test_unusable_backend_tls_files_are_a_start_up_error(tmp_path: Path) -> None:
    ca = Ca(tmp_path)
    cert, _ = ca.issue("x", stem="x")
    _, other_key = ca.issue("y", stem="y")
    for backend, needle in (
        ({"tls_ca_file": str(tmp_path / "missing.pem")}, "missing.pem"),
        ({"tls_cert_file": str(cert), "tls_key_file": str(other_key)}, "y.key"),
    ):
        b = {"name": "b0", "url": "https://127.0.0.1:1", **backend}
        with pytest.raises(ConfigError, match=needle):
            async with running_gateway(gateway_config(models=[{"name": "sim", "backends": [b]}])):
                pass
    with pytest.raises(ConfigError, match="need an https:// url"):
        async with running_gateway(gateway_config(models=[{"name": "sim", "backends": [
                {"name": "b0", "url": "http://127.0.0.1:1", "tls_ca_file": str(ca.path)}]}])):
            pass


async def _cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_fingerprints_are_recorded_and_checked_over_mutual_tls(tmp_path: Path) -> None:
    ca = Ca(tmp_path)
    cert, key = ca.issue("ipgate-gateway", stem="client")
    ref = tmp_path / "ref.json"
    async with app_backend(build_sim_app(SimOptions()), ssl_context=_engine_context(ca)) as url:
        rc, out = await _cli("fingerprint", "record", "--url", url, "--model", "sim", "-o", str(ref),
                             "--tls-ca", str(ca.path))  # no client certificate: the engine refuses
        assert rc == 2 and not ref.exists(), out
        rc, out = await _cli("fingerprint", "record", "--url", url, "--model", "sim", "-o", str(ref),
                             "--tls-ca", str(ca.path), "--tls-cert", str(cert), "--tls-key", str(key))
        assert rc == 0 and ref.exists(), out
        rc, out = await _cli("fingerprint", "check", "--url", url, "--model", "sim", "--reference", str(ref),
                             "--tls-ca", str(ca.path), "--tls-cert", str(cert))
        assert rc == 2 and "--tls-cert and --tls-key go together" in out, out

        b = BackendConfig(name="b0", url=url, tls_ca_file=str(ca.path), tls_cert_file=str(cert),
                          tls_key_file=str(key), fingerprint_reference=str(ref))
        router = Router([ModelConfig(name="sim", backends=[b])], RoutingConfig(), health_checks=False)
        try:
            (check,) = await FingerprintChecker(FingerprintConfig(timeout_s=5), router).check_now()
        finally:
            await router.close()
        assert check.verdict == "match", check.reasons
