"""``FingerprintChecker``: when fingerprint checks run (at start-up, every ``interval_s``, on demand) and the
probes of one check (a fresh sample of the reference's probes, compared with the reference's answers); what a
verdict sets off is ``gateway.fingerprinting.verdicts``. See the package docstring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from fingerprint import Probe, Signature, compare
from fingerprint.match import Verdict
from fingerprint.probeset import public_probe_ids, quotes_a_prompt, reference_probes, restrict, sample
from gateway.config import BackendConfig, ConfigError, FingerprintConfig, read_header_secret
from gateway.fingerprint_client import FingerprintError, probe_backend_partial
from gateway.fingerprinting.verdicts import QUARANTINE_PREFIX, BackendCheck, Verdicts
from gateway.tls import backend_tls

if TYPE_CHECKING:
    from gateway.alerts.dispatcher import AlertDispatcher
    from gateway.routing.router import Router
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


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
        self._wall = wall
        self._verdicts = Verdicts(router, metrics, alerts, wall)
        # The OS's CSPRNG: a Mersenne Twister's next sample can be computed from the ones a backend has seen.
        self._rng = rng if rng is not None else secrets.SystemRandom()
        # per backend: (probe count when below probes_per_check else 0, only public probes): logged on change
        self._ref_notes: dict[tuple[str, str], tuple[int, bool]] = {}
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
                for key in self._verdicts.checked() - live:  # removed by a reload, or its reference dropped
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
        return await self._verdicts.record(check, b, self.cfg)

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

    def _forget(self, key: tuple[str, str]) -> None:
        self._verdicts.forget(key)
        self._ref_notes.pop(key, None)

    # --- introspection -----------------------------------------------------------------------------------

    def last(self, model: str, backend: str) -> BackendCheck | None:
        return self._verdicts.last(model, backend)

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
            check = self._verdicts.last(model, b.name)
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
