"""``gateway.watermarking``: scheme choice per model/backend/tier, what is never watermarked, directives,
recipients, and the master secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.principal import Principal
from gateway.store.memory import MemoryStore
from gateway.watermarking import GatewayWatermarking, load_master_secret
from watermark.kgw.directives import F_CLIENT, F_DELTA, F_VERSION
from watermark.lexical import LexicalScheme

SECRET = "unit-test-master-secret-0123"
TEXT = "I think you are right. It is not hard, and you do not need to buy a big car. For example, it is often fine."


def config(**watermark: Any) -> GatewayConfig:
    return parse_config({
        "models": [
            {"name": "m1", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]},
            {"name": "m2", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}], "watermark_scheme": "none"},
            {"name": "m3", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}], "watermark_scheme": "kgw"},
        ],
        "watermark": {"scheme": "lexical", **watermark},
    }, env={})


@pytest.fixture
def wm() -> GatewayWatermarking:
    return GatewayWatermarking.from_config(config(), environ={"IPGATE_WATERMARK_SECRET": SECRET})


ALICE = Principal("alice")


def run(emb: Any, text: str = TEXT) -> str:
    return str(emb.feed(text) + emb.finish())


@pytest.mark.parametrize(
    ("model", "body", "watermarked"),
    [
        ("m1", {}, True),
        ("m1", {"response_format": {"type": "text"}}, True),
        ("m1", {"response_format": {"type": "json_object"}}, False),
        ("m1", {"response_format": {"type": "json_schema", "json_schema": {}}}, False),
        ("m1", {"tools": [{"type": "function"}], "tool_choice": "required"}, False),
        ("m1", {"tools": [{"type": "function"}], "tool_choice": {"type": "function", "function": {"name": "f"}}},
         False),
        ("m1", {"functions": [{}], "function_call": {"name": "f"}}, False),
        ("m1", {"tools": [{"type": "function"}], "tool_choice": "auto"}, True),  # text answers still marked
        ("m2", {}, False),  # the model turns watermarking off
        ("m3", {}, True),  # kgw asked, backend not capable: lexical post hoc rather than nothing
        ("unknown-model", {}, True),  # the watermark section's default scheme
    ],
)
def test_embedder_for(wm: GatewayWatermarking, model: str, body: dict[str, Any], watermarked: bool) -> None:
    emb = wm.embedder_for(ALICE, model, "normal", body)
    assert (emb is not None) == watermarked
    if emb is not None:
        out = run(emb)
        assert out == LexicalScheme(SECRET.encode()).embed(TEXT, wm.ring.key("alice"))


def test_strength_follows_the_tier(wm: GatewayWatermarking) -> None:
    text = " ".join(["It is essential that people acquire it. In fact the people help."] * 3)
    normal = run(wm.embedder_for(ALICE, "m1", "normal", {}), text)
    strong = run(wm.embedder_for(ALICE, "m1", "throttle", {}), text)  # the default "throttle" tier is strong
    scheme = LexicalScheme(SECRET.encode())
    assert normal == scheme.embed(text, wm.ring.key("alice"), "normal")
    assert strong == scheme.embed(text, wm.ring.key("alice"), "strong")


def test_upstream_directives(wm: GatewayWatermarking) -> None:
    assert wm.upstream_directives(ALICE, "m1", False, "normal") is None  # not capable: post hoc instead
    assert wm.upstream_directives(ALICE, "m2", True, "normal") is None  # off for this model
    d = wm.upstream_directives(ALICE, "m3", True, "normal")
    assert d is not None and d["vllm_xargs"][F_CLIENT] == "alice" and d["vllm_xargs"][F_VERSION] == 1
    assert d["vllm_xargs"][F_DELTA] == 2.0
    strong = wm.upstream_directives(ALICE, "m3", True, "throttle")
    assert strong is not None and strong["vllm_xargs"][F_DELTA] == 4.0
    # a capable backend of a "lexical" model gets no post-hoc rewrite, so it must watermark in the engine
    assert wm.upstream_directives(ALICE, "m1", True, "normal") is not None


async def test_record_recipient_once_per_process(wm: GatewayWatermarking) -> None:
    class Counting(MemoryStore):
        calls = 0

        async def add_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
            Counting.calls += 1
            await super().add_recipient(client_id, key_version, ttl_s)

    store = Counting()
    for _ in range(3):
        await wm.record_recipient(store, ALICE)
    await wm.record_recipient(store, Principal("bob"))
    assert Counting.calls == 2
    assert await store.recipients() == {"alice": [1], "bob": [1]}


async def test_failed_record_is_retried(wm: GatewayWatermarking) -> None:
    class Flaky(MemoryStore):
        fail = True

        async def add_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
            if Flaky.fail:
                Flaky.fail = False
                raise ConnectionError("store down")
            await super().add_recipient(client_id, key_version, ttl_s)

    store = Flaky()
    with pytest.raises(ConnectionError):
        await wm.record_recipient(store, ALICE)
    await wm.record_recipient(store, ALICE)
    assert await store.recipients() == {"alice": [1]}


def test_master_secret_sources(tmp_path: Path) -> None:
    cfg = config().watermark
    with pytest.raises(ConfigError, match="IPGATE_WATERMARK_SECRET"):
        load_master_secret(cfg, {})
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_master_secret(cfg, {"IPGATE_WATERMARK_SECRET": "short"})
    f = tmp_path / "secret"
    f.write_text("hex:" + "ab" * 32 + "\n")
    assert load_master_secret(config(secret_file=str(f)).watermark, {}) == bytes([0xAB] * 32)
    with pytest.raises(ConfigError, match="cannot read"):
        load_master_secret(config(secret_file=str(tmp_path / "missing")).watermark, {})


def test_rotation_signs_with_the_current_version() -> None:
    wm = GatewayWatermarking.from_config(config(key_version=3, retained_versions=[1, 2]),
                                         environ={"IPGATE_WATERMARK_SECRET": SECRET})
    assert wm.ring.versions == (3, 2, 1)
    out = run(wm.embedder_for(ALICE, "m1", "normal", {}))
    assert out == LexicalScheme(SECRET.encode()).embed(TEXT, wm.ring.key("alice", 3))


def test_list_marker_choices_follow_the_config() -> None:
    """``watermark.lexical_markdown`` decides whether list markers carry choices (on by default)."""
    lists = "".join(f"Part {w}:\n\n- alpha\n- beta\n\n" for w in ("red", "green", "blue", "cyan", "pink", "gray"))
    env = {"IPGATE_WATERMARK_SECRET": SECRET}
    on = GatewayWatermarking.from_config(config(), environ=env)
    off = GatewayWatermarking.from_config(config(lexical_markdown=False), environ=env)
    outs_on = {run(on.embedder_for(Principal(f"c{i}"), "m1", "normal", {}), lists) for i in range(8)}
    outs_off = {run(off.embedder_for(Principal(f"c{i}"), "m1", "normal", {}), lists) for i in range(8)}
    assert outs_off == {lists}
    assert len(outs_on) > 1 and all("* alpha\n* beta" in o or "- alpha\n- beta" in o for o in outs_on)
