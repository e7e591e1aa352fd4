"""The one piece of I/O the evaluation scripts share: reading the real prompt corpus.

``<repo>/../shared/data/prompts.jsonl`` (red-team prompts excluded), split by a hash of the prompt id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectors.traffic.corpus import Split, parse_prompts
from detectors.traffic.generator import Bank

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "prompts.jsonl"


def load_bank(split: Split) -> Bank:
    with DATA.open(encoding="utf-8") as f:
        return Bank(parse_prompts(f, split), split)


def user_text(body: dict[str, Any]) -> str | None:
    """The text a generated request carries: its last user message (chat) or its prompt (completions)."""
    msgs = body.get("messages")
    if isinstance(msgs, list) and msgs and msgs[-1].get("role") == "user":
        c = msgs[-1].get("content")
        return c if isinstance(c, str) else None
    p = body.get("prompt")
    return p if isinstance(p, str) else None
