"""Stand-ins of vLLM's two logits-processor base classes (vLLM is not installed in the test environment), so the
lazily built plugin classes (``watermark/kgw/vllm_plugin.py``, ``vllm_plugin_v2.py``) are checked against each
interface's abstract methods and driven the way an engine drives them. The real classes and loaders are
exercised by ``scripts/vllm_conformance.py`` where vLLM is installed.

Both mirror vLLM 0.33: ``vllm.v1.sample.logits_processor.LogitsProcessor`` (V1 model runner) and
``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` (Model Runner V2). Older V1 releases also had a
non-abstract ``needs_output_token_ids`` defaulting to False (``needs_output_token_ids=True`` adds it)."""

from __future__ import annotations

import abc
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

_PACKAGES = ("vllm", "vllm.v1", "vllm.v1.sample", "vllm.v1.worker", "vllm.v1.worker.gpu", "vllm.v1.worker.gpu.sample")


class V1LogitsProcessor(abc.ABC):
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        return None

    @abc.abstractmethod
    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None: ...

    @abc.abstractmethod
    def apply(self, logits: Any) -> Any: ...

    @abc.abstractmethod
    def is_argmax_invariant(self) -> bool: ...

    @abc.abstractmethod
    def update_state(self, batch_update: Any) -> None: ...


class V1WithOutputIds(V1LogitsProcessor):
    def needs_output_token_ids(self) -> bool:
        return False


class V2LogitsProcessor(abc.ABC):
    def __init__(self, vllm_config: Any, req_states: Any) -> None:  # noqa: B027
        pass

    @classmethod  # noqa: B027
    def validate_params(cls, sampling_params: Any) -> None:
        pass

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return True

    @abc.abstractmethod
    def apply(self, logits: Any, ctx: Any) -> Any: ...


@contextmanager
def installed(monkeypatch: pytest.MonkeyPatch, *, needs_output_token_ids: bool = False) -> Iterator[types.ModuleType]:
    """Both base classes under vLLM's module names; yields ``watermark.kgw.vllm_plugin`` with its lazily built
    classes and cached server settings cleared before and after (they are built against whatever vllm is)."""
    v1 = types.ModuleType("vllm.v1.sample.logits_processor")
    v1.LogitsProcessor = V1WithOutputIds if needs_output_token_ids else V1LogitsProcessor  # type: ignore[attr-defined]
    v2 = types.ModuleType("vllm.v1.worker.gpu.sample.logits_processor")
    v2.LogitsProcessor = V2LogitsProcessor  # type: ignore[attr-defined]
    for name in _PACKAGES:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", v1)
    monkeypatch.setitem(sys.modules, "vllm.v1.worker.gpu.sample.logits_processor", v2)
    from watermark.kgw import vllm_plugin, vllm_plugin_v2

    caches = (vllm_plugin._processor_class, vllm_plugin_v2._processor_class, vllm_plugin._process_params,
              vllm_plugin._process_secret)
    for c in caches:
        c.cache_clear()
    try:
        yield vllm_plugin
    finally:
        for c in caches:
            c.cache_clear()
