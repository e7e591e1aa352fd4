"""``offline``'s checks of the backend entries: each one's credential and fingerprint reference (can its probes
rotate, can a dishonest backend recognise them), and one engine reached with different ``cache_salt``."""

from __future__ import annotations

from collections.abc import Mapping

from fingerprint import Signature
from gateway.config import BackendConfig, GatewayConfig, read_header_secret
from gateway.preflight.finding import Finding, Guard


def backend(cfg: GatewayConfig, model: str, b: BackendConfig, env: Mapping[str, str], out: list[Finding]) -> None:
    area = f"backend {model}/{b.name}"
    with Guard(out, area, "") as g:
        secret = read_header_secret(b.api_key_env, b.api_key_file, what=f"backend {b.name} api key", env=env)
    if not g.failed and (b.api_key_env or b.api_key_file) and not secret:
        out.append(Finding("warning", area, f"api_key_env {b.api_key_env} is not set: requests go without a "
                                            "credential"))
    if b.fingerprint_reference and cfg.fingerprint.enabled:
        from gateway.fingerprint_client import FingerprintError
        from gateway.fingerprinting import load_reference

        try:
            ref = load_reference(b)
        except FingerprintError as e:
            out.append(Finding("error", area, f"fingerprint_reference: {e}"))
        else:
            sent = b.upstream_model or model
            if ref.model and ref.model != sent:
                out.append(Finding("warning", area, f"fingerprint_reference {b.fingerprint_reference} was recorded "
                                                    f"for model {ref.model!r}, but this backend serves {sent!r}"))
            out.extend(_probe_set_findings(cfg, area, b.fingerprint_reference, ref))
    out.append(Finding("ok", area, b.url + (" (watermark_capable)" if b.watermark_capable else "")))


def _probe_set_findings(cfg: GatewayConfig, area: str, path: str, ref: Signature) -> list[Finding]:
    """Can the reference's probes rotate, and can a dishonest backend recognise them?"""
    from fingerprint.probeset import public_probe_ids, reference_probes

    probes = reference_probes(ref)
    k = cfg.fingerprint.probes_per_check
    public = public_probe_ids(probes)
    out: list[Finding] = []
    if len(probes) < k:
        out.append(Finding("error", area, f"fingerprint_reference {path} has {len(probes)} probes, fewer than "
                                          f"fingerprint.probes_per_check ({k}): lower probes_per_check or "
                                          "re-record with a larger `ipgate fingerprint record --probes` set"))
    if probes and len(public) == len(probes):
        out.append(Finding("warning", area, f"fingerprint_reference {path} uses only the bundled public probes: a "
                                            "dishonest backend can recognise them and answer them with the genuine "
                                            "model; record it from a private set (`ipgate fingerprint record "
                                            "--probes FILE`)"))
    elif public:
        out.append(Finding("warning", area, f"fingerprint_reference {path}: {len(public)} of its {len(probes)} "
                                            "probes are bundled public ones, which a dishonest backend can "
                                            "recognise"))
    elif len(probes) == k:
        out.append(Finding("warning", area, f"fingerprint_reference {path} has exactly probes_per_check ({k}) "
                                            "probes: every round sends all of them, so one round shows a backend "
                                            "the whole private set"))
    return out


def cache_salts(cfg: GatewayConfig, out: list[Finding]) -> None:
    """One engine reached through backend entries with different ``cache_salt``: the salt is an unkeyed hash of
    the client id, so through an unsalted entry a client can send another client's salt and share its cache
    (the isolation holds only when every entry to the engine salts alike)."""
    by_url: dict[str, dict[str, list[str]]] = {}
    for m in cfg.models:
        for b in m.backends:
            by_url.setdefault(b.url.rstrip("/"), {}).setdefault(b.cache_salt, []).append(f"{m.name}/{b.name}")
    for url, modes in by_url.items():
        if len(modes) > 1:
            listed = "; ".join(f"{mode}: {', '.join(names)}" for mode, names in sorted(modes.items()))
            out.append(Finding("warning", "routing", f"{url} is reached with different cache_salt settings ({listed}): "
                                                     "set the same on every entry, or a client can send another "
                                                     "client's salt through the other"))
