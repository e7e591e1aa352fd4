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

The response side is ``gateway.response_hardening`` (the cap and noise on returned logprobs) and
``gateway.reasoning_strip`` (a reasoning model's chain of thought).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from gateway.config import HardeningConfig

__all__ = ["harden", "is_noop"]

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
