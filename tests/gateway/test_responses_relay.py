"""The sans-IO Responses relay: vLLM-shaped event streams in random chunkings, a real lexical embedder."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from gateway.config import HardeningConfig
from gateway.hooks import StreamEmbedder
from gateway.proxy.responses_body import transform_body
from gateway.proxy.responses_relay import ResponsesRelay
from tests.support.lexical import ANSWER
from tests.support.responses_events import parse_sse, response_body, sse, stream_events
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme

RING = KeyRing(b"responses-relay-test-master-secret-0123", 1, ())
SCHEME = LexicalScheme(RING.master)
THOUGHT = ("Let me think. The user wants a laptop, so I should compare a few options; however, it is not easy, "
           "and I will also mention the battery because it is the part that fails first. ü ✓")
TEXT = ANSWER + " Ünïcödé ✓ 日本語."


def factory() -> StreamEmbedder:
    return SCHEME.embedder(RING.key("alice"))


def whole(text: str) -> str:
    emb = factory()
    return emb.feed(text) + emb.finish()


def run(raw: bytes, seed: int, **kw: Any) -> tuple[ResponsesRelay, list[dict[str, Any]]]:
    relay = ResponsesRelay(factory, **kw)
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(raw):  # random cuts: mid-event, mid-line, mid-UTF-8 character
        n = rng.randint(1, 97)
        out.append(relay.feed(raw[i : i + n]))
        i += n
    out.append(relay.finish())
    return relay, parse_sse(b"".join(out))


def texts(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per part: what the deltas spell, and what each done event says."""
    got: dict[str, Any] = {"deltas": {}, "done": {}, "part": {}, "item": {}, "completed": {}}
    for e in events:
        t = e["type"]
        if t.endswith("_text.delta"):
            key = (e["output_index"], e["content_index"])
            got["deltas"][key] = got["deltas"].get(key, "") + e["delta"]
        elif t.endswith("_text.done"):
            got["done"][(e["output_index"], e["content_index"])] = e["text"]
        elif t == "response.content_part.done":
            got["part"][(e["output_index"], e["content_index"])] = e["part"]["text"]
        elif t == "response.output_item.done":
            for ci, p in enumerate(e["item"]["content"]):
                got["item"][(e["output_index"], ci)] = p["text"]
        elif t == "response.completed":
            for oi, item in enumerate(e["response"]["output"]):
                for ci, p in enumerate(item["content"]):
                    got["completed"][(oi, ci)] = p["text"]
    return got


@pytest.mark.parametrize("seed", range(6))
def test_stream_equals_the_whole_text_embedded_at_once_and_done_events_agree(seed: int) -> None:
    raw = sse(stream_events("m", TEXT, THOUGHT, logprobs=True, step=3 + seed))
    relay, events = run(raw, seed)
    got = texts(events)
    expect = {(0, 0): whole(THOUGHT), (1, 0): whole(TEXT)}
    assert expect[(1, 0)] != TEXT and expect[(0, 0)] != THOUGHT
    for kind in ("deltas", "done", "part", "item", "completed"):
        assert got[kind] == expect, kind
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for e in events:  # the backend's tokens would spell the unwatermarked text
        if "logprobs" in e:
            assert not e["logprobs"]
        part = e.get("part") or {}
        assert not part.get("logprobs")
    assert relay.done and relay.watermarked and not relay.upstream_error
    assert (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (12, 300)
    assert relay.finish_reasons == ["stop"] and relay.model == "m"
    # a synthetic delta carries the held-back word right before the done event
    i = next(i for i, e in enumerate(events) if e["type"] == "response.output_text.done")
    assert events[i - 1]["type"] == "response.output_text.delta"


def test_strip_reasoning_drops_the_items_and_renumbers_output_index() -> None:
    _, events = run(sse(stream_events("m", TEXT, THOUGHT)), 1, strip_reasoning=True)
    assert not any("reasoning" in e["type"] for e in events)
    assert all(e.get("output_index", 0) == 0 for e in events)
    done = events[-1]["response"]["output"]
    assert [i["type"] for i in done] == ["message"] and done[0]["content"][0]["text"] == whole(TEXT)
    assert THOUGHT[:20] not in json.dumps(events)


def test_verbatim_answer_keeps_its_logprobs_but_gets_the_hardening() -> None:
    cfg = HardeningConfig(max_top_logprobs=0)
    from gateway.response_hardening import harden_choice_logprobs

    def hook(choice: dict[str, Any]) -> bool:
        return harden_choice_logprobs(choice, cfg, random.Random(0))

    relay = ResponsesRelay(None, hook=hook)
    events = parse_sse(relay.feed(sse(stream_events("m", TEXT, logprobs=True))) + relay.finish())
    got = texts(events)
    assert got["deltas"][(0, 0)] == TEXT == got["completed"][(0, 0)]
    assert all(not e.get("logprobs") for e in events) and not relay.watermarked


def test_cut_stream_flushes_the_held_word_and_ends_with_an_error() -> None:
    upstream = stream_events("m", TEXT)[:-5]  # ends inside the answer
    relay, events = run(sse(upstream), 3)
    assert "error" in events[-1] and not relay.done
    text = "".join(e["delta"] for e in events if e.get("type") == "response.output_text.delta")
    sent = "".join(e["delta"] for e in upstream if e["type"] == "response.output_text.delta")
    assert text == whole(sent) != sent  # the held-back word came out before the error, watermarked
    assert relay.content_events > 0


def test_part_without_deltas_is_watermarked_and_sent_as_one_delta() -> None:
    events = [e for e in stream_events("m", TEXT) if e["type"] != "response.output_text.delta"]
    _, out = run(sse(events), 2)
    got = texts(out)
    assert got["deltas"][(0, 0)] == whole(TEXT) == got["done"][(0, 0)] == got["completed"][(0, 0)]


def test_body_transform() -> None:
    body = response_body("m", TEXT, THOUGHT, logprobs=True)
    b = copy.deepcopy(body)
    changed, usage, reasons, positions, wm = transform_body(b, factory, None)
    assert b["output"][0]["content"][0]["text"] == whole(THOUGHT)
    assert b["output"][1]["content"][0]["text"] == whole(TEXT)
    assert b["output"][1]["content"][0]["logprobs"] == []
    assert changed and wm and positions == 0 and reasons == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 300)
    b = copy.deepcopy(body)
    transform_body(b, factory, None, strip_reasoning=True)
    assert [i["type"] for i in b["output"]] == ["message"]
    inc = response_body("m", TEXT, status="incomplete")
    assert transform_body(inc, None, None)[2] == ["length"]
