"""Token accounting from upstream responses.

Streams: the gateway always asks the upstream for ``stream_options.include_usage`` so it can reconcile the
token reservation with real numbers. The final usage chunk is then handed to the client only if the client
asked for it, and always in the spec's shape (``choices: []``), even when an upstream attaches ``usage`` to
its last content chunk (a known defect of some servers and gateways). Non-streaming: ``usage`` from the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def update(self, usage: Mapping[str, Any]) -> None:
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(pt, int):
            self.prompt_tokens = pt
        if isinstance(ct, int):
            self.completion_tokens = ct

    @property
    def total(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def ask_upstream_for_usage(body: dict[str, Any]) -> None:
    """Set ``stream_options.include_usage`` on a (copied) streaming body."""
    so = body.get("stream_options")
    if isinstance(so, dict):
        if so.get("include_usage") is not True:
            body["stream_options"] = {**so, "include_usage": True}
    else:
        body["stream_options"] = {"include_usage": True}


def split_usage_chunk(
    chunk: dict[str, Any], client_wants: bool
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, Mapping[str, Any] | None]:
    """Separate the usage from one stream chunk.

    Returns ``(content_chunk, usage_chunk, usage)``: the chunk to emit without its usage (None when nothing
    remains to emit), the spec-compliant usage chunk to emit (None when the client did not ask), and the
    usage numbers (None when this chunk carries none).
    """
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return chunk, None, None
    choices = chunk.get("choices")
    content: dict[str, Any] | None = None
    if choices:  # usage piggy-backed on a content chunk: keep the content, move the usage out
        content = {k: v for k, v in chunk.items() if k != "usage"}
        if client_wants:
            content["usage"] = None
    usage_chunk = None
    if client_wants:
        usage_chunk = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        usage_chunk["choices"] = []
        usage_chunk["usage"] = usage
    return content, usage_chunk, usage


_DECODER = json.JSONDecoder()


def usage_from_body(raw: bytes) -> Usage | None:
    """The ``usage`` object of a JSON response body without decoding the whole body (it sits near the end
    of OpenAI-shaped bodies). None when it cannot be found this way; the caller then decodes the body."""
    i = raw.rfind(b'"usage"')
    if i < 0:
        return None
    j = raw.find(b"{", i + 7, i + 16)
    if j < 0:
        return None
    try:
        obj, _ = _DECODER.raw_decode(raw[j:].decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    u = Usage()
    u.update(obj)
    return u
