"""Per-request features from the raw OpenAI body: parameters, masked-prompt sketches, a hashed embedding.

Cheap by construction (the budget is the whole engine at <= 200 us p50): one regex pass to mask, one to
tokenise, CRC32 token hashes (deterministic across processes and replicas, unlike ``hash()``; memoised per
token, since prompts reuse a small vocabulary), and numpy for the MinHash of word bigrams and the embedding.
Long prompts are sketched from their first 192 and last 64 tokens; prompts of 64 tokens or more are also
winnowed into anchors (``detectors.anchors``: fixed passages found wherever they sit). The text is read
folded and, past 20 000 characters, by its head and tail with whitespace runs squeezed
(``detectors.normalise``).

Layout: ``extract`` and ``rebase`` (this module) assemble a ``RequestFeatures`` from ``detectors.prompt``
(which text of the body is read), ``detectors.tokens`` (masking, tokens, token codes), ``detectors.sketch``
(MinHash, bottom-k, the embedding) and ``detectors.bias`` (``logit_bias`` and token-id targeting). The public
names of those modules are re-exported here (``__all__``): ``detectors.features`` stays the entry point.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors.anchors import MIN_TOKENS as ANCHOR_MIN_TOKENS
from detectors.anchors import SCAN_HEAD, SCAN_TAIL, winnow
from detectors.bias import MAX_BIAS_TOKENS, TARGETING_FIELDS, _bias
from detectors.normalise import LONG_TEXT, fold, window
from detectors.patterns import demands
from detectors.prompt import (
    MAX_HISTORY_TURNS,
    _instructions_of,
    _legacy,
    draw,
    history_of,
    prompt_of,
    seed_batch_pick,
    seeded_draws,
    turn_crc,
)
from detectors.sketch import (
    BOTTOM_K,
    EMBED_DIM,
    MINHASHES,
    _bottom,
    _content,
    _embed,
    _minhash,
    _mix64,
    embed,
    minhash_of,
)
from detectors.tokens import _codes, _crc, _split, _tokens_of_lower, tokens_of
from detectors.types import RequestFeatures

# What other modules import from here: this module's own names and the moved ones' public names.
__all__ = [
    "BOTTOM_K", "EMBED_DIM", "HEAD_TAIL", "HEAD_TAIL_SHORT", "LONG_PROMPT", "MAX_BIAS_TOKENS", "MAX_HISTORY_TURNS",
    "MINHASHES", "MIN_TOKENS_FOR_HEAD_TAIL", "TARGETING_FIELDS", "draw", "embed", "extract", "history_of",
    "minhash_of", "prompt_of", "rebase", "seed_batch_pick", "seeded_draws", "tokens_of", "turn_crc",
]

HEAD_TAIL = 8  # head/tail key length for prompts of LONG_PROMPT tokens or more
HEAD_TAIL_SHORT = 3  # ... and for shorter prompts (ordinary phrasings are stop-listed by the reference)
LONG_PROMPT = 16
MIN_TOKENS_FOR_HEAD_TAIL = 5


def _instruction_demands(text: str) -> tuple[bool, bool, bool]:
    """``demands`` of an instructions text, read where demands sit (its start and its end) like a prompt.
    Cached by that bounded scan, never by the whole text: 512 whole system prompts of up to the body limit
    each (4 MB) held gigabytes per process, for any client that sent that many distinct ones."""
    return _scan_demands(fold(text if len(text) <= 3000 else text[:2000] + "\n" + text[-1000:]))


@functools.lru_cache(maxsize=512)
def _scan_demands(scan: str) -> tuple[bool, bool, bool]:
    return demands(scan.lower())


def _num(v: Any) -> float | None:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return None
    try:
        return float(v)
    except OverflowError:  # an int beyond the float range: as large as a float gets, with its sign
        return math.inf if v > 0 else -math.inf


def rebase(feats: RequestFeatures, text: str) -> RequestFeatures:
    """``feats`` with every prompt-derived field computed from ``text`` instead (the parameters, the turn
    identity and the history stay; demands found in either count)."""
    t = extract("/v1/completions", {"prompt": text}, feats.ts)
    return dataclasses.replace(
        feats, prompt_words=t.prompt_words, prompt_key=t.prompt_key, head_key=t.head_key, tail_key=t.tail_key,
        minhash=t.minhash, bottom=t.bottom, cot=feats.cot or t.cot, rubric=feats.rubric or t.rubric,
        meta_prompt=feats.meta_prompt or t.meta_prompt, embedding=t.embedding, embedding_array=t.embedding_array,
        anchors=t.anchors,
    )


def extract(endpoint: str, body: Mapping[str, Any], ts: float) -> RequestFeatures:
    """Features of one request. Never raises on odd bodies: unknown shapes read as absent fields."""
    raw, n_messages = prompt_of(endpoint, body)
    # the turn's identity (``turn_crc``) is of the text as sent; everything else reads it folded (``_Fold``)
    text = fold(raw) if len(raw) <= LONG_TEXT else window(raw)
    low = text.lower()
    toks = _tokens_of_lower(low)
    if len(toks) <= 256:
        codes = _codes(toks)
        hashes, content = _split(codes)
        # Long prompts are also read by their fixed passages wherever they sit (``detectors.anchors``): a fill
        # between fresh padding shares nothing else with the template's other fills.
        anchors = winnow(codes) if len(toks) >= ANCHOR_MIN_TOKENS else ()
    else:  # the sketches read the first 192 and last 64 tokens; the anchors the first 768 and last 256
        codes = _codes(toks if len(toks) <= SCAN_HEAD + SCAN_TAIL else toks[:SCAN_HEAD] + toks[-SCAN_TAIL:])
        anchors = winnow(codes)
        hashes, content = _split(np.concatenate((codes[:192], codes[-64:])))
    words, bigrams = _content(content)
    # Content-word bigrams: two fills of one short template share most of them (slots change a few). With
    # stopwords and masked numbers kept, every word problem shared "how many"/"0 ." minima and unrelated
    # math prompts (and the accounts sending them) looked alike; 3-grams were too brittle for short templates.
    sh = bigrams if len(bigrams) else _mix64(words)
    long_enough = len(toks) >= MIN_TOKENS_FOR_HEAD_TAIL
    # Demands sit at the start or end of a prompt; scanning a pasted 20 kB document for them costs ~1 ms.
    scan = low if len(text) <= 3000 else (text[:2000] + "\n" + text[-1000:]).lower()
    cot, rubric, meta = demands(scan)
    msgs = body.get("messages")
    if type(msgs) is list and msgs and not (cot and rubric and meta):
        # A demand may sit in the instructions instead of the prompt (a harvesting script's system prompt
        # "always reason step by step in full" over dataset questions): the leading system/developer messages
        # count too. They repeat from request to request, so their scan is cached (by its bounded head and tail).
        inst = _instructions_of(msgs)
        if inst:
            i_cot, i_rubric, i_meta = _instruction_demands(inst)
            cot, rubric, meta = cot or i_cot, rubric or i_rubric, meta or i_meta
    ht = HEAD_TAIL if len(toks) >= LONG_PROMPT else HEAD_TAIL_SHORT
    chat = "messages" in body and not _legacy(endpoint)
    logprobs_field = body.get("logprobs")
    echo = body.get("echo") is True
    if chat:
        logprobs = logprobs_field is True
        top = body.get("top_logprobs")
        top_logprobs = int(top) if isinstance(top, int) and not isinstance(top, bool) else 0
    else:
        # legacy ``logprobs: k``: 0 too is a read (the chosen token's logprob at every position; with ``echo``,
        # every prompt token's: the prompt-scoring channel)
        k = logprobs_field if isinstance(logprobs_field, int) and not isinstance(logprobs_field, bool) else -1
        logprobs, top_logprobs = k >= 0 or logprobs_field is True, max(k, 0)
    pl = body.get("prompt_logprobs")
    if isinstance(pl, int) and not isinstance(pl, bool) and pl >= 0:
        # vLLM: the prompt's own token logprobs and its top ``pl`` at every position: the echo channel by name
        logprobs, echo, top_logprobs = True, True, max(top_logprobs, pl)
    lti = body.get("logprob_token_ids")
    if isinstance(lti, list) and lti:  # vLLM: the logprobs of these ids at every position (it needs logprobs)
        logprobs, top_logprobs = True, top_logprobs + len(lti)  # both are read per position
    bias_tokens, bias_entries, bias_max, bias_key = _bias(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    n = body.get("n")
    vec = _embed(words, bigrams)
    vec.flags.writeable = False  # shared with the detectors through ``embedding_array``
    return RequestFeatures(
        endpoint=endpoint,
        ts=ts,
        n_messages=n_messages,
        prompt_words=len(toks),
        max_tokens=int(max_tokens) if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
        n=int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1,
        temperature=_num(body.get("temperature")),
        top_p=_num(body.get("top_p")),
        has_seed=body.get("seed") is not None,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        echo=echo,
        bias_tokens=bias_tokens,
        bias_entries=bias_entries,
        bias_max_abs=bias_max,
        prompt_key=_crc(" ".join(toks)) if toks else 0,
        bias_key=bias_key,
        head_key=_crc(" ".join(toks[:ht])) if long_enough else 0,
        tail_key=_crc(" ".join(toks[-ht:])) if long_enough else 0,
        minhash=_minhash(sh),
        bottom=_bottom(hashes),
        cot=cot,
        rubric=rubric,
        meta_prompt=meta,
        embedding=tuple(vec.tolist()),
        turn_crc=turn_crc(raw) if msgs is not None else 0,
        history=history_of(body) if n_messages > 1 else (),
        embedding_array=vec,
        anchors=anchors,
    )
