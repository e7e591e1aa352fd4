"""Chat answers under a constraint, as vLLM 0.33 produces them (``serving_chat.py``): structured output and
forced tool calls, so that ``client.chat.completions.parse(...)`` and ``tool_choice`` can be exercised end to end.

- ``response_format`` ``json_schema``: the content is a JSON document that fits the schema, filled
  deterministically (as the Responses sim fills function arguments); ``json_object``: ``{"answer": <text>}``.
- ``tools`` + ``tool_choice`` ``"required"`` or a named function: the choice is one tool call whose
  ``arguments`` fill the tool's parameter schema. As vLLM's full generator writes it: ``content: ""`` beside
  ``tool_calls``; finish reason ``tool_calls`` for ``"required"`` and ``stop`` for a named function
  (``resolve_finish_reason`` in vLLM 0.33's ``serve/utils/tool_calls_utils.py``; ``length`` when cut); streamed,
  the first delta carries the call's id, type and name, the following ones pieces of ``arguments``.
- ``tool_choice`` ``"auto"``/``"none"`` and no constraint: the plain corpus answer (the sim has no tool parser).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.sim.corpus import CorpusEntry, tokenize
from gateway.sim.responses import _arguments


def _tool(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function a request forces (its ``function`` object), or None."""
    choice, tools = body.get("tool_choice"), body.get("tools")
    if choice == "required":
        name = None
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
    else:
        return None
    for t in tools if isinstance(tools, list) else []:
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if isinstance(fn, dict) and (name is None or fn.get("name") == name):
            return fn
    return None


def constrain(body: Mapping[str, Any], entry: CorpusEntry) -> tuple[CorpusEntry, str | None]:
    """The answer a constrained decoder gives instead of ``entry``, and the forced tool's name (or None)."""
    words = list(entry.tokens)
    tool = _tool(body)
    if tool is not None:
        doc: Any = _arguments(tool.get("parameters"), words)
    else:
        rf = body.get("response_format")
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_schema":
            spec = rf.get("json_schema") if isinstance(rf, dict) else None
            doc = _arguments(spec.get("schema") if isinstance(spec, dict) else None, words)
        elif kind == "json_object":
            doc = {"answer": entry.text}
        else:
            return entry, None
    text = json.dumps(doc, ensure_ascii=False)
    return CorpusEntry(entry.id, entry.source, text, tuple(tokenize(text))), (
        str(tool.get("name")) if tool is not None else None)


def tool_message(name: str, arguments: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [{
        "id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
        "function": {"name": name, "arguments": arguments}}]}


def tool_delta(name: str, piece: str, first: bool) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
    if first:
        call = {"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function", "index": 0,
                "function": {"name": name, "arguments": piece}}
    return {"tool_calls": [call]}
