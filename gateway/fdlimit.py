"""The process's open-file limit, raised to its hard limit when ``ipgate serve`` starts.

Every client connection, every pooled backend connection and every health probe holds a file descriptor, and
the soft limit is the gateway's only cap on connections: at it, new connections cannot be accepted (``/readyz``
times out too) until some close. A shell's soft limit is often 1 024 while the hard limit allows far more (the
systemd unit sets ``LimitNOFILE``). Go's runtime and nginx (``worker_rlimit_nofile``) raise it for the same
reason; only the soft limit moves, up to the hard one, which needs no privilege. Worker processes inherit it.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # not POSIX: nothing to raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAX_NOFILE = 1 << 20  # Linux's default fs.nr_open: the most a process may ask for when the hard limit is unlimited
LOW_NOFILE = 4096  # below this, say that the limit caps connections


def raise_open_file_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (at most ``MAX_NOFILE``); the soft limit now, or
    None where there is none. Logged once: raised (INFO), refused by the kernel or still low (WARNING)."""
    if resource is None:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    target = MAX_NOFILE if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        now = soft
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("open-file limit %d: could not raise it to the hard limit %d (%s)", soft, target, e)
            now = soft
        else:
            log.info("open-file limit raised from %d to %d (the hard limit): each connection holds one", soft,
                     target)
            now = target
    if now != resource.RLIM_INFINITY and now < LOW_NOFILE:
        log.warning("open-file limit %d (hard limit %s): the gateway accepts at most about that many client and "
                    "backend connections together; raise it (LimitNOFILE in a systemd unit, ulimit -n)", now,
                    "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return now
