"""Admin request bodies: read up to a bound, decoded as JSON, every failure an OpenAI-shaped error naming it.

The admin app keeps aiohttp's default 1 MiB ``client_max_size``, whose refusal is aiohttp's own bare
``413 Request Entity Too Large`` with no limit and no field. A route reads its body here instead, with the
bound that fits it: the answer names the limit and ``param: body``, and reading stops at the bound (checked on
the declared length first, then while reading).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.errors import InvalidRequest, PayloadTooLarge


async def read_body(request: web.Request, max_bytes: int, hint: str = "") -> bytes:
    """The body, at most ``max_bytes``; ``PayloadTooLarge`` naming the limit (and ``hint``) beyond it."""
    too_large = PayloadTooLarge(f"the request body is over {max_bytes} bytes{hint}", param="body")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    buf = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        buf += chunk
        if len(buf) > max_bytes:
            raise too_large
    return bytes(buf)


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON (empty: null); ``InvalidRequest`` naming the body when it is not JSON or nests too deeply."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON", param="body") from None
    except RecursionError:  # nesting deeper than the parser's stack: bad input, not a server error
        raise InvalidRequest("the request body is nested too deeply", param="body") from None
