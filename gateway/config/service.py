"""The process around the proxy: listeners and limits of the HTTP server, the state store, telemetry, and
the admin API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.config.base import _HTTP_TOKEN, _Model

if TYPE_CHECKING:
    pass


class ServerConfig(_Model):
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # bounded: a huge value overflows aiohttp's C parser limits and every connection is dropped
    max_header_bytes: int = Field(16 * 1024, gt=0, le=1024 * 1024)
    drain_timeout_s: float = Field(20.0, ge=0)
    # A connection is closed when its request headers have not arrived this long after it opened (or after its
    # last answer, when idle between keep-alive requests). aiohttp's own default, 3 630 s, let a client that
    # trickles its header bytes (before any credential) hold a connection for an hour.
    keepalive_timeout_s: float = Field(75.0, gt=0, le=86400, description="header arrival / idle keep-alive bound")
    # A connection is closed when bytes of its answers have waited this long without the client taking any of
    # them (nginx's send_timeout; gateway/senddeadline.py). Without it a client that pipelines requests and never
    # reads the answers held its connection (and the kernel's socket buffers) for ever.
    send_timeout_s: float = Field(60.0, gt=0, le=86400, description="a client that takes none of its answers' bytes")
    workers: int = Field(1, ge=1, le=1024)  # a typo'd 100000 would fork that many processes
    # Every this many seconds each worker hands glibc's free heap memory back to the system (malloc_trim(0),
    # gateway/memtrim.py): without it RSS creeps up under a long load while the live heap stays level. Each call
    # holds the event loop (≈ 1–4 ms). 0: off. Linux with glibc only (elsewhere: one WARNING, no trimming).
    malloc_trim_interval_s: float = Field(60.0, ge=0, le=86400, description="periodic malloc_trim(0); 0: off")
    overhead_header: str = "x-ipgate-overhead-ms"
    # Load balancers / reverse proxies whose X-Forwarded-For is believed (CIDRs or addresses); the client's
    # address (access log, alert evidence, traces) is then the rightmost untrusted hop. Empty: the TCP peer.
    trusted_proxies: list[str] = Field(default_factory=list)
    # The header those proxies append to, and the only one read: "forwarded" is RFC 7239's
    # (for="[2001:db8::1]:443"). Never both: the one the proxies do not write is the client's own, whole.
    client_address_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    # TLS on both listeners (PEM files; the chain is re-read on SIGHUP). Both or neither; none: plain HTTP
    # (behind a TLS-terminating load balancer).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Layer-4 load balancers (CIDRs or addresses) that start each connection to the public listener with a PROXY
    # protocol header (v1 or v2) naming the client: required from them, never read from anyone else. Empty: off.
    proxy_protocol_from: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together (set both, or neither)")
        if self.proxy_protocol_from and self.tls_cert_file:
            raise ValueError("proxy_protocol_from needs plain HTTP on the public listener (the header comes before "
                             "TLS): terminate TLS on the load balancer, or leave tls_cert_file unset")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        from gateway.clientaddr import parse_networks

        parse_networks(v)  # raises ValueError naming the bad entry
        return v

    @field_validator("proxy_protocol_from")
    @classmethod
    def _balancers(cls, v: list[str]) -> list[str]:
        from gateway.clientaddr import parse_networks

        parse_networks(v, "proxy_protocol_from")
        return v

    @field_validator("overhead_header")
    @classmethod
    def _header_name(cls, v: str) -> str:
        if not _HTTP_TOKEN.fullmatch(v):
            raise ValueError("must be a valid HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
        return v


def check_cluster_node_url(field: str, url: str) -> None:
    """Raise ``ValueError`` naming ``field`` (never echoing the URL: it may hold a password) unless ``url`` is a
    Redis Cluster node URL: ``redis://`` or ``rediss://``, a host, a numeric port, database 0 or none."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"{field}: cluster node URLs are redis://host:port or rediss://host:port "
                         f"(got scheme {parsed.scheme!r}, host {parsed.hostname!r})")
    try:
        port = parsed.port
    except ValueError:  # urllib's message is safe, but say which field and what is expected
        raise ValueError(f"{field}: the port of node {parsed.hostname} is not a number in 0-65535") from None
    if parsed.path.strip("/") not in ("", "0"):
        raise ValueError(f"{field}: Redis Cluster has only database 0 (node {parsed.hostname}:{port})")


class StoreConfig(_Model):
    kind: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    failure_mode: Literal["open", "closed", "local"] = "local"
    timeout_ms: float = Field(50.0, gt=0)
    key_prefix: str = "ipgate:"
    local_replicas: int = Field(1, ge=1, description="replica count that 'local' failure mode divides limits by")
    health_interval_s: float = Field(1.0, gt=0)
    max_state_bytes: int = Field(32 * 1024, gt=0, description="largest per-client detector state accepted")
    # how long a request in flight counts against its client's max_in_flight without word from its replica: the
    # replica renews its leases every third of this while the requests run, so only a replica that died (or
    # lost the store) leaves slots behind, for at most this long
    in_flight_lease_s: float = Field(120.0, ge=3, le=86400, allow_inf_nan=False)
    cluster: bool = Field(False, description="url (plus cluster_seeds) names Redis Cluster nodes; route by slot")
    cluster_seeds: list[str] = Field(default_factory=list, description="more seed node URLs for cluster mode")

    @model_validator(mode="after")
    def _cluster_urls(self) -> StoreConfig:
        if not self.cluster:
            if self.cluster_seeds:
                raise ValueError("cluster_seeds is set but cluster is false")
            return self
        if self.kind != "redis":
            raise ValueError("cluster: true needs kind: redis")
        fields = ["store.url", *(f"store.cluster_seeds[{i}]" for i in range(len(self.cluster_seeds)))]
        for field, u in zip(fields, [self.url, *self.cluster_seeds], strict=True):
            check_cluster_node_url(field, u)
        return self

    @property
    def cluster_urls(self) -> list[str] | None:
        """The Redis Cluster seed node URLs (``url`` first) in cluster mode; None for one endpoint."""
        return [self.url, *self.cluster_seeds] if self.cluster else None

    @field_validator("key_prefix")
    @classmethod
    def _no_braces(cls, v: str) -> str:
        if "{" in v or "}" in v:
            raise ValueError("must not contain '{' or '}' (they would become the Redis Cluster hash tag)")
        return v

class TelemetryConfig(_Model):
    service_name: str = "ipgate"
    otlp_endpoint: str | None = None
    sample_ratio: float = Field(0.1, ge=0, le=1)
    access_log: bool = True
    access_log_file: str | None = None  # default: stderr

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith(("http://", "https://")) and urlparse(v).hostname):
            raise ValueError("must be an http(s):// URL of an OTLP/HTTP collector, e.g. http://otel-collector:4318")
        return v

class AdminConfig(_Model):
    token_env: str | None = "IPGATE_ADMIN_TOKEN"  # bearer token for the admin API; unset: admin role JWTs only
    # audit trail of admin actions (gateway/audit): the shared store keeps the newest audit_max_records;
    # audit_file (optional) gets every record as an append-only, hash-chained JSONL line
    audit_max_records: int = Field(10_000, ge=1, le=1_000_000)
    audit_file: str | None = None
    audit_key_env: str | None = None  # names a variable holding a key (>= 16 chars): the chain becomes HMAC-keyed
    # Host names the admin listener answers to besides admin_listen's own host (and localhost on loopback or
    # a wildcard address): DNS-rebinding protection, gateway/admin/hosts.py. "*.example.com": names under it.
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        from gateway.admin.hosts import normalize_allowed

        return normalize_allowed(v)  # raises ValueError naming the bad entry
