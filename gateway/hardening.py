"""Request hardening: shrink the logit channel a client gets, according to its tier's policy.

``harden(body, cfg, strip_watermark_fields=...)`` returns the body to forward and a list of short change
descriptions (for logs and the trace). It is pure and copy-on-write: when nothing needs changing the very
same dict comes back (no copy at all, the common case); otherwise a shallow copy is made once and only the
touched fields (``logit_bias``) are rebuilt. The caller's dict is never mutated.

Why these rules (Carlini et al. 2024, Finlayson et al. 2024): logit-stealing attacks need ``logit_bias``
*and* logprobs together, many bias entries at large magnitudes, many top logprobs per position, and
reproducible sampling. Each rule removes one of those ingredients:

- ``logprobs_xor_logit_bias``: when logprobs are asked for (chat ``logprobs: true`` / ``top_logprobs``,
  legacy ``logprobs: k``, legacy ``echo`` with logprobs, vLLM ``prompt_logprobs``), ``logit_bias`` is
  dropped. The client keeps the logprobs (what most legitimate users want), loses the bias.
- ``max_top_logprobs``: caps chat ``top_logprobs``, legacy ``logprobs`` and vLLM ``prompt_logprobs``;
  a cap of 0 removes logprobs altogether.
- ``max_logit_bias_entries`` keeps the first N entries (the client's order); ``max_abs_logit_bias`` clamps
  each bias to ``[-m, m]``.
- vLLM's token-id fields are the same channel by other names, so the same rules cover them:
  ``logprob_token_ids`` returns the logprobs of up to 128 *chosen* token ids at every position — what a
  bias plus ``top_logprobs`` gives, without a bias — so ``logprobs_xor_logit_bias`` removes it (the client
  keeps the ordinary top-k) and ``max_top_logprobs`` caps its length together with the top-k asked beside it
  (both are read at every position); ``allowed_token_ids`` (every other token
  banned) and ``bad_words`` (the listed words banned) are infinite biases, so they go with ``logit_bias`` when
  logprobs are asked under ``logprobs_xor_logit_bias``, and wherever ``max_abs_logit_bias`` is set;
  ``max_logit_bias_entries`` removes an allow list (it bans all but a few tokens) and caps ``bad_words``.
- ``max_n`` caps ``n`` and legacy ``best_of`` (more samples per prompt = cheaper harvesting).
- ``strip_seed`` removes ``seed`` (reproducible sampling lets an attacker average away noise).
- Always: client-supplied ``vllm_xargs`` is removed — it reaches vLLM's logits processors (the watermark
  lives there), so only the gateway may set it. So is ``watermarking`` (vLLM 0.33, every endpoint): ``false``
  opts the request out of the engine's own watermark, whoever configured it.
- ``strip_watermark_fields`` (the backend watermarks in the engine): ``logit_bias`` could cancel the green
  list bias and ``seed`` lets repeated samples be compared, so both go.

Values of the wrong type are left alone: validation is the parse step's job (it answers 400 naming the field).

The response side (``harden_choice_logprobs``) trims ``top_logprobs`` a backend returned beyond the cap and
adds the tier's ``logprob_noise``, to a legacy completions choice's ``prompt_logprobs`` (vLLM) too;
``strip_reasoning`` removes a reasoning model's chain of thought (the ``reasoning``/``reasoning_content``
fields), the output chain-of-thought harvesting is after, while the answer itself is still served. The
transform step calls them per choice (full bodies and stream chunks).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, TypeGuard

from gateway.config import HardeningConfig
from gateway.proxy import parts
from gateway.proxy.choice import REASONING_KEYS

__all__ = ["harden", "harden_choice_logprobs", "is_noop", "response_needs_hardening"]

_Edit = Callable[[], dict[str, Any]]  # returns the (copied-once) body to modify


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_noop(cfg: HardeningConfig) -> bool:
    """True when ``cfg`` changes nothing on the request side (only ``vllm_xargs`` would still be stripped)."""
    return (
        cfg.max_top_logprobs is None
        and not cfg.logprobs_xor_logit_bias
        and cfg.max_logit_bias_entries is None
        and cfg.max_abs_logit_bias is None
        and cfg.max_n is None
        and not cfg.strip_seed
    )


def _asks_logprobs(body: dict[str, Any], chat: bool) -> bool:
    # vLLM extension on both endpoints. The parse step does not validate it and vLLM's pydantic models
    # coerce ``20.0``/``"20"``/``true`` to an int (and read -1 as "the whole vocabulary"), so *any* value
    # present counts as asking for logprobs.
    if body.get("prompt_logprobs") is not None:
        return True
    ids = body.get("logprob_token_ids")
    if isinstance(ids, list) and ids:  # vLLM: the logprobs of these ids at every position
        return True
    if chat:
        lp = body.get("logprobs")
        top = body.get("top_logprobs")
        if lp is True or (_is_int(top) and top > 0):
            return True
    else:
        lp = body.get("logprobs")
        # Legacy completions: an int k asks for the top-k logprobs per token; 0 still returns the chosen
        # token's logprob, so any int counts. ``echo`` alone returns no logprobs.
        if _is_int(lp) and lp >= 0:
            return True
    return False


def harden(
    body: dict[str, Any], cfg: HardeningConfig, *, strip_watermark_fields: bool = False,
    chat: bool | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Return ``(body_to_send, changes)``; ``body_to_send is body`` when ``changes`` is empty.

    ``chat``: the endpoint (True: chat completions, False: legacy completions). Callers that know it must
    pass it: inferring it from the body lets a legacy request carrying a stray ``messages`` key (ignored by
    the backend) be hardened by the chat rules, which leave legacy ``logprobs: k`` and the bias untouched.
    """
    out = body
    changes: list[str] = []

    def edit() -> dict[str, Any]:
        nonlocal out
        if out is body:
            out = dict(body)
        return out

    if chat is None:
        chat = "messages" in body

    if "vllm_xargs" in body:
        del edit()["vllm_xargs"]
        changes.append("stripped vllm_xargs")
    if "watermarking" in body:  # vLLM 0.33: `watermarking: false` opts a request out of the engine's watermark
        del edit()["watermarking"]
        changes.append("stripped watermarking")

    bias = body.get("logit_bias")
    if isinstance(bias, dict) and bias:
        if strip_watermark_fields:
            del edit()["logit_bias"]
            changes.append("stripped logit_bias (watermarking backend)")
        elif cfg.logprobs_xor_logit_bias and _asks_logprobs(body, chat):
            del edit()["logit_bias"]
            changes.append(f"dropped logit_bias ({len(bias)} entries): logprobs requested")
        else:
            _cap_bias(bias, cfg, edit, changes)

    if "logprob_token_ids" in body or "allowed_token_ids" in body or "bad_words" in body:
        _cap_targeting(body, cfg, chat, edit, changes)

    if cfg.max_top_logprobs is not None:
        _cap_logprobs(body, cfg.max_top_logprobs, chat, edit, changes)

    if cfg.max_n is not None:
        for name in ("n", "best_of"):
            v = body.get(name)
            if _is_int(v) and v > cfg.max_n:
                edit()[name] = cfg.max_n
                changes.append(f"capped {name} {v}->{cfg.max_n}")
            elif chat and name == "best_of" and v is not None and not _is_int(v):
                # Only reachable for fields the parse step does not validate (``best_of`` on chat, a vLLM
                # extension): vLLM would coerce 4.0 or "4" to an int, past the cap. Not ours to guess: drop it.
                del edit()[name]
                changes.append(f"removed {name} of type {type(v).__name__}")

    if "seed" in body and (cfg.strip_seed or strip_watermark_fields):
        del edit()["seed"]
        changes.append("stripped seed")

    return out, changes


def _cap_targeting(body: dict[str, Any], cfg: HardeningConfig, chat: bool, edit: _Edit, changes: list[str]) -> None:
    """vLLM's token-id fields (see the module docstring). Only lists are acted on: any other type is refused
    by the parse step before this runs."""
    ids = body.get("logprob_token_ids")
    if isinstance(ids, list) and ids:
        cap = cfg.max_top_logprobs
        # The chosen ids are read beside the top-k at each position: they get what the top-k leaves of the
        # allowance (each capped on its own, top_logprobs 5 + 5 ids read 10 logprobs per position under a cap of 5)
        room = None if cap is None else cap - _top_k(body, chat, cap)
        if cfg.logprobs_xor_logit_bias or (room is not None and room <= 0):
            del edit()["logprob_token_ids"]
            changes.append(f"removed logprob_token_ids ({len(ids)} ids): a read of chosen tokens' logprobs")
        elif room is not None and len(ids) > room:
            edit()["logprob_token_ids"] = ids[:room]
            changes.append(f"capped logprob_token_ids {len(ids)}->{room}")
    reads = _asks_logprobs(body, chat)
    for name in ("allowed_token_ids", "bad_words"):
        v = body.get(name)
        if not isinstance(v, list) or not v:
            continue
        if cfg.logprobs_xor_logit_bias and reads:
            why = "logprobs requested"
        elif cfg.max_abs_logit_bias is not None:
            why = f"a ban is beyond the ±{cfg.max_abs_logit_bias:g} bias limit"
        elif cfg.max_logit_bias_entries is not None and name == "allowed_token_ids":
            why = "an allow list bans every other token"
        elif cfg.max_logit_bias_entries is not None and len(v) > cfg.max_logit_bias_entries:
            edit()[name] = v[: cfg.max_logit_bias_entries]
            changes.append(f"capped {name} entries {len(v)}->{cfg.max_logit_bias_entries}")
            continue
        else:
            continue
        del edit()[name]
        changes.append(f"dropped {name} ({len(v)} entries): {why}")


def _top_k(body: dict[str, Any], chat: bool, cap: int) -> int:
    """The top logprobs per position the request reads once capped: chat ``top_logprobs``, legacy ``logprobs``
    or vLLM's ``prompt_logprobs`` (the prompt's positions: whichever is larger)."""
    top = body.get("top_logprobs" if chat else "logprobs")
    pl = body.get("prompt_logprobs")
    k = max(top if _is_int(top) else 0, pl if _is_int(pl) else 0)
    return min(k, cap)


def _cap_bias(bias: dict[Any, Any], cfg: HardeningConfig, edit: _Edit, changes: list[str]) -> None:
    items = list(bias.items())
    new = items
    if cfg.max_logit_bias_entries is not None and len(items) > cfg.max_logit_bias_entries:
        new = items[: cfg.max_logit_bias_entries]
        changes.append(f"capped logit_bias entries {len(items)}->{cfg.max_logit_bias_entries}")
    m = cfg.max_abs_logit_bias
    if m is not None:
        clamped = 0
        out_items = []
        for k, v in new:
            if _is_number(v) and abs(v) > m:
                v = m if v > 0 else -m
                clamped += 1
            out_items.append((k, v))
        if clamped:
            new = out_items
            changes.append(f"clamped {clamped} logit_bias values to ±{m:g}")
    if new is not items:
        edit()["logit_bias"] = dict(new)


def _cap_logprobs(body: dict[str, Any], cap: int, chat: bool, edit: _Edit, changes: list[str]) -> None:
    if chat:
        top = body.get("top_logprobs")
        if cap <= 0:
            if body.get("logprobs") is True or (_is_int(top) and top > 0):
                b = edit()
                b.pop("top_logprobs", None)
                b["logprobs"] = False
                changes.append("disabled logprobs")
        elif _is_int(top) and top > cap:
            edit()["top_logprobs"] = cap
            changes.append(f"capped top_logprobs {top}->{cap}")
    else:
        lp = body.get("logprobs")
        if _is_int(lp):
            if cap <= 0:
                del edit()["logprobs"]
                changes.append("disabled logprobs")
            elif lp > cap:
                edit()["logprobs"] = cap
                changes.append(f"capped logprobs {lp}->{cap}")
    pl = body.get("prompt_logprobs")
    if pl is None:
        return
    if cap <= 0 or not _is_int(pl):
        # Not validated by the parse step: a float, string or bool would be coerced by vLLM past the cap.
        del edit()["prompt_logprobs"]
        changes.append("disabled prompt_logprobs" if cap <= 0 else f"removed prompt_logprobs {pl!r}")
    elif pl > cap or pl < 0:  # vLLM reads -1 as "every token of the vocabulary"
        edit()["prompt_logprobs"] = cap
        changes.append(f"capped prompt_logprobs {pl}->{cap}")


# --- response side ------------------------------------------------------------------------------------------
#
# Defence in depth on what comes back: a backend that ignores the request caps (or a canary that behaves
# differently) must not leak more than the tier allows, and ``logprob_noise`` perturbs every returned logprob
# so that a logit-recovery attack needs many more queries to average the noise away (Carlini et al. §8). The
# same token at the same position gets the same noise in ``logprob`` and in ``top_logprobs``: otherwise the
# difference between the two would reveal the noise. Logprobs stay <= 0 and ``top_logprobs`` stays sorted.


def response_needs_hardening(cfg: HardeningConfig) -> bool:
    """True when ``harden_choice_logprobs`` or ``strip_reasoning`` can change anything under ``cfg`` (callers
    skip them otherwise)."""
    return cfg.max_top_logprobs is not None or cfg.logprob_noise > 0 or cfg.strip_reasoning


class ThinkStripper:
    """Removes a leading ``<think>…</think>`` section from one choice's answer text, fed in pieces (stream deltas)
    or whole. A backend serving a reasoning model without a reasoning parser (TGI, vLLM or SGLang without
    ``--reasoning-parser``) writes the chain of thought into ``content`` this way. Only a section that opens the
    answer counts (leading whitespace allowed), so an answer that merely mentions the tags later is untouched.
    A chain of thought whose opening tag the chat template put in the prompt (DeepSeek-R1 templates: the answer
    holds only ``</think>``) cannot be told from the answer while streaming; for a backend declared so
    (``think_prefilled``) the stripper starts inside the section, and everything up to the first ``</think>``
    goes — all of it when no ``</think>`` comes, as vLLM's own R1 reasoning parser reads such an answer. Holds
    back at most the few characters that could still begin ``<think>``, and the tail of the section that could
    begin ``</think>``."""

    OPEN, CLOSE = "<think>", "</think>"
    __slots__ = ("_buf", "_state")

    def __init__(self, prefilled: bool = False) -> None:
        self._state = "inside" if prefilled else "start"  # start -> inside -> after -> pass, or start -> pass
        self._buf = ""

    def feed(self, text: str) -> str:
        if self._state == "pass":
            return text
        buf = self._buf + text
        self._buf = ""
        if self._state == "start":
            head = buf.lstrip()
            if head.startswith(self.OPEN):
                self._state, buf = "inside", head[len(self.OPEN):]
            elif not head or self.OPEN.startswith(head):
                self._buf = buf  # whitespace so far, or what may still become "<think>"
                return ""
            else:
                self._state = "pass"
                return buf
        if self._state == "inside":
            end = buf.find(self.CLOSE)
            if end < 0:
                self._buf = buf[-(len(self.CLOSE) - 1):]  # what may begin a split "</think>"; the rest is dropped
                return ""
            self._state, buf = "after", buf[end + len(self.CLOSE):]
        rest = buf.lstrip()  # after: the blank lines between the section and the answer go too
        if rest:
            self._state = "pass"
        return rest

    def finish(self) -> str:
        """The end of the answer: what was held back, unless it belonged to the section."""
        rest = self._buf if self._state == "start" else ""
        self._buf = ""
        return rest


def strip_think(choice: dict[str, Any], strippers: dict[int, ThinkStripper], prefilled: bool = False) -> bool:
    """Run a chat choice's answer text (message or delta ``content``) through its ``ThinkStripper`` (one per
    choice index in ``strippers``, kept for the whole response; ``prefilled``: the answer begins inside the
    section), in place; True when the text changed."""
    whole = isinstance(choice.get("message"), dict)
    holder = choice.get("message") if whole else choice.get("delta")
    if not isinstance(holder, dict):
        return False
    text = holder.get("content")
    if isinstance(text, list):
        return _strip_think_parts(choice, text, _stripper(choice, strippers, prefilled), whole)
    if not isinstance(text, str):
        text = ""
        if choice.get("finish_reason") is None:
            return False
    st = _stripper(choice, strippers, prefilled)
    new = st.feed(text)
    if whole or choice.get("finish_reason") is not None:
        new += st.finish()
    if new == text:
        return False
    holder["content"] = new
    return True


def _stripper(choice: dict[str, Any], strippers: dict[int, ThinkStripper], prefilled: bool) -> ThinkStripper:
    idx = choice.get("index", 0)
    idx = idx if isinstance(idx, int) else 0
    st = strippers.get(idx)
    if st is None:
        st = strippers[idx] = ThinkStripper(prefilled)
    return st


def _strip_think_parts(choice: dict[str, Any], content: list[Any], st: ThinkStripper, whole: bool) -> bool:
    """``strip_think`` for a ``content`` that is a list of parts (Mistral's shape, which the relay also gives a
    string delta it puts a held-back thought into): the ``text`` parts are the answer's text, in order. Skipping
    them instead let the stripper release text it held from an earlier string delta after them (the answer's
    words out of order), or at the choice's end replace the whole list, and the answer text in it, by that
    held text."""
    changed = False
    for thinking, part, key in parts.slots(content):
        if not thinking:
            new = st.feed(part[key])
            if new != part[key]:
                part[key] = new
                changed = True
    if whole or choice.get("finish_reason") is not None:
        rest = st.finish()
        if rest:
            content.append(parts.text_part(rest))
            changed = True
    return changed


def strip_reasoning(choice: dict[str, Any]) -> bool:
    """Remove the reasoning fields from one choice's message or delta, in place; True when one was there.
    Both are looked at: a stream chunk with ``"message": null`` (or a stray message) beside its delta hid the
    delta, which is what the relay and the client read."""
    found = False
    for holder in (choice.get("message"), choice.get("delta")):
        if not isinstance(holder, dict):
            continue
        for k in REASONING_KEYS:
            if k in holder:
                del holder[k]
                found = True
        content = holder.get("content")
        if isinstance(content, list) and parts.drop_thinking(content):  # Mistral's thinking parts
            found = True
    return found


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
            top.sort(key=lambda a: a.get("logprob", 0.0) if isinstance(a, dict) else 0.0, reverse=True)
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
