"""The gateway's side of watermarking (``gateway.hooks.Watermarking``): which scheme, which key, which text.

- Scheme per response: ``ModelConfig.watermark_scheme`` if set, else ``config.watermark.scheme``. A backend
  marked ``watermark_capable`` whose KGW plugin the probe verified (``gateway/kgw_probe.py``; the pipeline
  passes ``BackendLease.engine_watermark`` as ``backend_watermark_capable``) watermarks in its sampler (KGW,
  through ``vllm_xargs``) and gets no post-hoc rewrite; any other backend gets the lexical scheme post hoc --
  also when the model asks for "kgw" but the chosen backend cannot do it (logged once per model), and while a
  capable backend's plugin is not verified, because an unwatermarked response is the worse failure.
- Strength per tier: ``TierPolicyConfig.watermark_strength`` ("strong" for suspicious tiers) enables the
  level-2 lexical groups and the larger KGW bias ``kgw_strong_delta``.
- Never post hoc: ``response_format`` JSON (json_object / json_schema) and requests that force a tool call.
  Tool-call arguments are never touched in any case (the relay feeds only message text to embedders).
  With ``echo: true`` (legacy completions) the echoed prompt passes through verbatim (``_PromptEcho``).
- Recipients: each client that received watermarked output is recorded once per process and key version in
  the store (``add_recipient``), so ``ipgate verify`` can attribute among all of them. "Once per process" is
  remembered for the last ``RECORDED_MAX`` clients recorded (oldest first out): a client pushed out is written
  again on its next watermarked answer (an idempotent store write, and one more line in ``recipients_file``,
  whose readers dedupe). Unbounded, that memory grew with every client id the process ever served (~100 B
  each, for months). It is also forgotten every half ``recipient_ttl_s``, so that the store's record of a
  client the process keeps serving is renewed before it expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, GatewayConfig, WatermarkConfig
from gateway.hooks import StreamEmbedder
from gateway.principal import Principal
from gateway.store.base import StateStore
from watermark.keys import KeyMaterialError, KeyRing, parse_master_secret
from watermark.kgw.directives import vllm_xargs
from watermark.kgw.params import KgwParams
from watermark.lexical import LexicalScheme
from watermark.verify import client_line

if TYPE_CHECKING:
    from gateway.kgw_probe import KgwPluginProbe

log = logging.getLogger(__name__)

#: Clients remembered as recorded recipients (see the module docstring); ~100 B each beyond the client id.
RECORDED_MAX = 100_000


def decode_secret_file(data: bytes, what: str) -> str:
    """A secret file's text: UTF-8, a byte-order mark dropped (``ipgate verify`` reads it the same way, so
    both derive the same keys). Never echoes the bytes on error: they are the secret."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not UTF-8 text (store a binary secret as 'hex:...')") from None


def load_master_secret(cfg: WatermarkConfig, environ: Mapping[str, str] | None = None) -> bytes:
    """The master secret from ``cfg.secret_file`` or the environment variable ``cfg.secret_env``."""
    env = os.environ if environ is None else environ
    try:
        if cfg.secret_file:
            try:
                data = Path(cfg.secret_file).read_bytes()
            except OSError as e:
                raise ConfigError(f"watermark.secret_file {cfg.secret_file}: cannot read: {e.strerror}") from e
            return parse_master_secret(decode_secret_file(data, f"watermark.secret_file {cfg.secret_file}"))
        value = env.get(cfg.secret_env)
        if not value:
            raise ConfigError(
                f"watermark: set the master secret in ${cfg.secret_env} or watermark.secret_file "
                "(or disable watermarking with watermark.enabled: false)"
            )
        return parse_master_secret(value)
    except KeyMaterialError as e:
        raise ConfigError(f"watermark: {e}") from e


def key_ring(cfg: WatermarkConfig, master: bytes) -> KeyRing:
    # The config takes any integers in retained_versions (and key_version has no upper bound): a version the
    # key derivation refuses is a config error naming the field, not an internal error at start-up.
    for field, versions in (("key_version", [cfg.key_version]), ("retained_versions", cfg.retained_versions)):
        bad = next((v for v in versions if not 1 <= v < 2**32), None)
        if bad is not None:
            raise ConfigError(f"watermark.{field}: key versions must be in [1, 2**32), got {bad}")
    return KeyRing(master, cfg.key_version, tuple(cfg.retained_versions))


# Request fields that constrain the output to a format a post-hoc rewrite could break (JSON, a grammar, a
# regex, one of fixed choices): OpenAI's, vLLM's (guided_* before 0.10.2, structured_outputs since), SGLang's
# (regex, ebnf, json_schema) and llama.cpp's (grammar, json_schema). Their answers are not watermarked post
# hoc — so they are also a way around the lexical watermark.
CONSTRAINT_FIELDS = ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                     "regex", "ebnf", "json_schema", "grammar")


def unwatermarkable(body: Mapping[str, Any]) -> str | None:
    """The request field that keeps its answer from a post-hoc watermark, or None: structured output (JSON
    mode, a schema, a grammar, a regex, fixed choices) or a forced tool call, whose text must stay exactly as
    the format demands (tool-call arguments are never touched anyway), or audio output."""
    rf = body.get("response_format")
    if isinstance(rf, Mapping) and rf.get("type") not in (None, "text"):
        return "response_format"
    for f in CONSTRAINT_FIELDS:
        if body.get(f) is not None:
            return f
    if forces_tool_call(body.get("tool_choice")):
        return "tool_choice"
    if isinstance(body.get("function_call"), Mapping):
        return "function_call"
    # Audio output (OpenAI's audio models): the answer is speech plus its transcript in message.audio, neither
    # of which a post-hoc rewrite reaches; it was served unwatermarked and uncounted.
    modalities = body.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        return "modalities"
    return None


def responses_unwatermarkable(body: Mapping[str, Any]) -> str | None:
    """``unwatermarkable`` for a Responses API body: its own constraint fields (``text.format``, vLLM's
    ``structured_outputs``, a forced ``tool_choice``), not the chat ones: a Responses backend ignores a stray
    ``response_format``, so honouring it would let a client turn the watermark off for free text."""
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") not in (None, "text"):
        return "text.format"
    if body.get("structured_outputs") is not None:
        return "structured_outputs"
    if forces_tool_call(body.get("tool_choice")):
        return "tool_choice"
    return None


def forces_tool_call(tc: object) -> bool:
    """Whether a ``tool_choice`` makes the answer a tool call: ``"required"``, a named tool, or an
    ``allowed_tools`` set in mode ``"required"``. An ``allowed_tools`` set in mode ``"auto"`` (chat: its mode
    in ``allowed_tools``; Responses: beside ``type``) lets the model "pick from among the allowed tools and
    generate a message": free text, which gets the watermark like any other (skipping it let any client turn the
    watermark off by naming one tool). Watermarking a forced call's answer is harmless (its text is empty),
    so a mode the gateway cannot read counts as not forcing."""
    if tc == "required":
        return True
    if not isinstance(tc, Mapping):
        return False
    if tc.get("type") != "allowed_tools":
        return True
    spec = tc.get("allowed_tools")
    modes = [m for m in (spec.get("mode") if isinstance(spec, Mapping) else None, tc.get("mode")) if m is not None]
    return bool(modes) and all(m == "required" for m in modes)


def tool_call_field(body: Mapping[str, Any]) -> str | None:
    """The request field that lets the model answer in tool-call arguments, or None. Those are relayed as the
    backend wrote them (never watermarked post hoc, so the client's code can parse them), so a client that
    declares a tool and asks for "the answer as its argument" gets free text without the watermark whenever the
    model may call a tool: ``tool_choice`` ``auto`` (the default when tools are given) as much as a forced call.
    Not a reason to skip the watermark of the text answer: a reason to refuse (``refuse_unwatermarkable``)."""
    for field, choice in (("tools", "tool_choice"), ("functions", "function_call")):
        declared = body.get(field)
        if isinstance(declared, list) and declared and body.get(choice) != "none":
            return field
    return None


class GatewayWatermarking:
    def __init__(self, cfg: GatewayConfig, ring: KeyRing, kgw_params: KgwParams | None = None,
                 recorded_max: int = RECORDED_MAX, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg.watermark
        self._ring = ring
        self._schemes = {m.name: (m.watermark_scheme or cfg.watermark.scheme) for m in cfg.models}
        self._strength = {t.name: t.watermark_strength for t in cfg.policy.tiers}
        self._lexical = LexicalScheme(ring.master, markdown=cfg.watermark.lexical_markdown)
        self._kgw = kgw_params or cfg.watermark.kgw()
        # client -> key version recorded; insertion order = eviction order (no reordering on the request path)
        self._recorded: OrderedDict[str, int] = OrderedDict()
        self._recording: set[str] = set()  # clients whose record is being written now
        self._recorded_max = max(1, recorded_max)
        self._store_epoch = 0  # the store's ``recoveries`` when ``_recorded`` was last trusted
        # A store record lives recipient_ttl_s from its last write: what was recorded is forgotten every half
        # TTL, so a client this process keeps serving is written again before its record expires.
        self._clock = clock
        self._recorded_since = clock()
        self._refresh_s = cfg.watermark.recipient_ttl_s / 2
        self._fallback_logged: set[str] = set()
        self._file_failing = False  # recipients_file could not be appended to (logged once per change)

    @classmethod
    def from_config(cls, cfg: GatewayConfig, *, metrics: object = None,
                    environ: Mapping[str, str] | None = None) -> GatewayWatermarking:
        master = load_master_secret(cfg.watermark, environ)
        return cls(cfg, key_ring(cfg.watermark, master))

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def plugin_probe(self) -> KgwPluginProbe:
        """The KGW plugin liveness probe for this gateway's spec, master secret and directive mode."""
        from gateway.kgw_probe import KgwPluginProbe

        return KgwPluginProbe(self._kgw, self._ring.master, self._cfg.kgw_directive_mode)

    def scheme_for(self, model: str) -> str:
        return self._schemes.get(model, self._cfg.scheme)

    def embedder_for(
        self, principal: Principal, model: str, tier_name: str, body: Mapping[str, Any]
    ) -> StreamEmbedder | None:
        scheme = self.scheme_for(model)
        if not self._cfg.enabled or scheme == "none" or unwatermarkable(body) is not None:
            return None
        if scheme == "kgw" and model not in self._fallback_logged:
            self._fallback_logged.add(model)
            log.warning("model %s: scheme kgw but the backend does not watermark in its engine (not "
                        "watermark_capable, or its KGW plugin is not verified); using lexical post hoc", model)
        strength = self._strength.get(tier_name, "normal")
        emb = self._lexical.embedder(self._ring.key(principal.client_id), strength)
        echoed = _echoed_prompt(body)
        return emb if echoed is None else _PromptEcho(emb, echoed)

    def upstream_directives(
        self, principal: Principal, model: str, backend_watermark_capable: bool, tier_name: str
    ) -> dict[str, Any] | None:
        # A capable backend gets no post-hoc rewrite, so it must watermark in the engine whatever the
        # configured scheme is (unless watermarking is off for this model).
        if not self.in_engine(model, backend_watermark_capable):
            return None
        strong = self._strength.get(tier_name, "normal") == "strong"
        delta = self._cfg.kgw_strong_delta if strong else None
        xargs = vllm_xargs(self._ring.key(principal.client_id), self._kgw, delta=delta,
                           mode=self._cfg.kgw_directive_mode)
        return {"vllm_xargs": xargs}

    def in_engine(self, model: str, backend_watermark_capable: bool) -> bool:
        return backend_watermark_capable and self.watermarks(model)

    def watermarks(self, model: str) -> bool:
        return self._cfg.enabled and self.scheme_for(model) != "none"

    async def record_recipient(self, store: StateStore, principal: Principal) -> None:
        client, version = principal.client_id, self._ring.current
        # After a store outage the recipients written before it may be gone (a Redis restarted without
        # persistence): forget what was recorded, so that each client is written once more. Otherwise a
        # long-running gateway never records them again and verification without a client list finds nobody.
        # The same once every half TTL: a record written once per process expired while the process still
        # served its client (after recipient_ttl_s: 400 days by default, days where an operator shortens it),
        # and verification without a client list no longer found a client served the day before.
        epoch = getattr(store, "recoveries", 0)  # ResilientStore only; the memory store loses nothing
        now = self._clock()
        if epoch != self._store_epoch or now - self._recorded_since >= self._refresh_s:
            self._store_epoch = epoch
            self._recorded_since = now
            self._recorded.clear()
        if self._recorded.get(client) == version or client in self._recording:
            return
        # Marked while the writes are on their way: a client's concurrent first answers would otherwise each
        # write (a duplicate line in recipients_file per answer in flight)
        self._recording.add(client)
        try:
            await store.add_recipient(client, version, self._cfg.recipient_ttl_s)
            if self._cfg.recipients_file and not await self._append_recipient(client):
                return  # retried with the client's next answer
        finally:
            self._recording.discard(client)
        # only after the writes succeeded: a failed write is retried next time
        recorded = self._recorded
        recorded[client] = version
        if len(recorded) > self._recorded_max:
            recorded.popitem(last=False)


    async def _append_recipient(self, client: str) -> bool:
        """Append ``client`` to ``recipients_file``; False when that failed. A file that cannot be written (a
        missing directory, a full disk, permissions) is logged once per change of state, not with a traceback
        per answer: every watermarked answer retries it, and the caller logged each failure."""
        path = self._cfg.recipients_file
        assert path is not None
        try:
            await asyncio.to_thread(_append_line, path, client)
        except OSError as e:
            if not self._file_failing:
                self._file_failing = True
                log.error("watermark.recipients_file %s: cannot append (%s); recipients are still recorded in "
                          "the store, and each one is appended once the file can be written", path,
                          e.strerror or e)
            return False
        if self._file_failing:
            self._file_failing = False
            log.warning("watermark.recipients_file %s: appending again", path)
        return True


def _echoed_prompt(body: Mapping[str, Any]) -> str | None:
    """The prompt a legacy ``/v1/completions`` request with ``echo: true`` gets back at the start of its text
    (a string, or a list of one string); None otherwise. With several prompts, or token ids, the choice's
    prompt is not known here and the whole text is watermarked (the echo may then differ in a few words)."""
    if body.get("echo") is not True:
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) and prompt else None


class _PromptEcho:
    """``echo: true``: the client's own prompt comes back verbatim and only the completion after it is
    watermarked. Text passes through while it spells the prompt, then the rest of the word it stopped in (a
    substitution must never start inside a word). Only while it spells the prompt: a backend that ignores
    ``echo`` (many do) or echoes less of it (``truncate_prompt_tokens``) starts with the completion, and passing
    ``len(prompt)`` characters through blindly served that much of it unwatermarked -- any completion, with a
    long enough prompt. The completion's embedder starts fresh there -- its first slot's context differs from
    what the detector reads, which costs at most one choice and never creates false evidence."""

    __slots__ = ("_finish_word", "_inner", "_matched", "_prompt")

    def __init__(self, inner: StreamEmbedder, prompt: str) -> None:
        self._inner = inner
        self._prompt: str | None = prompt  # None once the echo is over
        self._matched = 0  # characters of the prompt the text has spelled so far
        self._finish_word = False

    def feed(self, text: str) -> str:
        head = ""
        if self._prompt is not None:
            rest = self._prompt[self._matched:]
            n = min(len(text), len(rest))
            k = n if text.startswith(rest[:n]) else next(i for i in range(n) if text[i] != rest[i])
            head, text = text[:k], text[k:]
            self._matched += k
            if k == n and self._matched < len(self._prompt):
                return head  # the whole piece spells the prompt, which goes on
            # the echo is over: all of the prompt came back, or the text stopped spelling it
            self._finish_word = self._matched > 0 and not self._prompt[self._matched - 1].isspace()
            self._prompt = None
            if not text:
                return head
        if self._finish_word:
            end = next((i for i, ch in enumerate(text) if ch.isspace()), len(text))
            head, text = head + text[:end], text[end:]
            if not text:
                return head
            self._finish_word = False
        return head + self._inner.feed(text)

    def finish(self) -> str:
        return self._inner.finish()


def _append_line(path: str, client_id: str) -> None:
    # One short append per client per process; several replicas may append the same id (readers dedupe).
    # An id that would not read back as itself (line breaks, surrounding spaces, a leading '#') is written
    # JSON-quoted: the file must attribute to the very id whose key marked the text.
    # Created 0600 like the alert file: it lists every account that was served watermarked text (an existing
    # file keeps the mode its operator gave it)
    # the directory is created on the first write, as the alert JSONL sink does (`ipgate check` says so too)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "a", encoding="utf-8") as f:
        f.write(client_line(client_id) + "\n")
