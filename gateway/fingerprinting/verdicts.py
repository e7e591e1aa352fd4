"""The outcome of a fingerprint check (``BackendCheck``) and what follows from a verdict (``Verdicts``).

``Verdicts`` remembers each backend's last check, its last conclusive verdict (which decides alerts) and its
automatic releases, and acts on a new check: the configured action (quarantine, or the release of a quarantine
this checker set, unless the backend was put back too often: then it is held for an operator), the canary
rollout's abort, the metrics, one log line per state change and one alert per mismatch incident (see the
package docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, KeysView
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fingerprint.match import Verdict
from gateway.config import BackendConfig, FingerprintConfig
from gateway.errors import NotFound
from gateway.routing.canary import Op, Phase

if TYPE_CHECKING:
    from gateway.alerts.dispatcher import AlertDispatcher
    from gateway.routing.router import Router
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

QUARANTINE_PREFIX = "fingerprint mismatch"  # a quarantine reason this checker set (and so may lift)
HELD_MARK = "; held for an operator"  # in a reason: a match does not lift it (only the admin release does)
ALERT_TIER = "fingerprint_mismatch"
ALERT_TIER_INDEX = 3  # shown as the most severe badge on the dashboard; also the dispatcher's rate-limit key


@dataclass(frozen=True, slots=True)
class BackendCheck:
    """The outcome of one fingerprint check of one backend."""

    model: str
    backend: str
    url: str
    verdict: Verdict
    similarity: float | None  # median per-probe similarity; None when no comparison was made
    checked_at: float  # unix seconds
    duration_s: float
    reasons: tuple[str, ...]
    quarantined: bool = False  # the backend's quarantine state after this check
    probes_sent: int = 0  # in the (last) round; how many, never which: a private set's prompts stay private

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "backend": self.backend, "url": self.url, "verdict": self.verdict,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "checked_at": round(self.checked_at, 3), "duration_s": round(self.duration_s, 3),
            "reasons": list(self.reasons), "quarantined": self.quarantined, "probes_sent": self.probes_sent,
        }


class Verdicts:
    """Each backend's last check, last conclusive verdict and automatic releases, and the acting on a new check
    (``record``). The settings come with each check: they are the checker's, which a reload may replace."""

    def __init__(
        self,
        router: Router,
        metrics: Metrics | None,
        alerts: AlertDispatcher | None,
        wall: Callable[[], float],
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._alerts = alerts
        self._wall = wall
        self._last: dict[tuple[str, str], BackendCheck] = {}
        self._conclusive: dict[tuple[str, str], Verdict] = {}  # last match/mismatch (decides alerts)
        self._released: dict[tuple[str, str], list[float]] = {}  # wall times of automatic releases, per backend

    async def record(self, check: BackendCheck, probed: BackendConfig, cfg: FingerprintConfig) -> BackendCheck:
        """Act on a new check of ``probed`` under ``cfg`` (the checker's settings now); the check as recorded."""
        key = (check.model, check.backend)
        try:
            now = self._router.pool(check.model).state(check.backend).cfg
        except (NotFound, KeyError):  # the backend went away in a reload while it was being probed
            return check
        if now.url != check.url:
            # A reload pointed the name at another server while the probes ran: the verdict is about the old
            # one. Acting on it by name would quarantine (or release) a server nobody probed.
            log.info("model %s: backend %s moved to another URL during its check; result dropped",
                     check.model, check.backend)
            return check
        if (now.fingerprint_reference, now.upstream_model) != (probed.fingerprint_reference, probed.upstream_model):
            # A reload gave it another reference (or model name) while the probes ran (a spread round and its
            # confirming round can take up to the whole interval): the verdict judges the new configuration by the
            # old reference. Acted on, it quarantined a backend just moved to a new model with its new reference,
            # for good when the reload dropped the reference (nothing re-checks it). The next round judges it.
            log.info("model %s: backend %s got another fingerprint_reference or upstream_model during its check; "
                     "result dropped", check.model, check.backend)
            return check
        prev = self._last.get(key)
        if prev is not None and prev.url != check.url:
            prev = None  # same name, new URL: a different server, nothing to compare against
            self._conclusive.pop(key, None)
            self._released.pop(key, None)
        prev_conclusive = self._conclusive.get(key)
        try:
            quarantined = await self._act(check, cfg)
        except NotFound:  # the backend went away in a reload while it was being probed
            return check
        check = replace(check, quarantined=quarantined)
        self._last[key] = check
        if check.verdict != "inconclusive":
            self._conclusive[key] = check.verdict
        self._count(check)
        if prev is None or prev.verdict != check.verdict:
            self._log_change(check, prev.verdict if prev is not None else None)
        if check.verdict == "mismatch" and prev_conclusive != "mismatch":
            await self._alert(check, prev_conclusive)
        return check

    async def _act(self, check: BackendCheck, cfg: FingerprintConfig) -> bool:
        """Apply the configured action; return whether the backend is quarantined afterwards."""
        model, name = check.model, check.backend
        current = self._router.quarantined(model, name)
        if check.verdict == "match" and current is not None and current.startswith(QUARANTINE_PREFIX):
            if HELD_MARK in current:
                return True  # put back too often: only an operator lifts it
            self._router.release_quarantine(model, name, why="its fingerprint matches the reference again")
            self._releases(model, name, cfg).append(check.checked_at)
            return False
        if check.verdict != "mismatch" or cfg.action != "eject":
            return current is not None
        # The matcher's first reason says which evidence decided (a low median similarity, answers that differ,
        # or moved first-token distributions): "similarity X < threshold" would be false for the vetoes.
        sim = check.similarity if check.similarity is not None else 0.0
        why = check.reasons[0] if check.reasons else f"similarity {sim:.2f}"
        released = len(self._releases(model, name, cfg))
        if released >= cfg.auto_release_limit:
            days = cfg.auto_release_window_s / 86400
            why += (f"{HELD_MARK}: put back automatically {released} time{'s' * (released != 1)} in the last "
                    f"{days:g} days (fingerprint.auto_release_limit {cfg.auto_release_limit})")
            log.warning("model %s: backend %s quarantined until an operator releases it (POST /admin/fingerprint/"
                        "%s/%s/release): it mismatched again after %d automatic release(s) within %gs",
                        model, name, model, name, released, cfg.auto_release_window_s)
        self._router.quarantine(model, name, f"{QUARANTINE_PREFIX}: {why}")
        await self._abort_canary(model, name)
        return True

    def _releases(self, model: str, name: str, cfg: FingerprintConfig) -> list[float]:
        """This backend's automatic releases within the window (older ones dropped)."""
        since = self._wall() - cfg.auto_release_window_s
        kept = [t for t in self._released.get((model, name), ()) if t > since]
        self._released[(model, name)] = kept
        return kept

    async def _abort_canary(self, model: str, name: str) -> None:
        """A canary that is not the model that was rolled out: stop the rollout, not just its traffic."""
        pool = self._router.pool(model)
        if pool.canary_index is None or pool.backends[pool.canary_index].cfg.name != name:
            return
        ctl = self._router.canary(model)
        if ctl.state.phase not in (Phase.PROGRESSING, Phase.PAUSED):
            return
        try:
            await self._router.canary_command(model, Op.ABORT, by="fingerprint")
        except Exception as e:  # the store may be down; the quarantine already keeps traffic off the canary
            log.warning("model %s: could not abort the canary rollout of %s (%s: %s)",
                        model, name, type(e).__name__, e)
        else:
            log.warning("model %s: canary rollout of %s aborted: fingerprint mismatch", model, name)

    def _count(self, check: BackendCheck) -> None:
        m = self._metrics
        if m is None:
            return
        labels = {"model": check.model, "backend": check.backend}
        m.fingerprint_checks_total.labels(verdict=check.verdict, **labels).inc()
        if check.verdict != "inconclusive":  # an inconclusive check says nothing new about the weights
            m.fingerprint_match.labels(**labels).set(
                1 if check.verdict == "match" else 0
            )

    def _log_change(self, check: BackendCheck, before: Verdict | None) -> None:
        sim = "n/a" if check.similarity is None else f"{check.similarity:.2f}"
        why = "; ".join(check.reasons) or "-"
        what = {
            "match": "matches its reference",
            "mismatch": "does NOT match its reference (swapped, tampered or re-quantised model?)",
            "inconclusive": "could not be verified",
        }[check.verdict]
        level = logging.INFO if check.verdict == "match" else logging.WARNING
        log.log(level, "model %s: backend %s %s (similarity %s, was %s; %s)",
                check.model, check.backend, what, sim, before or "unchecked", why)

    async def _alert(self, check: BackendCheck, before: Verdict | None) -> None:
        if self._alerts is None:
            return
        from gateway.alerts.model import Alert  # imported late: the alerts package is optional at start-up

        sim = check.similarity if check.similarity is not None else 0.0
        action = "quarantined" if check.quarantined else "still in rotation (action: alert)"
        alert = Alert(
            id=Alert.new_id(), ts=check.checked_at, client=f"backend:{check.model}/{check.backend}",
            tenant=None, tier=ALERT_TIER, tier_index=ALERT_TIER_INDEX, previous_tier=before or "unchecked",
            score=round(1.0 - sim, 4),
            reasons=(f"backend {check.backend} ({check.url}) of model {check.model} does not match its "
                     f"fingerprint reference: similarity {sim:.2f}; {action}", *check.reasons),
            detectors=("fingerprint",),
        )
        try:
            await self._alerts.submit(alert)
        except Exception as e:  # the dispatcher should not raise; if it does, the log line above still stands
            log.warning("fingerprint alert for %s/%s not submitted (%s: %s)",
                        check.model, check.backend, type(e).__name__, e)

    def forget(self, key: tuple[str, str]) -> None:
        self._last.pop(key, None)
        self._conclusive.pop(key, None)
        self._released.pop(key, None)
        if self._metrics is not None:  # (with --workers, remove() would leave the series exported)
            self._metrics.retire(self._metrics.fingerprint_match, *key)

    def last(self, model: str, backend: str) -> BackendCheck | None:
        return self._last.get((model, backend))

    def checked(self) -> KeysView[tuple[str, str]]:
        """The (model, backend) pairs with a recorded check."""
        return self._last.keys()
