"""TLS on the gateway's listeners (``server.tls_cert_file`` / ``tls_key_file``) with the real ``ipgate serve``:
the official openai client over https verified against a test CA, plain HTTP refused on that port, a renewed
certificate served after SIGHUP without a restart, unusable files reported by ``ipgate serve`` and
``ipgate check`` naming the file. Certificates are made here with ``cryptography``."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # the HTTP client the official openai package is built on
import openai
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess

MSG = [{"role": "user", "content": "Say hi"}]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


class Ca:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.key = _key()
        now = dt.datetime.now(dt.UTC)
        name = _name("ipgate test CA")
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = d / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, days: float = 30.0, stem: str = "server") -> tuple[Path, Path]:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=2)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return cert_path, key_path


def _served_cn(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


async def _expiry_days(gw: GatewayProcess, ca: Path) -> float:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as http:
        text = (await http.get(gw.admin_url + "/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("ipgate_tls_certificate_expiry_timestamp_seconds ")]
    return (float(line.split()[1]) - time.time()) / 86400


async def test_https_listeners_serve_the_openai_client_and_pick_up_a_renewed_certificate(tmp_path: Path) -> None:
    ca = Ca(tmp_path)
    cert, key = ca.issue("gateway-2026")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, server={"tls_cert_file": str(cert), "tls_key_file": str(key)})
        with GatewayProcess(cfg, tmp_path, tls_ca=ca.path) as gw:  # ready: /readyz answered over https
            assert "https://127.0.0.1" in gw.output()
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca.path))) as http:
                client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.token("alice"), max_retries=0,
                                            http_client=http)
                r = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)
                assert r.choices[0].message.content
            # plain HTTP on the TLS port gets no answer
            async with httpx.AsyncClient() as plain:
                with pytest.raises(httpx.HTTPError):
                    await plain.get(f"http://127.0.0.1:{gw.port}/v1/models")
            # a client that does not trust the CA is refused by its own verification
            async with httpx.AsyncClient() as untrusting:
                with pytest.raises(httpx.ConnectError):
                    await untrusting.get(gw.url + "/v1/models")

            assert await asyncio.to_thread(_served_cn, gw.port, ca.path) == "gateway-2026"
            first = await _expiry_days(gw, ca.path)
            assert 29 < first < 31  # the gauge the shipped alerts read (IpgateTlsCertificateExpiring)
            ca.issue("gateway-2027", days=90)  # renewed in place (same file names), then SIGHUP
            gw.signal(signal.SIGHUP)
            for _ in range(100):
                if await asyncio.to_thread(_served_cn, gw.port, ca.path) == "gateway-2027":
                    break
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(_served_cn, gw.port, ca.path) == "gateway-2027"
            assert await asyncio.to_thread(_served_cn, gw.admin_port, ca.path) == "gateway-2027"
            assert 89 < await _expiry_days(gw, ca.path) < 91

            (tmp_path / "server.key").write_text("not a key")  # a broken renewal: the running one stays
            gw.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert await asyncio.to_thread(_served_cn, gw.port, ca.path) == "gateway-2027"
            assert "TLS certificate not reloaded" in gw.output() and "server.key" in gw.output()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_unusable_certificates_are_named_by_serve_and_check(tmp_path: Path) -> None:
    ca = Ca(tmp_path)
    cert, key = ca.issue("gateway")
    other_cert, _ = ca.issue("other", stem="other")
    cfg = gateway_config("http://127.0.0.1:1", server={"tls_cert_file": str(other_cert), "tls_key_file": str(key)})
    cfg["auth"]["jwt"]["secret_env"] = "IPGATE_TEST_JWT_SECRET"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _cli("serve", "--config", str(path))
    assert r.returncode == 2 and "other.pem" in r.stderr and "server.key" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("check", "--config", str(path))
    assert r.returncode != 0 and "other.pem" in r.stdout + r.stderr, r.stdout + r.stderr

    cfg["server"] = {"tls_cert_file": str(cert)}  # half a pair
    path.write_text(yaml.safe_dump(cfg))
    r = _cli("serve", "--config", str(path))
    assert r.returncode == 2 and "tls_cert_file and tls_key_file go together" in r.stderr, r.stderr

    soon, soon_key = ca.issue("soon", days=3, stem="soon")
    cfg["server"] = {"tls_cert_file": str(soon), "tls_key_file": str(soon_key)}
    path.write_text(yaml.safe_dump(cfg))
    r = _cli("check", "--config", str(path))
    assert "expires in" in r.stdout and "soon.pem" in r.stdout, r.stdout
