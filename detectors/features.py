"""Per-request features from the raw OpenAI body: parameters, masked-prompt sketches, a hashed embedding.

Cheap by construction (the budget is the whole engine at <= 200 us p50): one regex pass to mask, one to
tokenise, CRC32 token hashes (deterministic across processes and replicas, unlike ``hash()``; memoised per
token, since prompts reuse a small vocabulary), and numpy for the MinHash of word bigrams and the embedding.
Long prompts are sketched from their first 192 and last 64 tokens; prompts of 64 tokens or more are also
winnowed into anchors (``detectors.anchors``: fixed passages found wherever they sit). The text is read
folded and, past 20 000 characters, by its head and tail with whitespace runs squeezed
(``detectors.normalise``).

Masking replaces the parts a template pipeline varies (numbers, quoted strings, URLs, e-mail addresses,
code blocks) so that two fills of one template hash alike. The embedding is feature hashing of content-word
unigrams and bigrams into ``EMBED_DIM`` signed buckets, which is a sparse random projection of the n-gram
count vector (fixed by the hash, so every replica agrees), L2-normalised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import random
import re
import secrets
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from detectors.anchors import MIN_TOKENS as ANCHOR_MIN_TOKENS
from detectors.anchors import SCAN_HEAD, SCAN_TAIL, winnow
from detectors.normalise import LONG_TEXT, fold, window
from detectors.patterns import STOPWORDS, demands
from detectors.types import RequestFeatures

EMBED_DIM = 64
HEAD_TAIL = 8  # head/tail key length for prompts of LONG_PROMPT tokens or more
HEAD_TAIL_SHORT = 3  # ... and for shorter prompts (ordinary phrasings are stop-listed by the reference)
LONG_PROMPT = 16
MIN_TOKENS_FOR_HEAD_TAIL = 5
MINHASHES = 16
BOTTOM_K = 32
# Odd 64-bit multipliers: one independent-enough hash permutation per MinHash slot.
_SEEDS = np.array(
    [((0x9E3779B97F4A7C15 + 2 * i * 0x632BE59BD9B4E019) | 1) & (2**64 - 1) for i in range(MINHASHES)], dtype=np.uint64
)
MAX_BIAS_TOKENS = 512
_MASK_RE = re.compile(
    r"(?P<code>```.*?```)|(?P<url>https?://\S+)|(?P<mail>[^\s@]{1,64}@[^\s@]{1,255}\.\w+)"
    r"|(?P<quote>\"[^\"\n]{1,200}\")|(?P<num>\d+(?:[.,:/]\d+)*)",
    re.S,
)
# The mail alternative is bounded (RFC 5321: local part <= 64, domain <= 255 characters, neither holding an
# "@"). The unbounded ``\S+@\S+\.\w+`` it replaces backtracked cubically: a 1.6 kB run of "a@a@..." took
# 0.7 s and a 20 kB one (the longest prompt masked) about 20 minutes of CPU on the event loop. Wherever every
# "@"-holding word has one "@" within those bounds both patterns match exactly the same spans
# (tests/detectors/test_review_fuzz.py checks it against the old pattern).
_NUM_RE = re.compile(r"\d+(?:[.,:/]\d+)*")
_TOKEN_RE = re.compile(r"[a-z_']+|0|[^\sa-z0-9_']")
_MASKS = {"code": " ᶜ ", "url": " ᵘ ", "mail": " ᵉ ", "quote": " ᵠ ", "num": " 0 "}
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_K1, _K2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_BIT20, _DIM_MASK = np.uint64(1 << 20), np.uint64(EMBED_DIM - 1)  # EMBED_DIM is a power of two: h % DIM == h & mask
TOKEN_CACHE = 65_536  # distinct tokens whose hash / content flag is memoised (both caches full: ~10 MB)


def _mask(m: re.Match[str]) -> str:
    return _MASKS[m.lastgroup or "num"]


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8", "surrogatepass"))


class _TokenCodes(dict[str, int]):
    """A token's code, memoised: its ``_crc`` in the low 32 bits, and bit 32 set for a content word (longer
    than two characters, not a stopword). Prompts reuse a small vocabulary, so nearly every lookup is a hit
    and costs one C-level dict access instead of a Python call, an encode and a CRC (about 5x less per
    token); one table for both facts halves the lookups. The values are a pure function of the token, so
    the cache changes no result; it is bounded by being cleared when full (cheaper than LRU bookkeeping on
    every hit, and refilled within a few requests)."""

    __slots__ = ()

    def __missing__(self, tok: str) -> int:
        if len(self) >= TOKEN_CACHE:
            self.clear()
        code = self[tok] = _crc(tok) | (_CONTENT_BIT if len(tok) > 2 and tok not in STOPWORDS else 0)
        return code


_CONTENT_BIT = 1 << 32
_CODES = _TokenCodes()
_LOW32 = np.uint64(0xFFFFFFFF)  # a code's hash; a code above it is a content word's


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised: spreads 32-bit token hashes over 64 bits.

    uint64 array arithmetic wraps modulo 2**64 silently (numpy only warns on scalar overflow)."""
    x = (x ^ (x >> _S30)) * _K1
    x = (x ^ (x >> _S27)) * _K2
    out: np.ndarray = x ^ (x >> _S31)
    return out


def _mix64_inplace(x: np.ndarray) -> np.ndarray:
    """``_mix64`` computed in place on ``x`` (which it returns): the same arithmetic, no temporaries."""
    tmp = np.empty_like(x)
    for shift, k in ((_S30, _K1), (_S27, _K2)):
        np.right_shift(x, shift, out=tmp)
        x ^= tmp
        x *= k
    np.right_shift(x, _S31, out=tmp)
    x ^= tmp
    return x


#: Content parts whose text is not under "text": vLLM reads these as text in any message (a user turn too)
_TEXT_KEYS = {"refusal": "refusal", "thinking": "thinking"}


def _text_key(kind: Any) -> str:
    return _TEXT_KEYS.get(kind, "text") if isinstance(kind, str) else "text"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # content parts: [{"type": "text", "text": ...}, ...]
        # A fill in a {"type": "refusal", "refusal": ...} part of a user message was read as "" while the
        # model read it as the prompt: each part is read under the key its type names.
        return " ".join(str(p.get(_text_key(p.get("type")), "")) for p in content if isinstance(p, Mapping))
    return ""


_INSTRUCTION_ROLES = ("system", "developer")
_MAX_TURN_MESSAGES = 8  # consecutive user messages read as one turn (the rest of a longer run is left out)
MAX_HISTORY_TURNS = 8  # earlier user turns of a request considered as history (the most recent ones)
_CRC_CHARS = 2048  # a turn is identified by the CRC32 of its first characters


def _instructions_of(messages: list[Any]) -> str:
    """The text of the leading system/developer messages ("" when the conversation opens otherwise)."""
    first = messages[0]
    if type(first) is not dict or first.get("role") not in _INSTRUCTION_ROLES:
        return ""
    parts = []
    for m in messages:
        if type(m) is not dict or m.get("role") not in _INSTRUCTION_ROLES:
            break
        parts.append(_text_of(m.get("content")))
    return parts[0] if len(parts) == 1 else "\n".join(parts)


def _instruction_demands(text: str) -> tuple[bool, bool, bool]:
    """``demands`` of an instructions text, read where demands sit (its start and its end) like a prompt.
    Cached by that bounded scan, never by the whole text: 512 whole system prompts of up to the body limit
    each (4 MB) held gigabytes per process, for any client that sent that many distinct ones."""
    return _scan_demands(fold(text if len(text) <= 3000 else text[:2000] + "\n" + text[-1000:]))


@functools.lru_cache(maxsize=512)
def _scan_demands(scan: str) -> tuple[bool, bool, bool]:
    return demands(scan.lower())


def _trailing_instructions(messages: Sequence[Any]) -> str:
    """The text of the system/developer messages a conversation ends with (its last ``_MAX_TURN_MESSAGES``).

    Read as the turn of a request that has no user message: the model answers its instructions, and such a
    request read as "" let a harvester send every fill as a lone system message unscored. Instructions after
    a user turn are not read with it: a fixed reminder that an application appends after every user message
    then made every benign prompt end alike (251 of 300 benign personas flagged as template fillers)."""
    parts: list[str] = []
    for m in reversed(messages):
        if not (type(m) is dict or isinstance(m, Mapping)):
            continue
        if m.get("role") not in _INSTRUCTION_ROLES or len(parts) >= _MAX_TURN_MESSAGES:
            break
        parts.append(_text_of(m.get("content")))
    return "\n".join(reversed(parts))


def _legacy(endpoint: str) -> bool:
    """``/v1/completions`` (not ``/v1/chat/completions``): the prompt is what the model answers."""
    return endpoint.endswith("/completions") and not endpoint.endswith("/chat/completions")


def prompt_of(endpoint: str, body: Mapping[str, Any]) -> tuple[str, int]:
    """The last user turn and the number of conversation messages (system/developer messages excluded).
    A request without a user message is read by its instructions (``_trailing_instructions``).

    The user turn is the last user message joined with the user messages right before it (no assistant or
    tool message between): a request can split one turn over several messages, and reading only the last one
    let a harvester send its template fill followed by a short "go ahead" that was all detection saw."""
    # a legacy completions body is read by its prompt: its server ignores chat fields (a stray ``messages: []``
    # beside the prompt hid it from every detector while the backend answered the prompt)
    messages = None if _legacy(endpoint) else body.get("messages")
    # ``type(x) is list/dict`` first: what a parsed JSON body holds, and far cheaper than an ABC isinstance
    if type(messages) is list or (isinstance(messages, Sequence) and not isinstance(messages, str)):
        turns = [m for m in messages
                 if (type(m) is dict or isinstance(m, Mapping)) and m.get("role") not in _INSTRUCTION_ROLES]
        for i in range(len(turns) - 1, -1, -1):
            if turns[i].get("role") == "user":
                if i == 0 or turns[i - 1].get("role") != "user":  # the usual case: one message per turn
                    text = _text_of(turns[i].get("content"))
                else:
                    j = i - 1
                    while j > 0 and i - j < _MAX_TURN_MESSAGES - 1 and turns[j - 1].get("role") == "user":
                        j -= 1
                    text = "\n".join(_text_of(m.get("content")) for m in turns[j:i + 1])
                return text, len(turns)
        # No user message: what the model answers is the instructions (a request of system messages only)
        return _trailing_instructions(messages), len(turns)
    prompt = body.get("prompt")
    if type(prompt) is list and prompt:
        # A batch (completions ``prompt: [...]``): each prompt gets its own answers, so the request is scored
        # by one of them drawn uniformly at random, a draw the client cannot steer. Reading the first one let a
        # harvester put a harmless prompt first and its template fills after it (tests/detectors/
        # test_batched_prompts.py). Over a client's stream this samples its prompts like separate requests
        # would; token-id prompts read as "" (the gateway refuses them: detection.token_id_prompts).
        prompt = prompt[_batch_pick(len(prompt))] if len(prompt) > 1 else prompt[0]
    return (prompt if isinstance(prompt, str) else ""), 1


# Which prompt of a batch is read: unpredictable to clients (seeded from the OS per process); ``ipgate replay``
# reseeds it (``seed_batch_pick``) so that a replay is reproducible.
_batch_pick = random.Random(secrets.randbits(64)).randrange


def seed_batch_pick(seed: int) -> None:
    """Make the choice of the scored prompt of batched requests reproducible (replay, evaluation, tests)."""
    global _batch_pick
    _batch_pick = random.Random(seed).randrange


@contextlib.contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """``seed_batch_pick(seed)`` for the block, then the generator that was there before (a replay run in a
    process that also serves must not leave that process drawing a sequence anyone can compute)."""
    global _batch_pick
    before = _batch_pick
    seed_batch_pick(seed)
    try:
        yield
    finally:
        _batch_pick = before


def tokens_of(text: str) -> list[str]:
    """Masked, lower-cased tokens (the unit every sketch and the embedding are built from)."""
    return _tokens_of_lower(text.lower())


def _tokens_of_lower(low: str) -> list[str]:
    if "`" in low or "http" in low or "@" in low or '"' in low:
        low = _MASK_RE.sub(_mask, low)
    else:  # the common case: only numbers to mask, and a plain regex is 3x faster than the alternation
        low = _NUM_RE.sub(" 0 ", low)
    return _TOKEN_RE.findall(low)


def _minhash(h: np.ndarray) -> tuple[int, ...]:
    """MinHash of the shingle set: slot i keeps the minimum of the i-th permutation (32 bits kept).

    The splitmix64 finaliser runs in place on the (shingles x slots) matrix: the same arithmetic as
    ``_mix64`` without its five temporaries of that size."""
    if len(h) == 0:
        return ()
    x = _mix64_inplace(h[:, None] * _SEEDS[None, :])
    out: list[int] = (np.minimum.reduce(x, axis=0) >> _S32).tolist()
    return tuple(out)


def minhash_of(shingles: np.ndarray) -> tuple[int, ...]:
    """The 16-slot MinHash of a set of 64-bit shingle hashes (what ``extract`` computes of content bigrams)."""
    return _minhash(shingles)


def _token_hashes(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``_crc`` of every token (uint64), and the same for the content words only (no stopwords, masks or
    punctuation), in order: one memoised lookup per token."""
    return _split(_codes(tokens))


def _codes(tokens: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(_CODES.__getitem__, tokens), dtype=np.uint64, count=len(tokens))


def _split(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token codes -> (every token's hash, the content words' hashes)."""
    return codes & _LOW32, codes[codes > _LOW32] & _LOW32


def _content(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The content words' hashes and those of their bigrams."""
    if len(words) < 2:
        return words, words[:0]
    bigrams = words[:-1] * _GOLD
    bigrams += words[1:]
    return words, _mix64_inplace(bigrams)


def _bottom(hashes: np.ndarray, k: int = BOTTOM_K) -> tuple[int, ...]:
    """The k smallest distinct token hashes (a bottom-k sample of the token set, stopwords included).

    Intersected over the fills of one template it converges to the template's fixed tokens (its skeleton):
    a token with a small hash is in every fill's sample or in none."""
    if not len(hashes):
        return ()
    a = np.sort(hashes)
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    out: list[int] = a[keep][:k].tolist()
    return tuple(out)


def embed(tokens: Sequence[str]) -> np.ndarray:
    """Hashed content-word uni+bigram embedding, L2-normalised (zeros for no content words)."""
    return _embed(*_content(_token_hashes(tokens)[1]))


def _embed(words: np.ndarray, bigrams: np.ndarray) -> np.ndarray:
    if not len(words):
        return np.zeros(EMBED_DIM)
    h = np.concatenate([words, bigrams])
    idx = (h & _DIM_MASK).astype(np.intp)
    sign = np.where(h & _BIT20, 1.0, -1.0)  # bit 20 of the hash: +1 / -1, exactly
    vec: np.ndarray = np.bincount(idx, weights=sign, minlength=EMBED_DIM)  # float64 (weights given)
    norm = math.sqrt(float(vec @ vec))
    return vec / norm if norm > 0 else vec


#: vLLM's token-id extensions that steer or read chosen tokens, as a logit_bias does: ``logprob_token_ids``
#: reads the logprobs of up to 128 chosen ids per position (a chosen-token read without any bias),
#: ``allowed_token_ids`` bans every other token and ``bad_words`` bans the listed words (infinite biases).
TARGETING_FIELDS = ("logprob_token_ids", "allowed_token_ids", "bad_words")
_BAN = 100.0  # the magnitude a ban counts with: OpenAI's largest logit_bias
_NO_BIAS: tuple[tuple[int, ...], int, float, int] = ((), 0, 0.0, 0)


def _bias(body: Mapping[str, Any]) -> tuple[tuple[int, ...], int, float, int]:
    """Every token a request steers or reads by id: the ``logit_bias`` keys and the ``TARGETING_FIELDS``
    entries (numeric ids as themselves, anything else hashed), their count, the largest magnitude (a ban or an
    allow list counts as ``_BAN``) and a key of the whole targeting (to see it change between requests)."""
    raw = body.get("logit_bias")
    lb = raw if raw and isinstance(raw, Mapping) else None
    if "logprob_token_ids" in body or "allowed_token_ids" in body or "bad_words" in body:
        extra = [(name, v) for name in TARGETING_FIELDS if isinstance(v := body.get(name), list) and v]
    elif lb is None:
        return _NO_BIAS
    else:
        extra = []
    if lb is None and not extra:
        return _NO_BIAS
    toks: list[int] = []
    max_abs = 0.0
    entries = 0
    parts: list[str] = []
    if lb is not None:
        for k, v in lb.items():
            toks.append(_token(str(k)))
            if isinstance(v, int | float):
                max_abs = max(max_abs, _abs_float(v))
        entries += len(lb)
        parts.append(",".join(f"{k}:{lb[k]}" for k in sorted(lb, key=str)))
    for name, ids in extra:
        toks.extend(_token(str(t)) for t in ids[:MAX_BIAS_TOKENS])
        entries += len(ids)
        if name != "logprob_token_ids":
            max_abs = max(max_abs, _BAN)
        # The whole list is keyed (a fixed head with a sweeping tail past MAX_BIAS_TOKENS must change the key);
        # only short lists are sorted (sorting 100 000 strings costs ~30 ms): long ones in the client's order.
        listed = ",".join(sorted(map(str, ids)) if len(ids) <= MAX_BIAS_TOKENS else map(str, ids))
        parts.append(name + "=" + listed)
    return tuple(toks[:MAX_BIAS_TOKENS]), entries, max_abs, _crc(";".join(parts))


def _token(ks: str) -> int:
    # isdecimal, not isdigit: int() refuses digits such as "²" or "①" that isdigit accepts
    return int(ks) if ks.isdecimal() and len(ks) < 10 else _crc(ks)


def _abs_float(v: float) -> float:
    """``abs(float(v))``; an int beyond the float range (valid JSON, e.g. 10**400) reads as infinity."""
    try:
        return abs(float(v))
    except OverflowError:
        return math.inf


def _num(v: Any) -> float | None:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return None
    try:
        return float(v)
    except OverflowError:  # an int beyond the float range: as large as a float gets, with its sign
        return math.inf if v > 0 else -math.inf


def turn_crc(text: str) -> int:
    """A turn's identity across requests (the client resends its earlier turns verbatim); 0 for no text."""
    return zlib.crc32(text[:_CRC_CHARS].encode("utf-8", "surrogatepass")) | 1 if text else 0


def history_of(body: Mapping[str, Any]) -> tuple[tuple[int, str], ...]:
    """The user turns before the last one, as (``turn_crc``, text), most recent last, at most
    ``MAX_HISTORY_TURNS``: consecutive user messages form one turn, as in ``prompt_of``.

    Read from the end and only as far as those turns reach: a request of 10 000 messages costs the walk back
    over its last few turns, not a text extraction of every user message in it (1 ms there, read forwards)."""
    messages = body.get("messages")
    if type(messages) is not list:
        return ()
    runs: list[list[Mapping[str, Any]]] = []  # user turns, most recent first; each its messages, most recent first
    run: list[Mapping[str, Any]] | None = None
    for m in reversed(messages):
        if type(m) is not dict:
            continue
        role = m.get("role")
        if role == "user":
            if run is None:
                if len(runs) > MAX_HISTORY_TURNS:  # the last turn and the history before it are all found
                    break
                run = []
                runs.append(run)
            if len(run) < _MAX_TURN_MESSAGES:  # a turn reads its last messages (the rest of a longer run is left out)
                run.append(m)
        elif role not in _INSTRUCTION_ROLES:  # system/developer messages do not end a turn; the others do
            run = None
    out: list[tuple[int, str]] = []
    for r in reversed(runs[1:]):  # runs[0] is the last turn itself (trailing, or before an assistant prefill)
        t = _text_of(r[0].get("content")) if len(r) == 1 else "\n".join(
            _text_of(x.get("content")) for x in reversed(r))
        if t:
            out.append((turn_crc(t), t))
    return tuple(out)


def draw(n: int) -> int:
    """A uniform draw in [0, n) from the generator that picks batch prompts (seeded per process; replay
    reseeds it with ``seed_batch_pick``)."""
    return _batch_pick(n)


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
