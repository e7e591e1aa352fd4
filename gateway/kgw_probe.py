"""Is the KGW plugin really loaded? The liveness probe for backends marked ``watermark_capable``.

The gateway trusts such a backend to watermark in its sampler and gives its responses no post-hoc
watermark. An engine started without ``--logits-processors watermark.kgw.vllm_plugin:KgwLogitsProcessor`` (or
upgraded, or restarted with speculative decoding, which silently drops entry-point plugins) ignores the
``vllm_xargs`` directive and answers 200 with unwatermarked text, while the gateway records the client as a
KGW recipient: a silent loss of the watermark. So the health checker sends each such backend a tiny request
(``max_tokens`` 1) whose only directive is ``{"ipgate_kgw_probe": CHECK}``, which every loaded plugin refuses
in vLLM's API process, before anything is queued or generated (``watermark/kgw/directives.py``):

- **400 with the plugin's probe report** (the text starts with ``ipgate-kgw-plugin``, which the probe request
  never contains, so an engine that echoes the request in its error cannot pass): the plugin is loaded. The
  report must also show the gateway's spec and, for ``derive`` directives, the gateway's master secret;
  otherwise every watermarked request would be refused (502) and the backend is not trusted either.
- **2xx**: the engine generated a token for a directive the plugin must refuse: no plugin. **Any other 4xx**
  (a 400 without the report, 404, 422 from a strict schema): not the plugin. Both are verdicts: *failed*.
- **No verdict**: the backend did not answer (connection error, timeout), or answered 5xx / 429 / 408 or a
  credential refusal (401/403/407). That is a health problem, not a plugin verdict: it is not counted as a
  probe failure. The last verdict no longer holds either (a backend that went away may come back as another
  process, started without the plugin), so the backend is *unknown* until a probe gets an answer again.

Only *verified* backends watermark in the engine; *failed*, *unknown* and not-yet-probed ones get the lexical
scheme post hoc, so a response is never served unwatermarked because of this (see ``routing/pool.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal

import aiohttp

from gateway.config import BackendConfig, ConfigError
from gateway.tls import backend_tls
from watermark.kgw import directives
from watermark.kgw.params import KgwParams

log = logging.getLogger(__name__)

PROBE_PROMPT = "ipgate plugin probe"
_MAX_BODY = 64 * 1024  # a refusal is a few hundred bytes; never read an unbounded answer
_NO_VERDICT = frozenset({401, 403, 407, 408, 429})

Reason = Literal[
    "verified", "not_loaded", "not_the_plugin", "old_plugin", "spec_mismatch", "secret_absent",
    "secret_mismatch", "no_verdict",
]


@dataclass(frozen=True, slots=True)
class PluginVerdict:
    """``ok``: True = the plugin is loaded and agrees with the gateway; False = it is not (``reason`` says
    why); None = no verdict (the backend did not answer the probe usefully)."""

    ok: bool | None
    reason: Reason
    detail: str


def _message(raw: bytes) -> str:
    """The error message of an OpenAI/vLLM-shaped error body (``{"error": {"message"}}``, vLLM's older
    ``{"object": "error", "message"}``, FastAPI's ``{"detail"}``), else the body's text."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        err = body.get("error")
        for cand in (err.get("message") if isinstance(err, dict) else err, body.get("message"), body.get("detail")):
            if isinstance(cand, str):
                return cand
    return text


async def _read_bounded(content: aiohttp.StreamReader) -> bytes:
    """The answer's body up to ``_MAX_BODY`` bytes. ``StreamReader.read(n)`` returns what has arrived so far,
    not n bytes: a refusal that comes in more than one piece (chunked, a proxy flushing early) must be read to
    its end, or the plugin's report is cut off and the plugin judged missing."""
    chunks: list[bytes] = []
    size = 0
    while size < _MAX_BODY:
        chunk = await content.read(_MAX_BODY - size)
        if not chunk:  # end of the body
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class KgwPluginProbe:
    """Builds the probe for a backend and judges its answer; ``run`` does the round trip."""

    def __init__(self, params: KgwParams, master: bytes, mode: Literal["derive", "key"]) -> None:
        self.spec = directives.spec(params)
        self.mode = mode
        self._xargs = directives.probe_xargs(master)

    def request(self, b: BackendConfig, model: str) -> tuple[str, bytes]:
        """(URL, body) of the probe: the backend's own model name, one token at most, never streamed."""
        base = b.url + "/v1"  # the config drops a trailing /v1 from url
        body: dict[str, object] = {"model": b.upstream_model or model, "max_tokens": 1, "temperature": 0,
                                   "stream": False, "vllm_xargs": self._xargs}
        if b.kgw_probe_endpoint == "chat":
            body["messages"] = [{"role": "user", "content": PROBE_PROMPT}]
            return base + "/chat/completions", json.dumps(body).encode()
        body["prompt"] = PROBE_PROMPT
        return base + "/completions", json.dumps(body).encode()

    def judge(self, status: int, raw: bytes) -> PluginVerdict:
        if 200 <= status < 300:
            return PluginVerdict(False, "not_loaded", (
                f"the engine answered {status} to a directive the plugin refuses: the KGW plugin is not loaded "
                "(start vLLM with --logits-processors watermark.kgw.vllm_plugin:KgwLogitsProcessor)"))
        if not 400 <= status < 500 or status in _NO_VERDICT:
            return PluginVerdict(None, "no_verdict", f"the probe was answered {status}")
        msg = _message(raw)
        report = directives.read_probe_refusal(msg)
        # the backend's text goes to an ERROR line and to `ipgate check`'s terminal: control characters (an escape
        # sequence) are shown escaped, as the fingerprint checks do (fingerprint_client.printable)
        excerpt = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(msg.split())[:200])
        if report is None:
            if directives.REFUSAL_MARK in msg:
                return PluginVerdict(False, "old_plugin", (
                    f"the plugin refused the probe without a report (an older ipgate plugin?): {excerpt}"))
            return PluginVerdict(False, "not_the_plugin", (
                f"answered {status} without the plugin's refusal (the engine rejects vllm_xargs, or the probe "
                f"does not reach the plugin; check upstream_model and kgw_probe_endpoint): {excerpt}"))
        if report.spec != self.spec:
            return PluginVerdict(False, "spec_mismatch", (
                f"the plugin's green-list spec is {report.spec}, the gateway's {self.spec} "
                "(IPGATE_KGW_PARAMS on the engine host vs watermark.kgw_params): every directive would be refused"))
        if self.mode == "derive" and report.secret != "match":
            reason: Reason = "secret_absent" if report.secret == "absent" else "secret_mismatch"
            what = "has no master secret" if report.secret == "absent" else "holds another master secret"
            return PluginVerdict(False, reason, (
                f"the plugin {what} (IPGATE_WATERMARK_SECRET on the engine host): every derive-mode directive "
                "would be refused"))
        return PluginVerdict(True, "verified", f"plugin loaded (spec {report.spec}, secret {report.secret})")

    async def run(self, session: aiohttp.ClientSession, b: BackendConfig, model: str,
                  headers: dict[str, str], timeout_s: float) -> PluginVerdict:
        url, body = self.request(b, model)
        try:
            tls = backend_tls(b)
        except ConfigError as e:
            return PluginVerdict(None, "no_verdict", f"the probe was not sent: {e}")
        try:
            async with session.post(
                url, data=body, headers={**headers, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False, ssl=tls,
            ) as resp:
                return self.judge(resp.status, await _read_bounded(resp.content))
        except TimeoutError:
            return PluginVerdict(None, "no_verdict", f"the probe timed out after {timeout_s}s")
        except aiohttp.ClientError as e:
            return PluginVerdict(None, "no_verdict", f"the probe failed: {type(e).__name__}")
