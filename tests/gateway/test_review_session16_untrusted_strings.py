"""Session 16 review, untrusted strings: client- and backend-controlled text on its way to logs, labels, spans,
keys, headers and the backend."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import TelemetryConfig
from gateway.kgw_probe import KgwPluginProbe
from gateway.telemetry.tracing import Tracing
from tests.admin.test_audit_dashboard import CHROMIUM, dump_dom
from tests.support.harness import ADMIN_TOKEN, gateway_config, running_gateway, sim_backend
from watermark.kgw import directives
from watermark.kgw.params import KgwParams

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("tracestate", [
    "not a member\u2028FORGED 2026-11-27 ERROR gateway: fake line",  # malformed member: echoed by OpenTelemetry
    "k=v," * 200,  # over 512 characters
])
async def test_a_callers_malformed_trace_context_writes_no_log_line_per_request(
        caplog: pytest.LogCaptureFixture, tracestate: str) -> None:
    # Before authentication, with tracing on, OpenTelemetry's propagator logged a WARNING for every request
    # whose tracestate was malformed or too long, the malformed member's text included: anyone who can reach
    # the public listener wrote a log line per request, with up to 512 characters of its choosing.
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_config(TelemetryConfig(sample_ratio=1.0), exporter=exporter)
    caplog.set_level(logging.DEBUG)
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url), tracing=tracing) as gw, \
            aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.post(gw.url + "/v1/chat/completions", json=CHAT,
                              headers={"traceparent": TRACEPARENT, "tracestate": tracestate}) as r:
                assert r.status == 401
        async with s.post(gw.url + "/v1/chat/completions", json=CHAT, headers={
                "Authorization": f"Bearer {gw.token('alice')}", "traceparent": TRACEPARENT,
                "tracestate": tracestate}) as r:
            assert r.status == 200
        tracing.force_flush()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) <= 1, [r.getMessage()[:120] for r in noisy]  # at most the gateway's own once-only note
    assert all("\u2028" not in r.getMessage() for r in caplog.records)  # the once-only note quotes it escaped
    # the caller's trace is still continued (only its unusable tracestate is dropped)
    spans = exporter.get_finished_spans()
    assert spans and all(sp.context.trace_id == int(TRACEPARENT[3:35], 16) for sp in spans)


@pytest.mark.parametrize("message", [
    "bad xargs \x1b]0;owned\x07\x1b[2J\x1b[31mKGW plugin verified\x1b[0m",  # 400 without the plugin's report
    directives.REFUSAL_MARK + " \x1b[2Jold plugin\x00",  # the mark but no report
])
def test_a_backends_kgw_refusal_text_reaches_logs_and_the_terminal_escaped(message: str) -> None:
    # The excerpt of a backend's 400 went raw into the verdict's detail, which the pool logs at ERROR and
    # `ipgate check --connect` prints: a backend's escape sequences drove the operator's terminal (clear the
    # screen, set the title, recolour text into "verified").
    body = json.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400}}).encode()
    verdict = KgwPluginProbe(KgwParams(), b"m" * 32, "derive").judge(400, body)
    assert verdict.ok is False
    assert verdict.detail.isprintable(), repr(verdict.detail)
    assert "\\x1b" in verdict.detail  # shown, escaped


@pytest.mark.parametrize("rid", [None, "change-2026-11-27"])
async def test_an_admin_action_refused_by_aiohttp_names_its_audit_records_request_id(rid: str | None) -> None:
    # docs/admin-security.md: the audit record's request_id is "the caller's X-Request-Id (or a fresh one), echoed
    # in the answer". A state-changing call that aiohttp itself refused inside the handler (a body over the admin
    # app's 1 MiB: 413) was recorded with a request id, but answered without any X-Request-Id.
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **({"X-Request-Id": rid} if rid else {})}
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw, aiohttp.ClientSession() as s:
        async with s.put(gw.admin_url + "/admin/client/override?client_id=acme", headers=headers,
                         data=b"{" + b" " * (2 << 20) + b"}") as r:
            assert r.status == 413
            answered = r.headers.get("X-Request-Id")
        async with s.get(gw.admin_url + "/admin/audit?limit=1", headers=headers) as r:
            (record,) = (await r.json())["records"]
    assert record["status"] == 413 and record["target"] == "acme"
    assert answered is not None and answered == record["request_id"] == (rid or answered)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
async def test_an_admin_jwts_markup_identity_shows_as_text_in_the_dashboards_audit_list() -> None:
    # Checked with headless Chromium: the audit list's actor comes from an admin JWT's own claims (sub, tenant),
    # which an identity provider may let a user choose; it renders as text, never as markup.
    actor = '<img src=x onerror="document.title=1">eve'
    async with running_gateway(gateway_config("http://127.0.0.1:9")) as gw, aiohttp.ClientSession() as s:
        token = gw.token(actor, tenant="<b>acme</b>", roles=["admin"])
        async with s.put(gw.admin_url + "/admin/client/override?client_id=bob",
                         headers={"Authorization": f"Bearer {token}"}, data=json.dumps({"override": "deny"})) as r:
            assert r.status == 200
        dom = await asyncio.to_thread(dump_dom, f"{gw.admin_url}/admin/dashboard#token={ADMIN_TOKEN}")
    assert 'data-audit-action="client.override.set"' in dom
    assert "&lt;img src=x onerror=" in dom and "<img src" not in dom
