"""Claim the listen addresses before the workers bind them with ``SO_REUSEPORT``.

The workers bind with ``SO_REUSEPORT`` so that N processes share one port (``--workers N``). The same option
lets *any* other process of the same user bind that port as well: a second, unrelated ``ipgate serve`` (another
configuration, other keys) would start without an error and the kernel would hand it a share of the
connections. So the process that owns the listeners — the single worker, or the supervisor — claims each
address before anything binds it for real:

1. **A test bind without** ``SO_REUSEPORT`` (with ``SO_REUSEADDR``, like the real listeners, so that
   connections of an earlier run still in ``TIME_WAIT`` do not count). It fails with ``EADDRINUSE`` when
   anything holds the address — a running gateway's listeners included, whatever their ``SO_REUSEPORT`` —
   and when a wildcard (``0.0.0.0``, ``::``) overlaps a specific address of the same family, either way round.
2. **A placeholder**: a socket bound with ``SO_REUSEPORT`` and *without* ``SO_REUSEADDR``, which never
   listens (so it is never given a connection) and is kept until the process exits. Our own workers (same
   user, ``SO_REUSEPORT``) can bind beside it; any later test bind fails against it — also while the
   supervisor restarts a worker and, for a moment, nothing listens.

Both steps run under a start-up lock shared by every ipgate on the host (an abstract Unix socket, per network
namespace like the ports themselves, released by the kernel if the process dies), held for the microseconds
between them: two gateways started at the same instant cannot both pass step 1 before either placeholder
exists. If the lock cannot be had (no abstract sockets, or a process that keeps it), the claim goes on without
it and that window, microseconds wide, is the only one left.

Port 0 (an ephemeral port, different for every bind) is not claimed: there is nothing to share.
IPv6 sockets are ``IPV6_V6ONLY``, as asyncio's listeners are, so ``::`` and ``0.0.0.0`` are separate addresses.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

LOCK_NAME = "\0ipgate-listen-claim"  # abstract namespace (leading NUL): no file, gone with its process
LOCK_WAIT_S = 2.0  # the lock is held for microseconds; waiting longer means a stuck or hostile holder


class PortInUse(OSError):
    """The address is held by another process (another gateway included), or twice by this configuration."""

    def __init__(self, host: str, port: int, detail: str = "") -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} is already in use{detail}")


class PortClaim:
    """The placeholders that hold the claimed addresses until ``close()`` (or the process's exit)."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self._sockets]

    def close(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets = []

    def __enter__(self) -> PortClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _label(host: str, family: int, address: str) -> str:
    shown = f"[{address}]" if family == socket.AF_INET6 else address
    return shown if host in (address, f"[{address}]") else f"{host} ({shown})"


def _socket(family: int, *, reuse_address: bool, reuse_port: bool) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        if reuse_address:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # asyncio's create_server does the same: no dual-stack sockets
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except OSError:
        s.close()
        raise
    return s


def _resolve(host: str, port: int) -> list[tuple[int, tuple[str, int] | tuple[str, int, int, int]]]:
    """Every address the listener will bind: asyncio binds all that ``getaddrinfo`` returns (``localhost`` is
    often both ``127.0.0.1`` and ``::1``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise OSError(e.errno, f"{host}:{port}: {e.strerror}") from e
    seen: dict[tuple[int, tuple[str, int] | tuple[str, int, int, int]], None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and isinstance(sockaddr[0], str):
            seen[(family, sockaddr)] = None
    return list(seen)


@contextlib.contextmanager
def _startup_lock() -> Iterator[None]:
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + LOCK_WAIT_S
    try:
        while True:
            try:
                lock.bind(LOCK_NAME)
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:  # no abstract Unix sockets on this system
                    log.debug("start-up lock unavailable (%s): claiming the listen ports without it", e)
                    break
                if time.monotonic() >= deadline:
                    log.warning("the ipgate start-up lock has been held for over %.0f s by another process; "
                                "claiming the listen ports without it", LOCK_WAIT_S)
                    break
                time.sleep(0.001)
        yield
    finally:
        lock.close()


def claim_ports(listeners: Mapping[str, tuple[str, int]]) -> PortClaim:
    """Claim each ``{name: (host, port)}`` (``listen``, ``admin_listen``) or raise.

    Raises ``PortInUse`` (an ``OSError`` with ``EADDRINUSE``) when an address is taken, and ``OSError`` naming
    ``host:port`` when it cannot be bound at all (an address this host does not have, a privileged port)."""
    held: list[socket.socket] = []
    claimed: dict[int, str] = {}  # port → name of the listener that claimed it first (overlap within one config)
    # Names are resolved before the host-wide lock is taken: a DNS lookup can take seconds, the lock is meant
    # to be held for microseconds (others wait at most LOCK_WAIT_S for it, then claim without it).
    resolved = [(name, host, port, _resolve(host, port)) for name, (host, port) in listeners.items() if port != 0]
    with _startup_lock():
        try:
            for name, host, port, addresses in resolved:
                for family, sockaddr in addresses:
                    label = _label(host, family, sockaddr[0])
                    with _socket(family, reuse_address=True, reuse_port=False) as probe:
                        try:
                            probe.bind(sockaddr)
                        except OSError as e:
                            if e.errno != errno.EADDRINUSE:
                                raise OSError(e.errno, f"{host}:{port}: {e.strerror}") from e
                            mine = claimed.get(port)
                            raise PortInUse(label, port, f" (by this configuration's {mine})" if mine else "") from e
                    placeholder = _socket(family, reuse_address=False, reuse_port=True)
                    held.append(placeholder)
                    try:
                        placeholder.bind(sockaddr)
                    except OSError as e:  # only if something took it in the microseconds since the probe
                        if e.errno != errno.EADDRINUSE:
                            raise OSError(e.errno, f"{host}:{port}: {e.strerror}") from e
                        raise PortInUse(label, port) from e
                    claimed.setdefault(port, name)
        except BaseException:
            for s in held:
                s.close()
            raise
    return PortClaim(held)


def claim_listen_ports(cfg: GatewayConfig) -> PortClaim:
    """Claim ``listen`` and ``admin_listen`` for this process's lifetime (raises ``PortInUse``/``OSError``)."""
    return claim_ports({"listen": cfg.listen_addr, "admin_listen": cfg.admin_addr})
