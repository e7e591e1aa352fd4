"""Adversarial telemetry review: after traffic from many clients, including failures on every path the
client can steer (unknown model, unknown path, bad JSON, bad credentials, oversized body), no metric series
carries a client-chosen value, and neither the access log nor any span holds prompt text or credentials."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import TelemetryConfig
from gateway.telemetry.accesslog import AccessLog, AccessRecord, format_record
from gateway.telemetry.tracing import Tracing
from tests.support.harness import gateway_config, running_gateway, settled, sim_backend

SECRET_PROMPT = "zebra-quokka-PROMPT-7f3a"  # must never leave the request path
CLIENTS = [f"client-{i:03d}-unique" for i in range(40)]


async def _traffic(gw_url: str, admin_url: str, token_for: object, admin_token: str) -> list[str]:
    """Sends the traffic; returns every client-steered string that must not become a label value."""
    steered: list[str] = []
    msg = [{"role": "user", "content": SECRET_PROMPT}]
    async with aiohttp.ClientSession() as s:
        for i, client in enumerate(CLIENTS):
            tok = token_for(client)  # type: ignore[operator]
            h = {"Authorization": f"Bearer {tok}", "X-Request-Id": f"rid-{i}"}
            steered.append(client)
            async with s.post(gw_url + "/v1/chat/completions", headers=h,
                              json={"model": "sim", "messages": msg, "max_tokens": 4,
                                    "stream": i % 2 == 0}) as r:
                assert r.status == 200
                await r.read()
            bogus_model = f"model-{client}"
            steered.append(bogus_model)
            async with s.post(gw_url + "/v1/chat/completions", headers=h,
                              json={"model": bogus_model, "messages": msg}) as r:
                assert r.status == 404
            bogus_path = f"/v1/x-{client}"
            steered.append(bogus_path)
            async with s.post(gw_url + bogus_path, headers=h, json={"model": "sim", "messages": msg}) as r:
                assert r.status == 404
            async with s.post(gw_url + "/v1/chat/completions", headers=h,
                              data=b'{"model": "sim", "messages": [' + SECRET_PROMPT.encode()) as r:
                assert r.status == 400
            async with s.post(gw_url + "/v1/chat/completions",
                              headers={"Authorization": f"Bearer {SECRET_PROMPT}.{client}"},
                              json={"model": "sim", "messages": msg}) as r:
                assert r.status == 401
        async with s.post(gw_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {tok}"},
                          data=b'{"x": "' + b"a" * 70_000 + b'"}') as r:
            assert r.status == 413
        # the admin listener: a wrong admin token and an unknown admin path
        async with s.get(admin_url + f"/admin/{SECRET_PROMPT}",
                         headers={"Authorization": f"Bearer {SECRET_PROMPT}"}) as r:
            assert r.status in (401, 403, 404)
        async with s.get(admin_url + "/admin/routing", headers={"Authorization": f"Bearer {admin_token}"}) as r:
            assert r.status == 200
    return steered


async def test_no_client_steered_label_values_and_nothing_secret_in_logs_or_spans(tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_config(TelemetryConfig(sample_ratio=1.0), exporter=exporter)
    cfg = gateway_config("", telemetry={"access_log_file": str(log_file)}, server={"max_body_bytes": 65536})
    async with sim_backend() as sim:
        cfg["models"][0]["backends"][0]["url"] = sim.url
        async with running_gateway(cfg, tracing=tracing) as gw:
            steered = await _traffic(gw.url, gw.admin_url, gw.token, gw.admin_token)
            await settled(gw)
            async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as r:
                body = await r.text()
            tracing.force_flush()
            gw.ctx.access_log.close()  # flush the writer thread

    series = 0
    for fam in text_string_to_metric_families(body):
        if not fam.name.startswith("ipgate_"):
            continue
        for sample in fam.samples:
            series += 1
            for value in sample.labels.values():
                for s_ in steered:
                    assert s_ not in value, (fam.name, sample.labels)
                assert SECRET_PROMPT not in value
    # 40 clients x 5 requests: the series count must not grow with the number of clients
    assert series < 400, series

    lines = log_file.read_text().splitlines()
    # one line per proxied request (chat 200, unknown model 404, bad JSON 400, bad credential 401, the 413);
    # unknown paths are answered by the catch-all route, which writes no access-log line (see the report)
    assert len(lines) >= len(CLIENTS) * 4 + 1
    for line in lines:
        rec = json.loads(line)
        assert SECRET_PROMPT not in line
        assert "Bearer" not in line and "eyJ" not in line  # no JWT (base64url JSON header) or header value
        assert all(not str(rec.get(k) or "").startswith("model-") for k in ("model", "backend")), rec

    spans = exporter.get_finished_spans()
    assert spans
    for span in spans:
        dump = json.dumps(dict(span.attributes or {})) + span.name
        assert SECRET_PROMPT not in dump and "eyJ" not in dump and "Bearer" not in dump
        for ev in span.events:
            assert SECRET_PROMPT not in json.dumps(dict(ev.attributes or {}))



def test_allowlist_drops_content_in_every_genai_dialect() -> None:
    from gateway.telemetry.tracing import is_allowed_attribute, safe_attributes

    # indexed (OpenLLMetry), sub-keys of the opt-in content attributes, event names used as keys: all content
    for key in ("gen_ai.prompt.0.content", "gen_ai.completion.0.content", "gen_ai.prompt.0.role",
                "gen_ai.input.messages.0", "gen_ai.content.prompt", "gen_ai.user.message", "gen_ai.choice",
                "gen_ai.tool.call.arguments.city", "GEN_AI.PROMPT.1.CONTENT"):
        assert not is_allowed_attribute(key), key
    # the metadata ipgate sets stays
    for key in ("gen_ai.request.model", "gen_ai.usage.input_tokens", "gen_ai.usage.completion_tokens",
                "gen_ai.response.finish_reasons", "gen_ai.operation.name", "gen_ai.request.max_tokens"):
        assert is_allowed_attribute(key), key
    assert safe_attributes({"gen_ai.prompt.0.content": SECRET_PROMPT, "gen_ai.request.model": "m"}) == {
        "gen_ai.request.model": "m"}


def test_a_failed_reopen_after_rotation_does_not_kill_the_writer(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """logrotate moved the file and the path cannot be opened for a while (here: a directory took its place).
    The sink's stream was closed before the failed reopen; the next batch inside the 1 s re-check interval
    wrote to the closed file, raised ValueError, and the writer thread died: no access log until restart."""
    path = tmp_path / "access.log"
    log = AccessLog(file=str(path))
    rec = AccessRecord("r", "c", None, "m", "b", "/x", 200, 1.0)
    try:
        log._emit([format_record(rec, 0.0)])
        path.rename(tmp_path / "access.log.1")
        path.mkdir()
        log._sink._checked = -1e9  # the rotation check is due
        with caplog.at_level("WARNING"):
            log._emit(['{"n":1}'])  # reopen fails (a directory)
            log._emit(['{"n":2}'])  # inside the re-check interval: used to raise ValueError
            assert log.dropped == 2
            path.rmdir()
            log._emit(['{"n":3}'])  # the path can be opened again: written
        assert caplog.text.count("access log write failed") == 1
        assert "work again" in caplog.text
        assert path.read_text() == '{"n":3}\n'
    finally:
        log.close()
