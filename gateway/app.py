"""The two aiohttp applications (public API, admin) and the lifecycle of everything they share.

``open_context(cfg)`` builds the ``AppContext`` in dependency order (metrics → tracing/access log → store →
policy → auth → watermarking → router (it probes the KGW plugins) → alerts → fingerprint checks → detection →
upstream pool) and closes
it in reverse. ``ipgate serve`` and the test harness open it and hand it to both apps; a public app built
without one opens its own through ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.alerts.dispatcher import AlertDispatcher
from gateway.auth.authenticator import Authenticator
from gateway.auth.limitclass import LimitClasses
from gateway.clientaddr import ClientAddress
from gateway.config import GatewayConfig
from gateway.context import CTX, RECENT_FORWARDED, AppContext
from gateway.errors import INTERNAL_ERROR_BODY, GatewayError, NotFound, to_openai_error
from gateway.fingerprinting import FingerprintChecker
from gateway.hooks import Detection, Watermarking
from gateway.kgw_probe import KgwPluginProbe
from gateway.leases import LeaseRenewer
from gateway.parsererrors import parser_limits
from gateway.pipeline import error_response, expect_continue, list_models, no_continue, no_route, proxy_handler
from gateway.policy import Policy
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.forward import Upstream
from gateway.receive import request_id
from gateway.routing.router import Router
from gateway.store.factory import open_store
from gateway.telemetry.accesslog import AccessLog
from gateway.telemetry.malformed import MALFORMED_HTTP_LOGS
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing
from gateway.tls import check_backend_tls

log = logging.getLogger(__name__)

BACKGROUND_GRACE_S = 5.0  # how long shutdown waits for accounting tasks (reconcile, detection state)
TRACING_GRACE_S = 3.0  # how long shutdown waits for the trace exporter to send the spans still queued


@contextlib.asynccontextmanager
async def open_context(cfg: GatewayConfig, *, metrics: Metrics | None = None,
                       tracing: Tracing | None = None) -> AsyncIterator[AppContext]:
    """``metrics``/``tracing``: injected by tests (a private registry, an in-memory span exporter)."""
    m = metrics if metrics is not None else Metrics()
    async with contextlib.AsyncExitStack() as stack:
        tracing = tracing if tracing is not None else Tracing.from_config(cfg.telemetry)
        stack.callback(_shutdown_tracing, tracing)
        access_log = AccessLog.from_config(cfg.telemetry)
        stack.callback(access_log.close)
        store = await open_store(cfg.store, m)
        stack.push_async_callback(store.close)
        # malformed HTTP that aiohttp answers itself: counted here, no traceback per request (telemetry/malformed)
        stack.callback(MALFORMED_HTTP_LOGS.count_into(lambda reason: m.malformed_http_total.labels(reason).inc()))
        policy = Policy.from_config(cfg)
        auth = Authenticator.from_config(cfg.auth, metrics=m, classes=LimitClasses.from_config(cfg, m))
        await auth.start()
        stack.push_async_callback(auth.close)
        # watermarking first: the router probes the KGW plugin of watermark-capable backends at start-up
        watermarking = _watermarking(cfg, m)
        check_backend_tls(cfg)  # an unusable CA or client certificate: a start-up error naming it
        router = Router(cfg.models, cfg.routing, m, store, plugin_probe=_plugin_probe(watermarking))
        await router.start()
        stack.push_async_callback(router.close)
        alerts: AlertDispatcher | None = None
        # a mismatch alert needs a dispatcher too: with fingerprinting on, also before any backend has a
        # reference (a reload may add the first one; its alerts were dropped)
        if cfg.alerts.sinks or cfg.detection.enabled or cfg.fingerprint.enabled:
            alerts = AlertDispatcher.from_config(cfg, store, m)
            await alerts.start()
            stack.push_async_callback(alerts.close)
        upstream = Upstream()  # before the fingerprint checker: its probes use the same pooled connections
        await upstream.start()
        stack.push_async_callback(upstream.close)
        fingerprint: FingerprintChecker | None = None
        recent_forwarded: deque[str] = deque(maxlen=RECENT_FORWARDED)  # filled by the pipeline, read by probes
        if cfg.fingerprint.enabled:
            fingerprint = FingerprintChecker(cfg.fingerprint, router, m, alerts, forwarded=recent_forwarded,
                                             session=lambda: upstream.session)
            await fingerprint.start()
            stack.push_async_callback(fingerprint.close)
        detection = _detection(cfg, policy, m, alerts)
        embedding = getattr(detection, "embedding", None)  # detection.embedder: minilm's background encoder
        if embedding is not None:
            await embedding.start()
            stack.push_async_callback(embedding.close)
        ctx = AppContext(
            config=cfg, store=store, policy=policy, router=router, auth=auth, metrics=m, tracing=tracing,
            access_log=access_log, detection=detection, watermarking=watermarking, alerts=alerts,
            upstream=upstream, fingerprint=fingerprint, models=frozenset(router.models()),
            recent_forwarded=recent_forwarded,
            fields=FieldPolicy(cfg.proxy.refused_fields, cfg.proxy.refused_headers,
                               cfg.proxy.withheld_response_fields, unknown=cfg.proxy.unknown_fields,
                               allowed=cfg.proxy.allowed_fields, refused_metric=m.request_fields_refused_total,
                               withheld_metric=m.response_fields_withheld_total,
                               unknown_metric=m.request_fields_unknown_total),
        )
        ctx.client_address = ClientAddress(cfg.server.trusted_proxies, cfg.server.client_address_header)
        renewer = LeaseRenewer(store, ctx.leases, lambda: ctx.config.store.in_flight_lease_s)
        renewer.start()
        try:
            yield ctx
        finally:
            await _drain_background(ctx)  # (the accounting gives the slots of the last requests back)
            await renewer.close()


def _detection(cfg: GatewayConfig, policy: Policy, metrics: Metrics,
               alerts: AlertDispatcher | None) -> Detection | None:
    if not cfg.detection.enabled:
        return None
    from gateway.detection import GatewayDetection

    return GatewayDetection.from_config(cfg, policy, metrics=metrics, alerts=alerts)


def _watermarking(cfg: GatewayConfig, metrics: Metrics) -> Watermarking | None:
    # the section's scheme is each model's default; a model's own watermark_scheme overrides it either way
    if not cfg.watermark.enabled or (cfg.watermark.scheme == "none" and all(
            m.watermark_scheme in (None, "none") for m in cfg.models)):
        return None
    from gateway.watermarking import GatewayWatermarking

    wm: Watermarking = GatewayWatermarking.from_config(cfg, metrics=metrics)
    return wm


def _plugin_probe(wm: Watermarking | None) -> KgwPluginProbe | None:
    """The KGW plugin probe whenever watermarking is on (a reload may add a watermark-capable backend; the
    health checker probes only those)."""
    from gateway.watermarking import GatewayWatermarking

    return wm.plugin_probe() if isinstance(wm, GatewayWatermarking) else None


def _shutdown_tracing(tracing: Tracing) -> None:
    """Send the spans still queued, for at most ``TRACING_GRACE_S``. The SDK's own shutdown waits up to 30 s for
    its exporter thread, which gives each queued batch 10 s: with a collector that hangs, the worker would exit
    that long after its drain, past a stop timeout set above ``server.drain_timeout_s`` (systemd's
    ``TimeoutStopSec``, Kubernetes' grace period), and be SIGKILLed."""
    if not tracing.enabled:
        tracing.shutdown()
        return
    t = threading.Thread(target=tracing.shutdown, name="ipgate-tracing-shutdown", daemon=True)
    t.start()
    t.join(TRACING_GRACE_S)
    if t.is_alive():  # a daemon thread: the process exits without it
        log.warning("shutdown: the trace exporter did not finish in %.0f s (is the collector at "
                    "telemetry.otlp_endpoint answering?); spans still queued are dropped", TRACING_GRACE_S)


async def _drain_background(ctx: AppContext) -> None:
    if ctx.background:
        _, pending = await asyncio.wait(set(ctx.background), timeout=BACKGROUND_GRACE_S)
        for t in pending:
            t.cancel()
        if pending:
            log.warning("shutdown: %d accounting tasks did not finish in %.0f s", len(pending),
                        BACKGROUND_GRACE_S)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin app: everything answers OpenAI-shaped JSON (our errors, aiohttp 404/405, crashes as a bare 500).
    The public app has no middleware: its handlers answer errors themselves, so the hot path has no extra layer."""
    try:
        return await handler(request)
    except GatewayError as e:
        return error_response(e, request_id(request))
    except web.HTTPException as e:
        if e.status == 404:
            return error_response(NotFound(f"path: {request.path} is not an API route"), request_id(request))
        body = to_openai_error(e.reason, "invalid_request_error", f"http_{e.status}")
        # X-Request-Id: set by the audit middleware, the id of the action's audit record
        return web.Response(body=json.dumps(body), status=e.status, content_type="application/json",
                            headers={k: v for k, v in e.headers.items() if k.lower() in ("allow", "x-request-id")})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s", request.path)
        return web.json_response(INTERNAL_ERROR_BODY, status=500)


def build_public_app(cfg: GatewayConfig, ctx: AppContext | None = None) -> web.Application:
    """The OpenAI-compatible API. With ``ctx`` None the app builds its own context on startup."""
    # lines up to twice the header limit reach the gateway's own 431 (receive.check_headers); longer ones are the
    # parser's 414 (request line) or 431 (a header line), told apart by their distinct limits (parsererrors)
    app = web.Application(client_max_size=cfg.server.max_body_bytes,
                          handler_args=parser_limits(max(cfg.server.max_header_bytes, 8190) * 2))
    if ctx is not None:
        app[CTX] = ctx
    else:
        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            async with open_context(cfg) as c:
                app[CTX] = c
                yield

        app.cleanup_ctx.append(lifecycle)
    # Expect: 100-continue is answered only after the checks that need no body (expect_continue)
    expect = expect_continue
    app.router.add_post("/v1/chat/completions", proxy_handler("chat"), expect_handler=expect)
    app.router.add_post("/v1/completions", proxy_handler("completions"), expect_handler=expect)
    app.router.add_post("/v1/embeddings", proxy_handler("embeddings"), expect_handler=expect)
    # GET/DELETE /v1/responses/{id} and /input_items stay 404: stored responses are the backend's, unwatermarked
    app.router.add_post("/v1/responses", proxy_handler("responses"), expect_handler=expect)
    app.router.add_get("/v1/models", list_models, expect_handler=expect_continue)
    app.router.add_route("*", "/{tail:.*}", no_route, expect_handler=no_continue)
    return app
