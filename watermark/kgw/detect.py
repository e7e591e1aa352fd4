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
from collections.abc import Sequence

import numpy as np

from watermark import stats
from watermark.base import CandidateScore, WatermarkScore
from watermark.keys import ClientKey
from watermark.kgw import prf
from watermark.kgw.counting import green_bits, green_counts, keys_array
from watermark.kgw.encode import Encoder, tokenizer_encoder
from watermark.kgw.params import KgwParams
from watermark.kgw.tuples import Tuples, collect_tuples

# The steps live in their own modules (tuples: the first dedup level; counting: the per-key PRF and second
# level; encode: text -> token ids); their public names stay importable from here, the detection API.
__all__ = [
    "Encoder", "KgwScheme", "Tuples", "collect_tuples", "green_bits", "green_counts", "keys_array",
    "min_tokens_for", "score_tuples", "tokenizer_encoder",
]


def score_tuples(
    tuples: Tuples, keys: Sequence[ClientKey], params: KgwParams, *, top: int = 5
) -> WatermarkScore:
    """Test every candidate key on its distinct (seed, token) pairs; Bonferroni over the candidates."""
    family = len(keys)
    if family == 0 or tuples.n == 0:
        return WatermarkScore("kgw", tuples.n, family, None, None, 0, 1.0, 0.0)
    scored, hits = green_counts(tuples, prf.subkeys_array([k.key for k in keys]), params)
    # log P(X >= hits) for X ~ Binomial(scored, γ); one table per distinct count
    counts, group = np.unique(scored, return_inverse=True)
    tables = np.full((counts.shape[0], int(counts[-1]) + 1), -np.inf)
    for g, n in enumerate(counts.tolist()):
        tables[g, : n + 1] = stats.binom_log_sf_table(n, params.p_green)
    log_p = tables[group, hits]  # hits <= scored, so every lookup lands inside its own table
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
