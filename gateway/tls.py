"""TLS for the gateway's listeners: a server context from ``server.tls_cert_file`` / ``tls_key_file``.

Clients send their API keys and prompts to the gateway: without a TLS-terminating load balancer in front of
it, the gateway's own listeners must speak TLS. TLS 1.2 is the floor (RFC 9325); Python's defaults choose the
cipher suites. The certificate chain is read again on SIGHUP (``reload``), so a certificate renewed in place
(cert-manager, certbot) is served to new connections without a restart; a renewal that cannot be read keeps
the running certificate and is logged.
"""

from __future__ import annotations

import logging
import ssl

from gateway.config.base import ConfigError

log = logging.getLogger(__name__)


class TlsError(ConfigError):
    """A certificate or key that cannot be used; the message names the file (``ipgate serve`` exits 2)."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load(ctx, cert_file, key_file)
    return ctx


def load(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load the chain and key into ``ctx``; ``TlsError`` says which file and why."""
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as e:
        raise TlsError(f"server.tls: {e.filename or cert_file} does not exist") from None
    except PermissionError as e:
        raise TlsError(f"server.tls: {e.filename or cert_file} cannot be read (permission denied)") from None
    except ssl.SSLError as e:
        # OpenSSL's reason ("KEY_VALUES_MISMATCH", "PEM lib") names the problem, not the file: add both
        raise TlsError(f"server.tls: tls_cert_file {cert_file} / tls_key_file {key_file} cannot be used: "
                       f"{e.reason or e}") from None
    except OSError as e:
        raise TlsError(f"server.tls: {cert_file} / {key_file}: {e.strerror or e}") from None


def reload(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> bool:
    """SIGHUP: read the (renewed) chain again; on failure keep serving the loaded one. Returns success."""
    try:
        load(ctx, cert_file, key_file)
    except TlsError as e:
        log.error("TLS certificate not reloaded, the running one stays: %s", e)
        return False
    log.info("TLS certificate reloaded from %s", cert_file)
    return True
