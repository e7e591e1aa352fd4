"""The simulated model server: OpenAI-compatible chat/completions/embeddings/models over aiohttp, and the
Responses API as vLLM serves it (``POST /v1/responses``, in gateway/sim/responses.py).

It stands in for a GPU backend (vLLM, TGI, ...) in the demo, the tests and the benchmarks. Behaviour:
- text: real assistant answers from the bundled corpus, chosen by a hash of the prompt (deterministic);
- streaming at ``tokens_per_s`` (0 = as fast as possible) after ``latency_ms``; ``usage`` in the body, and in
  a final ``choices: []`` chunk when ``stream_options.include_usage`` is set;
- ``logprobs``/``top_logprobs`` shaped like the real API (chat and legacy completions forms);
- legacy completions as vLLM serves them: a list of prompts is a batch (choice index = prompt index * n +
  sequence index, usage summed), ``echo`` returns each prompt before its completion;
- bad input (``gateway/sim/checks.py``): what vLLM 0.33 refuses is a 400 in its error JSON naming the field;
- failure injection: ``fail_rate`` answers ``fail_status`` before any byte; ``cut_after`` closes the connection
  after N streamed tokens; ``stall_after`` stops sending after N tokens and holds the connection open;
- ``kgw_plugin``: emulate a vLLM engine started with ipgate's KGW logits processor. Every request's
  ``vllm_xargs`` goes through the plugin's own validator (``watermark.kgw.vllm_plugin.validate_extra_args``,
  with ``kgw_spec`` and ``kgw_secret`` standing for the engine host's ``IPGATE_KGW_PARAMS`` and master secret);
  what it refuses is answered 400 in vLLM's error shape, as ``vllm serve`` does for a ``ValueError`` raised
  by a processor's ``validate_params``. Nothing is applied to the text (the sim has no logits). Without it
  the sim ignores ``vllm_xargs``, like an engine without the plugin;
- ``reasoning``: answer like a reasoning model behind vLLM's reasoning parser: chat answers carry a chain of
  thought (another corpus answer) in ``message.reasoning`` / streamed ``delta.reasoning`` before the content;
- chat ``response_format`` (``json_schema``/``json_object``) and a forced ``tool_choice`` answer as vLLM's
  constrained decoding does (gateway/sim/structured.py): JSON content, or one tool call;
- vLLM 0.33's answer-side extensions (gateway/sim/extensions.py): ``return_prompt_text`` and
  ``return_weight_versions`` are honoured, ``routed_experts`` stands for ``--enable-return-routed-experts``;
- it records every generation that the client abandoned (``SimStats.aborted``), readable in-process and at
  ``GET /sim/stats``, and the request headers it last saw (to check what a proxy forwards).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.sim import LABEL, checks, extensions, structured
from gateway.sim.corpus import CorpusEntry, alternatives, count_tokens, pick, token_logprob, tokenize

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimOptions:
    model: str = "sim"
    latency_ms: float = 0.0
    tokens_per_s: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500
    cut_after: int | None = None
    stall_after: int | None = None
    seed: int = 0
    default_max_tokens: int = 256
    embedding_dim: int = 32
    kgw_plugin: bool = False  # emulate vLLM with ipgate's KGW plugin loaded (see the module docstring)
    kgw_spec: str | None = None  # the plugin's IPGATE_KGW_PARAMS (None: the default, g0.25-h4-selfhash)
    kgw_secret: bytes | None = None  # the plugin host's master secret (None: only key-mode directives)
    reasoning: bool = False  # chat answers carry a chain of thought in ``reasoning`` (vLLM's reasoning parser)
    # vLLM 0.33's answer-side extensions (gateway/sim/extensions.py): return_prompt_text and
    # return_weight_versions are always honoured; routed_experts is the server flag --enable-return-routed-experts
    weight_version: str = "sim-v1"
    routed_experts: bool = False


@dataclass(slots=True)
class SimStats:
    requests: int = 0
    completed: int = 0
    aborted: int = 0
    failed: int = 0
    cut: int = 0
    refused: int = 0  # requests the emulated KGW plugin refused (kgw_plugin)
    abort_times: list[float] = field(default_factory=list)  # time.monotonic() when each abort was seen
    last_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    last_body: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "completed": self.completed, "aborted": self.aborted,
                "failed": self.failed, "cut": self.cut, "refused": self.refused}


SIM_STATS = web.AppKey("sim_stats", SimStats)
SIM_OPTIONS = web.AppKey("sim_options", SimOptions)
SIM_RNG = web.AppKey("sim_rng", random.Random)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _error(status: int, message: str, etype: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": etype, "param": None, "code": None}},
                             status=status)


def _prompt_text(endpoint: str, body: Mapping[str, Any]) -> str:
    if endpoint == "chat":
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return "\n".join(parts)
    return _completion_prompts(body)[0]


def _completion_prompts(body: Mapping[str, Any]) -> list[str]:
    """The prompts of a legacy completions request: a list of strings or of token-id lists is a batch, one
    prompt per item, as vLLM serves it (``checks.check_request`` has refused every other shape)."""
    p = body.get("prompt", "")
    if isinstance(p, str):
        return [p]
    if p and all(isinstance(x, str) for x in p):
        return list(p)
    if p and all(isinstance(x, list) for x in p):
        return [" ".join(map(str, x)) for x in p]
    return [" ".join(map(str, p))]


def _chat_logprobs(tokens: list[str], start: int, top: int) -> dict[str, Any]:
    content = []
    for i, t in enumerate(tokens, start):
        alts = alternatives(t, i, max(top, 1))
        content.append({
            "token": t, "logprob": alts[0][1], "bytes": list(t.encode()),
            "top_logprobs": [{"token": a, "logprob": lp, "bytes": list(a.encode())} for a, lp in alts[:top]],
        })
    return {"content": content, "refusal": None}


def _echoed_logprobs(prompt: str, top: int, rest: dict[str, Any]) -> dict[str, Any]:
    """``echo: true``: the prompt's tokens come first (vLLM's prompt logprobs, none for the first token, which
    has no context), then ``rest``; text offsets count from the start of the prompt."""
    toks = tokenize(prompt)
    head = _completion_logprobs(toks, -len(toks), top, 0)
    if toks:
        head["token_logprobs"][0] = head["top_logprobs"][0] = None
    return {k: head[k] + rest[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def _completion_logprobs(tokens: list[str], start: int, top: int, offset: int) -> dict[str, Any]:
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [token_logprob(t, i) for i, t in enumerate(tokens, start)],
        # vLLM returns a position's first ``logprobs + 1`` candidates, the sampled token among them; the sim's
        # sampled token always ranks first, so that is ``logprobs`` entries, and the sampled one alone for 0
        "top_logprobs": [dict(alternatives(t, i, max(top, 1))[: max(top, 1)]) for i, t in enumerate(tokens, start)],
        "text_offset": offsets,
    }


@dataclass(slots=True)
class _Gen:
    """One request's planned output."""

    entries: list[CorpusEntry]
    max_tokens: int
    prompt_tokens: int
    thoughts: list[CorpusEntry] | None = None  # reasoning: one chain of thought per choice
    calls: list[str | None] = field(default_factory=list)  # per choice: the forced tool (gateway/sim/structured.py)
    echoes: list[str] = field(default_factory=list)  # legacy ``echo: true``: per choice, the prompt it answers
    required_call: bool = False  # ``tool_choice: "required"``: a completed call ends with "tool_calls"

    def call(self, i: int) -> str | None:
        return self.calls[i] if self.calls else None

    def echo(self, i: int) -> str | None:
        return self.echoes[i] if self.echoes else None

    # max_tokens caps every generated token, the chain of thought included (vLLM's reasoning parser only
    # splits the output text): the answer gets what the thought leaves.

    def tokens(self, i: int) -> list[str]:
        return list(self.entries[i].tokens[: max(self.max_tokens - len(self.thought(i)), 0)])

    def thought(self, i: int) -> list[str]:
        return list(self.thoughts[i].tokens[: self.max_tokens]) if self.thoughts else []

    def finish(self, i: int) -> str:
        if len(self.entries[i].tokens) + (len(self.thoughts[i].tokens) if self.thoughts else 0) > self.max_tokens:
            return "length"
        # vLLM's resolve_finish_reason: "tool_calls" for a call the model ended on its own, except for a forced
        # named tool (OpenAI reports "stop" there); a cut call stays "length"
        return "tool_calls" if self.required_call and self.call(i) else "stop"


def _plan(endpoint: str, body: Mapping[str, Any], opts: SimOptions) -> _Gen:
    n = int(body.get("n") or 1)
    mt = body.get("max_completion_tokens") or body.get("max_tokens") or opts.default_max_tokens
    if endpoint != "chat":  # a batch of prompts: choice index = prompt index * n + sequence index (as vLLM)
        prompts = _completion_prompts(body)
        return _Gen([pick(p, i) for p in prompts for i in range(n)], int(mt),
                    sum(count_tokens(p) + 3 for p in prompts),
                    echoes=[p for p in prompts for _ in range(n)] if body.get("echo") is True else [])
    prompt = _prompt_text(endpoint, body)
    thoughts = [pick(prompt + "\x1fthink", i) for i in range(n)] if opts.reasoning else None
    entries = [pick(prompt, i) for i in range(n)]
    constrained = [structured.constrain(body, e) for e in entries]
    return _Gen([e for e, _ in constrained], int(mt), count_tokens(prompt) + 3, thoughts,
                [call for _, call in constrained], required_call=body.get("tool_choice") == "required")


def _logprob_request(endpoint: str, body: Mapping[str, Any]) -> int | None:
    """Number of top alternatives wanted, or None when logprobs are not requested."""
    if endpoint == "chat":
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    lp = body.get("logprobs")
    return None if lp is None else int(lp)


async def _pre(request: web.Request) -> tuple[SimOptions, SimStats, dict[str, Any]] | web.Response:
    stats, opts = request.app[SIM_STATS], request.app[SIM_OPTIONS]
    stats.requests += 1
    stats.last_headers = CIMultiDict(request.headers)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    stats.last_body = body
    if opts.kgw_plugin:
        refused = _kgw_plugin_refusal(opts, body)
        if refused is not None:
            stats.refused += 1
            return refused
    if opts.fail_rate and request.app[SIM_RNG].random() < opts.fail_rate:
        stats.failed += 1
        return _error(opts.fail_status, "simulated failure", "server_error")
    if opts.latency_ms:
        try:
            await asyncio.sleep(opts.latency_ms / 1000)
        except asyncio.CancelledError:
            _record_abort(stats, 0)
            raise
    return opts, stats, body


def _kgw_plugin_refusal(opts: SimOptions, body: Mapping[str, Any]) -> web.Response | None:
    """The emulated plugin's verdict on the request's ``vllm_xargs``: None to serve it, else vLLM's 400."""
    from watermark.kgw.directives import parse_spec
    from watermark.kgw.params import KgwParams
    from watermark.kgw.vllm_plugin import validate_extra_args

    bad_xargs = checks.check_xargs(body)  # vLLM's schema refuses a non-object before any plugin sees it
    if bad_xargs is not None:
        return bad_xargs
    try:
        validate_extra_args(body.get("vllm_xargs"), parse_spec(opts.kgw_spec) if opts.kgw_spec else KgwParams(),
                            opts.kgw_secret)
    except ValueError as e:
        # vLLM's shape for a ValueError raised while the request is processed (create_error_response)
        return web.json_response({"error": {"message": str(e), "type": "BadRequestError", "param": None,
                                            "code": 400}}, status=400)
    return None


def _record_abort(stats: SimStats, tokens_sent: int) -> None:
    stats.aborted += 1
    stats.abort_times.append(time.monotonic())
    log.info("sim: client abandoned a generation after %d tokens", tokens_sent)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def _generate(request: web.Request, endpoint: str) -> web.StreamResponse:
    pre = await _pre(request)
    if isinstance(pre, web.Response):
        return pre
    opts, stats, body = pre
    refused = checks.check_request(endpoint, body)
    if refused is not None:
        log.info("sim: %s refused: %s", endpoint, refused.text)
        return refused
    gen = _plan(endpoint, body, opts)
    if body.get("stream"):
        return await _stream(request, endpoint, body, gen, opts, stats)
    top = _logprob_request(endpoint, body)
    choices, completion_tokens = [], 0
    for i in range(len(gen.entries)):
        toks = gen.tokens(i)
        thought = gen.thought(i)
        completion_tokens += len(toks) + len(thought)
        text = "".join(toks)
        if endpoint == "chat":
            call = gen.call(i)
            message: dict[str, Any] = (structured.tool_message(call, text) if call
                                       else {"role": "assistant", "content": text})
            if thought:
                message["reasoning"] = "".join(thought)
                if not toks and not call:  # the budget ended inside the thought: no end marker, no content
                    message["content"] = None
            c: dict[str, Any] = {"index": i, "message": message, "finish_reason": gen.finish(i),
                                 # vLLM: over every generated token, the chain of thought's included
                                 "logprobs": _chat_logprobs(thought + toks, 0, top) if top is not None else None}
        else:  # with echo, the prompt comes first (vLLM: prompt text + output, offsets from the prompt's start)
            echo = gen.echo(i)
            lp = _completion_logprobs(toks, 0, top, len(echo or "")) if top is not None else None
            if lp is not None and echo is not None:
                lp = _echoed_logprobs(echo, top or 0, lp)
            c = {"index": i, "text": (echo or "") + text, "finish_reason": gen.finish(i), "logprobs": lp}
        c.update(extensions.choice_fields(body, len(toks) + len(thought), weight_version=opts.weight_version,
                                          routed_experts=opts.routed_experts, streamed=False, index=i))
        choices.append(c)
    stats.completed += 1
    return web.json_response({
        "id": ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24],
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": int(time.time()), "model": body.get("model", opts.model), "system_fingerprint": "sim",
        "choices": choices,
        "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": gen.prompt_tokens + completion_tokens},
        **extensions.top_fields(endpoint, body),
    })


async def _stream(request: web.Request, endpoint: str, body: dict[str, Any], gen: _Gen, opts: SimOptions,
                  stats: SimStats) -> web.StreamResponse:
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    chat_ = endpoint == "chat"
    base = {"id": ("chatcmpl-" if chat_ else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk" if chat_ else "text_completion",
            "created": int(time.time()), "model": body.get("model", opts.model), "system_fingerprint": "sim"}
    usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
    top = _logprob_request(endpoint, body)
    delay = 1.0 / opts.tokens_per_s if opts.tokens_per_s > 0 else 0.0

    async def send(choices: list[dict[str, Any]], usage: Any = None, top: Mapping[str, Any] | None = None) -> None:
        chunk = dict(base, choices=choices, **(top or {}))
        if usage_wanted:
            chunk["usage"] = usage
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    sent = 0
    try:
        if chat_:
            await send([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None} for i in range(len(gen.entries))],
                       top=extensions.top_fields(endpoint, body))
        completion_tokens = 0
        for i in range(len(gen.entries)):
            thinking = len(gen.thought(i))
            echo = None if chat_ else gen.echo(i)  # sent with the choice's first token (as vLLM's has_echoed)
            offset = len(echo or "")
            for pos, tok in enumerate(gen.thought(i) + gen.tokens(i)):
                if opts.cut_after is not None and sent >= opts.cut_after:
                    stats.cut += 1
                    if request.transport is not None:
                        request.transport.abort()  # an abrupt cut: no terminating chunk, no [DONE]
                    return resp
                if opts.stall_after is not None and sent >= opts.stall_after:
                    await asyncio.sleep(3600)
                if delay:
                    await asyncio.sleep(delay)
                if chat_ and pos < thinking:  # the chain of thought first, as vLLM's reasoning parser sends it
                    lp = _chat_logprobs([tok], pos, top) if top is not None else None  # vLLM: every token's
                    c: dict[str, Any] = {"index": i, "delta": {"reasoning": tok}, "logprobs": lp,
                                         "finish_reason": None}
                elif chat_:
                    lp = _chat_logprobs([tok], pos, top) if top is not None else None
                    pos -= thinking
                    call = gen.call(i)
                    delta = structured.tool_delta(call, tok, pos == 0) if call else {"content": tok}
                    c = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": None}
                else:  # text_offset continues from the choice's text so far (vLLM's next_text_offsets)
                    lp = _completion_logprobs([tok], pos, top, offset) if top is not None else None
                    if pos == 0 and echo is not None:
                        lp = _echoed_logprobs(echo, top, lp) if top is not None and lp is not None else None
                        c = {"index": i, "text": echo + tok, "logprobs": lp, "finish_reason": None}
                    else:
                        c = {"index": i, "text": tok, "logprobs": lp, "finish_reason": None}
                    offset += len(tok)
                await send([c])
                sent += 1
                completion_tokens += 1
            last = ({"index": i, "delta": {}, "logprobs": None, "finish_reason": gen.finish(i)} if chat_
                    else {"index": i, "text": "", "logprobs": None, "finish_reason": gen.finish(i)})
            last.update(extensions.choice_fields(body, thinking + len(gen.tokens(i)),
                                                 weight_version=opts.weight_version,
                                                 routed_experts=opts.routed_experts, streamed=True, index=i))
            await send([last])
        if usage_wanted:
            await send([], {"prompt_tokens": gen.prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": gen.prompt_tokens + completion_tokens})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except (asyncio.CancelledError, ConnectionError):
        _record_abort(stats, sent)
        raise
    stats.completed += 1
    return resp


def _vector(text: str, dim: int) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(4 * dim)
    vals = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw)]
    norm = sum(v * v for v in vals) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vals]


async def embeddings(request: web.Request) -> web.StreamResponse:
    pre = await _pre(request)
    if isinstance(pre, web.Response):
        return pre
    opts, stats, body = pre
    refused = checks.check_embeddings(body)
    if refused is not None:
        log.info("sim: embeddings refused: %s", refused.text)
        return refused
    inp = body.get("input")
    items = inp if isinstance(inp, list) and inp and not isinstance(inp[0], int) else [inp]
    dim = body.get("dimensions") or opts.embedding_dim
    data, tokens = [], 0
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else " ".join(map(str, item or []))
        tokens += count_tokens(text)
        vec = _vector(text, dim)
        emb: Any = (base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
                    if body.get("encoding_format") == "base64" else vec)
        data.append({"object": "embedding", "index": i, "embedding": emb})
    stats.completed += 1
    return web.json_response({"object": "list", "data": data, "model": body.get("model", opts.model),
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def models(request: web.Request) -> web.Response:
    opts = request.app[SIM_OPTIONS]
    return web.json_response({"object": "list", "data": [{
        "id": opts.model, "object": "model", "created": 0, "owned_by": "ipgate-sim", "description": LABEL}]})


async def stats_handler(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[SIM_STATS].as_json(), label=LABEL))


def build_sim_app(opts: SimOptions | None = None) -> web.Application:
    opts = opts or SimOptions()
    if opts.kgw_plugin:  # the sim has no logits: say so once, so that no one mistakes its text for KGW output
        log.warning("sim: kgw_plugin checks vllm_xargs as a plugin-loaded vLLM does, but its answers carry NO "
                    "watermark (no logits to bias): a gateway that verifies this backend serves them unwatermarked")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM_OPTIONS] = opts
    app[SIM_STATS] = SimStats()
    app[SIM_RNG] = random.Random(opts.seed)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    # imported here: gateway.sim.responses builds on this module's helpers (a top-level import would be circular)
    from gateway.sim.responses import create_response

    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/sim/stats", stats_handler)
    app.router.add_get("/health", models)
    return app
