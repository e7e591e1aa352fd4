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

This module builds the app and answers ``/v1/models`` and ``/sim/stats``; the rest is one module each:
``state`` (``SimOptions``, ``SimStats``, the app keys), ``intake`` (the start every generating endpoint shares,
and the record of an abandoned generation), ``kgw_plugin``, ``plan`` (what each choice will say), ``generate``
(chat and legacy completions, JSON or SSE), ``logprobs``, ``embeddings``, ``responses``.
"""

from __future__ import annotations

import logging
import random

from aiohttp import web

from gateway.sim import LABEL
from gateway.sim.embeddings import embeddings
from gateway.sim.generate import chat, completions
from gateway.sim.responses import create_response
from gateway.sim.state import SIM_OPTIONS, SIM_RNG, SIM_STATS, SimOptions, SimStats

log = logging.getLogger(__name__)

# The options, counters and app keys (gateway/sim/state.py) stay importable from here, with the handlers.
__all__ = [
    "SIM_OPTIONS", "SIM_RNG", "SIM_STATS", "SimOptions", "SimStats", "build_sim_app", "chat", "completions",
    "create_response", "embeddings", "models", "stats_handler",
]


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
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/sim/stats", stats_handler)
    app.router.add_get("/health", models)
    return app
