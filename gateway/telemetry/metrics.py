"""Prometheus metrics for the gateway, on a registry of their own (never the process-global one).

Names follow Prometheus conventions (``ipgate_`` prefix, base units, ``_total`` counters); where an
OpenTelemetry GenAI semantic-convention metric means the same thing, its help string names it
(``gen_ai.server.request.duration``, ``gen_ai.server.time_to_first_token``, ``gen_ai.client.token.usage``)
so dashboards built for either vocabulary can be mapped. No metric has a per-client label: client ids are
unbounded and belong in the access log.

Several worker processes (``ipgate serve --workers N``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the workers start. Each worker then writes its values to memory-mapped files there and
``render()`` on the admin listener aggregates every worker (counters and histograms are summed; gauges use
the ``multiprocess_mode`` given below). The supervisor should call ``prepare_multiproc_dir`` once at start-up
and ``mark_worker_dead(pid)`` when a worker exits, so a dead worker's live gauges disappear.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A proxy's latencies span sub-millisecond (cached auth, a zero-delay backend) to many minutes: a backend may
# take first_byte_timeout_s (600 s by default) to answer and a stream has no total limit. With 60 s on top,
# histogram_quantile reported 60 s for every slower answer; 30 min covers long reasoning streams.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0,
)
# The gateway's own overhead should stay well under a millisecond; resolve it finely.
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)


def multiproc_dir(env: dict[str, str] | None = None) -> str | None:
    source = os.environ if env is None else env
    return source.get(MULTIPROC_ENV) or None


def prepare_multiproc_dir(path: str | Path) -> None:
    """Create ``path`` empty (stale files from a previous run would be summed in) and point the env at it.

    Call in the supervisor before any worker starts; workers inherit the environment.
    """
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(p)


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the aggregate (counters keep its contribution, as they should)."""
    path = multiproc_dir()
    if path:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


# prometheus_client cannot remove a labelled child in multiprocess mode: ``remove()`` only warns, and the value
# stays in the worker's file, so a series (a backend removed by a reload) would be exported for as long as the
# worker lives. ``Metrics.retire`` sets such a child to +inf instead, which no gauge of ours takes, and the
# aggregate leaves +inf gauge samples out. With "livemin" another worker that still reports a value wins the min.
RETIRED = math.inf


class _Aggregate:
    """prometheus_client's ``MultiProcessCollector`` (its public ``merge``), less the retired gauge samples."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterator[Metric]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        for metric in multiprocess.MultiProcessCollector.merge(files):  # type: ignore[no-untyped-call]
            if metric.type == "gauge":
                metric.samples = [s for s in metric.samples if s.value != RETIRED]
            yield metric


class Metrics:
    """All gateway metrics as attributes; ``render()`` gives the exposition body and its content type."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._multiproc_dir = multiproc_dir()
        if self._multiproc_dir is not None and values.ValueClass is values.MutexValue:
            # prometheus_client picks its value class when first imported; if the env variable was set after
            # that (e.g. by the supervisor in this same process), switch now, before any metric is built.
            log.info("prometheus multiprocess mode enabled late; using %s", self._multiproc_dir)
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        r = self.registry

        # --- requests -------------------------------------------------------------------------------------
        self.requests_total = Counter(
            "ipgate_requests_total", "Requests answered, by route, model, backend and HTTP status.",
            ["route", "model", "backend", "status"], registry=r,
        )
        self.request_duration_seconds = Histogram(
            "ipgate_request_duration_seconds",
            "End-to-end request duration as the client sees it (GenAI: gen_ai.server.request.duration).",
            ["route", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft_seconds = Histogram(
            "ipgate_ttft_seconds",
            "Time to first streamed token (GenAI: gen_ai.server.time_to_first_token).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tokens_total = Counter(
            "ipgate_tokens_total",
            "Tokens by type: input or output (GenAI: gen_ai.client.token.usage, gen_ai.token.type).",
            ["model", "type"], registry=r,
        )
        self.overhead_seconds = Histogram(
            "ipgate_overhead_seconds", "Time the gateway itself added to a request (excludes upstream time).",
            buckets=OVERHEAD_BUCKETS, registry=r,
        )
        self.upstream_retries_total = Counter(
            "ipgate_upstream_retries_total", "Upstream attempts retried before the first byte.", ["model"],
            registry=r,
        )
        self.stream_errors_total = Counter(
            "ipgate_stream_errors_total", "Streams ended with an error event, by reason.", ["model", "reason"],
            registry=r,
        )

        # --- auth -----------------------------------------------------------------------------------------
        self.auth_failures_total = Counter(
            "ipgate_auth_failures_total",
            "Rejected credentials by reason (the client only ever sees a generic 401).", ["reason"], registry=r,
        )
        self.proxy_protocol_rejected_total = Counter(
            "ipgate_proxy_protocol_rejected_total",
            "Connections from server.proxy_protocol_from closed for want of a valid PROXY protocol header, by "
            "reason (missing: ended within a header, invalid, timeout); one closed before a byte (a TCP health "
            "check) is not counted.", ["reason"], registry=r,
        )
        self.client_send_timeouts_total = Counter(
            "ipgate_client_send_timeouts_total",
            "Connections (public or admin listener) closed because the client took none of the bytes waiting for it "
            "for server.send_timeout_s (it stopped reading its answers).", registry=r,
        )
        self.accept_failures_total = Counter(
            "ipgate_accept_failures_total",
            "Failed accepts of new connections on either listener because the process is out of file descriptors "
            "(RLIMIT_NOFILE) or kernel memory; asyncio retries a second later.", registry=r,
        )
        self.malformed_http_total = Counter(
            "ipgate_malformed_http_total",
            "Requests the HTTP parser refused (400; 414/431 for a line over the limit) before any handler (either "
            "listener), by reason "
            "(line_too_long, bad_method, bad_request_line, invalid_header, invalid_url, body, other).", ["reason"],
            registry=r,
        )
        self.auth_cache_total = Counter(
            "ipgate_auth_cache_total", "Verified-token cache lookups: hit or miss.", ["result"], registry=r,
        )
        self.jwks_fetches_total = Counter(
            "ipgate_jwks_fetches_total", "JWKS fetches by outcome (ok, error).", ["outcome"], registry=r,
        )
        self.limit_class_unknown_total = Counter(
            "ipgate_limit_class_unknown_total",
            "Verified JWTs whose auth.jwt.limits_claim named a class not in `limits`: the client got `default`.",
            registry=r,
        )

        # --- rate limits and store ------------------------------------------------------------------------
        self.rate_limit_decisions_total = Counter(
            "ipgate_rate_limit_decisions_total", "Rate-limit decisions by limit kind and decision.",
            ["kind", "decision"], registry=r,
        )
        self.store_failures_total = Counter(
            "ipgate_store_failures_total", "State-store operations that failed or timed out.", ["op"], registry=r,
        )
        self.audit_write_failures_total = Counter(
            "ipgate_audit_write_failures_total",
            "Admin audit records a sink refused (store, file; backlog: dropped from the full pending queue).",
            ["sink"], registry=r,
        )
        self.store_degraded = Gauge(
            "ipgate_store_degraded", "1 while the shared store is unreachable and the failure mode applies.",
            registry=r, multiprocess_mode="livemax",
        )

        # --- config reloads (SIGHUP, POST /admin/routing/reload) ---------------------------------------------
        self.config_reloads_total = Counter(
            "ipgate_config_reloads_total",
            "Config reloads by source (signal, admin) and result (applied; rejected: the file is invalid and the "
            "running config stays; failed: an internal error while applying it).", ["source", "result"],
            registry=r,
        )
        self.config_last_reload_successful = Gauge(
            "ipgate_config_last_reload_successful",
            "0 while the last config reload was rejected or failed (the file on disk is not the config running), "
            "else 1; 1 from start-up.", registry=r, multiprocess_mode="livemin",
        )
        self.config_last_reload_successful.set(1)

        # --- routing and canary ---------------------------------------------------------------------------
        self.backend_ejections_total = Counter(
            "ipgate_backend_ejections_total", "Backends ejected by passive health checks.", ["model", "backend"],
            registry=r,
        )
        self.backend_healthy = Gauge(
            "ipgate_backend_healthy", "1 if the backend is in rotation (with workers: only if every worker agrees).",
            ["model", "backend"], registry=r, multiprocess_mode="livemin",
        )
        self.canary_weight = Gauge(
            "ipgate_canary_weight", "Current traffic weight of each backend, in percent.", ["model", "backend"],
            registry=r, multiprocess_mode="livemostrecent",
        )
        self.canary_state = Gauge(
            "ipgate_canary_state", "1 for the rollout's current state (progressing, paused, promoted, aborted).",
            ["model", "state"], registry=r, multiprocess_mode="livemostrecent",
        )
        self.canary_events_total = Counter(
            "ipgate_canary_events_total", "Canary events: started, step, analysis_passed, analysis_failed, "
            "paused, resumed, aborted, promoted.",
            ["model", "event"], registry=r,
        )

        # --- detection, alerts, watermark -----------------------------------------------------------------
        self.detection_state_merges_total = Counter(
            "ipgate_detection_state_merges_total",
            "Detector state saves that met another replica's save of the same client and merged with it "
            "(outcome=merged), and steps dropped unsaved while the store refused every save (outcome=dropped).",
            ["outcome"], registry=r,
        )
        self.detector_state_errors_total = Counter(
            "ipgate_detector_state_errors_total",
            "Stored detector states that could not be read; the client's detection restarted from a fresh state.",
            registry=r,
        )
        self.detector_errors_total = Counter(
            "ipgate_detector_errors_total", "Detector invocations that raised (request went on unscored).",
            ["detector"], registry=r,
        )
        self.detection_tier_total = Counter(
            "ipgate_detection_tier_total", "Requests by the policy tier their client was in.", ["tier"], registry=r,
        )
        self.alerts_total = Counter(
            "ipgate_alerts_total", "Alerts by sink and outcome (delivered, retried, failed, dropped; sink all: "
            "deduplicated, rate_limited, dropped).",
            ["sink", "outcome"], registry=r,
        )
        self.watermark_responses_total = Counter(
            "ipgate_watermark_responses_total", "Responses watermarked, by scheme.", ["scheme"], registry=r,
        )
        self.watermark_plugin_probe_failures_total = Counter(
            "ipgate_watermark_plugin_probe_failures_total",
            "Probes of a watermark_capable backend that showed its KGW plugin missing or misconfigured "
            "(its responses then get the lexical watermark); a probe the backend did not answer is not counted.",
            ["model", "backend"], registry=r,
        )
        self.watermark_skipped_total = Counter(
            "ipgate_watermark_skipped_total",
            "Responses of watermarked models whose answer was served without a post-hoc watermark because the "
            "request constrained the output (structured output, a forced tool call; a chain of thought beside it "
            "is still watermarked); reason = the request field.",
            ["reason"], registry=r,
        )
        self.responses_withheld_total = Counter(
            "ipgate_responses_withheld_total",
            "Parts of Responses API answers withheld from the client because the gateway does not watermark "
            "them (an unknown event or item type, raw output messages, a malformed text event); what = the kind.",
            ["what"], registry=r,
        )
        self.request_fields_refused_total = Counter(
            "ipgate_request_fields_refused_total",
            "Requests answered 400 for a request field or header the gateway does not accept: an inference-server "
            "extension (proxy.refused_fields, proxy.refused_headers; field = its name), a field the endpoint does "
            "not know under proxy.unknown_fields: refuse (field=\"(unknown)\"), a token-id prompt under "
            "detection.token_id_prompts: refuse (field=\"prompt\").",
            ["field"], registry=r,
        )
        self.request_fields_unknown_total = Counter(
            "ipgate_request_fields_unknown_total",
            "Requests passed under proxy.unknown_fields: log that name a top-level field their endpoint does not "
            "know (what refuse mode would answer 400).",
            registry=r,
        )
        self.response_fields_withheld_total = Counter(
            "ipgate_response_fields_withheld_total",
            "Fields of backend answers withheld from the client because they expose deployment internals "
            "(proxy.withheld_response_fields), once per body or stream chunk that held them; field = its name.",
            ["field"], registry=r,
        )
        self.watermark_directive_refusals_total = Counter(
            "ipgate_watermark_directive_refusals_total",
            "Requests whose KGW directive a watermark_capable backend's engine refused (its plugin changed since "
            "the last probe): each was served again at once without the directive, with the lexical watermark.",
            ["model", "backend"], registry=r,
        )
        self.watermark_plugin_ok = Gauge(
            "ipgate_watermark_plugin_ok",
            "1 while the last probe verified the backend's KGW plugin (responses watermarked in the engine), "
            "0 otherwise (lexical watermark post hoc). Only watermark_capable backends with kgw_probe on.",
            ["model", "backend"], registry=r, multiprocess_mode="livemin",
        )

        # --- fingerprint checks (gateway/fingerprinting/) -------------------------------------------------
        self.fingerprint_checks_total = Counter(
            "ipgate_fingerprint_checks_total",
            "Fingerprint checks of a backend against its reference, by verdict (match, mismatch, inconclusive).",
            ["model", "backend", "verdict"], registry=r,
        )
        # made by the first set_tls_certificate_expiry: an unlabelled gauge is exported (as 0) from its creation
        # on, in multiprocess mode too, and 0 would fire the shipped expiry alerts on every gateway without TLS
        self._tls_certificate_expiry: Gauge | None = None
        self.fingerprint_match = Gauge(
            "ipgate_fingerprint_match",
            "1 if the backend's last conclusive fingerprint check matched its reference, 0 if it mismatched.",
            ["model", "backend"], registry=r, multiprocess_mode="livemin",
        )

    def set_tls_certificate_expiry(self, ts: float) -> None:
        """``ipgate_tls_certificate_expiry_timestamp_seconds``: absent until the first call (no TLS: absent)."""
        if self._tls_certificate_expiry is None:
            self._tls_certificate_expiry = Gauge(
                "ipgate_tls_certificate_expiry_timestamp_seconds",
                "When the certificate the listeners serve (server.tls_cert_file) stops being valid, unix seconds; "
                "set at start-up and on each SIGHUP; absent without TLS.",
                registry=self.registry, multiprocess_mode="livemin",
            )
        self._tls_certificate_expiry.set(ts)

    def retire(self, gauge: Gauge, *labels: str) -> None:
        """Stop exporting ``gauge``'s child ``labels`` (its backend is gone); only for "livemin" gauges."""
        if self._multiproc_dir is None:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        else:
            gauge.labels(*labels).set(RETIRED)

    @property
    def multiprocess(self) -> bool:
        return self._multiproc_dir is not None

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this process, or of all workers in multiprocess mode."""
        if self._multiproc_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        # A fresh registry per scrape, as prometheus_client's docs prescribe: the collector reads the files of
        # every worker, so the answer is the same whichever worker the admin request reached.
        agg = CollectorRegistry()
        agg.register(_Aggregate(self._multiproc_dir))
        return generate_latest(agg), CONTENT_TYPE_LATEST
