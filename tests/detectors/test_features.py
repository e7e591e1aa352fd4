"""Feature extraction: field parsing on both endpoints, masking, determinism, and tolerance of odd bodies."""

from __future__ import annotations

from typing import Any

import pytest

from detectors.features import EMBED_DIM, extract, prompt_of, tokens_of
from tests.detectors.conftest import CHAT, COMPLETIONS, chat


def test_chat_fields() -> None:
    f = extract(CHAT, chat("Hello there", logprobs=True, top_logprobs=7, max_tokens=2, n=3, seed=4,
                           logit_bias={"50256": -100, "11": 5}), 10.0)
    assert (f.logprobs, f.top_logprobs, f.max_tokens, f.n, f.has_seed) == (True, 7, 2, 3, True)
    assert f.bias_entries == 2 and f.bias_max_abs == 100 and set(f.bias_tokens) == {50256, 11}
    assert f.n_messages == 1 and len(f.embedding) == EMBED_DIM


@pytest.mark.parametrize(("extra", "top", "entries", "max_abs", "tokens"), [
    # vLLM's logprob_token_ids: a logprobs read of chosen ids (counted as that many top logprobs), no bias
    ({"logprob_token_ids": [5, 6, 7]}, 3, 3, 0.0, {5, 6, 7}),
    ({"allowed_token_ids": [9, 10]}, 0, 2, 100.0, {9, 10}),  # an allow list bans every other token
    ({"bad_words": ["foo"]}, 0, 1, 100.0, None),  # words: hashed like a non-numeric bias key
    ({"logit_bias": {"1": 2}, "logprob_token_ids": [5]}, 1, 2, 2.0, {1, 5}),
    ({"logprob_token_ids": [], "allowed_token_ids": None, "bad_words": "x"}, 0, 0, 0.0, set()),  # not lists
])
def test_token_targeting_fields(extra: dict[str, Any], top: int, entries: int, max_abs: float,
                                tokens: set[int] | None) -> None:
    f = extract(CHAT, chat("Hello there", **extra), 1.0)
    assert (f.top_logprobs, f.bias_entries, f.bias_max_abs) == (top, entries, max_abs)
    assert f.logprobs is (top > 0)
    assert (f.bias_key != 0) is (entries > 0)
    if tokens is not None:
        assert set(f.bias_tokens) == tokens
    # a change of the list is a change of the targeting (the sweep signal), the same list is not
    if "logprob_token_ids" in extra and entries:
        g = extract(CHAT, chat("Hello there", **{**extra, "logprob_token_ids": [99]}), 2.0)
        assert g.bias_key != f.bias_key
        assert extract(CHAT, chat("Other prompt", **extra), 3.0).bias_key == f.bias_key


def test_logit_bias_key_unchanged_by_the_targeting_fields() -> None:
    # Stored states remember the last bias key: a logit_bias alone must keep the key it had before the
    # targeting fields were read (the key of the sorted "id:value" list).
    from detectors.tokens import _crc
    f = extract(CHAT, chat("Hi", logit_bias={"11": 5, "50256": -100}), 1.0)
    assert f.bias_key == _crc("11:5,50256:-100")


@pytest.mark.parametrize(("messages", "expected"), [
    # a demand in the instructions counts like one in the prompt (a harvesting script's system prompt)
    ([{"role": "system", "content": "Always think step by step and show your full reasoning."},
      {"role": "user", "content": "What is the capital of France?"}], (True, False, False)),
    ([{"role": "developer", "content": [{"type": "text", "text": "Grade the answer on a rubric of 1 to 10."}]},
      {"role": "user", "content": "The answer is Paris."}], (False, True, False)),
    ([{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Think step by step."},
      {"role": "user", "content": "Hi"}], (True, False, False)),  # every leading instruction message
    # at the end of a long system prompt (its start and end are read, like a prompt's)
    ([{"role": "system", "content": "Context. " * 800 + "Think step by step."},
      {"role": "user", "content": "Hi"}], (True, False, False)),
    # instructions without a demand, and a system message later in the conversation, do not count
    ([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"}],
     (False, False, False)),
    ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "Think step by step."},
      {"role": "user", "content": "Again"}], (False, False, False)),
])
def test_demands_in_the_instructions(messages: list[dict[str, Any]], expected: tuple[bool, bool, bool]) -> None:
    for _ in range(2):  # the second read comes from the instructions cache and must agree
        f = extract(CHAT, {"messages": messages}, 1.0)
        assert (f.cot, f.rubric, f.meta_prompt) == expected


def test_the_instructions_cache_does_not_keep_whole_system_prompts() -> None:
    """A client sending many distinct 1 MB system prompts must not pin them in the cache (512 of them, up to
    the 4 MB body limit each, were gigabytes per process): only the bounded scan of each is kept."""
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20):
            system = f"{i} You are a helpful assistant. " * 32_000 + "Think step by step."
            f = extract(CHAT, {"messages": [{"role": "system", "content": system},
                                            {"role": "user", "content": "What is 2 + 2?"}]}, 1.0)
            assert f.cot  # still read at the end of a long system prompt
            del system
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert kept < 2_000_000, kept  # was ~20 MB: every 1 MB prompt held by the cache


def test_completions_fields() -> None:
    f = extract(COMPLETIONS, {"prompt": ["first prompt here", "second"], "logprobs": 5, "echo": True}, 1.0)
    # a batch is scored by one of its prompts, drawn at random (tests/detectors/test_batched_prompts.py)
    assert f.logprobs and f.top_logprobs == 5 and f.echo and f.prompt_words in (3, 1)


def test_multi_turn_uses_last_user_message_and_counts_turns() -> None:
    body = {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "first"},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": [{"type": "text", "text": "second question"}]}]}
    assert prompt_of(CHAT, body) == ("second question", 3)


def test_masking_makes_template_fills_hash_alike() -> None:
    a = extract(CHAT, chat('Convert 12 USD to EUR at 0.93 and quote "hello world" from https://x.io/a?b=1'), 0)
    b = extract(CHAT, chat('Convert 7,500 USD to EUR at 1.07 and quote "other text" from https://y.org/'), 0)
    assert a.prompt_key == b.prompt_key and a.minhash == b.minhash
    assert tokens_of("Pay 3.50 now")[-2:] == ["0", "now"]


def test_features_are_deterministic() -> None:
    body = chat("Explain the water cycle to a ten year old, with a short example at the end.")
    a, b = extract(CHAT, body, 0), extract(CHAT, body, 5)
    assert (a.prompt_key, a.head_key, a.tail_key, a.minhash, a.embedding) == (
        b.prompt_key, b.head_key, b.tail_key, b.minhash, b.embedding)
    # pinned: replicas and stored sketches must agree across processes and releases
    assert a.prompt_key == extract(COMPLETIONS, {"prompt": body["messages"][0]["content"]}, 0).prompt_key


def test_demand_patterns() -> None:
    assert extract(CHAT, chat("Solve x. Show your full reasoning step by step."), 0).cot
    assert extract(CHAT, chat("Grade the following answer using this rubric"), 0).rubric
    assert extract(CHAT, chat("Come up with 20 diverse task instructions for a model"), 0).meta_prompt
    plain = extract(CHAT, chat("What is the capital of Peru?"), 0)
    assert not (plain.cot or plain.rubric or plain.meta_prompt)


@pytest.mark.parametrize(
    "body",
    [{}, {"messages": "nope"}, {"messages": [None, 3, {"role": "user"}]}, {"prompt": 42}, {"prompt": [1, 2, 3]},
     {"messages": [{"role": "user", "content": "x"}], "logit_bias": "bad", "max_tokens": "9", "n": -1,
      "temperature": "hot", "top_logprobs": True, "logprobs": 3},
     {"prompt": "x" * 200_000}],
)
def test_odd_bodies_never_raise(body: dict[str, Any]) -> None:
    f = extract(CHAT if "messages" in body else COMPLETIONS, body, 0.0)
    assert f.n >= 1 and f.max_tokens is None and f.top_logprobs in (0, 3)


def test_a_turn_split_over_consecutive_user_messages_is_read_whole() -> None:
    fill = {"role": "user", "content": "Write a story about a fox in Oslo who learns to sing."}
    go = {"role": "user", "content": "Go ahead."}
    assert prompt_of(CHAT, {"messages": [fill, go]}) == (fill["content"] + "\nGo ahead.", 2)
    # an assistant (or tool) message ends the turn before it: only the last turn is read
    said = {"role": "assistant", "content": "Sure."}
    assert prompt_of(CHAT, {"messages": [fill, said, go]}) == ("Go ahead.", 3)
    # developer messages are instructions, like system messages: not a turn
    dev = {"role": "developer", "content": "Be brief."}
    assert prompt_of(CHAT, {"messages": [dev, go]}) == ("Go ahead.", 1)
    # a long run of user messages is bounded: the last 8
    many = [{"role": "user", "content": f"part {i}"} for i in range(20)]
    text, n = prompt_of(CHAT, {"messages": many})
    assert n == 20 and text == "\n".join(f"part {i}" for i in range(12, 20))
