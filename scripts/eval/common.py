"""The one piece of I/O the evaluation scripts share: reading the real prompt corpus.

``<repo>/../shared/data/prompts.jsonl`` (red-team prompts excluded), split by a hash of the prompt id.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection
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


def variant_row(name: str, out: dict[str, Any], attackers: Collection[str], benign: Collection[str]) -> str:
    """One markdown row of an evasion table from a replay's output: attackers flagged within 300 requests, the
    median requests to flag, benign clients flagged and benign clients at watch or above."""
    res = {c["client"]: c for c in out["clients"]}
    firsts = [res[c]["first_flag_index"] for c in attackers if res[c]["first_flag_index"] is not None]
    within = sum(1 for f in firsts if f <= 300)
    med = f"{statistics.median(firsts):.0f}" if firsts else "-"
    fb = sum(res[c]["flagged"] for c in benign)
    wb = sum(res[c]["tier"] >= 1 for c in benign)
    return (f"| {name} | {within} / {len(attackers)} ({within / len(attackers):.0%}) | {med} | "
            f"{fb} / {len(benign)} | {wb} / {len(benign)} |")
