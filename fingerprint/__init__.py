"""Model fingerprints: probes → signatures → match verdicts (sans-IO).

A backend that claims to serve model M is asked probes at temperature 0 (a random sample of the reference's
probe set each round, ``probeset.py``); the answers (text and, where the backend returns them, the first
token's top logprobs) form a ``Signature``. Comparing it with a
reference signature recorded from the genuine model tells a swapped, tampered or re-quantised backend (or a
canary that is not what was rolled out) from the real one. The gateway and the CLI do the HTTP calls.
"""

from fingerprint.match import FingerprintMatch, compare
from fingerprint.probes import DEFAULT_PROBES, Probe
from fingerprint.probeset import ProbeSetError, parse_probe_set, reference_probes
from fingerprint.signature import ProbeAnswer, Signature, build_signature

__all__ = [
    "DEFAULT_PROBES",
    "FingerprintMatch",
    "Probe",
    "ProbeAnswer",
    "ProbeSetError",
    "Signature",
    "build_signature",
    "compare",
    "parse_probe_set",
    "reference_probes",
]
