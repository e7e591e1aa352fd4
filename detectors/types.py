"""Public value types of the detector core (all frozen; the engine's inputs and outputs).

The gateway builds a ``RequestFeatures`` with ``detectors.features.extract`` and a ``ResponseFeatures`` from
what the upstream answered; the engine returns ``Observation`` (a ``Verdict`` plus the client's new state
bytes) and ``LinkResult``. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

_T = TypeVar("_T")


def _slot_init(cls: type[_T]) -> type[_T]:
    """Give a frozen slots dataclass a constructor that is ~1.7x faster and otherwise the same.

    The ``__init__`` that ``dataclass`` writes for a frozen class stores each field through
    ``object.__setattr__``, which looks the field up on the class every time; the one written here (from the
    class's own field names, the way ``dataclass`` writes its own) calls each field's slot descriptor
    directly: what that lookup finds. Same signature and defaults, same instances; the class stays frozen
    (its ``__setattr__`` still raises). These types are built several times per request on the gateway's
    hot path. Only for fields with plain defaults and classes without ``__post_init__``."""
    fs = fields(cls)  # type: ignore[arg-type]  # a dataclass, by the decorator below this one
    if hasattr(cls, "__post_init__") or any(f.default_factory is not MISSING or not f.init for f in fs):
        raise TypeError(f"{cls.__name__}: _slot_init supports plain fields and defaults only")
    ns: dict[str, Any] = {f"_set_{f.name}": getattr(cls, f.name).__set__ for f in fs}
    ns.update({f"_default_{f.name}": f.default for f in fs if f.default is not MISSING})
    params = ", ".join(f.name if f.default is MISSING else f"{f.name}=_default_{f.name}" for f in fs)
    body = "".join(f"\n    _set_{f.name}(self, {f.name})" for f in fs)
    exec(f"def __init__(self, {params}):{body}", ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # noqa: B010  (mypy refuses assigning a method)
    return cls

#: Tier ints, matching the default policy names in ``gateway/config/policy.py`` (``_default_tiers``).
TIER_NORMAL, TIER_WATCH, TIER_THROTTLE, TIER_BLOCK = 0, 1, 2, 3
#: "flagged" means the client reached this tier (the one the default policy throttles at).
FLAG_TIER = TIER_THROTTLE


@_slot_init
@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What one request says about its sender; cheap to compute, no prompt text kept.

    ``embedding`` is the hashed n-gram embedding (L2-normalised, ``EMBED_DIM`` floats); the ``*_key`` fields
    are 32-bit hashes of the masked prompt (variable parts such as numbers and quoted strings replaced).
    """

    endpoint: str
    ts: float
    n_messages: int  # user+assistant turns in the request (1 = single-turn)
    prompt_words: int
    max_tokens: int | None
    n: int
    temperature: float | None
    top_p: float | None
    has_seed: bool
    logprobs: bool  # chat `logprobs: true` or completions `logprobs: k`
    top_logprobs: int  # chat top_logprobs / completions logprobs k, + len(logprob_token_ids)
    echo: bool
    # Token targeting: the logit_bias keys and vLLM's logprob_token_ids / allowed_token_ids / bad_words entries
    # (token ids; hashed when not numeric), at most 512 kept; ``bias_*`` below cover all of them.
    bias_tokens: tuple[int, ...]
    bias_entries: int  # number of entries (full count)
    bias_max_abs: float
    prompt_key: int  # exact hash of the masked last user prompt
    bias_key: int  # hash of the logit_bias mapping and the targeting lists (0 when none)
    head_key: int  # first 8 masked tokens (3 for prompts under 16 tokens; 0 under 5 tokens)
    tail_key: int  # last 8 masked tokens (3 for prompts under 16 tokens; 0 under 5 tokens)
    minhash: tuple[int, ...]  # 16 x 32-bit MinHash of masked content-word bigrams (empty for empty prompts)
    bottom: tuple[int, ...]  # the 32 smallest distinct token hashes (CRC32): a bottom-k sample of the tokens
    cot: bool  # asks for full chain-of-thought / step-by-step reasoning
    rubric: bool  # asks for grading / rubric / scoring of a response
    meta_prompt: bool  # self-instruct style "come up with N diverse tasks" meta-prompt
    embedding: tuple[float, ...] = field(repr=False)
    # Optional neural embeddings (``detection.embedder: minilm``): the unit 384-d MiniLM vectors of this
    # client's *earlier* prompts that finished encoding off the request path since its previous request,
    # oldest first, shape (k, 384) float32; None when there are none (always, with the hashed embedder).
    neural: np.ndarray | None = field(default=None, repr=False, compare=False)
    # The user turns: ``turn_crc`` identifies the scored last turn's text (0: none), ``history`` the earlier
    # user turns still in the request, as (crc, text), most recent last (at most ``MAX_HISTORY_TURNS``). The
    # engine remembers each client's recent last turns: an earlier turn it never saw as a last turn is history
    # the client wrote itself (``detectors.turns.read_turn``), and may be scored instead of the last turn.
    turn_crc: int = 0
    history: tuple[tuple[int, str], ...] = field(default=(), repr=False, compare=False)
    # ``embedding`` as the read-only float64 array ``extract`` computed it from (the same values), so that the
    # coverage detector does not convert 64 floats back per request; None when features are built by hand.
    embedding_array: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Winnowed 4-token shingle fingerprints of prompts of 64 tokens or more (``detectors.anchors``): sorted,
    # distinct, odd 32-bit values, at most 256; () for shorter prompts.
    anchors: tuple[int, ...] = field(default=(), repr=False)


@_slot_init
@dataclass(frozen=True, slots=True)
class ResponseFeatures:
    """What the upstream answered (all optional; unknown values are None)."""

    status: int = 200
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reasons: tuple[str, ...] = ()
    logprobs_returned: int = 0  # token positions that carried logprobs
    max_tokens: int | None = None  # the request's max_tokens, to judge "ran to the limit"


@_slot_init
@dataclass(frozen=True, slots=True)
class DetectorScore:
    """One detector's opinion of a client after a request: a score in [0, 1] and why."""

    name: str
    score: float
    reasons: tuple[str, ...] = ()
    sketches: tuple[int, ...] = ()  # account-agnostic sketches this request contributes to linking


@_slot_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's judgement of a client after one request.

    ``score`` is the calibrated suspicion in [0, 1]; ``tier`` the tier after hysteresis (0 normal, 1 watch,
    2 throttle, 3 block); ``reasons`` are human-readable, strongest first; ``detector_scores`` maps each
    enabled detector's name to its score; ``sketches`` are account-agnostic prompt sketches for cross-account
    linking (hand them to ``StateStore.link_sketches``; empty when this request carries no reusable
    template); ``errors`` names detectors that raised on this request (count them in
    ``detector_errors_total``); ``unscored`` is True when any detector failed, and the score then excludes it.
    """

    score: float
    tier: int
    reasons: tuple[str, ...]
    detector_scores: Mapping[str, float]
    sketches: tuple[int, ...] = ()
    errors: tuple[str, ...] = ()
    unscored: bool = False
    requests_seen: int = 0
    cluster_score: float = 0.0
    own_score: float = 0.0  # the combiner's score from this client's own traffic (no cluster inheritance)
    # the combiner weights the client was judged with (its plans' strictest profile, or the weights passed)
    weights: Mapping[str, float] | None = None

    @property
    def flagged(self) -> bool:
        return self.tier >= FLAG_TIER


@dataclass(frozen=True, slots=True)
class Observation:
    verdict: Verdict
    state: bytes  # the client's new serialized state (<= STATE_BUDGET_BYTES); store it


@dataclass(frozen=True, slots=True)
class LinkResult:
    """The client's state after folding in cross-account links, and who it is linked to now."""

    state: bytes
    linked: tuple[str, ...]  # peers whose accumulated shared-sketch count reached the link threshold
    cluster_score: float  # the score this client inherits from its cluster (0 when unlinked)


#: Hard budget for one client's serialized state; the engine truncates bounded structures to stay under it.
STATE_BUDGET_BYTES = 32 * 1024
