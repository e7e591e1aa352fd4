"""Where alerts go: one small class per destination behind a one-method protocol.

A sink makes **one** delivery attempt per ``emit`` call and raises when it did not land; the dispatcher owns
retries, back-off, queueing and metrics, so every sink gets the same delivery semantics. ``SinkError`` says a
retry may help (and may carry the server's ``Retry-After``); ``PermanentSinkError`` says it will not (a 4xx
from a webhook: fix the config, not the network).

- ``JsonlSink``: appends one JSON line per alert to a file (mode 0600). "fsync-light": each line is
  flushed to the OS at once, and ``fsync`` runs at most once per ``FSYNC_INTERVAL_S`` and on close — a
  crash of the host can lose the last second, a crash of the process loses nothing. A file moved or
  deleted by log rotation is noticed at the next alert and reopened.
- ``RedisStreamSink``: ``XADD stream MAXLEN ~ N`` with fields ``alert`` (the JSON), ``client``, ``tier``,
  ``id``, once per alert id; on a Redis Cluster through the store's slot-routing ``ClusterMux``.
- ``WebhookSink``: ``POST`` of the JSON with ``X-Ipgate-Alert-Id`` and, when a secret is configured,
  ``X-Ipgate-Timestamp`` and ``X-Ipgate-Signature: sha256=HMAC(secret, timestamp + "." + body)`` so the
  receiver can authenticate it and reject replays. Redirects are not followed (a 3xx is a permanent failure:
  a POST followed as a GET could count an alert as delivered that nobody received). Many webhook URLs are
  themselves credentials (Slack, Teams, Discord put the token in the path; some put ``user:password@`` or a
  ``?key=``): errors and logs name only the URL's origin (``https://hooks.example.com/…``), never the full URL.
- ``StoreSink``: the store's bounded shared alert list that the admin API and dashboard read.

Layout: one module per sink kind (``jsonl``, ``redis_stream``, ``webhook``, ``store``), what they share in
``base`` (the errors, ``Delivery``, the ``AlertSink`` protocol) and ``urls`` (what of a URL may be shown);
``build_sinks`` (here) makes the configured ones. The names other modules use are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.alerts.sinks.base import AlertSink, PermanentSinkError, SinkError
from gateway.alerts.sinks.jsonl import JsonlSink
from gateway.alerts.sinks.redis_stream import RedisStreamSink
from gateway.alerts.sinks.store import StoreSink, store_degraded
from gateway.alerts.sinks.webhook import WebhookSink
from gateway.config import AlertSinkConfig, ConfigError

__all__ = [
    "AlertSink", "JsonlSink", "PermanentSinkError", "RedisStreamSink", "SinkError", "StoreSink", "WebhookSink",
    "build_sinks", "store_degraded",
]


def build_sinks(cfgs: list[AlertSinkConfig], *, default_redis_url: str,
                default_cluster_seeds: Sequence[str] | None = None) -> list[AlertSink]:
    """The configured sinks; a ``redis_stream`` sink without a ``url`` uses ``default_redis_url`` (the store's),
    on a Redis Cluster when ``default_cluster_seeds`` (the store's ``cluster_urls``) is given."""
    sinks: list[AlertSink] = []
    for c in cfgs:
        if c.kind == "jsonl":
            sinks.append(JsonlSink(c))
        elif c.kind == "redis_stream":
            stream = RedisStreamSink(c, default_redis_url, default_cluster_seeds)
            stream.check_url()
            sinks.append(stream)
        else:
            sinks.append(WebhookSink(c))
    names = [s.name for s in sinks]
    # "store" is the shared list's sink; "all" labels the dispatcher's own outcomes (deduplicated, rate_limited,
    # dropped after shutdown): a sink of that name mixed its deliveries and drops into them
    if len(set(names)) != len(names) or "store" in names or "all" in names:
        raise ConfigError(f"alerts.sinks: names must be unique and neither 'store' nor 'all' (set `name:`), "
                          f"got {names}")
    return sinks
