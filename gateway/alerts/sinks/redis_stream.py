"""The Redis stream alert sink: ``XADD`` of each alert, once per alert id however often it is retried.

On a Redis Cluster (the store's, when the sink has no ``url`` of its own and ``store.cluster`` is set; or the
sink's own with ``cluster: true``) the sink talks to it through the store's ``ClusterMux``: each call goes to
the primary serving the stream's slot, following ``MOVED``/``ASK``/``TRYAGAIN`` like the store's calls. A plain
client to one node answered ``MOVED`` for a stream served by another primary, and every alert on the sink failed.

``cluster: null`` with a ``url`` of its own: the node is asked at the sink's first use (its first alert, or
``ipgate check --connect``'s ping) whether it runs in cluster mode (``INFO cluster``: ``cluster_enabled``;
``CLUSTER INFO`` where the Redis user may not run ``INFO``), and a cluster node is then used as ``cluster: true``
would, logged once. A node that cannot be asked (both refused by ACL) is taken as a single endpoint until it
answers ``MOVED`` or ``ASK``, which switches the sink to cluster mode and retries the write. A node that cannot
be reached leaves the question open: the attempt fails (retried by the dispatcher) and the next one asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.exceptions import AskError, NoPermissionError

from gateway.alerts.model import Alert
from gateway.alerts.sinks.base import Delivery, SinkError
from gateway.alerts.sinks.urls import redact_url, scrub_url
from gateway.config import AlertSinkConfig, ConfigError
from gateway.store.cluster import ClusterMux
from gateway.store.resp import pack, reply_error

log = logging.getLogger(__name__)

# One alert, one stream entry, however often it is retried: a retry after a timeout used to add it again when
# the first XADD had run but its reply was late (a slow Redis), so one alert could be written up to 1 + retries
# times. A marker key per alert id (NX, kept a day: longer than any retry schedule) decides atomically.
_XADD_ONCE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
           'alert', ARGV[3], 'client', ARGV[4], 'tier', ARGV[5], 'id', ARGV[6])
return 1
"""
_SEEN_TTL_MS = 86_400_000


def marker_prefix(stream: str) -> str:
    """The prefix of the stream's per-alert marker keys, in the stream's own hash slot: Redis Cluster refuses a
    script over keys of two slots (CROSSSLOT) on every node, a one-shard cluster included. A stream with a hash
    tag keeps it (``alerts:{fleet}`` -> ``alerts:{fleet}:seen:``); another is named as a tag
    (``{ipgate:alerts}:seen:``); a name that cannot be (a ``}`` in it) gets the first numeric tag of its slot."""
    from redis.crc import key_slot

    slot = key_slot(stream.encode())
    for prefix in (f"{stream}:seen:", f"{{{stream}}}:seen:"):
        if key_slot(prefix.encode()) == slot:
            return prefix
    tag = next(str(i) for i in range(1 << 20) if key_slot(str(i).encode()) == slot)  # ~16 000 tries on average
    return f"{{{tag}}}:seen:"


class RedisStreamSink:
    def __init__(self, cfg: AlertSinkConfig, default_url: str, default_cluster_seeds: Sequence[str] | None = None
                 ) -> None:
        """``default_url`` / ``default_cluster_seeds``: the store's URL and, in cluster mode, its seed node URLs
        (``StoreConfig.cluster_urls``), used when the sink has no ``url`` of its own."""
        self.cfg = cfg
        self.name = cfg.name or "redis_stream"
        self.delivery = Delivery.from_config(cfg)
        self.url = cfg.url or default_url
        seeds = default_cluster_seeds if cfg.url is None else None
        if cfg.cluster is not None:
            seeds = (list(seeds or [self.url]) if cfg.cluster else None)
        self._seeds: list[str] | None = None if seeds is None else list(seeds)
        # cluster: null with a url of its own: whether the node runs in cluster mode is asked at first use
        self._may_detect = cfg.cluster is None and cfg.url is not None
        self._detect = self._may_detect
        self._redis: aioredis.Redis | None = None
        self._cluster: ClusterMux | None = None
        self._scripts = True  # False once the server refused scripting (ACL): plain XADD, retries may repeat
        self._marker = marker_prefix(cfg.stream)

    @property
    def cluster(self) -> bool:
        return self._seeds is not None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.url, socket_timeout=self.cfg.timeout_s, socket_connect_timeout=self.cfg.timeout_s,
            )
        return self._redis

    def _mux(self) -> ClusterMux:
        if self._cluster is None:
            assert self._seeds is not None
            self._cluster = ClusterMux(self._seeds, timeout_s=self.cfg.timeout_s)
        return self._cluster

    async def _detect_cluster(self) -> None:
        """Ask the sink's own node whether it runs in cluster mode (once it answers); see the module docstring."""
        client = self._client()
        try:
            info = await client.info("cluster")
            enabled = int(info.get("cluster_enabled", 0)) == 1
        except aioredis.ResponseError as e:
            if not _refused(e):
                raise
            try:
                await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                enabled = True
            except aioredis.ResponseError as e2:
                if "cluster support disabled" in str(e2):
                    enabled = False
                elif _refused(e2):
                    self._detect = False
                    log.warning("alert sink %s: the Redis user may run neither INFO nor CLUSTER INFO, so whether "
                                "%s is a cluster node is not known: taken as a single endpoint until it answers "
                                "MOVED (set cluster: true or false to say so)", self.name, redact_url(self.url))
                    return
                else:
                    raise
        self._detect = False
        if enabled:
            self._use_cluster("its node runs in cluster mode")

    def _use_cluster(self, why: str) -> None:
        """Switch to cluster mode on the sink's own URL (``cluster: null`` found a cluster node)."""
        try:
            ClusterMux([self.url], timeout_s=self.cfg.timeout_s)  # checks the seed; connects to nothing
        except ValueError as e:
            self._may_detect = False
            log.error("alert sink %s: %s, but its url cannot seed a cluster client (%s): alerts on streams other "
                      "nodes serve will fail", self.name, why, scrub_url(str(e), self.url))
            return
        self._seeds = [self.url]
        log.info("alert sink %s: %s; the stream is written on the primary serving its slot, as with cluster: true",
                 self.name, why)

    async def _on_stream(self, *args: Any) -> Any:
        """One command on the cluster primary serving the stream's slot (every key of ours is in that slot)."""
        reply = (await self._mux().execute_packed(pack(args), 1, key=self.cfg.stream))[0]
        err = reply_error(reply)
        if err is not None:
            raise err  # a redis ResponseError, NOPERM text included, as redis-py raises it
        return reply

    async def _xadd_once(self, alert: Alert, payload: str) -> None:
        args = (2, self.cfg.stream, f"{self._marker}{alert.id}",
                _SEEN_TTL_MS, self.cfg.max_len, payload, alert.client, alert.tier, alert.id)
        if self.cluster:
            await self._on_stream("EVAL", _XADD_ONCE, *args)
        else:
            await self._client().eval(_XADD_ONCE, *args)  # type: ignore[misc]  # typed as sync|async

    async def _xadd(self, alert: Alert, payload: str) -> None:
        fields = {"alert": payload, "client": alert.client, "tier": alert.tier, "id": alert.id}
        if self.cluster:
            await self._on_stream("XADD", self.cfg.stream, "MAXLEN", "~", self.cfg.max_len, "*",
                                  *(x for kv in fields.items() for x in kv))
        else:
            await self._client().xadd(self.cfg.stream, fields,  # type: ignore[arg-type]
                                      maxlen=self.cfg.max_len, approximate=True)

    async def emit(self, alert: Alert, payload: str) -> None:
        try:
            if self._detect:
                await self._detect_cluster()
            try:
                await self._write(alert, payload)
            except AskError:  # MOVED or ASK: a cluster node after all (its mode could not be asked)
                if not self._may_detect or self.cluster:
                    raise
                self._use_cluster("its node answered MOVED")
                if not self.cluster:
                    raise
                await self._write(alert, payload)
        except (aioredis.RedisError, OSError) as e:
            # The URL may carry the Redis password: keep it out of the message, as for webhooks.
            detail = scrub_url(str(e), self.url)
            raise SinkError(f"redis stream {self.cfg.stream}: {type(e).__name__}: {detail}") from None

    async def _write(self, alert: Alert, payload: str) -> None:
        if self._scripts:
            try:
                await self._xadd_once(alert, payload)
                return
            except aioredis.ResponseError as e:
                # refused by ACL: EVAL itself (NoPermissionError), or SET/XADD inside the script
                if not isinstance(e, NoPermissionError) and "NOPERM" not in str(e) \
                        and "can't run this command" not in str(e):
                    raise
                self._scripts = False
                log.warning("alert sink %s: the Redis user may not run scripts (%s); writing with plain XADD, "
                            "so an alert retried after a timeout may appear twice (grant +eval and +set, "
                            "or deduplicate by the id field)", self.name, e)
        await self._xadd(alert, payload)

    def check_url(self) -> None:
        """Raise ``ConfigError`` naming the field (no password in it) when the URL is not a Redis URL: refused at
        start-up rather than failing every alert on this sink."""
        try:
            parse_url(self.url)
            if self._seeds is not None:
                ClusterMux(self._seeds, timeout_s=self.cfg.timeout_s)  # checks the seeds; connects to nothing
        except ValueError as e:
            raise ConfigError(f"alerts.sinks.{self.name}.url: {scrub_url(str(e), self.url)}") from None

    async def ping(self) -> None:
        """Raise ``SinkError`` (no password in it) unless the sink's Redis answers PING (``ipgate check``)."""
        try:
            if self._detect:
                await self._detect_cluster()
            if self.cluster:
                await self._mux().ping()  # every primary serving (cluster_state:ok), as the store's probe
            else:
                await self._client().ping()
        except (aioredis.RedisError, OSError, ValueError) as e:  # ValueError: not a Redis URL
            raise SinkError(f"{type(e).__name__}: {scrub_url(str(e), self.url)}") from None

    async def close(self) -> None:
        if self._cluster is not None:
            await self._cluster.close()
            self._cluster = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def _refused(e: aioredis.ResponseError) -> bool:
    """The Redis user may not run the command (ACL), or the server does not know it (a proxy, a managed
    service that renames it)."""
    text = str(e)
    return isinstance(e, NoPermissionError) or "NOPERM" in text or "unknown command" in text \
        or "can't run this command" in text
