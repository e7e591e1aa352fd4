"""Fixtures for the routing tests: a settable clock and small model configs."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import HealthConfig, ModelConfig


class FakeClock:
    """A clock the test moves by hand, so backoffs and holds are checked without sleeping."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


HEALTH = HealthConfig(consecutive_failures=3, ejection_base_s=5, ejection_max_s=40, failure_threshold=2,
                      interval_s=0.05, timeout_s=0.2)


def model(name: str = "m", *backends: tuple[str, float], **extra: Any) -> ModelConfig:
    specs = backends or (("stable", 90.0), ("canary", 10.0))
    data: dict[str, Any] = {
        "name": name,
        "backends": [
            {"name": n, "url": f"http://127.0.0.1:{18000 + i}", "weight": w, "max_concurrency": 4}
            for i, (n, w) in enumerate(specs)
        ],
    }
    data.update(extra)
    return ModelConfig.model_validate(data)
