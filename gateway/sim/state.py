"""What one simulated server holds: its options, its counters, and the typed app keys that carry them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass(frozen=True, slots=True)
class SimOptions:
    model: str = "sim"
    latency_ms: float = 0.0
    tokens_per_s: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500
    cut_after: int | None = None
    stall_after: int | None = None
    seed: int = 0
    default_max_tokens: int = 256
    embedding_dim: int = 32
    kgw_plugin: bool = False  # emulate vLLM with ipgate's KGW plugin loaded (see gateway/sim/server.py)
    kgw_spec: str | None = None  # the plugin's IPGATE_KGW_PARAMS (None: the default, g0.25-h4-selfhash)
    kgw_secret: bytes | None = None  # the plugin host's master secret (None: only key-mode directives)
    reasoning: bool = False  # chat answers carry a chain of thought in ``reasoning`` (vLLM's reasoning parser)
    # vLLM 0.33's answer-side extensions (gateway/sim/extensions.py): return_prompt_text and
    # return_weight_versions are always honoured; routed_experts is the server flag --enable-return-routed-experts
    weight_version: str = "sim-v1"
    routed_experts: bool = False


@dataclass(slots=True)
class SimStats:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    failed: int = 0
    cut: int = 0
    refused: int = 0  # requests the emulated KGW plugin refused (kgw_plugin)
    abort_times: list[float] = field(default_factory=list)  # time.monotonic() when each abort was seen
    last_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    last_body: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "completed": self.completed, "aborted": self.aborted,
                "failed": self.failed, "cut": self.cut, "refused": self.refused}


SIM_STATS = web.AppKey("sim_stats", SimStats)
SIM_OPTIONS = web.AppKey("sim_options", SimOptions)
SIM_RNG = web.AppKey("sim_rng", random.Random)
