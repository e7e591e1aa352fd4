"""The per-request watermark directive that travels gateway -> vLLM in ``vllm_xargs`` (no torch, no vllm).

Both sides use this module, so the field names and their validation exist once. The gateway calls
``vllm_xargs(...)`` for a backend marked watermark-capable (after stripping any client-supplied
``vllm_xargs``, ``logit_bias`` and ``seed``); vLLM copies the object to ``SamplingParams.extra_args``; the
plugin calls ``parse(extra_args)``.

Two ways to name the key (choose per deployment with ``mode``):

- ``"derive"`` (default): send the client id and key version; the vLLM host derives the client key from the
  master secret (``IPGATE_WATERMARK_SECRET`` or ``IPGATE_WATERMARK_SECRET_FILE`` in its environment). No key
  material in request bodies or in vLLM's request logs; the price is the secret on every model host.
- ``"key"``: send the 128-bit KGW subkeys of this client (hex). The model host holds no secret at all; a
  leaked request log reveals the KGW key of that one client and version (not its lexical key, not the
  master, not other clients' keys).

In "derive" mode the directive is authenticated: ``ipgate_kgw_tag`` is an HMAC, under the client key the
gateway derived, of the spec and δ. The model host derives the same key from the master secret and refuses a
directive whose tag does not match, so whoever reaches vLLM without the gateway cannot name another client
(and get text attributed to it) or weaken a client's δ. (A tag copied out of a request log can be replayed
for that client, version and δ only; "key" mode needs no tag: its subkeys are the secret.)

``ipgate_kgw_spec`` carries γ, h and the seeding so a vLLM whose plugin is configured differently from the
gateway rejects the request (HTTP 400) instead of writing a watermark that ``ipgate verify`` cannot find.

**Liveness probe.** An engine started without the plugin ignores ``vllm_xargs`` and answers 200 with
unwatermarked text, so the gateway asks: a request whose ``vllm_xargs`` is ``{"ipgate_kgw_probe": CHECK}``
(``probe_xargs``) is refused by every plugin at validation, before anything is queued or generated, with a
message (``probe_refusal``) that starts with ``REFUSAL_MARK`` and reports the plugin's spec and whether its
master secret is the gateway's (``CHECK`` is an HMAC of a constant under the master secret; it reveals
nothing about the secret, and answers nothing a tagged directive would not). ``REFUSAL_MARK`` never appears in
a request, so an engine that echoes the request in its error (a strict schema refusing ``vllm_xargs``)
cannot be mistaken for the plugin. Every other refusal of the plugin carries the mark too.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from watermark.keys import ClientKey, client_key
from watermark.kgw import prf
from watermark.kgw.params import SEEDINGS, KgwParams

F_CLIENT = "ipgate_kgw_client"
F_VERSION = "ipgate_kgw_version"
F_KEY = "ipgate_kgw_key"
F_DELTA = "ipgate_kgw_delta"
F_SPEC = "ipgate_kgw_spec"
F_TAG = "ipgate_kgw_tag"
F_PROBE = "ipgate_kgw_probe"
FIELDS = (F_CLIENT, F_VERSION, F_KEY, F_DELTA, F_SPEC, F_TAG)
_TAG_DOMAIN = b"ipgate/kgw/directive/v1"
_PROBE_DOMAIN = b"ipgate/kgw/probe/v1"
# Starts every refusal of the plugin (vLLM puts the ValueError's text in its 400 body). Hyphens, not the
# underscores of the field names: the gateway's requests never contain it.
REFUSAL_MARK = "ipgate-kgw-plugin"
SecretCheck = Literal["match", "differs", "absent"]
_PROBE_RE = re.compile(
    re.escape(REFUSAL_MARK) + r" probe: refused by design \(the plugin is loaded\); "
    r"spec=(?P<spec>[A-Za-z0-9.+-]+) secret=(?P<secret>match|differs|absent)"
)
_PREFIX = "ipgate_kgw_"

_SPEC_RE = re.compile(r"^g(?P<g>[0-9.e-]+)-h(?P<h>[0-9]+)-(?P<s>[a-z]+)$")


def spec(params: KgwParams) -> str:
    """``g0.25-h4-selfhash``: the part of the params that detection depends on."""
    return f"g{params.gamma!r}-h{params.context_width}-{params.seeding}"


def parse_spec(text: str) -> KgwParams:
    m = _SPEC_RE.match(text)
    if m is None or m["s"] not in SEEDINGS:
        raise ValueError(f"{F_SPEC}: expected e.g. 'g0.25-h4-selfhash', got {text!r}")
    try:
        return KgwParams(gamma=float(m["g"]), context_width=int(m["h"]), seeding=m["s"])
    except ValueError as e:
        raise ValueError(f"{F_SPEC}: {e}") from e


def vllm_xargs(
    key: ClientKey, params: KgwParams, *, delta: float | None = None, mode: Literal["derive", "key"] = "derive"
) -> dict[str, str | int | float]:
    """The ``vllm_xargs`` object for one request (``delta`` overrides ``params.delta``, e.g. per tier)."""
    d = params.delta if delta is None else delta
    KgwParams(params.gamma, d, params.context_width, params.seeding)  # validates delta
    out: dict[str, str | int | float] = {F_SPEC: spec(params), F_DELTA: float(d)}
    if mode == "derive":
        out[F_CLIENT] = key.client_id
        out[F_VERSION] = key.version
        out[F_TAG] = tag(key.key, spec(params), float(d))
    elif mode == "key":
        out[F_KEY] = b"".join(k.to_bytes(4, "big") for k in prf.subkeys(key.key)).hex()
    else:
        raise ValueError(f"kgw directive mode must be 'derive' or 'key', got {mode!r}")
    return out


def tag(client_key: bytes, spec_text: str, delta: float) -> str:
    """The "derive"-mode authenticator: HMAC-SHA256 (truncated to 128 bits) of the spec and δ under the
    client key, so the client id and key version are bound through the key itself."""
    msg = b"\0".join((_TAG_DOMAIN, spec_text.encode(), repr(float(delta)).encode()))
    return hmac.new(client_key, msg, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Directive:
    """A validated request directive: what the plugin needs for one row."""

    subkeys: tuple[int, int, int, int] | None  # set in "key" mode
    client_id: str | None  # set in "derive" mode
    version: int | None
    delta: float
    spec: str = ""  # as sent (derive mode: part of the tagged message)
    tag: str | None = None  # derive mode

    def resolve(self, master: bytes | None) -> tuple[int, int, int, int]:
        """The PRF subkeys for this request (derive mode needs the master secret and checks the tag)."""
        if self.subkeys is not None:
            return self.subkeys
        if master is None:
            raise ValueError(f"{F_CLIENT} given but the model server has no IPGATE_WATERMARK_SECRET")
        assert self.client_id is not None and self.version is not None and self.tag is not None  # parse()
        key = client_key(master, self.version, self.client_id)
        if not hmac.compare_digest(tag(key, self.spec, self.delta), self.tag):
            raise ValueError(f"{F_TAG} does not authenticate this directive (not from a gateway with this "
                             "server's master secret, or altered)")
        return prf.subkeys(key)


def parse(extra_args: Mapping[str, object] | None, params: KgwParams) -> Directive | None:
    """Validate the directive in ``SamplingParams.extra_args``; None when the request carries none.

    Raises ``ValueError`` (vLLM answers 400) naming the field that is wrong.
    """
    if not extra_args:
        return None
    ours = [k for k in extra_args if isinstance(k, str) and k.startswith(_PREFIX)]
    if not ours:
        return None
    if F_PROBE in extra_args:  # never a directive (``probe_refusal`` answers it with the plugin's report)
        raise ValueError(f"{F_PROBE} is a liveness probe, refused by design")
    unknown = sorted(k for k in ours if k not in FIELDS)
    if unknown:
        # A field this plugin does not know means a gateway/plugin version mismatch (or a forged request):
        # refuse it rather than guess, so it is a 400 and never a silently unwatermarked answer.
        raise ValueError(f"unknown watermark directive field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    raw_spec = extra_args.get(F_SPEC)
    if not isinstance(raw_spec, str):
        raise ValueError(f"{F_SPEC} is required (string like 'g0.25-h4-selfhash')")
    want = parse_spec(raw_spec)
    if (want.gamma, want.context_width, want.seeding) != (params.gamma, params.context_width, params.seeding):
        raise ValueError(f"{F_SPEC} {raw_spec!r} does not match this server's kgw params {spec(params)!r}")
    raw_delta = extra_args.get(F_DELTA, params.delta)
    if isinstance(raw_delta, bool) or not isinstance(raw_delta, int | float):
        raise ValueError(f"{F_DELTA} must be a number")
    # range first: a JSON integer may be arbitrarily large, and float()/isfinite() of one raises
    # OverflowError, which vLLM would not turn into a 400 (and which would stop the engine loop)
    if not 0 <= raw_delta <= 50 or not math.isfinite(raw_delta):
        raise ValueError(f"{F_DELTA} must be in [0, 50], got {raw_delta!r:.40}")
    delta = float(raw_delta)
    if not 0.0 <= delta <= 50.0:
        raise ValueError(f"{F_DELTA} must be in [0, 50], got {delta}")
    raw_key, raw_client = extra_args.get(F_KEY), extra_args.get(F_CLIENT)
    if (raw_key is None) == (raw_client is None):
        raise ValueError(f"exactly one of {F_KEY} and {F_CLIENT} must be given")
    raw_tag = extra_args.get(F_TAG)
    if raw_key is not None:
        if raw_tag is not None:
            raise ValueError(f"{F_TAG} belongs to {F_CLIENT} directives, not to {F_KEY}")
        if not isinstance(raw_key, str) or not re.fullmatch(r"[0-9a-f]{32}", raw_key):
            raise ValueError(f"{F_KEY} must be 32 lowercase hex digits")
        b = bytes.fromhex(raw_key)
        sub = (
            int.from_bytes(b[0:4], "big"),
            int.from_bytes(b[4:8], "big"),
            int.from_bytes(b[8:12], "big"),
            int.from_bytes(b[12:16], "big"),
        )
        return Directive(sub, None, None, delta)
    if not isinstance(raw_client, str) or not raw_client:
        raise ValueError(f"{F_CLIENT} must be a non-empty string")
    version = extra_args.get(F_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**32:
        raise ValueError(f"{F_VERSION} must be an integer in [1, 2**32)")
    if not isinstance(raw_tag, str) or not re.fullmatch(r"[0-9a-f]{32}", raw_tag):
        raise ValueError(f"{F_TAG} is required with {F_CLIENT} (32 lowercase hex digits, set by the gateway)")
    return Directive(None, raw_client, version, delta, raw_spec, raw_tag)


# --- liveness probe (the gateway asks whether the plugin is loaded; see the module docstring) ---------------


def probe_check(master: bytes) -> str:
    """The probe's value: HMAC-SHA256 (128 bits) of a constant under the master secret, so the plugin can
    say whether it holds the same secret without anything secret travelling."""
    # Eight zero bytes first: every other HMAC under the master secret is a client key (message = a 4-byte
    # version >= 1, then the client id) or a scheme key (4 zero bytes, then a version >= 1), so this message is
    # neither. Without them "ipgate/kgw/probe/v1" *was* a client-key message (version b"ipga", client
    # "te/kgw/probe/v1"), and the check value, in every probe and so in engine request logs, half that key.
    return hmac.new(master, b"\0" * 8 + _PROBE_DOMAIN, hashlib.sha256).hexdigest()[:32]


def probe_xargs(master: bytes) -> dict[str, str]:
    """The ``vllm_xargs`` of a liveness probe."""
    return {F_PROBE: probe_check(master)}


def probe_refusal(value: object, params: KgwParams, master: bytes | None) -> str:
    """The plugin's answer to a probe (the text of the ValueError it raises; vLLM answers 400 with it)."""
    if master is None:
        secret: SecretCheck = "absent"
    elif isinstance(value, str) and value.isascii() and hmac.compare_digest(probe_check(master), value):
        secret = "match"
    else:
        secret = "differs"
    return f"{REFUSAL_MARK} probe: refused by design (the plugin is loaded); spec={spec(params)} secret={secret}"


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What a plugin said about itself in its answer to a probe."""

    spec: str
    secret: SecretCheck


def read_probe_refusal(message: str) -> ProbeReport | None:
    """The plugin's report in an error message (or a whole error body), or None when the text is not a
    plugin's answer to a probe."""
    m = _PROBE_RE.search(message)
    if m is None:
        return None
    return ProbeReport(m["spec"], m["secret"])  # type: ignore[arg-type]  # the regex admits only SecretCheck


def refusal(error: ValueError) -> str:
    """The text of a refusal: ``REFUSAL_MARK`` first, so an operator (and the gateway) can tell the plugin's
    400 from any other."""
    text = str(error)
    return text if text.startswith(REFUSAL_MARK) else f"{REFUSAL_MARK}: {text}"
