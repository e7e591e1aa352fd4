"""Admin API: ``POST /admin/watermark/verify`` -- the verdict of ``ipgate verify --json`` for the dashboard.

Body: ``{"text": str}`` (one text) or ``{"texts": [str, ...]}`` (a corpus, pooled: each scored tuple counted
once across all texts; the answer adds ``"texts"``), plus optional ``"clients": [str, ...]`` (default: every
recipient the gateway recorded: the store's with the key versions it recorded, those in
``watermark.recipients_file`` under every version in force), ``"scheme": "auto"|"lexical"|"kgw"``
(kgw needs ``watermark.kgw_tokenizer_file``) and ``"fpr"`` (default 1e-6).

The admin listener shares the event loop with the public API, so everything that grows with the request runs
in a worker thread: decoding and validating the body (a 1 M-id body took ~160 ms of the loop), deriving the
keys and scoring (100 000 candidates take about a second of CPU), and freeing the key list (~65 ms per
million). One verification runs at a time per process (others wait): each holds up to ~10x its body, and
each one running competes with the loop for the GIL.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.admin.audit import note
from gateway.admin.body import parse_json, read_body
from gateway.admin.offloop import to_thread_to_the_end
from gateway.context import AppContext
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from watermark.base import Scheme
from watermark.keys import GIL_SLICE, ClientKey, KeyRing
from watermark.lexical import LexicalScheme
from watermark.verify import SCHEMES, Verdict, candidate_keys, parse_client_lines, utf8_encodable, verify

log = logging.getLogger(__name__)

MAX_CHARS = 2_000_000  # all texts together
MAX_TEXTS = 10_000
MAX_CLIENTS = 1_000_000
# The admin app keeps aiohttp's 1 MiB default body limit, which would refuse (with a bare 413) most requests
# the limits above allow (a 1.2 M-character text, 100 000 client ids). This route reads its own body up to
# this bound instead: 2 M characters of JSON-escaped text or ~1 M short ids fit, memory stays ~10x this.
MAX_BODY_BYTES = 32 * 1024 * 1024
_FIELDS = {"text", "texts", "clients", "scheme", "fpr"}


def digest_texts(texts: list[str]) -> str:
    """SHA-256 of one text's UTF-8; for several, of their SHA-256 hex digests joined by newlines. A lone
    surrogate (valid JSON, no UTF-8 form) is hashed as its surrogatepass encoding."""
    digests = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
    return digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()


def parse_body(body: Any) -> tuple[list[str], bool, list[str] | None, str, float]:
    """Validate the request; errors name the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(_FIELDS))}",
                             param=unknown[0])
    if ("text" in body) == ("texts" in body):
        raise InvalidRequest('give exactly one of "text" and "texts"', param="text")
    corpus = "texts" in body
    texts = body["texts"] if corpus else [body["text"]]
    field = "texts" if corpus else "text"
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(f"{field} must be a string" + (" list (non-empty)" if corpus else ""), param=field)
    if len(texts) > MAX_TEXTS or sum(len(t) for t in texts) > MAX_CHARS:
        raise InvalidRequest(f"{field}: at most {MAX_TEXTS} texts and {MAX_CHARS} characters", param=field)
    if not any(t.strip() for t in texts):  # as `ipgate verify` (exit 2): a verdict on no text says nothing
        raise InvalidRequest(f"{field}: no text to verify (empty or only whitespace)", param=field)
    clients = body.get("clients")
    if clients is not None and (not isinstance(clients, list) or not clients or len(clients) > MAX_CLIENTS
                                or not all(isinstance(c, str) and c for c in clients)):
        raise InvalidRequest(f"clients must be a non-empty list of at most {MAX_CLIENTS} client ids",
                             param="clients")
    bad = next((c for c in clients or () if not utf8_encodable(c)), None)
    if bad is not None:  # "\ud800" is valid JSON but no client id: it has no UTF-8 form to derive a key from
        raise InvalidRequest(f"clients: {bad!r} is not valid Unicode (lone surrogate)", param="clients")
    scheme = body.get("scheme", "auto")
    if scheme not in SCHEMES:
        raise InvalidRequest(f"scheme must be one of {', '.join(SCHEMES)}", param="scheme")
    fpr = body.get("fpr", 1e-6)
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 < fpr < 1:
        raise InvalidRequest("fpr must be a number in (0, 1)", param="fpr")
    return texts, corpus, clients, scheme, float(fpr)


@dataclass(frozen=True, slots=True)
class Question:
    """A validated request, with what its audit record says about it (``details``: never the text)."""

    texts: list[str]
    corpus: bool
    clients: list[str] | None
    scheme: str
    fpr: float
    details: dict[str, Any]


def parse_request(raw: bytes) -> Question:
    """Decode and validate the body (``InvalidRequest`` naming the field); run in a worker thread."""
    texts, corpus, clients, scheme, fpr = parse_body(parse_json(raw))
    # The audit record names the question, never the text: its size and digest (digest_texts).
    details: dict[str, Any] = {"texts": len(texts), "chars": sum(map(len, texts)),
                               "texts_sha256": digest_texts(texts), "scheme": scheme, "fpr": fpr,
                               "clients": len(clients) if clients is not None else "recorded"}
    return Question(texts, corpus, clients, scheme, fpr, details)


def attribute(ring: KeyRing, q: Question, recorded: dict[str, list[int]] | None, from_file: list[str],
              schemes: list[Scheme]) -> tuple[Verdict, int]:
    """The verdict and the number of (client, version) hypotheses tested; run in a worker thread, which also
    frees the keys (up to MAX_CLIENTS x key versions)."""
    # As in `ipgate verify`: the keys are tracked by the collector (a tuple subclass is never untracked), and
    # every young-generation collection while a million of them were being made walked them all, holding the
    # GIL (~100 ms each) away from the event loop. Nothing here makes reference cycles; one verification runs
    # at a time (the route's semaphore), and the collector's state is restored as found.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _attribute(ring, q, recorded, from_file, schemes)
    finally:
        if collecting:
            gc.enable()


def _attribute(ring: KeyRing, q: Question, recorded: dict[str, list[int]] | None, from_file: list[str],
               schemes: list[Scheme]) -> tuple[Verdict, int]:
    if q.clients is None:
        keys = recorded_keys(ring, recorded or {}, from_file)
        if not keys:  # a verdict over no candidates would read as "not watermarked", which is not known
            raise InvalidRequest("no watermark recipients are recorded (or none under a key version in "
                                 'force); pass "clients"', param="clients")
    else:
        keys = candidate_keys(ring, q.clients)
    v = verify(q.texts if q.corpus else q.texts[0], keys, schemes, fpr=q.fpr)
    n = len(keys)
    while keys:  # freed here and in slices: a million keys freed at once held the GIL for ~65 ms
        del keys[-GIL_SLICE:]
    return v, n


def file_recipients(path: str | None) -> list[str]:
    """The client ids in ``watermark.recipients_file`` (none when unset or not written yet), read as
    ``ipgate verify --config`` reads them."""
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        log.error("watermark.recipients_file %s: cannot read: %s", path, e)
        raise ServiceUnavailable("watermark.recipients_file cannot be read; see the gateway log",
                                 code="recipients_unavailable") from e
    try:
        ids = parse_client_lines(text)
    except ValueError as e:
        log.error("watermark.recipients_file %s: %s", path, e)
        raise ServiceUnavailable(f"watermark.recipients_file: {e}", code="recipients_unavailable") from e
    return [c for c in ids if utf8_encodable(c)]


def recorded_keys(ring: KeyRing, recorded: dict[str, list[int]], from_file: list[str]) -> list[ClientKey]:
    """The (client, version) hypotheses among the recorded recipients: the store's with the versions it
    recorded, and every id in the recipients file under every version in force. The file records no version,
    and a store that has a client may still have lost some of its versions: a key rotation is a restart,
    which empties a memory store, so a client served under version 1 and again after the rotation is in the
    store under version 2 only. Taking the store's versions for such a client never tested the version the
    leaked text was served under (a false "not watermarked")."""
    merged: dict[str, list[int]] = dict(recorded)
    merged.update((c, []) for c in from_file)  # [] = every version in force (candidate_keys)
    return candidate_keys(ring, sorted(merged), merged)


def routes(ctx: AppContext) -> list[web.RouteDef]:
    kgw_cache: list[Scheme] = []
    one_at_a_time = asyncio.Semaphore(1)

    def schemes(name: str, master: bytes) -> list[Scheme]:
        out: list[Scheme] = []
        if name in ("auto", "lexical"):
            out.append(LexicalScheme(master, markdown=ctx.config.watermark.lexical_markdown))
        tok = ctx.config.watermark.kgw_tokenizer_file
        if name == "kgw" and not tok:
            raise InvalidRequest("scheme kgw needs watermark.kgw_tokenizer_file in the config", param="scheme")
        if tok and name in ("auto", "kgw"):
            if not kgw_cache:
                try:
                    from watermark.kgw.detect import KgwScheme

                    kgw_cache.append(KgwScheme.from_tokenizer_file(tok, ctx.config.watermark.kgw()))
                except Exception as e:  # tokenizers raises its own types; a config problem, said as such
                    log.error("watermark.kgw_tokenizer_file %s: cannot load: %s", tok, e)
                    raise ServiceUnavailable(f"watermark.kgw_tokenizer_file cannot be loaded ({type(e).__name__})"
                                             "; see the gateway log", code="kgw_tokenizer_unavailable") from e
            out.append(kgw_cache[0])
        return out

    async def verify_handler(request: web.Request) -> web.Response:
        note(request, "watermark.verify")
        wm = ctx.watermarking
        ring = getattr(wm, "ring", None)
        if wm is None or ring is None:
            raise NotFound("watermarking is not enabled on this gateway")
        raw = await read_body(request, MAX_BODY_BYTES, "; split a large corpus into several requests or use "
                              "`ipgate verify --jsonl FILE --corpus`")
        async with one_at_a_time:
            q = await to_thread_to_the_end(parse_request, raw)
            del raw
            details = q.details
            note(request, details=details)
            recorded: dict[str, list[int]] | None = None
            from_file: list[str] = []
            if q.clients is None:
                recorded = await ctx.store.recipients()
                # and those only watermark.recipients_file knows, as `ipgate verify --config` reads them: the
                # store's alone missed every client a memory store forgot in a restart (or a flushed Redis lost)
                from_file = await to_thread_to_the_end(file_recipients, ctx.config.watermark.recipients_file)
            chosen = await to_thread_to_the_end(schemes, q.scheme, ring.master)  # may load a tokenizer.json
            v, candidates = await to_thread_to_the_end(attribute, ring, q, recorded, from_file, chosen)
            texts, corpus = len(q.texts), q.corpus
            held = [q]
            del q
            await to_thread_to_the_end(held.clear)  # the texts and client ids are freed there too (~17 ms per 1 M)
        log.info("admin watermark verify: %d texts, %d candidate keys, watermarked=%s", texts, candidates,
                 v.watermarked)
        details["candidates"] = candidates
        hit = v.client if v.watermarked else None
        note(request, target=hit, after={
            "watermarked": v.watermarked, "client": hit, "key_version": v.key_version if hit else None,
            "p_value": v.p_value if math.isfinite(v.p_value) else None, "scheme": v.scheme})
        return web.json_response(v.to_json(corpus))

    return [web.post("/admin/watermark/verify", verify_handler)]
