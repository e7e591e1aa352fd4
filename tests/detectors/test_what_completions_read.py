"""What detection reads of a legacy /v1/completions request: the prompt (chat fields its server ignores are not
read), and every logprob channel — ``logprobs: 0`` with ``echo`` (every prompt token's logprob) and vLLM's
``prompt_logprobs`` (the same read by name)."""

from __future__ import annotations

from detectors.features import extract, prompt_of

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


def test_echo_with_logprobs_zero_is_a_logprob_read() -> None:
    f = extract(COMPLETIONS, {"prompt": "hello there", "echo": True, "logprobs": 0, "max_tokens": 1}, 0.0)
    assert f.logprobs and f.echo and f.top_logprobs == 0
    plain = extract(COMPLETIONS, {"prompt": "hello there", "max_tokens": 1}, 0.0)
    assert not plain.logprobs and not plain.echo


def test_prompt_logprobs_is_the_echo_channel() -> None:
    f = extract(COMPLETIONS, {"prompt": "hello there", "prompt_logprobs": 5, "max_tokens": 1}, 0.0)
    assert f.logprobs and f.echo and f.top_logprobs >= 5
    c = extract(CHAT, {"messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 5}, 0.0)
    assert c.logprobs and c.echo and c.top_logprobs == 5


def test_a_completions_body_is_read_by_its_prompt() -> None:
    body = {"prompt": "Explain topic 7. Think step by step.", "messages": [], "logprobs": 5}
    assert prompt_of(COMPLETIONS, body)[0] == body["prompt"]
    f = extract(COMPLETIONS, body, 0.0)
    assert f.prompt_words > 0 and f.logprobs and f.top_logprobs == 5
    # a chat body is still read by its messages
    assert prompt_of(CHAT, {"messages": [{"role": "user", "content": "hi there"}]})[0] == "hi there"
