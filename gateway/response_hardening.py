"""Response hardening: the logprobs a backend returned, capped and perturbed according to the tier's policy.

``harden_choice_logprobs`` trims ``top_logprobs`` a backend returned beyond the cap and adds the tier's
``logprob_noise``, to a legacy completions choice's ``prompt_logprobs`` (vLLM) too; the transform step calls it
per choice (full bodies and stream chunks). ``response_needs_hardening`` tells the
caller whether anything on the response side (this and ``gateway.reasoning_strip``) applies to a tier at all.

Defence in depth on what comes back: a backend that ignores the request caps (or a canary that behaves
differently) must not leak more than the tier allows, and ``logprob_noise`` perturbs every returned logprob
so that a logit-recovery attack needs many more queries to average the noise away (Carlini et al. §8). The
same token at the same position gets the same noise in ``logprob`` and in ``top_logprobs``: otherwise the
difference between the two would reveal the noise. Logprobs stay <= 0 and ``top_logprobs`` stays sorted.
"""

from __future__ import annotations

import math
import random
from typing import Any

from gateway.config import HardeningConfig
from gateway.hardening import _is_number

__all__ = ["harden_choice_logprobs", "response_needs_hardening"]


def response_needs_hardening(cfg: HardeningConfig) -> bool:
    """True when ``harden_choice_logprobs`` or ``strip_reasoning`` can change anything under ``cfg`` (callers
    skip them otherwise)."""
    return cfg.max_top_logprobs is not None or cfg.logprob_noise > 0 or cfg.strip_reasoning

def harden_choice_logprobs(choice: dict[str, Any], cfg: HardeningConfig, rng: random.Random) -> bool:
    """Cap and perturb the logprobs of one response choice (chat or legacy shape, full body or stream chunk),
    and vLLM's ``prompt_logprobs`` beside them, in place. Returns True when something changed."""
    cap, sigma = cfg.max_top_logprobs, cfg.logprob_noise
    changed = "prompt_logprobs" in choice and _prompt_logprobs(choice, cap, sigma, rng)
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return changed
    if cap is not None and cap <= 0:
        choice["logprobs"] = None
        return True
    content = lp.get("content")
    if isinstance(content, list):
        return _chat_logprobs(content, cap, sigma, rng) or changed
    if isinstance(lp.get("token_logprobs"), list):
        return _legacy_logprobs(lp, cap, sigma, rng) or changed
    return changed


def _rank(entry: Any) -> float:
    r = entry.get("rank") if isinstance(entry, dict) else None
    return r if _is_number(r) else math.inf


def _prompt_logprobs(choice: dict[str, Any], cap: int | None, sigma: float, rng: random.Random) -> bool:
    """vLLM's ``prompt_logprobs`` on a legacy completions choice: per prompt token None, or {token id:
    {"logprob", "rank", "decoded_token"}} with the prompt's own token first, then the top k. The logprobs of a
    text the client chose -- the ``echo`` channel of logit stealing without ``echo`` -- so they get the
    answer's cap (the prompt's token and the ``cap`` best of the others) and noise (one draw per entry)."""
    pl = choice["prompt_logprobs"]
    if not isinstance(pl, list):
        return False
    if cap is not None and cap <= 0:
        choice["prompt_logprobs"] = None
        return True
    changed = False
    for i, pos in enumerate(pl):
        if not isinstance(pos, dict):
            continue
        if cap is not None and len(pos) > cap + 1:
            own, *others = pos.items()
            pos = pl[i] = dict([own, *sorted(others, key=lambda kv: _rank(kv[1]))[:cap]])
            changed = True
        if sigma > 0:
            for entry in pos.values():
                if isinstance(entry, dict) and "logprob" in entry:
                    entry["logprob"] = _noisy(entry["logprob"], rng.gauss(0.0, sigma))
            changed = True
    return changed


def _noisy(value: Any, noise: float) -> Any:
    return min(0.0, value + noise) if _is_number(value) else value


def _alt_rank(alt: Any) -> float:
    """Sort key of a chat ``top_logprobs`` entry: its logprob when it is a number (a backend's null or string
    ranks as 0, as in the legacy shape; comparing it raised TypeError, a 500 to the client)."""
    v = alt.get("logprob") if isinstance(alt, dict) else None
    return float(v) if _is_number(v) else 0.0


def _chat_logprobs(content: list[Any], cap: int | None, sigma: float, rng: random.Random) -> bool:
    changed = False
    for entry in content:
        if not isinstance(entry, dict):
            continue
        top = entry.get("top_logprobs")
        if cap is not None and isinstance(top, list) and len(top) > cap:
            del top[cap:]
            changed = True
        if sigma <= 0:
            continue
        noise: dict[Any, float] = {}
        tok = entry.get("token")
        noise[tok] = rng.gauss(0.0, sigma)
        entry["logprob"] = _noisy(entry.get("logprob"), noise[tok])
        if isinstance(top, list):
            for alt in top:
                if isinstance(alt, dict):
                    t = alt.get("token")
                    n = noise.get(t)
                    if n is None:
                        n = noise[t] = rng.gauss(0.0, sigma)
                    alt["logprob"] = _noisy(alt.get("logprob"), n)
            top.sort(key=_alt_rank, reverse=True)
        changed = True
    return changed


def _legacy_logprobs(lp: dict[str, Any], cap: int | None, sigma: float, rng: random.Random) -> bool:
    changed = False
    raw_tokens, raw_tops = lp.get("tokens"), lp.get("top_logprobs")
    tokens: list[Any] = raw_tokens if isinstance(raw_tokens, list) else []
    tops: list[Any] = raw_tops if isinstance(raw_tops, list) else []
    token_lps: list[Any] = lp["token_logprobs"]
    for i in range(max(len(token_lps), len(tops))):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else None
        if sigma > 0:
            tok = tokens[i] if i < len(tokens) else None
            noise: dict[Any, float] = {tok: rng.gauss(0.0, sigma)}
            if i < len(token_lps):
                token_lps[i] = _noisy(token_lps[i], noise[tok])
            if top is not None:
                for t in list(top):
                    n = noise.get(t)
                    if n is None:
                        n = noise[t] = rng.gauss(0.0, sigma)
                    top[t] = _noisy(top[t], n)
            changed = True
        if top is not None and cap is not None and len(top) > cap:
            keep = sorted(top.items(), key=lambda kv: kv[1] if _is_number(kv[1]) else 0.0, reverse=True)[:cap]
            tops[i] = dict(keep)
            changed = True
        elif top is not None and sigma > 0:
            tops[i] = dict(sorted(top.items(), key=lambda kv: kv[1] if _is_number(kv[1]) else 0.0, reverse=True))
    return changed
