"""The one piece of I/O the evaluation scripts share: reading the real prompt corpus.

``<repo>/../shared/data/prompts.jsonl`` (red-team prompts excluded), split by a hash of the prompt id.
"""

from __future__ import annotations

from pathlib import Path

from detectors.traffic.corpus import Split, parse_prompts
from detectors.traffic.generator import Bank

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "prompts.jsonl"


def load_bank(split: Split) -> Bank:
    with DATA.open(encoding="utf-8") as f:
        return Bank(parse_prompts(f, split), split)
