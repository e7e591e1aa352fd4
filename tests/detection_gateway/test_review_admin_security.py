"""Security review of the alert path: attacker-controlled strings rendered by the dashboard (headless
Chromium), and secrets that must never reach an alert, a log line or a sink error."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from detectors.combiner import CombinerParams
from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.model import Alert
from gateway.alerts.sinks import WebhookSink
from gateway.config import AlertsConfig, AlertSinkConfig
from tests.detection_gateway.test_dashboard_browser import browser_page
from tests.support.harness import free_port, gateway_config, running_gateway, settled, sim_backend

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PARAMS = CombinerParams(intercept=-6.0, weights={"logit_probing": 14.0})
XSS = '<img src=x onerror="window.__xss=1"><svg onload="window.__xss=2"></svg><script>window.__xss=3</script>'
HOOK_SECRET = "T0AAAAAA/B0BBBBBB/hookTokenZ9q8w7e6"


def xss_alert(client: str, i: int) -> Alert:
    """Every string field of an alert carries markup, as if each came from the attacker."""
    return Alert(
        id=f"x{i}", ts=1_790_000_000.0 + i, client=client, tenant=XSS, tier="throttle", tier_index=2,
        previous_tier=XSS, score=0.9, reasons=(XSS, "javascript:window.__xss=4"), detectors=(XSS,),
        request_ids=(XSS,), examples=(XSS,), cluster=(XSS, "javascript:alert(1)"),
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
async def test_attacker_markup_in_alerts_never_runs_and_odd_ids_stay_deniable(tmp_path: Path) -> None:
    combiner = tmp_path / "combiner.json"
    combiner.write_text(PARAMS.to_json())
    async with sim_backend() as sim:
        lim = {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}
        cfg = gateway_config(sim.url, detection={"enabled": True, "combiner_file": str(combiner)},
                             limits={"default": lim, "suspicious": lim})
        async with running_gateway(cfg) as gw:
            # A real alert, raised by the attacker's own traffic: markup in the prompt and the request id.
            client = gw.openai_client("mallory")
            for i in range(3):
                await client.chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": XSS}], max_tokens=1, logprobs=True,
                    top_logprobs=20, logit_bias={str(1000 + 50 * i + j): 100 for j in range(50)},
                    extra_headers={"X-Request-Id": '<img src=x onerror="window.__xss=5">'})
            await client.close()
            await settled(gw)  # the alert is raised by the accounting that runs after each answer
            assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()
            # Alerts whose every field is markup, including the client id, and one for a client named "..".
            await gw.ctx.store.append_alert(xss_alert(XSS, 1).to_json(redact=False), 100)
            await gw.ctx.store.append_alert(xss_alert("..", 2).to_json(), 100)

            async with browser_page() as page:
                await page.call("Page.enable")
                await page.call("Page.navigate", url=f"{gw.admin_url}/admin/dashboard#token={gw.admin_token}")
                await page.wait_for("document.querySelectorAll('tr.alert-row').length >= 3")
                await page.eval("window.confirm = () => true, true")  # the Deny button asks first
                for row in ("mallory", XSS, ".."):
                    sel = f"[...document.querySelectorAll('tr.alert-row')].find(r => r.dataset.client === {row!r})"
                    await page.eval(f"{sel}.click(), true")
                    panel = await page.wait_for(
                        f"document.querySelector('#detail h2') && document.querySelector('#detail h2').textContent"
                        f" === {'Client ' + row!r} && document.querySelector('#detail dl dd') && "
                        "document.getElementById('detail').innerText")
                    assert "<img src=x onerror=" in panel  # the markup arrived, as text
                await asyncio.sleep(0.3)  # an onerror/onload would have fired by now
                assert await page.eval("typeof window.__xss") == "undefined"
                assert await page.eval("document.querySelectorAll('#rows img, #rows svg, #rows script, "
                                       "#detail img, #detail svg, #detail script, a').length") == 0
                # "..": a dot segment no path can carry; the dashboard still denies it
                await page.eval("document.querySelector('#detail button[data-action=Deny]').click(), true")
                status = await page.wait_for(
                    "document.getElementById('status').textContent.startsWith('override') && "
                    "document.getElementById('status').textContent")
                assert status == "override saved for .."
            rec = await gw.ctx.store.get_client("..")
            assert rec is not None and rec.override == "deny"


async def test_webhook_url_secrets_never_reach_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Slack/Teams/Discord webhook URLs are credentials (the token is in the path); so is user:pass@ or ?key=."""
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=404 if "perm" in request.path else 500)

    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    urls = {
        "retry": f"http://bot:pw-{HOOK_SECRET[:6]}@127.0.0.1:{port}/services/{HOOK_SECRET}?key=k-{HOOK_SECRET[-6:]}",
        "perm": f"http://127.0.0.1:{port}/perm/{HOOK_SECRET}",
        "down": f"http://127.0.0.1:{free_port()}/services/{HOOK_SECRET}",
    }
    sinks = [WebhookSink(AlertSinkConfig(kind="webhook", name=n, url=u, max_retries=1, backoff_base_s=0.01,
                                         backoff_max_s=0.01, timeout_s=2)) for n, u in urls.items()]
    disp = AlertDispatcher(AlertsConfig(min_interval_s=0, dedup_window_s=0), sinks)
    caplog.set_level(logging.DEBUG)
    try:
        await disp.start()
        assert await disp.submit(xss_alert("mallory", 1))
        assert await disp.flush(10)
        assert disp.stats() == {"retry": {"retried": 1, "failed": 1}, "perm": {"failed": 1},
                                "down": {"retried": 1, "failed": 1}}
        errors = []
        for s in sinks:
            with pytest.raises(Exception) as e:
                await s.emit(xss_alert("mallory", 2), "{}")
            errors.append(f"{e.value!s} {e.value!r} {e.value.__cause__!r} {e.value.__context__!r}")
    finally:
        await disp.close()
        await runner.cleanup()
    logged = caplog.text + " ".join(r.getMessage() for r in caplog.records)
    assert "alert sink retry: delivery failed" in logged and "http://127.0.0.1:" in logged  # still useful
    for text in [logged, *errors]:
        for secret in (HOOK_SECRET, HOOK_SECRET[:6], HOOK_SECRET[-6:], "services/T0"):
            assert secret not in text, (secret, text)


def test_credentials_in_urls_are_masked_in_alert_reasons() -> None:
    """A fingerprint-mismatch alert names the backend's URL: its password must not travel to the sinks."""
    a = Alert(id="f", ts=1.0, client="backend:sim/b0", tenant=None, tier="block", tier_index=3,
              previous_tier="normal", score=1.0,
              reasons=("backend b0 (https://svc:s3cr3t-pw@10.0.0.7:8000) of model sim does not match",))
    for redact in (True, False):
        out = a.to_json(redact=redact)
        assert "s3cr3t-pw" not in out and "https://svc:***@10.0.0.7:8000" in out


async def test_no_secret_or_raw_prompt_reaches_admin_answers_sinks_or_logs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """One attacker run that raises an alert with the default (redacting) sinks, then a sweep of every admin
    GET answer, the JSONL sink, the store's alert list and everything logged or printed."""
    combiner = tmp_path / "combiner.json"
    combiner.write_text(PARAMS.to_json())
    wm_secret = "review-wm-master-secret-5ad1c0ffee5ad1c0ffee"
    (tmp_path / "wm.secret").write_text(wm_secret + "\n")
    pii = "card 4111 1111 1111 1111 mail victim.person@example.org"
    lim = {"requests_per_minute": 6000, "tokens_per_minute": 10_000_000}
    caplog.set_level(logging.DEBUG)
    async with sim_backend() as sim:
        cfg = gateway_config(
            sim.url, detection={"enabled": True, "combiner_file": str(combiner)},
            limits={"default": lim, "suspicious": lim},
            watermark={"enabled": True, "scheme": "lexical", "secret_file": str(tmp_path / "wm.secret")},
            alerts={"sinks": [{"kind": "jsonl", "path": str(tmp_path / "alerts.jsonl")}]})
        async with running_gateway(cfg) as gw:
            bearer = gw.token("mallory")
            client = gw.openai_client("mallory")
            for i in range(3):
                await client.chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": pii}], max_tokens=1, logprobs=True,
                    top_logprobs=20, logit_bias={str(1000 + 50 * i + j): 100 for j in range(50)})
            await client.close()
            await settled(gw)  # the alert is raised by the accounting that runs after each answer
            assert gw.ctx.alerts is not None and await gw.ctx.alerts.flush()
            answers = []
            auth = {"Authorization": f"Bearer {gw.admin_token}"}
            async with aiohttp.ClientSession() as s:
                for path in ("/admin/alerts", "/admin/client?client_id=mallory", "/admin/routing", "/metrics",
                             "/readyz", "/admin/fingerprint", "/admin/nope", "/admin/alerts?limit=x"):
                    async with s.get(gw.admin_url + path, headers=auth) as r:
                        answers.append(f"{path} {r.status} {dict(r.headers)} {await r.text()}")
                async with s.post(gw.admin_url + "/admin/watermark/verify", headers=auth,
                                  json={"text": "hello there", "clients": ["mallory"]}) as r:
                    answers.append(await r.text())
                    assert r.status == 200
            stored = await gw.ctx.store.recent_alerts(100)
            assert stored and '"client":"mallory"' in stored[0]
    sink = (tmp_path / "alerts.jsonl").read_text()
    assert '"client":"mallory"' in sink and "<email>" in sink  # the alert went out, redacted
    out = capsys.readouterr()
    everything = "\n".join([*answers, *stored, sink, caplog.text, out.out, out.err])
    # the card number as the prompt wrote it ("4111" alone also matches a free port such as 41117 in the logs)
    for secret in (gw.admin_token, gw.secret, wm_secret, bearer, bearer.split(".")[2], "4111 1111",
                   "victim.person"):
        assert secret not in everything, secret
