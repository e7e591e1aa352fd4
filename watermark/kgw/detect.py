"""KGW detection with numpy only: token ids -> deduplicated (context, token) tuples -> green counts -> exact
p-values, and attribution among candidate client keys. No torch import anywhere on this path, so
``ipgate verify --scheme kgw`` works in the core install.

Why the p-value is valid (the general argument is in ``watermark/stats.py``): the tuples are taken from the
observed tokens alone; for a key the text was not generated with, each *distinct* tuple is green with
probability exactly ``params.p_green`` (= threshold / 2³², see ``params.py``), independently of the others,
because the PRF is evaluated on distinct inputs. Three details make "distinct" mean what the PRF sees:

- the dedup key is exactly the PRF's input: the ordered window for ``lefthash``, the *set* of the window for
  ``minhash`` (the seed is a min over it), the set of window ∪ {candidate} plus the candidate for
  ``selfhash``. Repeated phrases therefore score once, however often they occur (a loop of one sentence is
  not evidence);
- min-hash seeds collapse many windows onto one seed (that is what makes them robust to edits), so a
  second, per-key level counts each distinct (seed, token) pair once — the actual input of the final green
  test (``green_counts``). Without it a frequent token whose keyed hash wins the min in most windows would
  contribute one copied draw per window. Measured on unwatermarked text before this level existed: about
  20 % of (12-token-alphabet text, key) tests below p = 0.01, and 1.6e-4 of (real answer, key) tests below
  p = 1e-6;
- positions whose window would reach before the first token are not scored (generation leaves them
  unbiased too), and when the prompt's token ids are known they serve as context but are never scored.

The first-level tuple set does not depend on the key; the second level depends on the subkeys that build
seeds but not on the one that decides green-ness, so the selection stays independent of the green bits.
Candidates may therefore be scored on slightly different counts; equal counts share one tail table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from watermark import stats
from watermark.base import CandidateScore, WatermarkScore
from watermark.keys import ClientKey
from watermark.kgw import prf
from watermark.kgw.params import KgwParams

IntArray = npt.NDArray[np.int64]

# Bound on the (keys x tuples) int64 work arrays: 2^21 lanes ≈ 16 MB each.
_MAX_LANES = 1 << 21
_MAX_TOKEN_ID = 1 << 31  # (seed, token) pairs are packed into one int64


@dataclass(frozen=True, slots=True)
class Tuples:
    """The distinct scored tuples of one text or a pooled corpus."""

    prev: IntArray  # (n, params.prev_tokens), oldest first
    cand: IntArray  # (n,)

    @property
    def n(self) -> int:
        return int(self.cand.shape[0])


def _dedup_key(window: tuple[int, ...], tok: int, params: KgwParams) -> tuple[object, ...]:
    if params.seeding == "lefthash":
        return (window, tok)
    if params.seeding == "minhash":
        return (frozenset(window), tok)
    return (frozenset((*window, tok)), tok)


def collect_tuples(
    sequences: Iterable[Sequence[int]],
    params: KgwParams,
    prompts: Sequence[Sequence[int] | None] | None = None,
) -> Tuples:
    """Distinct scored tuples over all ``sequences`` (pooled: a tuple seen in two texts counts once).

    ``prompts[i]`` (optional) are the token ids that preceded ``sequences[i]`` at generation: they give the
    first tokens their context and are never scored themselves.
    """
    p = params.prev_tokens
    seen: set[tuple[object, ...]] = set()
    prev_rows: list[tuple[int, ...]] = []
    cands: list[int] = []
    for i, seq in enumerate(sequences):
        prompt = list(prompts[i] or []) if prompts is not None else []
        ids = [*(int(t) for t in prompt[-p:]), *(int(t) for t in seq)]
        if any(not 0 <= t < _MAX_TOKEN_ID for t in ids):
            raise ValueError(f"token ids must be in [0, 2**31) (text {i})")
        start = min(len(prompt), p)  # index in ids of the first response token
        for pos in range(max(start, p), len(ids)):
            window = tuple(ids[pos - p : pos])
            key = _dedup_key(window, ids[pos], params)
            if key in seen:
                continue
            seen.add(key)
            prev_rows.append(window)
            cands.append(ids[pos])
    prev = np.asarray(prev_rows, dtype=np.int64).reshape(len(cands), p)
    return Tuples(prev=prev, cand=np.asarray(cands, dtype=np.int64))


def keys_array(keys: Sequence[bytes]) -> IntArray:
    """``(K, 4)`` int64 PRF subkeys (same derivation as the torch side)."""
    return np.asarray([prf.subkeys(k) for k in keys], dtype=np.int64).reshape(len(keys), 4)


def _seeds(tuples: Tuples, subkeys: IntArray, params: KgwParams) -> tuple[IntArray, IntArray]:
    """``(seed, cand_hash)``, each ``(K, n)``: the final PRF input of every tuple under every key."""
    k0, k1, k2 = (subkeys[:, i : i + 1] for i in range(3))  # (K, 1)
    cand = tuples.cand[None, :]  # (1, n)
    cand_hash = prf.token_hash(cand, k0)
    window = [prf.token_hash(tuples.prev[None, :, j], k0) for j in range(params.prev_tokens)]
    if params.seeding == "lefthash":
        seed = prf.lefthash_seed(window, k1)
    elif params.seeding == "minhash":
        seed = prf.minhash_seed(window, k1, np.minimum)
    else:
        seed = prf.selfhash_seed(window, cand_hash, prf.anchor_hash(cand, k2), np.minimum)
    shape = (subkeys.shape[0], tuples.n)
    return np.broadcast_to(seed, shape), np.broadcast_to(cand_hash, shape)


def green_bits(tuples: Tuples, subkeys: IntArray, params: KgwParams) -> npt.NDArray[np.bool_]:
    """``(K, n)``: is tuple j green under key i. The same PRF expressions as ``torch_core.green_mask``."""
    seed, cand_hash = _seeds(tuples, subkeys, params)
    out: npt.NDArray[np.bool_] = prf.green_value(seed, cand_hash, subkeys[:, 3:4]) < params.threshold
    return out


def green_counts(tuples: Tuples, subkeys: IntArray, params: KgwParams) -> tuple[IntArray, IntArray]:
    """``(scored, hits)`` per key, each ``(K,)``: distinct (seed, token) pairs and how many are green.

    Second dedup level, per key: min-hash seeds (``minhash``, ``selfhash``) map many different windows to
    the *same* seed by design — a frequent token whose keyed hash is small wins the min in most windows it
    appears in — so distinct windows can still be one PRF draw. The green value is a function of
    (seed, token) only, so each distinct pair is scored once. Which pairs coincide depends on the subkeys
    k0..k2, never on k3, the subkey that decides green-ness (``green = mix(mix(seed ^ k3) ^ th(t)) < T``), so
    the selection is still independent of the green bits under H0. Computed in chunks of keys.
    """
    k = subkeys.shape[0]
    scored = np.zeros(k, dtype=np.int64)
    hits = np.zeros(k, dtype=np.int64)
    if tuples.n == 0 or k == 0:
        return scored, hits
    step = max(1, _MAX_LANES // tuples.n)
    for lo in range(0, k, step):
        sk = subkeys[lo : lo + step]
        seed, cand_hash = _seeds(tuples, sk, params)
        green = prf.green_value(seed, cand_hash, sk[:, 3:4]) < params.threshold
        pair = seed * (1 << 31) + tuples.cand[None, :]  # seed < 2^32, token id < 2^31: fits in int64
        order = np.argsort(pair, axis=1, kind="stable")
        pair = np.take_along_axis(pair, order, axis=1)
        first = np.ones(pair.shape, dtype=bool)
        first[:, 1:] = pair[:, 1:] != pair[:, :-1]
        scored[lo : lo + step] = first.sum(axis=1)
        hits[lo : lo + step] = (np.take_along_axis(green, order, axis=1) & first).sum(axis=1)
    return scored, hits


def score_tuples(
    tuples: Tuples, keys: Sequence[ClientKey], params: KgwParams, *, top: int = 5
) -> WatermarkScore:
    """Test every candidate key on its distinct (seed, token) pairs; Bonferroni over the candidates."""
    family = len(keys)
    if family == 0 or tuples.n == 0:
        return WatermarkScore("kgw", tuples.n, family, None, None, 0, 1.0, 0.0)
    scored, hits = green_counts(tuples, keys_array([k.key for k in keys]), params)
    # log P(X >= hits) for X ~ Binomial(scored, γ); one table per distinct count
    tables = {int(n): stats.binom_log_sf_table(int(n), params.p_green) for n in np.unique(scored)}
    log_p = np.asarray([tables[int(n)][h] for n, h in zip(scored, hits, strict=True)], dtype=np.float64)
    order = np.lexsort((np.arange(family), log_p))  # smallest p first, ties in candidate order
    cands = tuple(
        CandidateScore(
            keys[i].client_id,
            keys[i].version,
            int(hits[i]),
            stats.log_to_p(float(log_p[i])),
            stats.log_to_log10(float(log_p[i])),
        )
        for i in order[: max(1, top)]
    )
    best = int(order[0])
    fw = float(stats.bonferroni_log(float(log_p[best]), family))
    return WatermarkScore(
        scheme="kgw",
        scored=int(scored[best]),
        family_size=family,
        client_id=keys[best].client_id,
        key_version=keys[best].version,
        hits=int(hits[best]),
        p_value=stats.log_to_p(fw),
        log10_p_value=stats.log_to_log10(fw),
        candidates=cands,
    )


class Encoder(Protocol):
    def __call__(self, texts: Sequence[str]) -> list[list[int]]: ...


def tokenizer_encoder(path: str) -> Encoder:
    """Text -> token ids with a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library; no torch,
    no ``transformers``). Special tokens are not added: they were not sampled, so they are not scored."""
    from tokenizers import Tokenizer  # imported here: only detection from text needs it

    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for missing or malformed files
        raise ValueError(f"tokenizer: cannot load {path!r}: {e}") from e

    def encode(texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    return encode


class KgwScheme:
    """The ``watermark.base.Scheme`` for KGW text: needs the generator's tokenizer and green-list params."""

    name = "kgw"

    def __init__(self, encode: Encoder, params: KgwParams | None = None) -> None:
        self.params = params or KgwParams()
        self._encode = encode

    @classmethod
    def from_tokenizer_file(cls, path: str, params: KgwParams | None = None) -> KgwScheme:
        return cls(tokenizer_encoder(path), params)

    def score(self, texts: str | Sequence[str], keys: Sequence[ClientKey], *, top: int = 5) -> WatermarkScore:
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self.score_ids(self._encode(batch), keys, top=top)

    def score_ids(
        self,
        sequences: Sequence[Sequence[int]],
        keys: Sequence[ClientKey],
        *,
        prompts: Sequence[Sequence[int] | None] | None = None,
        top: int = 5,
    ) -> WatermarkScore:
        """Score token ids directly (exact when they are the sampled ids, e.g. from a serving log)."""
        return score_tuples(collect_tuples(sequences, self.params, prompts), keys, self.params, top=top)


def min_tokens_for(p_value: float, params: KgwParams, green_fraction: float) -> int:
    """Smallest number of distinct scored tokens at which a text with the given green fraction reaches
    ``p_value`` (exact binomial tail): the planning number quoted in the docs."""
    for n in range(1, 100_000):
        hits = math.ceil(green_fraction * n)
        if stats.binom_log_sf(hits, n, params.p_green) <= math.log(p_value):
            return n
    raise ValueError("unreachable p-value for this green fraction")
