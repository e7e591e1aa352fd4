"""Review of the TLS, address-peer, field-log and memory commits (session 13b): each test reproduces a
defect found in review (it failed before the fix) or pins a behaviour the review checked by running it.

Real parts: ``ipgate serve`` as a child process (signals, ``--workers 2``), the in-process gateway of
``tests/support/harness.py``, real aiohttp https engines, certificates from the test CA of test_tls.py."""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
import time
from pathlib import Path

import aiohttp
import httpx2 as httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import CollectorRegistry, Counter

from gateway.admin.routing import reload_from_config
from gateway.alerts.model import Alert
from gateway.config import ConfigError, RoutingConfig, parse_config
from gateway.detection import GatewayDetection
from gateway.detection_evidence import address_peers
from gateway.errors import InvalidRequest
from gateway.proxy.fields import FieldPolicy
from gateway.routing.health import HealthChecker
from gateway.sim.server import SimOptions, build_sim_app
from gateway.tls import _BACKEND
from tests.gateway.test_tls import Ca, _served_cn
from tests.support.harness import app_backend, gateway_config, running_gateway, sim_backend
from tests.support.process import GatewayProcess

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi"}]


async def _expiry_lines(url: str, verify: ssl.SSLContext | bool = True) -> list[str]:
    async with httpx.AsyncClient(verify=verify) as http:
        text = (await http.get(url + "/metrics")).text
    return [x for x in text.splitlines() if x.startswith("ipgate_tls_certificate_expiry_timestamp_seconds")]


async def _all_served(port: int, ca: Path, n: int = 8) -> set[str]:
    """The certificate names n fresh connections are served (with --workers, they reach several workers)."""
    return {await asyncio.to_thread(_served_cn, port, ca) for _ in range(n)}


async def test_a_half_done_renewal_keeps_every_worker_serving_its_certificate(tmp_path: Path) -> None:
    """Defect: ``reload`` loaded the new pair into the LIVE context; a new certificate with the old key (a
    renewal that has written one file of two) replaced the certificate, OpenSSL dropped the mismatching key,
    and every later handshake failed ("no shared cipher") while the log said the running one stays."""
    ca = Ca(tmp_path)
    cert, key = ca.issue("gateway-1")
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url, server={"tls_cert_file": str(cert), "tls_key_file": str(key)})
        with GatewayProcess(cfg, tmp_path, workers=2, tls_ca=ca.path,
                            env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}) as gw:
            assert await _all_served(gw.port, ca.path) == {"gateway-1"}
            new_cert, new_key = ca.issue("gateway-2", days=90, stem="renewed")
            shutil.copyfile(new_cert, cert)  # half done: the certificate is new, the key is still the old one
            gw.signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            assert "TLS certificate not reloaded" in gw.output()
            assert await _all_served(gw.port, ca.path) == {"gateway-1"}  # was: handshake failure
            assert await _all_served(gw.admin_port, ca.path) == {"gateway-1"}

            shutil.copyfile(new_key, key)  # the renewal completes: every worker reloads its own context
            gw.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while await _all_served(gw.port, ca.path) != {"gateway-2"} and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await _all_served(gw.port, ca.path, n=12) == {"gateway-2"}
            # the gauge across workers (multiprocess livemin): the renewed certificate's 90 days
            (line,) = await _expiry_lines(gw.admin_url, ssl.create_default_context(cafile=str(ca.path)))
            assert 89 < (float(line.split()[1]) - time.time()) / 86400 < 91


async def test_plain_http_gateway_exports_no_certificate_expiry(tmp_path: Path) -> None:
    """Defect: the unlabelled gauge was exported as 0 by every gateway without TLS (prometheus_client shows an
    unlabelled gauge from its creation), so the shipped IpgateTlsCertificateExpiring/ExpiresSoon alerts
    (``min(...) - time() < 14 days``) fired on every plain-HTTP deployment behind a load balancer."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        assert await _expiry_lines(gw.admin_url) == []  # was: ["ipgate_tls_certificate_expiry_... 0.0"]
    # and with --workers (multiprocess mode: each worker's value file held 0 from the gauge's creation)
    async with sim_backend() as sim:
        with GatewayProcess(gateway_config(sim.url), tmp_path, workers=2,
                            env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}) as gw2:
            assert await _expiry_lines(gw2.admin_url) == []


def _engine_context(ca: Ca, *, stem: str = "engine") -> ssl.SSLContext:
    cert, key = ca.issue("engine", stem=stem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_reload_with_a_changed_backend_ca_path_and_a_broken_one(tmp_path: Path) -> None:
    """Checked (no defect): a reload naming another CA file is used by the next request; a reload naming a
    missing one is refused (ConfigError), the running backend keeps working, and the context cache holds the
    running config's contexts again (``check_backend_tls(fresh=True)`` restores it)."""
    ca = Ca(tmp_path)
    copy = tmp_path / "ca-copy.pem"
    shutil.copyfile(ca.path, copy)
    async with app_backend(build_sim_app(SimOptions()), ssl_context=_engine_context(ca)) as url:
        b = {"name": "b0", "url": url, "tls_ca_file": str(ca.path)}
        async with running_gateway(gateway_config(url, models=[{"name": "sim", "backends": [b]}])) as gw:
            client = gw.openai_client("alice")
            assert (await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)).choices

            def with_ca(path: Path) -> dict[str, object]:
                data = gw.ctx.config.model_dump()
                data["models"][0]["backends"][0]["tls_ca_file"] = str(path)
                return data

            reload_from_config(gw.ctx, parse_config(with_ca(copy), source="<test>", env={}))
            assert (None, None, None) not in _BACKEND
            assert set(_BACKEND) == {(str(copy), None, None)}
            assert (await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)).choices
            plan = gw.ctx.upstream.plan(gw.ctx.router.pool("sim").backends[0].cfg)
            assert plan.ssl is _BACKEND[(str(copy), None, None)]

            with pytest.raises(ConfigError, match=r"missing\.pem"):
                reload_from_config(gw.ctx, parse_config(with_ca(tmp_path / "missing.pem"), source="<t>", env={}))
            assert gw.ctx.config.models[0].backends[0].tls_ca_file == str(copy)  # the old config stays
            assert set(_BACKEND) == {(str(copy), None, None)}  # and the cache matches it
            assert (await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)).choices
            checker = gw.ctx.router._checker
            assert checker is not None
            assert await checker.probe(gw.ctx.router.pool("sim").backends[0].cfg) is None
            await client.close()


async def test_backend_hostname_is_verified_against_the_address_used(tmp_path: Path) -> None:
    """Checked (no defect): the engine's certificate names 127.0.0.1 (an IP SAN) only. Addressed by that IP the
    health check passes; addressed as ``localhost`` (a name the certificate does not carry) the handshake is
    refused by hostname verification, even though the CA is trusted."""
    ca = Ca(tmp_path)
    async with app_backend(build_sim_app(SimOptions()), ssl_context=_engine_context(ca)) as url, \
            aiohttp.ClientSession() as session:
        from gateway.config import BackendConfig

        checker = HealthChecker(RoutingConfig().health, session, list)
        by_ip = BackendConfig(name="ip", url=url, tls_ca_file=str(ca.path))
        by_name = BackendConfig(name="name", url=url.replace("127.0.0.1", "localhost"), tls_ca_file=str(ca.path))
        assert await checker.probe(by_ip) is None
        problem = await checker.probe(by_name)
        assert problem is not None and "Certificate" in problem, problem


def test_log_mode_counts_once_per_request_and_the_block_list_still_wins() -> None:
    """Checked (no defect): ``unknown_fields: log`` passes a body with two unknown fields and counts it once;
    a block-list field in the same body is still a 400 (and is not counted as unknown)."""
    counter = Counter("unknown_total", "test", registry=CollectorRegistry())
    policy = FieldPolicy(["guided_json"], [], [], unknown="log", unknown_metric=counter)
    policy.check({"model": "m", "messages": [], "foo": 1, "bar": 2}, {}, "chat")
    assert counter._value.get() == 1
    with pytest.raises(InvalidRequest, match="guided_json"):
        policy.check({"model": "m", "messages": [], "foo": 1, "guided_json": {}}, {}, "chat")
    assert counter._value.get() == 1
    policy.check({"model": "m", "messages": [], "temperature": 0.5}, {}, "chat")
    assert counter._value.get() == 1



async def test_address_peers_from_shared_alerts_match_whole_addresses_only() -> None:
    """The shared-alert scan reads only the alerts whose text holds one of the addresses (a parse of all 200
    cost ~1.7 ms of event loop per alert built, ~0.17 ms now); the match itself stays whole-address: an alert
    from 10.0.0.12 passes the text test for 10.0.0.1 but is no peer of it."""
    async with sim_backend() as sim, \
            running_gateway(gateway_config(sim.url, detection={"enabled": True})) as gw:
        det, store = gw.ctx.detection, gw.ctx.store
        assert isinstance(det, GatewayDetection)

        def shared(client: str, *ips: str) -> str:
            return Alert(Alert.new_id(), time.time(), client, "t", "throttle", 2, "watch", 0.9, ("r",),
                         ips=ips).to_json()

        for a in (shared("near-miss", "10.0.0.12"), shared("peer", "198.51.100.1", "10.0.0.1"),
                  shared("other", "192.0.2.44"), shared("self", "10.0.0.1"), "not json 10.0.0.1"):
            await store.append_alert(a, 1000)
        alert = Alert("x", time.time(), "self", "t", "throttle", 2, "watch", 0.9, ("r",), ips=("10.0.0.1",))
        assert await address_peers(det.recent, store, alert) == ("peer",)


async def test_sighup_with_a_changed_backend_ca_path_then_a_missing_one(tmp_path: Path) -> None:
    """The same through the real ``ipgate serve`` and SIGHUP: the new CA path is applied, a missing one is
    logged naming it and the running backend keeps answering."""
    ca = Ca(tmp_path)
    copy = tmp_path / "ca-copy.pem"
    shutil.copyfile(ca.path, copy)
    async with app_backend(build_sim_app(SimOptions()), ssl_context=_engine_context(ca)) as url:
        def cfg(ca_file: Path) -> dict[str, object]:
            return gateway_config(url, models=[{"name": "sim", "backends": [
                {"name": "b0", "url": url, "tls_ca_file": str(ca_file)}]}])

        with GatewayProcess(cfg(ca.path), tmp_path) as gw:
            async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.token("alice"),
                                          max_retries=0) as client:
                assert (await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)).choices
                for ca_file, needle in ((copy, "config reload applied"), (tmp_path / "gone.pem", "gone.pem")):
                    gw.write_config(cfg(ca_file))
                    gw.signal(signal.SIGHUP)
                    deadline = time.monotonic() + 10
                    while needle not in gw.output() and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    assert needle in gw.output()
                    assert (await client.chat.completions.create(model="sim", messages=MSG, max_tokens=4)).choices
            assert "reload ignored, the running configuration stays" in gw.output()
