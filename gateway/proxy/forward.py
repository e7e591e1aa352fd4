"""The upstream call: one pooled ``aiohttp.ClientSession`` for the process, headers filtered, credentials
from config, per-try timeouts.

Timeouts, all enforced by aiohttp's own timers (no extra timer per request): ``connect_timeout_s`` for the
TCP connect; non-streaming calls: ``first_byte_timeout_s`` for the whole response (headers and body);
streams: ``idle_timeout_s`` for the headers and then between two reads. There is deliberately no total
timeout on a stream: a long generation that keeps producing is healthy.

Which failed tries may go to another backend (``AttemptFailed.retryable``): every failure before the request
reached the backend (connect refused or timed out, TLS, an unreadable credential), a 429/5xx answer, a
connection the backend closed (it is not generating any more), and a stream's idle timeout before its first
chunk (an engine aborts a stream whose reader left, and a minute without a first token is a queue or a stall,
which another backend may not have: LiteLLM's ``stream_timeout`` practice). NOT retried: a non-streamed call
that hit ``first_byte_timeout_s`` after it was sent. The backend accepted it and may still be generating (it
learns that the gateway left only when it next checks, and one behind another proxy or queue may never); the
same prompt and ``max_tokens`` take as long elsewhere, so another try doubles the GPU work and times out too,
after the client's own deadline (the openai SDKs' 600 s, the default here) has passed. The client gets its
504 at once; its SDK decides whether to try again.

What is never forwarded: hop-by-hop headers (RFC 9110 §7.6.1, plus any named in ``Connection``), the client's
own credentials (``Authorization``, ``Cookie``, ``X-Api-Key``/``Api-Key``), ``Host`` and ``Content-Length``
(recomputed), ``Content-Encoding`` (the body forwarded is the decoded one) and ``Content-Type`` (always
``application/json``). The backend's credential, when configured, comes from ``api_key_env``/``api_key_file``.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.clientaddr import forwarded_node
from gateway.config import BackendConfig, ConfigError, read_header_secret
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamError, UpstreamTimeout
from gateway.tls import backend_tls

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
NOT_FORWARDED = HOP_BY_HOP | frozenset({
    "authorization", "cookie", "x-api-key", "api-key", "host", "content-length", "accept-encoding", "expect",
    "x-request-id",
    # the body goes upstream as the gateway read it: aiohttp decoded a gzip/deflate body, and the gateway's own
    # re-encoding is plain JSON too; the client's Content-Encoding would make the backend decode it again
    "content-encoding",
    # set by the gateway: the body it forwards is JSON it validated, whatever the client called it
    "content-type",
})

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
         "responses": "/responses"}


def forward_headers(client: Mapping[str, str], request_id: str, peer: str | None = None) -> CIMultiDict[str]:
    """The headers sent upstream: the client's end-to-end headers minus credentials, plus ours (the
    backend's own credential is added per try, in ``Upstream.open``). ``peer`` (the TCP peer) is appended to
    ``X-Forwarded-For`` as every reverse proxy does: a backend that trusts the gateway and reads the rightmost
    hop (uvicorn's proxy headers, on by default from 127.0.0.1) saw what the client wrote there instead. A
    client's ``Forwarded`` (RFC 7239) gets the same ``for=`` element appended, for the same reason; the gateway
    does not start one (no engine reads it)."""
    # every Connection line: the field is a list, and a client may split it over several (RFC 9110 §5.3)
    conn = ",".join(client.getall("Connection", ())) if isinstance(client, CIMultiDictProxy | CIMultiDict) \
        else client.get("Connection")
    named = frozenset(t.strip().lower() for t in conn.split(",")) if conn else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in client.items():
        lk = k.lower()
        if lk in NOT_FORWARDED or lk in named:
            continue
        out.add(k, v)
    out["Accept-Encoding"] = "identity"  # relay bytes as produced; no decompress/recompress in the proxy
    # The gateway takes a JSON body under any Content-Type (curl -d sends a form type, raw clients often none, for
    # which aiohttp would send application/octet-stream); vLLM refuses every type but application/json (400/415)
    out["Content-Type"] = "application/json"
    # The engine keys its request state by this id (vLLM's engine request id): two clients naming the same one must
    # not meet there (before vLLM #27987 the second failed "already running", with several API servers the engine
    # could fall over), as no client may name another's request (the body's request_id is refused for that). A
    # caller's own id goes up with a random suffix, greppable by its prefix; the gateway's own ids are random.
    out["X-Request-Id"] = f"{request_id}-{os.urandom(6).hex()}" if client.get("X-Request-Id") == request_id \
        else request_id
    if peer:
        prior = out.popall("X-Forwarded-For", None)
        out["X-Forwarded-For"] = f"{', '.join(prior)}, {peer}" if prior else peer
        forwarded = out.popall("Forwarded", None)
        if forwarded:
            out["Forwarded"] = f"{', '.join(forwarded)}, for={forwarded_node(peer)}"
    return out


# The largest non-streamed answer read from a backend. The body is held whole (then decoded), and nothing else
# bounded it: a broken or hostile backend that wrote an endless body grew the gateway by up to 1 GB/s until
# ``first_byte_timeout_s`` (600 s) and took the process, with every client's requests, down. 256 MiB keeps the
# largest real answers (an embeddings batch of 2 048 inputs x 3 072 floats is ≈ 130 MB of JSON).
MAX_ANSWER_BYTES = 256 * 1024 * 1024

MAX_RETRY_AFTER_S = 60  # the openai SDKs ignore a longer Retry-After (and fall back to their own back-off)


def retry_after_s(headers: Mapping[str, str]) -> int | None:
    """A backend's ``Retry-After`` in whole seconds (the delta-seconds form; an HTTP date is not read), capped."""
    value = headers.get("Retry-After", "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    # a longer string is beyond the cap anyway; int() raises on one over 4 300 digits (a 500, not the 503)
    return min(int(value), MAX_RETRY_AFTER_S) if len(value) <= 4 else MAX_RETRY_AFTER_S


class AttemptFailed(Exception):
    """One upstream try failed before any byte reached the client; ``error`` says how (for retry and metrics)."""

    def __init__(self, error: str, status: int | None = None, detail: str = "", retry_after: int | None = None,
                 *, retryable: bool = True) -> None:
        super().__init__(f"{error} {status or ''} {detail}".strip())
        self.error = error
        self.status = status
        self.retry_after = retry_after  # the backend's Retry-After (s) on a 429/503
        # whether another backend may be tried (see the module docstring): False once a non-streamed
        # generation may be running on this one
        self.retryable = retryable

    def to_gateway_error(self) -> GatewayError:
        if self.error == "timeout":
            return UpstreamTimeout("The model backend did not answer in time.")
        if self.error == "too_large":
            return UpstreamError(f"The model backend's answer exceeds {MAX_ANSWER_BYTES} bytes.",
                                 code="upstream_too_large")
        if self.status in (429, 503):
            # the backend's Retry-After goes on: without it the SDK's max_retries comes back within a second
            # (its own back-off) to a backend that asked for more time
            return ServiceUnavailable("The model backends are overloaded; please retry shortly.",
                                      code="upstream_overloaded", headers=None if self.retry_after is None
                                      else {"Retry-After": str(self.retry_after)})
        if self.status is not None:
            return UpstreamError(f"The model backend failed (status {self.status}).", code="upstream_status")
        return UpstreamError("The model backend could not be reached.", code="upstream_unreachable")


@dataclass(frozen=True, slots=True)
class _BackendPlan:
    cfg: BackendConfig  # the config object it was made from: a reload brings new objects, hence new plans
    base: str  # the backend's url + /v1
    auth: str | None
    timeout: aiohttp.ClientTimeout  # non-streaming calls
    stream_timeout: aiohttp.ClientTimeout
    # endpoint -> parsed URL: a str would be parsed by yarl again on every request
    urls: dict[str, URL]
    ssl: ssl.SSLContext | bool = True  # the backend's tls_* settings (gateway/tls.py); True: the system store


class Upstream:
    """The process's pooled connections to every backend."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._plans: dict[tuple[str, str], _BackendPlan] = {}
        self._plan_errors: set[str] = set()  # backends whose credential could not be read (logged once)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30.0)
        # DummyCookieJar: a backend's Set-Cookie must never be stored and replayed on other clients' requests.
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",),
                                              cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The pooled session (None before ``start``/after ``close``): fingerprint probes travel on it too."""
        return self._session

    def plan(self, b: BackendConfig) -> _BackendPlan:
        """Per-backend constants, computed once per config object: base URL, credential, timeouts. After a
        reload (SIGHUP or admin API) the new objects make new plans, so a changed credential is read again."""
        key = (b.name, b.url)
        p = self._plans.get(key)
        if p is None or p.cfg is not b:
            base = b.url + "/v1"  # the config drops a trailing /v1 from url
            secret = read_header_secret(b.api_key_env, b.api_key_file, what=f"backend {b.name!r} api key")
            if (b.api_key_env or b.api_key_file) and not secret:
                log.warning("backend %r: api_key_env %r is not set; calling it without a credential",
                            b.name, b.api_key_env)
            p = self._plans[key] = _BackendPlan(
                b, base, f"Bearer {secret}" if secret else None,
                aiohttp.ClientTimeout(total=b.first_byte_timeout_s, sock_connect=b.connect_timeout_s),
                aiohttp.ClientTimeout(total=None, sock_connect=b.connect_timeout_s, sock_read=b.idle_timeout_s),
                {endpoint: URL(base + path) for endpoint, path in PATHS.items()},
                backend_tls(b),
            )
        return p

    async def open(self, b: BackendConfig, endpoint: str, data: bytes, headers: CIMultiDict[str],
                   stream: bool) -> aiohttp.ClientResponse:
        """Send the request; return once the response headers are in."""
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        try:
            plan = self.plan(b)
        except ConfigError as e:
            # the backend's credential cannot be read (an api_key_file gone since start-up): this backend fails
            # the attempt like an unreachable one (another backend is tried; health checks take it out), never
            # a 500 for the client. Logged once per backend: the ConfigError names the file.
            if b.name not in self._plan_errors:
                self._plan_errors.add(b.name)
                log.error("backend %s: %s; its requests fail over to other backends", b.name, e)
            raise AttemptFailed("connect", detail="credential") from e
        self._plan_errors.discard(b.name)
        if plan.auth:
            headers["Authorization"] = plan.auth
        else:
            headers.popall("Authorization", None)  # a previous try's backend credential must not leak
        try:
            # No redirects: a backend's Location must not carry the client's prompt to another origin
            # (307/308 re-POST the body) nor turn it into a GET whose answer is relayed as a 200 (301/302).
            return await self._session.post(plan.urls[endpoint], data=data, headers=headers,
                                            timeout=plan.stream_timeout if stream else plan.timeout,
                                            allow_redirects=False, ssl=plan.ssl)
        except aiohttp.ConnectionTimeoutError as e:
            # no connection (aiohttp raises this for any timer that fires while connecting): nothing was sent
            raise AttemptFailed("timeout", detail="connect") from e
        except TimeoutError as e:
            # sent, no headers yet. Non-streamed: first_byte_timeout_s, the whole generation's bound (not retried);
            # a stream: idle_timeout_s before its headers (retried, like a stall before its first chunk)
            raise AttemptFailed("timeout", retryable=stream) from e
        except aiohttp.ClientError as e:
            raise AttemptFailed("connect", detail=type(e).__name__) from e

    async def read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body of a non-streaming response, at most ``MAX_ANSWER_BYTES`` (more: ``too_large``, not
        retried: another backend would generate it again)."""
        try:
            size = resp.content_length
            if size is not None and size <= MAX_ANSWER_BYTES:
                return await resp.read()  # the usual case (uvicorn declares it): aiohttp reads that many bytes
            if size is None:  # chunked, or until the connection closes
                parts: list[bytes] = []
                size = 0
                async for part in resp.content.iter_any():
                    size += len(part)
                    if size > MAX_ANSWER_BYTES:
                        break
                    parts.append(part)
                else:
                    return b"".join(parts)
            resp.close()
            log.warning("the backend at %s answered more than %d bytes (%s); answering 502", resp.url.origin(),
                        MAX_ANSWER_BYTES, "declared" if resp.content_length is not None else "read so far")
            raise AttemptFailed("too_large", detail=f"over {MAX_ANSWER_BYTES} bytes", retryable=False)
        except TimeoutError as e:
            resp.close()  # the headers came, the body did not: the generation may still run there (not retried)
            raise AttemptFailed("timeout", retryable=False) from e
        except aiohttp.ClientError as e:
            resp.close()
            raise AttemptFailed("read", detail=type(e).__name__) from e
