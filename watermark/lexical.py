"""The lexical scheme: a keyed, context-conditioned choice among interchangeable phrasings (post hoc).

Embedding. At each slot (a phrase from one group of the table, in a context where every variant is safe) the
client's key picks one variant as a function of (previous word, group): ``mix.choose``. The previous word is
read from the *output*, so a detector reading the watermarked text sees the same contexts. Conditioning on
the previous word (CATER-style) means a word's frequency alone does not reveal a fixed mapping.

Repeats. The n-th time the same (previous word, group) pair comes up in one text (n >= 2), its context is
the word plus n (``Contexts``, mode "repeat"): a fresh, distinct PRF input, so the repeat is a new draw
rather than a copy of the first. GSM8K-style solutions repeat "So that's" or "to find the total" often
enough that this adds about a fifth more scored slots there. First occurrences are keyed exactly as in the
plain "word" mode, so a detector using that mode still finds every one of them a hit.

Detection. Scan the text with the same engine, collect (context, group, observed variant) for every slot,
skip slots inside verbatim copies of an earlier passage (the characters before the slot repeat; see
``_COPY_WINDOW``), keep the first occurrence of each (context, group) tuple (across a pooled corpus, repeats
are copies of one draw, see ``watermark.stats``), and count for each candidate key how many observed
variants equal the key's choice.
Under H0 a k-way slot is a hit with probability exactly 1/k, so the hit count is Poisson-binomial with a
distribution that depends only on the text; one tail table serves every candidate. Candidates are all
(client, key version) pairs, each tested once per reading; the best one's p-value is Bonferroni-corrected.
Text that carries *another* client's watermark also gives hits of probability 1/k per tuple for a wrong key
(up to the mixer's negligible bias): both keys' choices are full-avalanche mixes of the same secret per-tuple
PRF value.

Strength views. "strong" embedding also uses level-2 groups; a normal-strength text has no watermark there.
When the text has level-2 slots, both views (level 1 only; levels 1+2) are scored, and they form one test:
its statistic is the smaller of the two views' exact p-values and its p-value is computed exactly
(``watermark.lexical_views.Strengths``), between that smaller p-value and twice it (the Bonferroni bound two
hypotheses used to cost). An empty view never rejects and is left out.

Table revisions. The table is append-only and each group records the revision that added it
(``Group.since``). A text served before an extension carries no watermark in the newer groups, which would
dilute its evidence with coin flips, so each reading and strength is also cut by revision (groups with
``since <= r``, for each revision r whose groups the text has slots of). These nested views form one chain,
tested once with an exact first-passage p-value (``watermark.lexical_views``): a text with no slot of a newer
group is scored exactly as before, and one with such slots pays at most the old Bonferroni factor (in practice
far less, since the views overlap). The two readings of a text with a never-closed fence are one exact joint
test as well (``watermark.lexical_readings``), so Bonferroni runs over keys only. The views are read from the
text alone, so under H0 each reading's test is a fixed test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from watermark import stats
from watermark.base import CandidateScore, WatermarkScore
from watermark.detection_text import detection_text
from watermark.keys import ClientKey, scheme_key
from watermark.lexical_readings import Readings
from watermark.lexical_views import Chain, Strengths
from watermark.lexicon import Lexicon, default_lexicon
from watermark.mix import choose, mix64_array, tuple_hash, tuple_hasher
from watermark.scanner import Scanner

STRENGTH_LEVEL = {"normal": 1, "strong": 2}
# How a slot's PRF input is formed from the text (see ``Contexts``); "repeat" is what the product uses.
CONTEXT_MODES = ("word", "repeat", "first")
# A slot whose preceding characters repeat an earlier slot's of the same group is part of a copied passage:
# with "repeat" contexts it would be a fresh tuple the embedder never chose, so a text pasted twice would
# dilute its own evidence. Skipping it depends on the text alone, so the tuple set stays key-independent.
_COPY_WINDOW = 48
_SEP = "\x1e"  # never inside a word: contexts with an occurrence index or the group-only marker are distinct
_CLIENT_BATCH = 16384  # clients scored per numpy batch at most
# ... and at most this many (client, tuple) cells per batch: each of the few temporaries of a batch is cells x 8
# bytes. A fixed 16 384 clients times the ~7 000-20 000 tuples of a 2 M-character corpus (the admin API's limit)
# made each temporary 1-3 GB, several GB at once in the gateway's own process, whose public API it shares.
_BATCH_CELLS = 1 << 22


_MAX_PLAIN_FENCES = 16  # fences read as plain text per text at most (each costs one more scan)


class Contexts:
    """The PRF context of each slot of one text, read from the text alone (so the detector sees the same).

    "word": the previous word (a repeated (word, group) pair is one tuple, scored once).
    "repeat": the previous word, plus the occurrence number from the second time the same (word, group) pair
    comes up in the text ("so" -> "so#2"): a repeat is a fresh, distinct PRF input instead of a copy.
    "first": like "repeat", but the first occurrence of each group in the text is keyed by the group alone, so
    a substitution of the word before it cannot change its draw. Measured and not used (EVALUATION.md,
    "Lexical watermark"): every text's first occurrence of a group shares one tuple, which costs corpus
    evidence, and a model distilled on such text stops carrying the watermark. Kept so the measurement
    (``scripts/eval/watermark_levers.py --contexts``) can be rerun.
    """

    __slots__ = ("_mode", "_seen")

    def __init__(self, mode: str) -> None:
        if mode not in CONTEXT_MODES:
            raise ValueError(f"context mode must be one of {CONTEXT_MODES}, got {mode!r}")
        self._mode = mode
        self._seen: dict[tuple[str, int], int] = {}

    def __call__(self, group: int, word: str) -> str:
        if self._mode == "word":
            return word
        if self._mode == "first" and (_SEP, group) not in self._seen:
            self._seen[(_SEP, group)] = 1
            return _SEP
        n = self._seen.get((word, group), 0) + 1
        self._seen[(word, group)] = n
        return word if n == 1 else f"{word}{_SEP}{n}"


class LexicalEmbedder:
    """Streaming watermarking of one response: ``feed(delta) -> text safe to emit``, ``finish()``."""

    def __init__(self, lexicon: Lexicon, tuple_base: hashlib.blake2b, seed: int, max_level: int,
                 markdown: bool = True, context: str = "repeat") -> None:
        self._scanner = Scanner(lexicon, max_level, markdown)
        self._contexts = Contexts(context)
        self._groups = lexicon.groups
        self._base = tuple_base
        self._seed = seed
        self._buf = ""
        self._closed = False

    def _slot(self, group: int, observed: int, context: str) -> int:
        g = self._groups[group]
        return choose(tuple_hash(self._base, self._contexts(group, context), g.gid), self._seed, g.k)

    def feed(self, text: str) -> str:
        if self._closed:
            raise RuntimeError("feed() after finish()")
        self._buf += text
        out, used = self._scanner.run(self._buf, False, self._slot)
        self._buf = self._buf[used:]
        return out

    def finish(self) -> str:
        if self._closed:
            return ""
        self._closed = True
        out, used = self._scanner.run(self._buf, True, self._slot)
        if used != len(self._buf):  # with final=True the scanner consumes everything
            raise RuntimeError(f"scanner stopped at {used} of {len(self._buf)} characters")
        self._buf = ""
        return out


@dataclass(frozen=True, slots=True)
class Observation:
    """The deduplicated slots of a text or corpus."""

    contexts: tuple[str, ...]
    groups: npt.NDArray[np.int64]  # group index per tuple
    observed: npt.NDArray[np.int64]  # observed variant per tuple
    level: npt.NDArray[np.int64]  # the group's level per tuple
    # per tuple: found only when a never-closed fence is read as plain text (None: no such tuple)
    lenient: npt.NDArray[np.bool_] | None = None

    @property
    def size(self) -> int:
        return len(self.contexts)


class LexicalScheme:
    name = "lexical"

    def __init__(self, master: bytes, lexicon: Lexicon | None = None, strength: str = "normal",
                 markdown: bool = True, context: str = "repeat") -> None:
        if context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
        if strength not in STRENGTH_LEVEL:
            raise ValueError(f"strength must be one of {sorted(STRENGTH_LEVEL)}, got {strength!r}")
        self._master = master
        self._lex = lexicon or default_lexicon()
        self._level = STRENGTH_LEVEL[strength]
        self._markdown = markdown  # list markers are choice points too (watermark.listmarks)
        self._bases: dict[int, hashlib.blake2b] = {}
        self._context = context

    def _base(self, version: int) -> hashlib.blake2b:
        base = self._bases.get(version)
        if base is None:
            base = tuple_hasher(scheme_key(self._master, version, "lexical/tuple"))
            self._bases[version] = base
        return base

    def embedder(self, key: ClientKey, strength: str | None = None) -> LexicalEmbedder:
        level = self._level if strength is None else STRENGTH_LEVEL[strength]
        return LexicalEmbedder(self._lex, self._base(key.version), key.seed64, level, self._markdown, self._context)

    def embed(self, text: str, key: ClientKey, strength: str | None = None) -> str:
        e = self.embedder(key, strength)
        return e.feed(text) + e.finish()

    def observe(self, texts: str | Sequence[str]) -> Observation:
        """Scan texts (read only) and keep the first occurrence of each (context, group) tuple. Each text is read
        with invisible characters and Latin lookalike letters undone (``watermark.detection_text``).

        A text whose code fence never closes is read a second way as well, each such fence marker taken as
        plain backticks (``Scanner(plain_fences=...)``). Reformatting that joins lines (re-wrapping, pasting
        into a form) moves a closing fence into the middle of a line, and the strict reading then takes
        everything after the opener for code. The slots only that reading finds are flagged ``lenient``;
        ``_tests`` scores the text with and without them, as one exact joint test
        (``watermark.lexical_readings``). The strict tuples are those found before the first fence read as plain
        text, so the lenient reading only adds tuples."""
        seen: dict[tuple[str, int], int] = {}
        strict: set[tuple[str, int]] = set()
        for raw in [texts] if isinstance(texts, str) else texts:
            # invisible characters and lookalike letters undone: they erased every slot without a visible change
            text = detection_text(raw)
            plain: frozenset[int] = frozenset()
            records, unclosed = self._scan(text, plain)
            for _ in range(_MAX_PLAIN_FENCES):  # only for a text whose fence never closes
                if unclosed < 0:
                    break
                plain = plain | {unclosed}
                records, unclosed = self._scan(text, plain)
            lenient_from = min(plain, default=len(text) + 1)
            for key, variant, at in records:
                seen.setdefault(key, variant)
                if at < lenient_from:
                    strict.add(key)
        ctx = tuple(c for c, _ in seen)
        groups = np.fromiter((g for _, g in seen), dtype=np.int64, count=len(seen))
        observed = np.fromiter(seen.values(), dtype=np.int64, count=len(seen))
        level = np.array([self._lex.groups[g].level for g in groups.tolist()], dtype=np.int64)
        lenient = np.fromiter((k not in strict for k in seen), dtype=bool, count=len(seen))
        return Observation(ctx, groups, observed, level, lenient)

    def _scan(self, text: str, plain: frozenset[int]) -> tuple[list[tuple[tuple[str, int], int, int]], int]:
        """One reading of ``text``: its scored ((context, group), observed variant, offset) records, and the
        offset of the fence marker still open at the end (-1: every fence closes)."""
        scanner = Scanner(self._lex, 2, self._markdown, plain)
        contexts = Contexts(self._context)
        windows: set[tuple[int, str]] = set()
        records: list[tuple[tuple[str, int], int, int]] = []

        def record(group: int, observed: int, context: str) -> int:
            tuple_context = contexts(group, context)  # always: the occurrence count includes copies
            at = scanner.slot_at
            window = (group, text[max(0, at - _COPY_WINDOW) : at])
            if window in windows:
                return observed  # the passage before this slot repeats verbatim: a copy, not a new draw
            windows.add(window)
            records.append(((tuple_context, group), observed, at))
            return observed

        scanner.run(text, True, record)
        return records, scanner.state.fence_at if scanner.state.fence else -1

    def score(self, texts: str | Sequence[str], keys: Sequence[ClientKey], *, top: int = 5) -> WatermarkScore:
        return self.score_observation(self.observe(texts), keys, top=top)

    def _tests(self, obs: Observation) -> list[Strengths]:
        """The hypotheses to test per key: one per reading (strict; with the slots a never-closed fence hid,
        when there are any), each the joint test of its strength chains (level 1; levels 1+2, when the text has
        level-2 slots), each chain the nested revision views of ``watermark.lexical_views``; repeated tests left
        out (one empty chain for a text without slots)."""
        ks = np.array([self._lex.groups[g].k for g in obs.groups.tolist()], dtype=np.uint64)
        since = np.array([self._lex.groups[g].since for g in obs.groups.tolist()], dtype=np.int64)
        readings = [np.ones(obs.size, dtype=bool)]
        if obs.lenient is not None and bool(obs.lenient.any()):
            readings.insert(0, ~obs.lenient)
        tests: list[Strengths] = []
        seen: set[tuple[tuple[bytes, ...], ...]] = set()
        for reading in readings:
            test = Strengths.build(reading, obs.level <= 1, since, ks)
            if test is None:
                continue
            sig = tuple(tuple(np.packbits(v).tobytes() for v in c.views) for c in test.chains)
            if sig not in seen:
                seen.add(sig)
                tests.append(test)
        return tests or [Strengths((Chain.build([np.zeros(obs.size, dtype=bool)], ks),))]

    def _readings(self, obs: Observation, tests: list[Strengths]) -> Readings | None:
        """The joint test of the two readings (strict first) when ``_tests`` gave both, else None."""
        if len(tests) != 2 or obs.lenient is None:
            return None
        ks = np.array([self._lex.groups[g].k for g in obs.groups.tolist()], dtype=np.uint64)
        since = np.array([self._lex.groups[g].since for g in obs.groups.tolist()], dtype=np.int64)
        return Readings.build(tests[0], tests[1], ~obs.lenient, obs.level <= 1, since, ks)

    def score_observation(self, obs: Observation, keys: Sequence[ClientKey], *, top: int = 5) -> WatermarkScore:
        tests = self._tests(obs)
        joint = self._readings(obs, tests)
        chains = [chain for test in tests for chain in test.chains]
        family = max(1, len(keys) * (1 if joint is not None else len(tests)))
        if obs.size == 0 or not keys:
            return WatermarkScore(self.name, obs.size, family, None, None, 0, 1.0, 0.0)
        ks = np.array([self._lex.groups[g].k for g in obs.groups.tolist()], dtype=np.uint64)
        gids = [self._lex.groups[g].gid for g in obs.groups.tolist()]
        # per chain and key: the statistic (the smallest log tail over the chain's views) and the hits and
        # tuples of the view that gave it
        shape = (len(chains), len(keys))
        best_log, best_hits, best_n = np.zeros(shape), np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        by_version: dict[int, list[int]] = {}
        for idx, key in enumerate(keys):
            by_version.setdefault(key.version, []).append(idx)
        for version, idxs in by_version.items():
            base = self._base(version)
            t = np.array([tuple_hash(base, c, g) for c, g in zip(obs.contexts, gids, strict=True)], dtype=np.uint64)
            seeds = np.array([keys[i].seed64 for i in idxs], dtype=np.uint64)
            observed = obs.observed.astype(np.uint64)
            batch = max(1, min(_CLIENT_BATCH, _BATCH_CELLS // obs.size))
            for lo in range(0, len(idxs), batch):
                s = seeds[lo : lo + batch]
                hit = (mix64_array(t[None, :] ^ s[:, None]) % ks[None, :]) == observed[None, :]
                sel = np.asarray(idxs[lo : lo + batch])
                for ci, chain in enumerate(chains):
                    # nested views: each view's hit count is the previous one's plus the hits among its new tuples
                    h = np.zeros(len(sel), dtype=np.int64)
                    for vi, (delta, table) in enumerate(zip(chain.deltas, chain.tables, strict=True)):
                        h = h + hit[:, delta].sum(axis=1)
                        lt = table[h]
                        n_view = int(chain.views[vi].sum())
                        if vi == 0:
                            lt_best, h_best, n_best = lt, h, np.full(len(sel), n_view, dtype=np.int64)
                        else:
                            better = lt < lt_best
                            lt_best = np.where(better, lt, lt_best)
                            h_best = np.where(better, h, h_best)
                            n_best = np.where(better, n_view, n_best)
                    best_log[ci, sel], best_hits[ci, sel], best_n[ci, sel] = lt_best, h_best, n_best
        # the exact p-value of a chain is increasing in its statistic, and a test's in the smallest p-value of its
        # chains, so each test's best keys are among its chains' smallest statistics; the candidates are those
        # of every chain, each at the test that gives it the smallest p (hits reported from that test's best chain)
        m = min(max(1, top), len(keys))
        picked = sorted({int(i) for row in best_log for i in np.argpartition(row, m - 1)[:m]})
        scored: list[tuple[float, int, int]] = []  # (log p, key index, chain)
        for i in picked:
            options: list[tuple[float, int]] = []  # per test: (log p, its chain with the smallest p)
            ci = 0
            for test in tests:
                x, c = min((chain.log_p(float(best_log[ci + j, i])), ci + j) for j, chain in enumerate(test.chains))
                options.append((test.log_p(x), c))
                ci += len(test.chains)
            lp, c = min(options)
            if joint is not None:  # the readings' smaller p-value, as one exact test (lexical_readings)
                lp = joint.log_p(lp)
            scored.append((lp, i, c))
        scored.sort()
        cands = tuple(
            CandidateScore(keys[i].client_id, keys[i].version, int(best_hits[ci, i]), stats.log_to_p(lp),
                           stats.log_to_log10(lp))
            for lp, i, ci in scored[: max(1, top)]
        )
        lp, b, cb = scored[0]
        corrected = float(stats.bonferroni_log(lp, family))
        return WatermarkScore(
            scheme=self.name, scored=int(best_n[cb, b]), family_size=family, client_id=keys[b].client_id,
            key_version=keys[b].version, hits=int(best_hits[cb, b]), p_value=stats.log_to_p(corrected),
            log10_p_value=corrected / math.log(10), candidates=cands,
        )
