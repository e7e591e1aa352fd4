"""Review session 15 (kgw-sim): the vLLM plugin and the engine's ``--logprobs-mode``.

vLLM computes the logprobs it returns from the logits *before* any logits processor unless the engine runs
with ``--logprobs-mode processed_logprobs`` (``ModelConfig.logprobs_mode``, default ``raw_logprobs``; vLLM 0.33
``config/model.py``: "Raw means the values before applying any logit processors"). Behind the KGW plugin that
means a client asking for ``top_logprobs`` gets the unwatermarked distribution: clean soft labels to distil
from, and a side channel on the green lists (compare the raw probability of the sampled tokens with how often
they are sampled); processed logprobs carry the green-list bias instead (deploy/README.md weighs the two). The
plugin cannot change the mode; it must say which one runs when the engine starts.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator

import pytest

from tests.support import fake_vllm
from watermark.keys import KeyRing

torch = pytest.importorskip("torch")

RING = KeyRing(b"kgw-s15-test-master-secret-0123456789")


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", "hex:" + RING.master.hex())
    monkeypatch.delenv("IPGATE_KGW_PARAMS", raising=False)
    monkeypatch.setenv("IPGATE_KGW_COMPILE", "0")
    with fake_vllm.installed(monkeypatch) as vllm_plugin:
        yield vllm_plugin


def _config(mode: str | None) -> types.SimpleNamespace:
    model = types.SimpleNamespace() if mode is None else types.SimpleNamespace(logprobs_mode=mode)
    return types.SimpleNamespace(model_config=model, speculative_config=None)


def _build(plugin: types.ModuleType, runner: str, config: types.SimpleNamespace) -> object:
    if runner == "v1":
        return plugin.KgwLogitsProcessor(config, torch.device("cpu"), False)
    states = types.SimpleNamespace(all_token_ids=types.SimpleNamespace(gpu=torch.zeros((2, 8), dtype=torch.int32)),
                                   max_num_reqs=2, vocab_size=64)
    return plugin.KgwLogitsProcessorV2(config, states)


@pytest.mark.parametrize("runner", ["v1", "v2"])
@pytest.mark.parametrize(("mode", "warned"), [
    ("raw_logprobs", True), ("raw_logits", True),  # vLLM's default and its raw sibling: before the watermark
    ("processed_logprobs", False), ("processed_logits", False),  # after every processor, the watermark included
    (None, False),  # an engine without the setting (older vLLM): nothing to say
])
def test_the_plugin_says_when_returned_logprobs_skip_the_watermark(
        plugin: types.ModuleType, caplog: pytest.LogCaptureFixture, runner: str, mode: str | None,
        warned: bool) -> None:
    caplog.set_level(logging.INFO, logger="watermark.kgw")
    proc = _build(plugin, runner, _config(mode))
    assert proc is not None
    hits = [r for r in caplog.records if "--logprobs-mode" in r.getMessage()]
    if warned:
        assert len(hits) == 1 and hits[0].levelno == logging.INFO
        assert str(mode) in hits[0].getMessage() and "processed_logprobs" in hits[0].getMessage()
    else:
        assert hits == []
