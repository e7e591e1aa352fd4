"""The sim's embeddings endpoint: a unit vector per input from a hash of its text (float list or base64)."""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
from typing import Any

from aiohttp import web

from gateway.sim import checks
from gateway.sim.corpus import count_tokens
from gateway.sim.intake import intake

log = logging.getLogger(__name__)


def _vector(text: str, dim: int) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(4 * dim)
    vals = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw)]
    norm = sum(v * v for v in vals) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vals]


async def embeddings(request: web.Request) -> web.StreamResponse:
    pre = await intake(request)
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
