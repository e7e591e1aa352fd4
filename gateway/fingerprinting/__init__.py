"""Background fingerprint checks: does each backend still serve the model it claims to serve?

Every ``fingerprint.interval_s`` (and once at start-up, and on demand from the admin API) each backend with a
``fingerprint_reference`` is sent a fresh random sample of ``fingerprint.probes_per_check`` of the reference's
probes (``fingerprint/probeset.py``; drawn with ``secrets.SystemRandom``, so a backend cannot predict the next
round from the last; the confirming second round draws again) with its own API key and the upstream model
name, exactly as the proxy would address it, and its answers are compared with the reference's answers to the
same probes (``fingerprint/match.py``). A reference recorded from a private probe set holds the private
prompts: they are sent to the backend and nowhere else (never logged, never in a reason or the admin API).

Verdicts and what follows from them:
- ``mismatch``: logged (once per state change), counted, an alert raised through the ``AlertDispatcher``;
  with ``action: eject`` the backend is quarantined in the router (no traffic; no timer, no half-open trial,
  because a request's success says nothing about which weights answered it), and when it is a canary in
  rollout the rollout is aborted.
- ``match``: a quarantine this checker imposed is lifted: the backend serves the genuine model again — unless
  it was already put back ``auto_release_limit`` times within ``auto_release_window_s``: a backend that answers
  the probes genuinely only while quarantined (it receives nothing else) and swaps back once released would
  cycle for ever, so its quarantine then holds until an operator releases it (the reason says so).
- ``inconclusive``: no probe answered (connection, timeout, HTTP error, malformed answer), the reference
  could not be read, fewer than ``min_probes`` probes gave a usable answer (a failed or empty one counts as
  none), the similarity fell between the thresholds, or a mismatch was not confirmed by a second round.
  Nothing changes: an unreachable backend is the health checks' business, and a flaky one must never be
  ejected as "swapped" (failed probes are no evidence; the ones that answered are).

Nothing here raises into the event loop: every failure of one backend's check is that check's inconclusive
verdict, and a bug in a round is logged and the next round runs.

Each gateway process (replica or worker) runs its own checker; the probes are cheap (``probes_per_check``
short temperature-0 requests per backend per interval) and every process needs the verdict for its own router.

Layout: ``checker`` (``FingerprintChecker``: the periodic and on-demand rounds and the probes of one check, and
``load_reference``) and ``verdicts`` (``BackendCheck``, the outcome of one check; ``Verdicts``, what the checker
remembers of each backend and what a new verdict sets off: quarantine, release, alert, metrics, log line).
"""

from __future__ import annotations

from gateway.fingerprinting.checker import FingerprintChecker, load_reference
from gateway.fingerprinting.verdicts import BackendCheck

__all__ = ["BackendCheck", "FingerprintChecker", "load_reference"]
