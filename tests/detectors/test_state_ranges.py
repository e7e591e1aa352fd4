"""Stored numbers outside their declared ranges (only a tampered or corrupted store holds them) are refused.

Each row writes one value into a real client state's bytes at a field's offset: in the envelope header (the
whole client starts fresh, as for a header that is not an envelope at all) or in one detector's blob (that
detector starts fresh, the others keep their state). Either way ``Engine.state_errors`` counts it, which the
gateway exports as ``ipgate_detector_state_errors_total``. Rows with values inside the range (boundaries,
the signed sums' negative values, the "not cooling down" clock) must decode untouched.
"""

from __future__ import annotations

import logging
import math
import struct
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detectors import state as envelope
from detectors.base import COUNT_MAX
from detectors.combiner import CombinerParams
from detectors.coverage import TOPIC0
from detectors.engine import Engine
from detectors.linking import MAX_SHARED
from detectors.state import MAX_TS
from detectors.templates import SKEL, SLOTS
from detectors.timing import SUM_LOG
from detectors.types import ResponseFeatures
from tests.detectors.conftest import CHAT, chat, feats

T0 = 1_767_258_000.0
NAN, INF = math.nan, math.inf
TOO_LATE = 2.0 * MAX_TS


def _client_state(engine: Engine) -> bytes:
    """A client with something in every field a row tampers with: template clusters, a linked peer."""
    state: bytes | None = None
    for i in range(12):
        body = chat(f"Write a step-by-step guide to baking for grade {i + 1} students, then list {i + 3} quiz "
                    "questions about it.", max_tokens=64)
        _, pending = engine.observe_pending(state, feats(body, T0 + 20 * i), T0 + 20 * i)
        state = engine.observe_response(pending, ResponseFeatures(prompt_tokens=30, completion_tokens=64,
                                                                  finish_reasons=("stop",)), T0 + 20 * i)
        state = engine.apply_links(state, {"peer-1": 40}, T0 + 20 * i).state
    assert state is not None
    return state


@pytest.fixture(scope="module")
def stored(params: CombinerParams) -> bytes:
    return _client_state(Engine.from_params(params))


def _k(engine: Engine) -> int:
    return next(int(getattr(d, "k", 0)) for d in engine.detectors if d.name == "coverage")


# --- the envelope header: "<IBddfff" after magic and version ---------------------------------------------------

BELOW_SINCE, LAST_TS, LAST_SCORE = 3 + 5, 3 + 13, 3 + 21

HEADER_ROWS = [
    # (field offset, struct format, value, refused)
    (LAST_TS, "<d", NAN, True),
    (LAST_TS, "<d", INF, True),
    (LAST_TS, "<d", -1.0, True),  # before 1970: no clock the gateway reads
    (LAST_TS, "<d", TOO_LATE, True),  # a far-future time would stop the client's time decay for good
    (LAST_TS, "<d", T0 * 1000.0, True),  # a millisecond clock
    (BELOW_SINCE, "<d", -0.5, True),  # neither -1 ("not cooling down") nor a time
    (BELOW_SINCE, "<d", -INF, True),
    (BELOW_SINCE, "<d", TOO_LATE, True),
    (LAST_SCORE, "<f", 1.5, True),
    (LAST_TS, "<d", 0.0, False),  # the boundaries are in range
    (LAST_TS, "<d", MAX_TS, False),
    (BELOW_SINCE, "<d", -1.0, False),
    (BELOW_SINCE, "<d", T0, False),
]


def _patch(data: bytes, offset: int, fmt: str, value: float) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(("offset", "fmt", "value", "refused"), HEADER_ROWS)
def test_header_out_of_range_starts_the_client_fresh(
    params: CombinerParams, stored: bytes, offset: int, fmt: str, value: float, refused: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine.from_params(params)
    tampered = _patch(stored, offset, fmt, value)
    if refused:
        with pytest.raises(ValueError, match="declared ranges"):
            envelope.decode(tampered)
    else:
        assert struct.unpack_from(fmt, envelope.encode(envelope.decode(tampered)), offset)[0] == value
    now = T0 + 3600.0
    f = feats(chat("and what about bread?"), now)
    with caplog.at_level(logging.WARNING, logger="detectors.state_codec"):
        got = engine.observe(tampered, f, now)
    fresh = Engine.from_params(params).observe(None, f, now)
    assert engine.state_errors == int(refused)
    assert (got.state == fresh.state) is refused  # refused: exactly what a client without state gets
    assert (got.verdict.requests_seen == 1) is refused
    assert ("detector state unreadable, starting the client's evidence fresh" in caplog.text) is refused


# --- the detectors' blobs -----------------------------------------------------------------------------------------

def _counter(i: int) -> Any:
    return lambda blob, k: 8 + 4 * i


def _templates_count(blob: bytes, k: int) -> int:
    clusters = blob[20]
    assert clusters > 0  # the stream made some
    return 21 + 4 * clusters * (SLOTS + SKEL + 3)


BLOB_ROWS = [
    # (detector, offset of the field (from the blob and the coverage topic count), format, value, refused)
    ("volume", _counter(0), "<f", -1.0, True),  # a negative request count silences every share
    ("volume", _counter(6), "<f", 2.0 * COUNT_MAX, True),  # input tokens beyond any decayed sum
    ("volume", _counter(0), "<f", NAN, True),
    ("volume", lambda b, k: 0, "<d", NAN, True),  # the counters' timestamp
    ("volume", lambda b, k: 0, "<d", -5.0, True),
    ("volume", lambda b, k: 0, "<d", TOO_LATE, True),
    ("volume", lambda b, k: 40, "<f", -1.0, True),  # the request rate
    ("reasoning", _counter(1), "<f", -0.25, True),
    ("logit_probing", _counter(0), "<f", -3.0, True),
    ("templates", _counter(1), "<f", -1.0, True),
    ("templates", _templates_count, "<f", -2.0, True),  # a cluster's count
    ("templates", _templates_count, "<f", INF, True),
    ("timing", _counter(SUM_LOG + 1), "<f", -1.0, True),  # the sum of squared log gaps is a count
    ("timing", _counter(SUM_LOG + 5), "<f", -1.0, True),  # an hour-of-day slot
    ("coverage", _counter(0), "<f", -1.0, True),
    ("coverage", lambda b, k: 8 + 4 * (TOPIC0 + k), "<f", 2.0 * COUNT_MAX, True),  # a signed sum, too large
    ("linking", lambda b, k: 0, "<d", NAN, True),
    ("linking", lambda b, k: len(b) - 4, "<f", 2.0 * MAX_SHARED, True),  # the last peer's shared count
    # in range: decoded as they are
    ("volume", _counter(0), "<f", -0.0, True),  # a count's sign bit is never set, not even on a zero
    ("volume", _counter(6), "<f", COUNT_MAX, True),  # the bound itself is out
    ("volume", _counter(0), "<f", 0.0, False),
    ("volume", _counter(6), "<f", float(np.nextafter(np.float32(COUNT_MAX), np.float32(0.0))), False),
    ("timing", _counter(SUM_LOG), "<f", -40.0, False),  # log(gap + 0.05) < 0: a signed sum
    ("coverage", lambda b, k: 8 + 4 * (TOPIC0 + k), "<f", -3.0, False),  # the embedding sum is signed
    ("coverage", lambda b, k: 8 + 4 * (TOPIC0 + k + 1), "<f", -0.0, False),
    ("linking", lambda b, k: len(b) - 4, "<f", MAX_SHARED, False),
]


@pytest.mark.parametrize(("name", "where", "fmt", "value", "refused"), BLOB_ROWS)
def test_a_blob_out_of_range_starts_that_detector_fresh(
    params: CombinerParams, stored: bytes, name: str, where: Any, fmt: str, value: float, refused: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine.from_params(params)
    env = envelope.decode(stored)
    blob = env.blobs[name]
    tampered_blob = _patch(blob, where(blob, _k(engine)), fmt, value)
    assert tampered_blob != blob
    detector = next(d for d in engine.detectors if d.name == name)
    if refused:
        with pytest.raises(ValueError):
            detector.load(tampered_blob)
    else:
        assert detector.dump(detector.load(tampered_blob)) == tampered_blob
    env.blobs[name] = tampered_blob
    tampered = envelope.encode(env)
    del env.blobs[name]
    without = envelope.encode(env)  # the same client with no state for this detector
    now = T0 + 3600.0
    f = feats(chat("and what about bread?"), now)
    with caplog.at_level(logging.WARNING, logger="detectors.state_codec"):
        got = engine.observe(tampered, f, now)
    assert engine.state_errors == int(refused)
    assert (f"detector {name}: state unreadable, starting fresh" in caplog.text) is refused
    assert got.verdict.requests_seen == 13  # the other detectors and the header are kept either way
    reference = Engine.from_params(params).observe(without, f, now)
    assert (got.state == reference.state) is refused


def test_the_decoded_state_cache_never_hands_out_a_tampered_state(params: CombinerParams, stored: bytes) -> None:
    """The cache finds entries by the header's bytes but hands one out only for bytes equal to those the engine
    wrote: a state tampered after the header (same fingerprint) is decoded, and refused."""
    engine = Engine.from_params(params)
    now = T0 + 3600.0
    written = engine.observe(stored, feats(chat("and what about bread?"), now), now).state  # cached decoded
    assert len(engine._decoded) == 1
    env = envelope.decode(written)
    env.blobs["reasoning"] = _patch(env.blobs["reasoning"], 8, "<f", -1.0)
    tampered = envelope.encode(env)
    assert tampered[:36] == written[:36]  # the cache's fingerprint is unchanged
    engine.observe(tampered, feats(chat("and cake?"), now + 5), now + 5)
    assert engine.state_errors == 1


def test_a_refused_state_is_counted_in_the_gateways_metric(stored: bytes) -> None:
    from gateway.config import parse_config
    from gateway.detection import GatewayDetection
    from gateway.policy import Policy
    from gateway.principal import Principal
    from gateway.telemetry.metrics import Metrics

    cfg = parse_config({"models": [{"name": "m", "backends": [{"name": "a", "url": "http://x"}]}]}, env={})
    registry = CollectorRegistry()
    det = GatewayDetection.from_config(cfg, Policy.from_config(cfg), metrics=Metrics(registry))
    env = envelope.decode(stored)
    env.blobs["volume"] = _patch(env.blobs["volume"], 8, "<f", -1.0)
    now = T0 + 3600.0
    det.observe(Principal("c1"), CHAT, chat("hello"), envelope.encode(env), 0, now)
    det.observe(Principal("c2"), CHAT, chat("hello"), _patch(stored, LAST_TS, "<d", INF), 0, now)
    det.observe(Principal("c3"), CHAT, chat("hello"), stored, 0, now)  # untouched: not counted
    assert registry.get_sample_value("ipgate_detector_state_errors_total") == 2.0
