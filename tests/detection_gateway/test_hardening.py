"""Table-driven tests of request hardening: (body, config, flags) -> (expected body, expected changes)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from gateway.config import HardeningConfig, PolicyConfig
from gateway.hardening import harden, is_noop
from gateway.response_hardening import harden_choice_logprobs, response_needs_hardening

OFF = HardeningConfig()
XOR = HardeningConfig(logprobs_xor_logit_bias=True)
STRICT = HardeningConfig(
    max_top_logprobs=1, logprobs_xor_logit_bias=True, max_logit_bias_entries=2, max_abs_logit_bias=10,
    max_n=1, strip_seed=True,
)
NO_LP = HardeningConfig(max_top_logprobs=0)

MSG = [{"role": "user", "content": "hi"}]
BIAS3 = {"10": 100, "11": -100, "12": 5}

CASES: list[tuple[str, dict[str, Any], HardeningConfig, bool, dict[str, Any], list[str]]] = [
    ("benign chat untouched", {"messages": MSG, "max_tokens": 50}, STRICT, False,
     {"messages": MSG, "max_tokens": 50}, []),
    ("vllm_xargs always stripped", {"messages": MSG, "vllm_xargs": {"wm": 1}}, OFF, False,
     {"messages": MSG}, ["stripped vllm_xargs"]),
    ("xor: chat logprobs drops bias", {"messages": MSG, "logprobs": True, "logit_bias": BIAS3}, XOR, False,
     {"messages": MSG, "logprobs": True}, ["dropped logit_bias (3 entries): logprobs requested"]),
    ("xor: chat top_logprobs alone drops bias", {"messages": MSG, "top_logprobs": 3, "logit_bias": BIAS3},
     XOR, False, {"messages": MSG, "top_logprobs": 3}, ["dropped logit_bias (3 entries): logprobs requested"]),
    ("xor: chat logprobs false keeps bias", {"messages": MSG, "logprobs": False, "logit_bias": BIAS3}, XOR,
     False, {"messages": MSG, "logprobs": False, "logit_bias": BIAS3}, []),
    ("xor: legacy logprobs int drops bias", {"prompt": "a", "logprobs": 5, "logit_bias": BIAS3}, XOR, False,
     {"prompt": "a", "logprobs": 5}, ["dropped logit_bias (3 entries): logprobs requested"]),
    ("xor: legacy logprobs 0 still counts", {"prompt": "a", "logprobs": 0, "logit_bias": BIAS3}, XOR, False,
     {"prompt": "a", "logprobs": 0}, ["dropped logit_bias (3 entries): logprobs requested"]),
    ("xor: legacy echo without logprobs keeps bias", {"prompt": "a", "echo": True, "logit_bias": BIAS3}, XOR,
     False, {"prompt": "a", "echo": True, "logit_bias": BIAS3}, []),
    ("xor: vllm prompt_logprobs drops bias", {"prompt": "a", "prompt_logprobs": 1, "logit_bias": BIAS3}, XOR,
     False, {"prompt": "a", "prompt_logprobs": 1}, ["dropped logit_bias (3 entries): logprobs requested"]),
    ("xor off: bias and logprobs kept", {"messages": MSG, "logprobs": True, "logit_bias": BIAS3}, OFF, False,
     {"messages": MSG, "logprobs": True, "logit_bias": BIAS3}, []),
    ("cap chat top_logprobs", {"messages": MSG, "logprobs": True, "top_logprobs": 20}, STRICT, False,
     {"messages": MSG, "logprobs": True, "top_logprobs": 1}, ["capped top_logprobs 20->1"]),
    ("cap legacy logprobs", {"prompt": "a", "logprobs": 5}, STRICT, False,
     {"prompt": "a", "logprobs": 1}, ["capped logprobs 5->1"]),
    ("cap 0 disables chat logprobs", {"messages": MSG, "logprobs": True, "top_logprobs": 5}, NO_LP, False,
     {"messages": MSG, "logprobs": False}, ["disabled logprobs"]),
    ("cap 0 disables legacy logprobs", {"prompt": "a", "logprobs": 2, "echo": True}, NO_LP, False,
     {"prompt": "a", "echo": True}, ["disabled logprobs"]),
    ("bias entries capped and clamped (no logprobs)", {"messages": MSG, "logit_bias": BIAS3}, STRICT, False,
     {"messages": MSG, "logit_bias": {"10": 10, "11": -10}},
     ["capped logit_bias entries 3->2", "clamped 2 logit_bias values to ±10"]),
    ("small bias untouched", {"messages": MSG, "logit_bias": {"7": 3}}, STRICT, False,
     {"messages": MSG, "logit_bias": {"7": 3}}, []),
    # vLLM's token-id fields: the logit channel by other names
    ("xor: logprob_token_ids removed, ordinary logprobs kept",
     {"messages": MSG, "logprobs": True, "logprob_token_ids": [5, 6, 7]}, XOR, False,
     {"messages": MSG, "logprobs": True}, ["removed logprob_token_ids (3 ids): a read of chosen tokens' logprobs"]),
    ("xor: legacy logprob_token_ids removed", {"prompt": "a", "logprobs": 0, "logprob_token_ids": [5]}, XOR,
     False, {"prompt": "a", "logprobs": 0},
     ["removed logprob_token_ids (1 ids): a read of chosen tokens' logprobs"]),
    ("cap: logprob_token_ids capped to max_top_logprobs",
     {"messages": MSG, "logprobs": True, "logprob_token_ids": [1, 2, 3, 4, 5, 6, 7]},
     HardeningConfig(max_top_logprobs=5), False,
     {"messages": MSG, "logprobs": True, "logprob_token_ids": [1, 2, 3, 4, 5]}, ["capped logprob_token_ids 7->5"]),
    ("cap 0: logprob_token_ids removed with logprobs",
     {"messages": MSG, "logprobs": True, "logprob_token_ids": [1]}, NO_LP, False,
     {"messages": MSG, "logprobs": False},
     ["removed logprob_token_ids (1 ids): a read of chosen tokens' logprobs", "disabled logprobs"]),
    ("off: logprob_token_ids kept", {"messages": MSG, "logprobs": True, "logprob_token_ids": [1, 2]}, OFF, False,
     {"messages": MSG, "logprobs": True, "logprob_token_ids": [1, 2]}, []),
    ("xor: allowed_token_ids and bad_words dropped when logprobs asked",
     {"messages": MSG, "top_logprobs": 2, "logprobs": True, "allowed_token_ids": [1, 2], "bad_words": ["x"]},
     XOR, False, {"messages": MSG, "top_logprobs": 2, "logprobs": True},
     ["dropped allowed_token_ids (2 entries): logprobs requested",
      "dropped bad_words (1 entries): logprobs requested"]),
    ("xor: allowed_token_ids kept without logprobs", {"prompt": "a", "allowed_token_ids": [1, 2]}, XOR, False,
     {"prompt": "a", "allowed_token_ids": [1, 2]}, []),
    ("strict: bans beyond the bias limit dropped", {"prompt": "a", "allowed_token_ids": [1], "bad_words": ["x"]},
     STRICT, False, {"prompt": "a"},
     ["dropped allowed_token_ids (1 entries): a ban is beyond the ±10 bias limit",
      "dropped bad_words (1 entries): a ban is beyond the ±10 bias limit"]),
    ("entries cap: allow list dropped, bad_words capped",
     {"prompt": "a", "allowed_token_ids": [1], "bad_words": ["x", "y", "z"]},
     HardeningConfig(max_logit_bias_entries=2), False, {"prompt": "a", "bad_words": ["x", "y"]},
     ["dropped allowed_token_ids (1 entries): an allow list bans every other token",
      "capped bad_words entries 3->2"]),
    ("n and best_of capped", {"prompt": "a", "n": 8, "best_of": 10}, STRICT, False,
     {"prompt": "a", "n": 1, "best_of": 1}, ["capped n 8->1", "capped best_of 10->1"]),
    ("seed stripped by policy", {"messages": MSG, "seed": 42}, STRICT, False, {"messages": MSG},
     ["stripped seed"]),
    ("seed kept when policy allows", {"messages": MSG, "seed": 42}, OFF, False,
     {"messages": MSG, "seed": 42}, []),
    ("watermark backend strips bias and seed", {"messages": MSG, "seed": 1, "logit_bias": {"5": 1}}, OFF, True,
     {"messages": MSG}, ["stripped logit_bias (watermarking backend)", "stripped seed"]),
    ("wrong types left to the validator", {"messages": MSG, "n": "3", "top_logprobs": True, "logit_bias": []},
     STRICT, False, {"messages": MSG, "n": "3", "top_logprobs": True, "logit_bias": []}, []),
]


@pytest.mark.parametrize(
    ("body", "cfg", "wm", "expected", "changes"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_harden_table(
    body: dict[str, Any], cfg: HardeningConfig, wm: bool, expected: dict[str, Any], changes: list[str]
) -> None:
    original = copy.deepcopy(body)
    out, applied = harden(body, cfg, strip_watermark_fields=wm)
    assert out == expected
    assert applied == changes
    assert body == original, "the caller's body must never be mutated"
    if not applied:
        assert out is body, "no change must mean no copy"
    else:
        assert out is not body


def test_default_policy_tiers_harden_a_carlini_probe() -> None:
    """The shipped default policy: tier 0 leaves the probe alone, 'throttle' takes the logit channel apart."""
    tiers = {t.name: t for t in PolicyConfig().tiers}
    probe = {"messages": MSG, "max_tokens": 1, "logprobs": True, "top_logprobs": 20,
             "logit_bias": {str(i): 100 for i in range(300)}, "seed": 7, "n": 4}
    out0, ch0 = harden(probe, tiers["normal"].hardening)
    assert ch0 == [] and out0 is probe
    out2, ch2 = harden(probe, tiers["throttle"].hardening)
    assert "logit_bias" not in out2 and "seed" not in out2
    assert out2["top_logprobs"] == 1 and out2["n"] == 1
    assert len(ch2) == 4
    assert is_noop(tiers["normal"].hardening) and not is_noop(tiers["watch"].hardening)


# --- response side --------------------------------------------------------------------------------------

def chat_choice(top: int = 5) -> dict[str, Any]:
    def alts(pos: int) -> list[dict[str, Any]]:
        return [{"token": f"t{k}", "logprob": -0.1 - k - pos, "bytes": [116]} for k in range(top)]

    return {"index": 0, "logprobs": {"content": [
        {"token": "t0", "logprob": -0.1 - p, "bytes": [116], "top_logprobs": alts(p)} for p in range(3)]}}


def legacy_choice(top: int = 5) -> dict[str, Any]:
    return {"index": 0, "text": "ab", "logprobs": {
        "tokens": ["t0", "t1"], "token_logprobs": [-0.1, -2.1], "text_offset": [0, 1],
        "top_logprobs": [{f"t{k}": -0.1 - k - p for k in range(top)} for p in range(2)]}}


def test_response_cap_without_noise_is_exact() -> None:
    c = chat_choice(5)
    assert harden_choice_logprobs(c, HardeningConfig(max_top_logprobs=2), random.Random(1))
    for e in c["logprobs"]["content"]:
        assert [a["token"] for a in e["top_logprobs"]] == ["t0", "t1"]
        assert e["logprob"] == e["top_logprobs"][0]["logprob"]
    legacy = legacy_choice(5)
    assert harden_choice_logprobs(legacy, HardeningConfig(max_top_logprobs=1), random.Random(1))
    assert legacy["logprobs"]["top_logprobs"] == [{"t0": -0.1}, {"t0": -1.1}]
    assert legacy["logprobs"]["token_logprobs"] == [-0.1, -2.1]


def test_response_noise_is_consistent_nonpositive_and_sorted() -> None:
    cfg = HardeningConfig(logprob_noise=0.5)
    c = chat_choice(5)
    before = [e["logprob"] for e in c["logprobs"]["content"]]
    assert harden_choice_logprobs(c, cfg, random.Random(7))
    after = [e["logprob"] for e in c["logprobs"]["content"]]
    assert after != before and all(x <= 0 for x in after)
    for e in c["logprobs"]["content"]:
        tops = e["top_logprobs"]
        same = next(a for a in tops if a["token"] == e["token"])
        assert same["logprob"] == e["logprob"], "the sampled token must carry the same noise in both places"
        assert [a["logprob"] for a in tops] == sorted((a["logprob"] for a in tops), reverse=True)
    legacy = legacy_choice(3)
    assert harden_choice_logprobs(legacy, cfg, random.Random(7))
    lp = legacy["logprobs"]
    for i, tok in enumerate(lp["tokens"]):
        if tok in lp["top_logprobs"][i]:
            assert lp["top_logprobs"][i][tok] == lp["token_logprobs"][i]
        assert all(v <= 0 for v in lp["top_logprobs"][i].values())


def test_response_cap_zero_removes_logprobs_and_noop_cases() -> None:
    c = chat_choice()
    assert harden_choice_logprobs(c, HardeningConfig(max_top_logprobs=0), random.Random(1))
    assert c["logprobs"] is None
    plain = {"index": 0, "message": {"content": "x"}, "logprobs": None}
    assert not harden_choice_logprobs(plain, HardeningConfig(max_top_logprobs=1, logprob_noise=1), random.Random(1))
    small = chat_choice(1)
    assert not harden_choice_logprobs(small, HardeningConfig(max_top_logprobs=3), random.Random(1))
    assert not response_needs_hardening(HardeningConfig())
    assert response_needs_hardening(HardeningConfig(logprob_noise=0.05))


@pytest.mark.parametrize("odd", [None, "-0.5", [1], {"x": 1}])
def test_noise_on_a_backends_non_numeric_top_logprob_keeps_the_answer(odd: object) -> None:
    """A backend that returns a null or string ``logprob`` among chat ``top_logprobs``: with logprob noise on,
    sorting them raised TypeError and the client got a 500 (or a stream's relay_error). Such entries rank as 0
    and pass unchanged; the numbers get their noise."""
    choice = {"index": 0, "logprobs": {"content": [{"token": "a", "logprob": -0.1, "top_logprobs": [
        {"token": "a", "logprob": -0.1}, {"token": "b", "logprob": odd}, {"token": "c", "logprob": -2.0}]}]}}
    assert harden_choice_logprobs(choice, HardeningConfig(logprob_noise=0.5), random.Random(3))
    top = choice["logprobs"]["content"][0]["top_logprobs"]
    assert {t["token"] for t in top} == {"a", "b", "c"}
    b = next(t for t in top if t["token"] == "b")
    assert b["logprob"] is odd  # unchanged
