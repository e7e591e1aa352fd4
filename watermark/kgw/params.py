"""KGW watermark parameters: the part of the configuration that embedding and detection must share.

γ (``gamma``), the context width ``h`` and the seeding scheme define *which* tokens are green, so a detector
must use the values the generator used. δ (``delta``) only sets how hard generation is pushed towards green
tokens; detection does not need it, which is why a stronger δ can be chosen per request (for suspicious
tiers) without changing how text is verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Seeding = Literal["lefthash", "minhash", "selfhash"]
SEEDINGS: tuple[Seeding, ...] = ("lefthash", "minhash", "selfhash")


@dataclass(frozen=True, slots=True)
class KgwParams:
    """Green-list definition (γ, h, seeding) plus the default bias δ.

    Seeding schemes (after Kirchenbauer et al. 2023, "On the Reliability of Watermarks"):

    - ``lefthash``: the green list of the next token is a keyed function of the ordered ``h`` previous
      tokens. Cheapest; any edit in the window changes the list.
    - ``minhash``: keyed function of the *set* of the ``h`` previous tokens through their minimum keyed
      hash, so reordering the window or editing a token that is not the minimum keeps the list.
    - ``selfhash``: anchored min-hash over the ``h - 1`` previous tokens **and the candidate token
      itself** (the paper's recommended "selfhash", h = 4): every candidate has its own seed, which makes
      the green lists harder to learn from outputs and more robust to edits. Computed for the whole
      vocabulary at once, not by the paper's rejection sampling.
    """

    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = 4
    seeding: Seeding = "selfhash"

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"kgw.gamma must be in (0, 1), got {self.gamma}")
        if not 0 < round(self.gamma * 2**32) < 2**32:  # the green test compares 32-bit lanes (``threshold``)
            raise ValueError(f"kgw.gamma must round to a 32-bit threshold in (0, 2**32), got {self.gamma}")
        if not 0.0 <= self.delta <= 50.0:
            raise ValueError(f"kgw.delta must be in [0, 50], got {self.delta}")
        if self.seeding not in SEEDINGS:
            raise ValueError(f"kgw.seeding must be one of {', '.join(SEEDINGS)}, got {self.seeding!r}")
        low = 2 if self.seeding == "selfhash" else 1
        if not low <= self.context_width <= 16:
            raise ValueError(
                f"kgw.context_width must be in [{low}, 16] for seeding {self.seeding!r}, "
                f"got {self.context_width}"
            )

    @property
    def prev_tokens(self) -> int:
        """How many previous tokens the green decision for a position reads (selfhash counts the
        candidate token itself as part of its window of ``h``)."""
        return self.context_width - 1 if self.seeding == "selfhash" else self.context_width

    @property
    def threshold(self) -> int:
        """A token is green iff its 32-bit keyed hash is below this: P(green) = threshold / 2³² ≈ γ
        (exact to 2⁻³²) for every token independently, so the green list has γ·V tokens in expectation
        and the null model of detection is Bernoulli(γ) per scored tuple (see ``detect.py``)."""
        return round(self.gamma * 2**32)

    @property
    def p_green(self) -> float:
        """The exact null probability that a scored tuple is green (``threshold / 2³²``)."""
        return self.threshold / 2**32
