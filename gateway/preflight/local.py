"""``offline(cfg)``: the pre-flight checks that need no network (``ipgate check`` without ``--connect``).

Every part of the gateway that reads the configuration, secrets and files is built with the constructors
``ipgate serve`` uses; what starts but likely does something other than meant is a warning. The checks of
each backend entry are in ``gateway.preflight.backends``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import GatewayConfig
from gateway.config.auth import SUSPICIOUS_MAX_IN_FLIGHT
from gateway.preflight.backends import backend, cache_salts
from gateway.preflight.finding import Finding, Guard

if TYPE_CHECKING:
    from gateway.policy import Policy


def _writable_dir(path: str, makes_dirs: bool = False) -> str | None:
    """Why a file at ``path`` could not be created or appended to (None when it can); nothing is written.
    ``makes_dirs``: the writer creates missing directories on its first write (the alert JSONL sink, the
    recipients file), so the nearest existing directory above must be writable instead."""
    p = Path(path)
    if p.exists():
        return None if os.access(p, os.W_OK) else f"{p} is not writable"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        if not makes_dirs:
            return f"directory {parent} does not exist"
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"{parent} is not a directory"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"directory {parent} is not writable"


def offline(cfg: GatewayConfig, env: Mapping[str, str] | None = None) -> list[Finding]:
    env = os.environ if env is None else env
    out: list[Finding] = []
    n_backends = sum(len(m.backends) for m in cfg.models)
    out.append(Finding("ok", "config", f"{len(cfg.models)} model(s), {n_backends} backend(s), "
                                       f"store {cfg.store.kind}, {cfg.server.workers} worker(s)"))
    from gateway.policy import Policy

    policy = None
    with Guard(out, "policy", ""):
        policy = Policy.from_config(cfg)
        out.append(Finding("ok", "policy", "tiers " + ", ".join(t.name for t in policy.tiers)))
    _auth(cfg, env, out)
    if policy is not None:
        _limit_classes(cfg, policy, out)
    from gateway.admin.app import admin_token, audit_key

    with Guard(out, "admin", ""):
        if admin_token(cfg.admin, env):
            out.append(Finding("ok", "admin", f"bearer token from {cfg.admin.token_env}"))
        else:
            out.append(Finding("ok", "admin", "no admin token set: only JWTs with the 'admin' role are accepted"))
    with Guard(out, "admin", ""):
        if audit_key(cfg.admin, env):
            out.append(Finding("ok", "admin", f"audit chain keyed from {cfg.admin.audit_key_env}"))
    _watermark(cfg, env, out)
    if cfg.detection.enabled and policy is not None:
        from gateway.detection import GatewayDetection

        with Guard(out, "detection", f"combiner loaded, embedder {cfg.detection.embedder}") as guard:
            det = GatewayDetection.from_config(cfg, policy)
        if not guard.failed and cfg.detection.class_weights:
            _profiles(cfg, det.engine.weights, det.class_weights, out)
    elif not cfg.detection.enabled:
        out.append(Finding("warning", "detection", "detection.enabled is false: no client is scored or alerted on"))
    if cfg.alerts.sinks:
        from gateway.alerts.sinks import build_sinks

        with Guard(out, "alerts", "sinks " + ", ".join(s.name or s.kind for s in cfg.alerts.sinks)):
            build_sinks(cfg.alerts.sinks, default_redis_url=cfg.store.url,
                        default_cluster_seeds=cfg.store.cluster_urls)
        for s in cfg.alerts.sinks:
            if s.kind == "jsonl" and s.path and (why := _writable_dir(s.path, makes_dirs=True)):
                out.append(Finding("error", "alerts", f"jsonl sink {s.name or 'jsonl'}: {why}"))
    for path, what, makes_dirs in ((cfg.telemetry.access_log_file, "telemetry.access_log_file", False),
                                   (cfg.watermark.recipients_file, "watermark.recipients_file", True),
                                   (cfg.admin.audit_file, "admin.audit_file", False)):
        if path and (why := _writable_dir(path, makes_dirs)):
            out.append(Finding("error", what.split(".")[0], f"{what}: {why}"))
    _proxy_fields(cfg, out)
    if cfg.store.kind == "memory" and cfg.server.workers > 1:
        out.append(Finding("warning", "store", f"{cfg.server.workers} workers with the memory store: each worker "
                                               "keeps its own limits and detection state (use store.kind: redis)"))
    for m in cfg.models:
        for b in m.backends:
            backend(cfg, m.name, b, env, out)
    cache_salts(cfg, out)
    _tls(cfg, out)
    _client_address(cfg, out)
    from gateway.tls import TlsError, check_backend_tls

    try:
        check_backend_tls(cfg, fresh=True)
    except TlsError as e:
        out.append(Finding("error", "routing", str(e)))
    return out


def _client_address(cfg: GatewayConfig, out: list[Finding]) -> None:
    """Where the client's address (access log, alert evidence, traces) comes from (gateway/clientaddr.py)."""
    from gateway.clientaddr import HEADERS, parse_networks

    nets = parse_networks(cfg.server.trusted_proxies)  # validated when the file was loaded
    if not nets:
        out.append(Finding("ok", "server", "client address: the TCP peer (X-Forwarded-For is not read; behind a "
                                           "load balancer list it in server.trusted_proxies)"))
        return
    header = HEADERS[cfg.server.client_address_header]
    out.append(Finding("ok", "server", f"client address: the rightmost {header} hop not in "
                                       f"server.trusted_proxies ({', '.join(map(str, nets))})"))
    for n in nets:
        if n.prefixlen == 0:
            out.append(Finding("warning", "server", f"server.trusted_proxies lists {n}: every peer is trusted, so any "
                                                    f"client names its own address in {header} (list the "
                                                    "load balancers' addresses)"))


def _tls(cfg: GatewayConfig, out: list[Finding]) -> None:
    """The listeners' certificate: loadable with its key, and how long it stays valid."""
    sc = cfg.server
    if not (sc.tls_cert_file and sc.tls_key_file):
        out.append(Finding("ok", "server", "listeners speak plain HTTP (terminate TLS in front of them, or set "
                                           "server.tls_cert_file and server.tls_key_file)"))
        return
    from gateway.tls import TlsError, server_context

    try:
        server_context(sc.tls_cert_file, sc.tls_key_file)
    except TlsError as e:
        out.append(Finding("error", "server", str(e)))
        return
    from cryptography import x509  # installed with pyjwt[crypto]

    try:
        cert = x509.load_pem_x509_certificate(Path(sc.tls_cert_file).read_bytes())
    except (OSError, ValueError) as e:
        out.append(Finding("warning", "server", f"tls_cert_file {sc.tls_cert_file}: expiry not read ({e})"))
        return
    left = (cert.not_valid_after_utc.timestamp() - time.time()) / 86400
    if left < 0:
        out.append(Finding("error", "server", f"tls_cert_file {sc.tls_cert_file} expired {-left:.0f} days ago"))
    elif left < 14:
        out.append(Finding("warning", "server", f"tls_cert_file {sc.tls_cert_file} expires in {left:.1f} days"))
    else:
        out.append(Finding("ok", "server", f"TLS on both listeners ({cert.subject.rfc4514_string()}, valid for "
                                           f"{left:.0f} more days)"))


def _proxy_fields(cfg: GatewayConfig, out: list[Finding]) -> None:
    """The extension-field policy, each default entry the configuration dropped, and allowlist contradictions
    (gateway/proxy/fields.py)."""
    from gateway.proxy.fields import allowlist_problems, weakened

    p = cfg.proxy
    mode = f"unknown request fields {p.unknown_fields}" + (
        f" ({len(p.allowed_fields)} allowed beyond the known ones)" if p.unknown_fields != "pass" else "")
    out.append(Finding("ok", "proxy", f"{len(p.refused_fields)} request field(s) and {len(p.refused_headers)} "
                                      f"header(s) refused, {len(p.withheld_response_fields)} answer field(s) "
                                      f"withheld, {mode}"))
    out.extend(Finding("warning", "proxy", w)
               for w in weakened(p.refused_fields, p.refused_headers, p.withheld_response_fields))
    out.extend(Finding("warning", "proxy", w)
               for w in allowlist_problems(p.unknown_fields, p.allowed_fields, p.refused_fields))


def _limit_classes(cfg: GatewayConfig, policy: Policy, out: list[Finding]) -> None:
    """The plans, and a trusted tier that caps plans (its `limits` is below a plan's own)."""
    from gateway.policy import limits_from_config

    names = sorted(policy.limits_by_class)
    mapped = f", {len(cfg.limits_by_tenant)} tenant(s) mapped" if cfg.limits_by_tenant else ""
    claim = (f", JWT claim {cfg.auth.jwt.limits_claim!r}" if cfg.auth.jwt is not None and cfg.auth.jwt.limits_claim
             else "")
    out.append(Finding("ok", "limits", f"limit classes {', '.join(names)}{mapped}{claim}"))
    # An entry written in the file replaces the built-in one whole: `suspicious` without max_in_flight has the
    # default 64, not the built-in 4, at every tier that names it (unless the tier caps in-flight itself).
    written = cfg.limits.get("suspicious")
    if written is not None and "max_in_flight" not in written.model_fields_set:
        loose = [t.name for t in cfg.policy.tiers if t.limits == "suspicious"
                 and (t.max_in_flight is None or t.max_in_flight > SUSPICIOUS_MAX_IN_FLIGHT)]
        if loose:
            out.append(Finding("warning", "limits", f"limits.suspicious names no max_in_flight: an entry in the file "
                                                    f"replaces the built-in one whole, so clients at tier(s) "
                                                    f"{', '.join(loose)} may hold {written.max_in_flight} requests "
                                                    f"in flight, not the built-in {SUSPICIOUS_MAX_IN_FLIGHT}; set "
                                                    "limits.suspicious.max_in_flight"))
    first = policy.tiers[0]
    capped = [n for n in names if policy.limits_for(0, n) != limits_from_config(cfg.limits[n])]
    if capped:
        out.append(Finding("warning", "limits", f"tier {first.name!r} (the most trusted) names limits "
                                                f"{first.limits!r}: plans looser than it ({', '.join(capped)}) are "
                                                "capped to it for every client; omit `limits` on that tier to let "
                                                "each plan apply"))


def _profiles(cfg: GatewayConfig, base: Mapping[str, float], profiles: Mapping[str, Mapping[str, float]],
              out: list[Finding]) -> None:
    """The detection profiles per plan, and how a client with credentials of several plans is judged."""
    from detectors.profiles import MAX_PLAN_BYTES, MAX_PLANS

    def changes(w: Mapping[str, float]) -> str:
        moved = [f"{d} {w[d]:g}" for d in sorted(w) if w[d] != base.get(d)]
        return ", ".join(moved) or "the engine's weights"

    shown = "; ".join(f"{plan}: {changes(w)}" for plan, w in sorted(profiles.items()))
    out.append(Finding("ok", "detection", f"detection profiles {shown}; a client seen with several plans is judged "
                                          "by the strictest (per detector the highest weight among its plans)"))
    long = sorted(n for n in cfg.limits if len(n.encode("utf-8", "surrogatepass")) > MAX_PLAN_BYTES)
    if len(cfg.limits) > MAX_PLANS or long:
        why = (f"{len(cfg.limits)} plans: a client seen with more than {MAX_PLANS} of them (the most its state "
               "records)" if not long else
               f"plan names longer than {MAX_PLAN_BYTES} bytes ({', '.join(n[:20] + '...' for n in long)}): a client "
               "seen with one")
        out.append(Finding("warning", "detection", f"limits: {why} is judged by the strictest of every profile and "
                                                   "of the fitted weights"))


def _auth(cfg: GatewayConfig, env: Mapping[str, str], out: list[Finding]) -> None:
    from gateway.auth.jwt import JwtVerifier
    from gateway.auth.limitclass import LimitClasses

    classes = LimitClasses.from_config(cfg)  # the config validator checked limits_by_tenant's names

    jwt_cfg = cfg.auth.jwt
    methods = []
    if jwt_cfg is not None:
        with Guard(out, "auth", "") as g:
            JwtVerifier.from_config(jwt_cfg, env=env)
        if not g.failed:
            source = (f"JWKS {jwt_cfg.jwks_url}" if jwt_cfg.jwks_url else jwt_cfg.public_key_file
                      or jwt_cfg.secret_file or jwt_cfg.secret_env)
            methods.append(f"JWT {'/'.join(jwt_cfg.algorithms)} ({source})")
    if cfg.auth.api_keys.file:
        from gateway.auth.apikeys import ApiKeyFile

        with Guard(out, "auth", "") as g:
            keys = ApiKeyFile(cfg.auth.api_keys.file, classes)  # an unknown limits= class: error with its line
        if not g.failed:
            methods.append(f"API keys ({cfg.auth.api_keys.file}, {len(keys.table)} key(s))")
    if methods:
        out.append(Finding("ok", "auth", "; ".join(methods)))
    elif jwt_cfg is None and not cfg.auth.api_keys.file:
        out.append(Finding("warning", "auth", "no authentication method configured: every request is rejected"))


def _watermark(cfg: GatewayConfig, env: Mapping[str, str], out: list[Finding]) -> None:
    w = cfg.watermark
    if not w.enabled or (w.scheme == "none" and all(m.watermark_scheme in (None, "none") for m in cfg.models)):
        out.append(Finding("warning", "watermark", "watermarking is off: leaked text cannot be traced to a client"))
        return
    from gateway.watermarking import GatewayWatermarking

    with Guard(out, "watermark", "") as g:
        wm = GatewayWatermarking.from_config(cfg, environ=env)
    if g.failed:
        return
    versions = sorted({w.key_version, *w.retained_versions}, reverse=True)
    out.append(Finding("ok", "watermark", f"master secret loaded; key version {w.key_version} (verifies "
                                          f"{', '.join(map(str, versions))})"))
    for m in cfg.models:
        scheme = wm.scheme_for(m.name)
        if scheme == "kgw" and not any(b.watermark_capable for b in m.backends):
            out.append(Finding("warning", f"model {m.name}", "scheme kgw but no backend is watermark_capable: "
                                                             "every response gets the lexical watermark"))
        elif scheme == "none":
            out.append(Finding("warning", f"model {m.name}", "watermark scheme none: its responses are not "
                                                             "watermarked"))
        for b in m.backends:
            if b.watermark_capable and not b.kgw_probe and scheme != "none":
                out.append(Finding("warning", f"backend {m.name}/{b.name}", "watermark_capable with kgw_probe "
                                   "off: the KGW plugin is trusted unchecked; an engine started without it serves "
                                   "unwatermarked text"))
    if cfg.store.kind == "memory" and not w.recipients_file:
        out.append(Finding("warning", "watermark", "memory store and no watermark.recipients_file: the recorded "
                                                   "recipients live in the gateway process only, so `ipgate verify "
                                                   "--config` finds none (give it --clients, or set the file)"))
