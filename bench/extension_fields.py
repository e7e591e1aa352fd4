"""Cost of the extension-field policy (gateway/proxy/fields.py) on the hot path, in the common case: a request
that names no refused field, answers that carry no withheld field. Side by side with the same work without
the policy where there is a "without".

    .venv/bin/python bench/extension_fields.py [--n 200000]

Prints a markdown table of nanoseconds per call (best of 5 rounds of ``timeit``: the least disturbed by the
other processes of a shared host).
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import parse_config
from gateway.proxy.fields import FieldPolicy
from gateway.proxy.relay import StreamRelay

BODY = {"model": "sim", "messages": [{"role": "system", "content": "You are helpful."},
                                     {"role": "user", "content": "Explain what a reverse proxy does, briefly."}],
        "max_tokens": 64, "temperature": 0.7, "stream": True, "stream_options": {"include_usage": True}}
HEADERS = CIMultiDictProxy(CIMultiDict({
    "Host": "gw:8080", "User-Agent": "AsyncOpenAI/Python 1.99.0", "Accept": "application/json",
    "Content-Type": "application/json", "Authorization": "Bearer x", "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.99.0", "Content-Length": "250"}))
CHUNK = (b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"sim",'
         b'"choices":[{"index":0,"delta":{"content":" proxy"},"logprobs":null,"finish_reason":null}]}')
SSE = b"data: " + CHUNK + b"\n\n"
_TEXT = "A reverse proxy sits in front of servers and forwards client requests to them. " * 12
# a non-streamed answer as vLLM 0.33 writes it: every extension key present, null (about 1.3 kB)
VLLM_BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "sim",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": _TEXT, "refusal": None,
                                         "annotations": None, "audio": None, "function_call": None,
                                         "tool_calls": [], "reasoning": None},
                 "logprobs": None, "finish_reason": "stop", "stop_reason": None, "token_ids": None,
                 "routed_experts": None, "weight_versions": None}],
    "service_tier": None, "system_fingerprint": None,
    "usage": {"prompt_tokens": 20, "total_tokens": 180, "completion_tokens": 160, "prompt_tokens_details": None},
    "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
    "ec_transfer_params": None, "metrics": None,
}
VLLM_RAW = json.dumps(VLLM_BODY).encode()


def _ns(fn: Callable[[], object], n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    n = ap.parse_args().n
    cfg = parse_config({"models": [{"name": "sim", "backends": [{"name": "b", "url": "http://x"}]}]}, env={}).proxy
    policy = FieldPolicy(cfg.refused_fields, cfg.refused_headers, cfg.withheld_response_fields)
    body = dict(VLLM_BODY)
    rows = [
        ("request check (body + headers), no refused field", _ns(lambda: policy.check(BODY, HEADERS), n)),
        ("  of which the body", _ns(lambda: policy.check(BODY), n)),
        ("prefilter, one stream chunk (195 B)", _ns(lambda: policy.may_hold(CHUNK), n)),
        (f"prefilter, vLLM non-streamed body with null extension keys ({len(VLLM_RAW)} B)",
         _ns(lambda: policy.may_hold(VLLM_RAW), n // 10)),
        ("scrub, decoded vLLM body (null keys: nothing removed)", _ns(lambda: policy.scrub(body), n)),
        ("json.loads of that body (for scale)", _ns(lambda: json.loads(VLLM_RAW), n // 10)),
    ]
    relays = {}
    for label, fields in (("without the policy", None), ("with the policy", policy)):
        relay = StreamRelay("chat", False, None, details=False, fields=fields)
        relays[label] = _ns(lambda r=relay: r.feed(SSE), n)  # type: ignore[misc]
    rows += [(f"stream relay fast path, one chunk, {k}", v) for k, v in relays.items()]
    print("| step | ns per call |\n|---|---:|")
    for label, ns in rows:
        print(f"| {label} | {ns:,.0f} |")


if __name__ == "__main__":
    main()
