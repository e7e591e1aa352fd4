from __future__ import annotations

import json
from pathlib import Path

import pytest

from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "responses.jsonl"

# Real assistant-style text used when the shared corpus is not beside the repository.
FALLBACK = [
    "I think you are right, but it is not that simple. For example, you do not need to buy a big car; "
    "you can often use public transport instead. However, it is important to consider the cost. "
    "If you want to save money, you may want to choose a smaller model. It will help you reduce costs. "
    "Also, there is no need to rush: many people wait for a sale. I am happy to help if you have questions.",
    "Here is a quick summary. First, make sure you have the latest version installed. Second, check that "
    "it is configured correctly; it does not work with older settings. Finally, restart the service. "
    "In summary, the process is usually fast, and you will not lose any data. Perhaps the easiest way is "
    "to try it on a test machine first, because it is hard to undo changes.",
]


@pytest.fixture(scope="session")
def ring() -> KeyRing:
    return KeyRing(b"test-master-secret-0123456789", current=1)


@pytest.fixture(scope="session")
def scheme(ring: KeyRing) -> LexicalScheme:
    return LexicalScheme(ring.master)


@pytest.fixture(scope="session")
def responses() -> list[str]:
    """Real assistant responses of at least 150 words (the shared corpus, or the built-in fallback)."""
    if not DATA.exists():
        return FALLBACK
    out = []
    with DATA.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["source"].startswith(("hh-rlhf", "oasst", "arena-hard")) and len(r["response"].split()) >= 150:
                out.append(r["response"])
            if len(out) >= 60:
                break
    return out
