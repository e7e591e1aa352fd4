"""TLS: the listeners' server context (``server.tls_cert_file`` / ``tls_key_file``), and the client context
a backend entry asks for (``tls_ca_file``, ``tls_cert_file`` / ``tls_key_file``: a private CA, mutual TLS).

Clients send their API keys and prompts to the gateway: without a TLS-terminating load balancer in front of
it, the gateway's own listeners must speak TLS. TLS 1.2 is the floor (RFC 9325); Python's defaults choose the
cipher suites. The certificate chain is read again on SIGHUP (``reload``), so a certificate renewed in place
(cert-manager, certbot) is served to new connections without a restart; a renewal that cannot be read keeps
the running certificate and is logged.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from gateway.config.base import ConfigError

if TYPE_CHECKING:
    from gateway.config import BackendConfig, GatewayConfig

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
    """SIGHUP: read the (renewed) chain again; on failure keep serving the loaded one. Returns success.

    The pair is tried in a scratch context first: loading into the live one replaces the certificate before
    the key is read, and OpenSSL drops the loaded key when it does not match the new certificate, so a
    half-done renewal (the new certificate, the old key) would leave the listeners without a key - every
    handshake failing - while the log said the running certificate stays. (The files are read twice: a
    renewal that rewrites one between the two reads, microseconds apart, is the window left.)"""
    try:
        server_context(cert_file, key_file)
        load(ctx, cert_file, key_file)
    except TlsError as e:
        log.error("TLS certificate not reloaded, the running one stays: %s", e)
        return False
    log.info("TLS certificate reloaded from %s", cert_file)
    return True


def backend_context(ca_file: str | None, cert_file: str | None, key_file: str | None,
                    what: str = "backend") -> ssl.SSLContext | bool:
    """The ``ssl=`` argument for every request to one backend (proxied requests, health checks, watermark
    plugin probes, fingerprint probes): ``True`` (the system trust store) when nothing is set, else a
    verifying context trusting ``ca_file`` (or the system store) and presenting ``cert_file`` (mutual TLS: the
    engine then serves only holders of a gateway certificate). Cached by the files' names; a reload rebuilds the
    cache (``check_backend_tls(fresh=True)``) so renewed files are read again."""
    if ca_file is None and cert_file is None:
        return True
    key = (ca_file, cert_file, key_file)
    ctx = _BACKEND.get(key)
    if ctx is None:
        try:
            ctx = ssl.create_default_context(cafile=ca_file)  # hostname checks and verification on
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"{what}: tls_ca_file {ca_file} cannot be used: {_why(e)}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None:
            try:
                ctx.load_cert_chain(cert_file, key_file)
            except (OSError, ssl.SSLError) as e:
                raise TlsError(f"{what}: tls_cert_file {cert_file} / tls_key_file {key_file} cannot be used: "
                               f"{_why(e)}") from None
        _BACKEND[key] = ctx
    return ctx


_BACKEND: dict[tuple[str | None, str | None, str | None], ssl.SSLContext] = {}


def backend_tls(b: BackendConfig) -> ssl.SSLContext | bool:
    """``backend_context`` of one backend entry (``TlsError`` names the backend and the file)."""
    return backend_context(b.tls_ca_file, b.tls_cert_file, b.tls_key_file, what=f"backend {b.name}")


def check_backend_tls(cfg: GatewayConfig, *, fresh: bool = False) -> None:
    """Build every backend's TLS context now (start-up, reload, ``ipgate check``), so an unusable file is a
    ``TlsError`` naming the backend then, never a failure on a client's request. ``fresh``: forget the cached
    contexts first, so files renewed in place are read again (a reload); on failure the old ones stay."""
    saved = dict(_BACKEND)
    if fresh:
        _BACKEND.clear()
    try:
        for m in cfg.models:
            for b in m.backends:
                backend_tls(b)
    except TlsError:
        _BACKEND.clear()
        _BACKEND.update(saved)
        raise


def _why(e: OSError | ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    return e.strerror or str(e)


def not_after(cert_file: str) -> float | None:
    """The end of the served certificate's validity (the first of the chain), unix seconds; None when the
    file cannot be parsed (it loaded into the context, so OpenSSL read it: a format cryptography rejects)."""
    from cryptography import x509  # installed with pyjwt[crypto]

    try:
        with open(cert_file, "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()
    except (OSError, ValueError):
        return None
