"""Shared helpers for the detector-core tests: request bodies, the shipped combiner, the prompt corpus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.features import extract
from detectors.types import RequestFeatures

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "prompts.jsonl"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def feats(body: dict[str, Any], ts: float, endpoint: str | None = None) -> RequestFeatures:
    return extract(endpoint or (CHAT if "messages" in body else COMPLETIONS), body, ts)


def human_times(n: int, start: float = 1_767_258_000.0) -> Iterator[float]:
    """Irregular, human-looking gaps (deterministic)."""
    t = start
    gaps = [31.0, 140.0, 12.0, 75.0, 400.0, 22.0, 260.0, 58.0, 9.0, 1900.0, 44.0, 118.0]
    for i in range(n):
        yield t
        t += gaps[i % len(gaps)]


@pytest.fixture(scope="session")
def params() -> CombinerParams:
    return CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def engine(params: CombinerParams) -> Engine:
    return Engine.from_params(params)


@pytest.fixture(scope="session")
def corpus_lines() -> list[str]:
    if not DATA.exists():
        pytest.skip(f"prompt corpus not found at {DATA}")
    return DATA.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 sits inside strings
