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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from fingerprint import Probe, Signature, compare
from fingerprint.match import Verdict
from fingerprint.probeset import public_probe_ids, quotes_a_prompt, reference_probes, restrict, sample
from gateway.config import BackendConfig, ConfigError, FingerprintConfig, read_header_secret
from gateway.errors import NotFound
from gateway.fingerprint_client import FingerprintError, probe_backend_partial
from gateway.routing.canary import Op, Phase
from gateway.tls import backend_tls

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


class FingerprintChecker:
    def __init__(
        self,
        cfg: FingerprintConfig,
        router: Router,
        metrics: Metrics | None = None,
        alerts: AlertDispatcher | None = None,
        *,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        forwarded: Sequence[str] = (),
        session: Callable[[], aiohttp.ClientSession | None] | None = None,
    ) -> None:
        self.cfg = cfg
        # X-Forwarded-For values of recent proxied requests (the gateway's deque): each probe sends one, as every
        # proxied request carries the header; none before the first request (the start-up round)
        self._forwarded = forwarded
        # the proxy's pooled upstream session: probes reuse the connections proxied requests keep alive (a session
        # of their own opened fresh connections every round, which a backend could tell apart)
        self._session = session
        self._router = router
        self._metrics = metrics
        self._alerts = alerts
        self._wall = wall
        # The OS's CSPRNG: a Mersenne Twister's next sample can be computed from the ones a backend has seen.
        self._rng = rng if rng is not None else secrets.SystemRandom()
        # per backend: (probe count when below probes_per_check else 0, only public probes): logged on change
        self._ref_notes: dict[tuple[str, str], tuple[int, bool]] = {}
        self._last: dict[tuple[str, str], BackendCheck] = {}
        self._conclusive: dict[tuple[str, str], Verdict] = {}  # last match/mismatch (decides alerts)
        self._released: dict[tuple[str, str], list[float]] = {}  # wall times of automatic releases, per backend
        self._round_lock = asyncio.Lock()  # one round at a time; an on-demand check waits for a running one
        # Set by an on-demand check: a spread round that is running sends its probes still waiting for their
        # delay at once, so the operator's check waits for answers, not for up to ``spread_s`` of random delays.
        self._hurry = asyncio.Event()
        self._queued = 0  # on-demand checks waiting for the round lock: a round that starts before them hurries
        self._slots = asyncio.Semaphore(cfg.concurrency)
        self._task: asyncio.Task[None] | None = None
        self.last_round_at: float | None = None

    # --- life cycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the periodic checks (the first round runs at once, in the background)."""
        if not self.cfg.enabled or self._task is not None:
            return
        n = len(self.targets())
        log.info("fingerprint checks: %d backends with a reference, every %.0fs, %d probes per round, action %s",
                 n, self.cfg.interval_s, self.cfg.probes_per_check, self.cfg.action)
        self._task = asyncio.create_task(self._run(), name="ipgate-fingerprint")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        first = True
        while True:
            try:
                # The start-up round is sent at once (a process start is visible anyway, and the first verdict
                # should not wait); every later round is spread over time.
                await self.check_now(spread=not first)
            except Exception:  # a bug in one round must not end fingerprint checking for good
                log.exception("fingerprint check round failed")
            first = False
            await asyncio.sleep(self.next_wait())

    def next_wait(self) -> float:
        """Seconds to the next periodic round: ``interval_s`` jittered (see ``FingerprintConfig.jitter``)."""
        j = self.cfg.jitter
        return self.cfg.interval_s * (self._rng.uniform(1 - j, 1 + j) if j > 0 else 1.0)

    def _forwarded_for(self) -> str | None:
        """One recent proxied request's X-Forwarded-For, drawn at random for each probe (None before any)."""
        seen = self._forwarded
        return seen[self._rng.randrange(len(seen))] if seen else None

    def _delays(self, n: int) -> list[float]:
        """Each probe's own start delay within a spread round (at most half the interval)."""
        window = min(self.cfg.spread_s, self.cfg.interval_s / 2)
        return [self._rng.uniform(0, window) for _ in range(n)] if window > 0 else []

    # --- checking ----------------------------------------------------------------------------------------

    def targets(self) -> list[tuple[str, BackendConfig]]:
        """(model, backend) pairs with a reference, read from the router's current pools (reload-safe)."""
        out: list[tuple[str, BackendConfig]] = []
        for model in self._router.models():
            for state in self._router.pool(model).backends:
                if state.cfg.fingerprint_reference:
                    out.append((model, state.cfg))
        return out

    async def check_now(self, model: str | None = None, backend: str | None = None, *, spread: bool = False
                        ) -> list[BackendCheck]:
        """Check every backend with a reference (or those of ``model``, or one ``backend`` of it) now.
        ``spread``: each probe after its own random delay (periodic rounds); on demand, all at once, and a
        spread round that is running is hurried (its probes still waiting are sent now)."""
        if not spread:
            self._hurry.set()
            self._queued += 1
        try:
            await self._round_lock.acquire()
        finally:
            if not spread:
                self._queued -= 1
        try:
            if spread:
                # a fresh round: the on-demand checks before it are served; one still queued for the lock (behind
                # this round) must not wait out its spread: the round is hurried from its start
                self._hurry = asyncio.Event()
                if self._queued:
                    self._hurry.set()
            targets = self.targets()
            if model is None:
                live = {(m, b.name) for m, b in targets}
                for key in self._last.keys() - live:  # removed by a reload, or its reference dropped
                    self._forget(key)
            chosen = [(m, b) for m, b in targets
                      if (model is None or m == model) and (backend is None or b.name == backend)]
            results = await asyncio.gather(*(self._check(m, b, spread) for m, b in chosen))
            self.last_round_at = self._wall()
        finally:
            self._round_lock.release()
        return list(results)

    async def _check(self, model: str, b: BackendConfig, spread: bool = False) -> BackendCheck:
        async with self._slots:
            started = time.monotonic()
            verdict, similarity, reasons, sent = await self._probe_and_compare(model, b, spread)
            if verdict == "mismatch" and self.cfg.confirm_mismatch:
                # Temperature 0 is not bit-exact on batched GPU servers: one divergent token changes the rest
                # of an answer. A second, independent round tells that noise (it rarely repeats on most probes
                # at once) from other weights (which mismatch every time) before anything is ejected. It draws
                # a fresh sample: a backend that learnt the first round's prompts gains nothing from them.
                again, sim2, reasons2, sent = await self._probe_and_compare(model, b, spread)
                if again != "mismatch":
                    first = f"{similarity:.2f}" if similarity is not None else "n/a"
                    second = f"{sim2:.2f}" if sim2 is not None else "n/a"
                    verdict, similarity = "inconclusive", sim2
                    reasons = (f"a mismatch (similarity {first}) was not confirmed by a second round "
                               f"({again}, similarity {second})", *reasons2)
                else:
                    similarity = max(similarity or 0.0, sim2 or 0.0)  # the kinder of two mismatches
            check = BackendCheck(
                model=model, backend=b.name, url=b.url, verdict=verdict, similarity=similarity,
                checked_at=self._wall(), duration_s=time.monotonic() - started, reasons=reasons,
                probes_sent=sent,
            )
        return await self._record(check, b)

    def _note_reference(self, model: str, b: BackendConfig, probes: tuple[Probe, ...]) -> str | None:
        """Say (once per change, in the log) what weakens this backend's checks: a reference of only the public
        bundled probes (a backend can recognise them), or one with fewer probes than ``probes_per_check``
        (every round sends the whole set: no rotation). ``ipgate check`` reports both up front; a running
        gateway still checks with what there is. Returns a reason to add to the check (the short set only)."""
        key = (model, b.name)
        short = len(probes) < self.cfg.probes_per_check
        public = len(public_probe_ids(probes)) == len(probes)
        state = (len(probes) if short else 0, public)
        if self._ref_notes.get(key, (0, False)) != state:
            if short:
                log.warning("model %s: backend %s: reference %s has %d probes, fingerprint.probes_per_check is "
                            "%d: every round sends all of them (no rotation)", model, b.name,
                            b.fingerprint_reference, len(probes), self.cfg.probes_per_check)
            if public and not self._ref_notes.get(key, (0, False))[1]:
                log.warning("model %s: backend %s: reference %s uses only the bundled public probes, which a "
                            "dishonest backend can recognise (record one with --probes FILE)", model, b.name,
                            b.fingerprint_reference)
            self._ref_notes[key] = state
        if not short:
            return None
        return (f"the reference has only {len(probes)} probes (probes_per_check {self.cfg.probes_per_check}): "
                "all are sent every round")

    async def _probe_and_compare(
        self, model: str, b: BackendConfig, spread: bool = False
    ) -> tuple[Verdict, float | None, tuple[str, ...], int]:
        """One round: verdict, median similarity, reasons, and how many probes were sent."""
        chosen: tuple[Probe, ...] = ()
        try:
            reference = load_reference(b)
            available = reference_probes(reference)
            if not available:
                raise FingerprintError(f"reference {b.fingerprint_reference}: none of its probes can be sent "
                                       "(no prompts stored): re-record it")
            short = self._note_reference(model, b, available)
            chosen = sample(available, self.cfg.probes_per_check, self._rng)
            sent = b.upstream_model or model
            api_key = read_header_secret(b.api_key_env, b.api_key_file, what=f"backend {b.name} api key")
            run = await probe_backend_partial(
                b.url, sent, api_key=api_key, probes=chosen, logprobs=self.cfg.logprobs,
                timeout_s=self.cfg.timeout_s, delays=self._delays(len(chosen)) if spread else (),
                hurry=self._hurry, ssl=backend_tls(b), cache_salt=b.cache_salt != "none",
                forwarded_for=self._forwarded_for, session=self._session() if self._session is not None else None,
            )
            if not run.signature.answers:  # nothing came back: say why (the first failure is typical)
                raise FingerprintError(run.failures[0] if run.failures else "no probe answered")
            observed = run.signature
            # Compared over this round's probes only: "3 of 8 answered", not "3 of the 40 the set holds".
            result = compare(
                restrict(reference, (p.id for p in chosen)), observed, match_threshold=self.cfg.match_threshold,
                mismatch_threshold=self.cfg.mismatch_threshold, min_probes=self.cfg.min_probes,
                max_logprob_distance=self.cfg.max_logprob_distance,
            )
        except (FingerprintError, ConfigError, OSError, ValueError) as e:
            return "inconclusive", None, (f"probe failed: {e}",), len(chosen)
        except Exception as e:  # a malformed answer that slipped past the parser, or a bug: not a mismatch
            msg = str(e)
            if quotes_a_prompt(msg, (p.prompt for p in chosen)):
                msg = "(the message quotes a probe prompt: withheld)"
            log.warning("fingerprint check of %s/%s raised %s: %s", model, b.name, type(e).__name__, msg)
            return "inconclusive", None, (f"check failed: {type(e).__name__}: {msg}",), len(chosen)
        reasons = result.reasons
        if run.failures:  # the probes that did answer decided (min_probes); the failures are still worth seeing
            reasons = (*reasons, f"{len(run.failures)} of {len(chosen)} probes failed", *run.failures[:3])
        if short is not None:
            reasons = (*reasons, short)
        if result.verdict != "match" and reference.model and reference.model != sent:
            # Not checked up front: the same weights may be served under another alias (a second provider), so
            # the names may differ legitimately. But pointing a backend at another model's reference is the
            # likeliest config slip behind a mismatch of a genuine backend: say so next to the verdict.
            note = (f"reference {b.fingerprint_reference}: field 'model' is {reference.model!r}, but backend "
                    f"{b.name} is probed as {sent!r} (is it that model's reference?)")
            reasons = (*reasons[:1], note, *reasons[1:])
        return result.verdict, result.similarity, reasons, len(chosen)

    # --- acting on a verdict -----------------------------------------------------------------------------

    async def _record(self, check: BackendCheck, probed: BackendConfig) -> BackendCheck:
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
            quarantined = await self._act(check)
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

    async def _act(self, check: BackendCheck) -> bool:
        """Apply the configured action; return whether the backend is quarantined afterwards."""
        model, name = check.model, check.backend
        current = self._router.quarantined(model, name)
        if check.verdict == "match" and current is not None and current.startswith(QUARANTINE_PREFIX):
            if HELD_MARK in current:
                return True  # put back too often: only an operator lifts it
            self._router.release_quarantine(model, name, why="its fingerprint matches the reference again")
            self._releases(model, name).append(check.checked_at)
            return False
        if check.verdict != "mismatch" or self.cfg.action != "eject":
            return current is not None
        # The matcher's first reason says which evidence decided (a low median similarity, answers that differ,
        # or moved first-token distributions): "similarity X < threshold" would be false for the vetoes.
        sim = check.similarity if check.similarity is not None else 0.0
        why = check.reasons[0] if check.reasons else f"similarity {sim:.2f}"
        released = len(self._releases(model, name))
        if released >= self.cfg.auto_release_limit:
            days = self.cfg.auto_release_window_s / 86400
            why += (f"{HELD_MARK}: put back automatically {released} time{'s' * (released != 1)} in the last "
                    f"{days:g} days (fingerprint.auto_release_limit {self.cfg.auto_release_limit})")
            log.warning("model %s: backend %s quarantined until an operator releases it (POST /admin/fingerprint/"
                        "%s/%s/release): it mismatched again after %d automatic release(s) within %gs",
                        model, name, model, name, released, self.cfg.auto_release_window_s)
        self._router.quarantine(model, name, f"{QUARANTINE_PREFIX}: {why}")
        await self._abort_canary(model, name)
        return True

    def _releases(self, model: str, name: str) -> list[float]:
        """This backend's automatic releases within the window (older ones dropped)."""
        since = self._wall() - self.cfg.auto_release_window_s
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

    def _forget(self, key: tuple[str, str]) -> None:
        self._last.pop(key, None)
        self._conclusive.pop(key, None)
        self._ref_notes.pop(key, None)
        self._released.pop(key, None)
        if self._metrics is not None:  # (with --workers, remove() would leave the series exported)
            self._metrics.retire(self._metrics.fingerprint_match, *key)

    # --- introspection -----------------------------------------------------------------------------------

    def last(self, model: str, backend: str) -> BackendCheck | None:
        return self._last.get((model, backend))

    def snapshot(self) -> dict[str, Any]:
        backends = []
        listed = self.targets()
        # A backend this checker quarantined keeps its quarantine when a reload drops its reference (fail
        # closed: nothing re-checks it, but it was confirmed to serve other weights). List it, so the operator
        # sees it here and can release it, rather than find it only in /admin/routing.
        for model in self._router.models():
            for state in self._router.pool(model).backends:
                q = state.quarantine
                if not state.cfg.fingerprint_reference and q is not None and q.startswith(QUARANTINE_PREFIX):
                    listed.append((model, state.cfg))
        for model, b in listed:
            check = self._last.get((model, b.name))
            entry: dict[str, Any] = (
                check.to_json() if check is not None and check.url == b.url
                else {"model": model, "backend": b.name, "url": b.url, "verdict": "unchecked",
                      "similarity": None, "checked_at": None, "duration_s": None, "reasons": [],
                      "probes_sent": 0}
            )
            entry["reference"] = b.fingerprint_reference
            entry["quarantine"] = self._router.quarantined(model, b.name)
            backends.append(entry)
        return {
            "enabled": self.cfg.enabled, "action": self.cfg.action, "interval_s": self.cfg.interval_s,
            "match_threshold": self.cfg.match_threshold, "mismatch_threshold": self.cfg.mismatch_threshold,
            "logprobs": self.cfg.logprobs, "probes_per_check": self.cfg.probes_per_check,
            "last_round_at": self.last_round_at, "backends": backends,
        }


def load_reference(b: BackendConfig) -> Signature:
    """``b.fingerprint_reference`` parsed; ``FingerprintError`` says why it cannot be used."""
    # Read on every check (a few KB, once per interval): a re-recorded reference applies without a restart.
    path = Path(b.fingerprint_reference or "")
    try:
        return Signature.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise FingerprintError(f"reference {path} cannot be read: {e.strerror}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise FingerprintError(f"reference {path} is not a signature file: {e}") from e
