"""vLLM 0.33's answer-side extension fields, as the simulated server writes them (chat and completions).

- ``return_prompt_text: true`` (chat): the rendered prompt in a top-level ``prompt_text`` (streamed: in the
  first chunk only). The sim has no tokenizer chat template; it renders a ChatML-like stand-in.
- ``return_weight_versions: true``: each choice's ``weight_versions``, the weight-version label that sampled
  each half-open range of its output tokens (streamed: on each choice's final chunk only);
  ``SimOptions.weight_version`` is the label.
- ``SimOptions.routed_experts`` (vLLM's ``--enable-return-routed-experts``, a server flag: every non-streamed
  choice, asked for or not): base64 of ``.npy`` bytes, shape (tokens - 1, layers, experts per token), uint8.

What the gateway must do with them is ``gateway/proxy/fields.py``'s business; the sim only answers as the
engine would, so that end-to-end tests see real bytes.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping
from typing import Any

_LAYERS, _TOP_K, _EXPERTS = 4, 2, 64  # a small MoE: 4 layers, 2 of 64 experts per token


def rendered_prompt(body: Mapping[str, Any]) -> str:
    """A ChatML-like rendering of the messages, the generation prompt opened."""
    out = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        text = c if isinstance(c, str) else "".join(
            p.get("text", "") for p in c if isinstance(p, dict)) if isinstance(c, list) else ""
        out.append(f"<|im_start|>{m.get('role')}\n{text}<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


def top_fields(endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level fields of a non-streamed answer, or of the first chunk of a stream."""
    if endpoint == "chat" and body.get("return_prompt_text") is True:
        return {"prompt_text": rendered_prompt(body)}
    return {}


def _npy_uint8(shape: tuple[int, int, int], seed: bytes) -> bytes:
    """A numpy ``.npy`` (format 1.0) file of uint8 expert ids, without numpy."""
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({shape[0]}, {shape[1]}, {shape[2]}), }}"
    pad = 64 - (10 + len(header) + 1) % 64
    header += " " * pad + "\n"
    size = shape[0] * shape[1] * shape[2]
    data = bytes(b % _EXPERTS for b in hashlib.shake_256(seed).digest(size))
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") + data


def choice_fields(body: Mapping[str, Any], tokens: int, *, weight_version: str, routed_experts: bool,
                  streamed: bool, index: int) -> dict[str, Any]:
    """Fields of one choice: its final chunk when ``streamed``, else the whole choice."""
    out: dict[str, Any] = {}
    if body.get("return_weight_versions") is True:
        out["weight_versions"] = [{"version": weight_version, "start": 0, "end": tokens}]
    if routed_experts and not streamed:
        shape = (max(tokens - 1, 0), _LAYERS, _TOP_K)
        out["routed_experts"] = base64.b64encode(_npy_uint8(shape, f"{index}:{tokens}".encode())).decode()
    return out
