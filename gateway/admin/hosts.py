"""The admin listener answers only requests whose ``Host`` header names it: protection against DNS rebinding.

A web page the operator visits (``http://evil.example:9090/``) can make its own name resolve to 127.0.0.1
after the page has loaded; the browser then sends the page's requests to the admin listener, treats the
answers as same-origin, and lets the page read them. Credentials never travel implicitly (the admin API
reads only the ``Authorization`` header), but ``/metrics``, ``/healthz``, ``/readyz`` and the dashboard
page need none. The browser still sends the attacker's name in ``Host``, so refusing unknown names closes it.

Allowed ``Host`` values (any port, or none; names compared case-insensitively, a trailing dot ignored):

- the literal host of ``admin_listen`` (an IP address or a name);
- ``localhost``, ``127.0.0.1`` and ``[::1]`` when ``admin_listen`` is a loopback or a wildcard address;
- any literal IP address when ``admin_listen`` is a wildcard (``0.0.0.0``, ``::``): rebinding needs a DNS
  name the attacker controls; a Host that is an IP literal was typed or configured by whoever sent it (the
  kubelet's probes and Prometheus' pod discovery use the pod's IP) and cannot be re-pointed;
- ``admin.allowed_hosts``: names (``prometheus-scrape.monitoring.svc``) and ``*.example.com`` (any name
  ending in ``.example.com``, not ``example.com`` itself), and IP addresses.

Anything else, a missing ``Host`` (HTTP/1.0) and several ``Host`` headers get ``421 Misdirected Request``
(OpenAI-shaped JSON naming the header). Each refusal counts in
``ipgate_auth_failures_total{reason="admin_host"}``; the first refusal of each distinct value is logged
(WARNING, up to ``MAX_LOGGED_HOSTS`` values per process, so a flood of made-up names cannot flood the log).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METRIC_REASON = "admin_host"  # the label value in ipgate_auth_failures_total
MAX_LOGGED_HOSTS = 64
_SHOWN_CHARS = 100  # of a refused Host value, in the answer and the log
LOOPBACK_NAMES = frozenset({"localhost"})
LOOPBACK_IPS: frozenset[IPAddress] = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
# One DNS label (underscores too: Docker Compose service names have them); the name at most 253 characters.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class MisdirectedRequest(GatewayError):
    """421: the request names a host this listener does not serve (RFC 9110 §15.5.20)."""

    status = 421
    error_type = "invalid_request_error"
    default_code = "misdirected_request"


def _ip(host: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip  # [::ffff:127.0.0.1] is 127.0.0.1


def _is_name(host: str) -> bool:
    labels = host.split(".")
    # a last label of digits only is no name: "10.0.0.300" is a mistyped address (browsers read it as IPv4)
    return (len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def host_of(header: str) -> str | None:
    """The host of a ``Host`` header value (lower case, no port, no brackets, no trailing dot); None when the
    value is not ``uri-host [":" port]``."""
    value = header.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)  # only an IPv6 address goes in brackets
        except ValueError:
            return None
    else:
        host, sep, port = value.partition(":")
        rest = sep + port
    if rest and not (rest[0] == ":" and len(rest) <= 6 and (rest[1:].isdigit() or rest == ":")):
        return None  # a second colon (an unbracketed IPv6 address), a port that is no number
    host = host[:-1] if host.endswith(".") else host
    return host or None


def normalize_allowed(entries: Iterable[str]) -> list[str]:
    """``admin.allowed_hosts`` as matched (lower case, no trailing dot, IP addresses in canonical form);
    ``ValueError`` naming the first bad entry. Called by the config validator."""
    out: list[str] = []
    for i, raw in enumerate(entries):
        entry = raw.strip().lower()
        entry = entry[:-1] if entry.endswith(".") else entry
        unbracketed = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        ip = _ip(unbracketed)
        if ip is not None:
            out.append(str(ip))
            continue
        problem = None
        if "/" in entry:
            problem = "must be a host name, not a URL"
        elif ":" in entry:
            problem = "must be a host name without a port (every port of an allowed name is accepted)"
        elif entry.startswith("*."):
            suffix = entry[2:]
            if not _is_name(suffix):
                problem = "'*.' must be followed by a DNS name"
            elif suffix.count(".") < 1:
                problem = ("a wildcard needs at least two labels after '*.' (a domain you control, e.g. "
                           "*.example.com): a top-level domain would let anyone's name through")
        elif "*" in entry:
            problem = "'*' is allowed only as a whole first label ('*.example.com')"
        elif not _is_name(entry):
            problem = "not a DNS name (letters, digits, '-', '_' in dot-separated labels) or an IP address"
        if problem:
            raise ValueError(f"entry {i} ({raw!r}): {problem}")
        out.append(entry)
    return out


class HostAllowlist:
    """Which ``Host`` values the admin listener answers (see the module docstring)."""

    def __init__(self, listen_host: str, allowed: Iterable[str] = ()) -> None:
        listen = listen_host.strip("[]").lower()
        listen_ip = _ip(listen)
        self.names: set[str] = set()
        self.suffixes: tuple[str, ...] = ()
        self.ips: set[IPAddress] = set()
        # Listening on a wildcard, the listener has as many addresses as the host has (pod IPs, a VIP, ...).
        # Any literal IP is then allowed: rebinding works by re-pointing a DNS name the attacker controls at
        # this address, and the browser sends that name, never an IP, as Host. A literal IP cannot be re-pointed.
        self.any_ip = listen_ip is not None and listen_ip.is_unspecified
        if listen_ip is not None:
            self.ips.add(listen_ip)
        else:
            self.names.add(listen.rstrip("."))
        if self.any_ip or listen in LOOPBACK_NAMES or (listen_ip is not None and listen_ip.is_loopback):
            self.names |= LOOPBACK_NAMES
            self.ips |= LOOPBACK_IPS
        for entry in normalize_allowed(allowed):
            ip = _ip(entry)
            if ip is not None:
                self.ips.add(ip)
            elif entry.startswith("*."):
                self.suffixes += (entry[1:],)  # ".example.com"
            else:
                self.names.add(entry)

    def allows(self, header: str) -> bool:
        host = host_of(header)
        if host is None:
            return False
        ip = _ip(host)
        if ip is not None:
            return self.any_ip or ip in self.ips
        return host in self.names or host.endswith(self.suffixes)


def _shown(value: str) -> str:
    return ascii(value[:_SHOWN_CHARS] + ("..." if len(value) > _SHOWN_CHARS else ""))


def host_check(allowlist: HostAllowlist, refused: Callable[[], None]) -> Middleware:
    """The middleware (placed first, before admin auth: every route, the unauthenticated ones and 404s
    included). ``refused`` is called once per refusal (the metric)."""
    logged: set[str] = set()

    def note(key: str, request: web.Request) -> None:
        if key in logged:
            return
        if len(logged) >= MAX_LOGGED_HOSTS:
            if "(more)" not in logged:
                logged.add("(more)")  # said once; the set stays bounded
                log.warning("admin listener: %d distinct Host values refused; further ones are only counted "
                            "(ipgate_auth_failures_total{reason=\"%s\"})", MAX_LOGGED_HOSTS, METRIC_REASON)
            return
        logged.add(key)
        log.warning("admin listener: refused Host %s (from %s) with 421: not admin_listen's host, a loopback "
                    "name or in admin.allowed_hosts. A DNS-rebinding attempt, or a name of yours to add to "
                    "admin.allowed_hosts (logged once per value)", key, request.remote)

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp's parser already answers 400 to HTTP/1.1 without Host and to a repeated Host; HTTP/1.0
        # needs none. Checked here all the same, so a parser change cannot let either through.
        values = request.headers.getall("Host", [])
        if len(values) == 1 and allowlist.allows(values[0]):
            return await handler(request)
        refused()
        if not values:
            note("(none)", request)
            raise MisdirectedRequest("The Host header is missing: the admin listener answers only requests "
                                     "that name one of its allowed hosts (DNS-rebinding protection).",
                                     param="Host")
        if len(values) > 1:
            note("(several)", request)
            raise MisdirectedRequest("Several Host headers: send exactly one.", param="Host")
        shown = _shown(values[0])
        note(shown, request)
        raise MisdirectedRequest(
            f"The Host header {shown} is not a host this admin listener answers to (DNS-rebinding protection): "
            "use the admin_listen address or localhost, or add the name to admin.allowed_hosts.", param="Host")

    return check_host
