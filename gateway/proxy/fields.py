"""Inference-server extension fields that reach engine internals: refused in requests, withheld from answers.

The parse step lets unknown request fields through (OpenAI-compatible servers accept extensions), and the
relay passes unknown answer fields on. Some extensions of vLLM 0.33, SGLang and TGI are not the client's to
use behind an IP-protection gateway: they steer the serving fabric (disaggregated-serving KV transfer, data-
parallel worker pinning, scheduling priority), replace what the model reads with something detection never
saw (a client chat template, token ids or embedding vectors instead of the messages), run client code in the
engine (SGLang's serialized logits processors), or make the answer disclose the deployment (the rendered
prompt, which weights served it, MoE routing, hidden states, prefix-cache hits, per-request engine metrics).
The default lists, each entry with its reason, are in ``gateway/proxy/field_catalogue.py``.

``FieldPolicy`` (built once per process from ``proxy`` in the config) is sans-IO:

- ``check(body, headers, endpoint)``: a request naming a refused field (``proxy.refused_fields``) or header
  (``proxy.refused_headers``) is a 400 whose message and ``param`` name it and say why. ``null`` and
  ``false`` count as absent (clients that serialize every default still pass). A dotted entry
  (``chat_template_kwargs.chat_template``) names a key inside an object field. With ``proxy.unknown_fields:
  refuse`` a top-level field that ``endpoint`` does not know (``gateway/proxy/known_fields.py``, plus
  ``proxy.allowed_fields``) is a 400 too, after the block list (whose reason says more). ``null`` counts as
  absent there as well (a pydantic server reads it as its default); ``false`` does not (the default of a field
  nobody listed is unknown). Unknown names are counted under one label value, ``field="(unknown)"``: the
  client chooses them, and a label per name would let any client grow the metric without bound.
- ``scrub(obj)``: removes ``proxy.withheld_response_fields`` from an answer (a body or one stream chunk): at
  its top level, in each choice and in each choice's ``message``/``delta``. A ``null`` value is left as it
  is: vLLM 0.33 writes all its extension keys, null unless asked for, into every non-streamed answer.
  ``scrub_response`` does the same for a Responses API object (top level only; the OpenAI fields of that
  object are never withheld there).
- ``may_hold(raw)``: a prefilter on raw bytes for the paths that relay without decoding; a hit only means
  "decode and scrub" (a false positive costs one decode, never a wrong answer).

Each refusal and each withheld field is counted by field name (a label set bounded by the configuration, and
``(unknown)``); each withheld field is logged once per process (a misconfigured backend would otherwise log per
request), and so is each of the first ``LOGGED_UNKNOWN`` distinct unknown names (the operator's list of what
clients send, for ``proxy.allowed_fields``; bounded, since the names are the client's).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from gateway.errors import InvalidRequest
from gateway.proxy.field_catalogue import (
    REFUSED_FIELDS,
    REFUSED_HEADERS,
    RESPONSE_OBJECT_FIELDS,
    WITHHELD_RESPONSE_FIELDS,
)
from gateway.proxy.known_fields import PATHS, known_fields

if TYPE_CHECKING:
    from prometheus_client import Counter

    from gateway.proxy.parse import Endpoint

log = logging.getLogger(__name__)

UnknownFields = Literal["pass", "log", "refuse"]
UNKNOWN_LABEL = "(unknown)"  # the metric label of every unknown name: no field name has parentheses
LOGGED_UNKNOWN = 32  # distinct unknown names logged per process; all are counted
_SHOWN = 64  # characters of an unknown name echoed in the 400 (the client chose it: bounded)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_HOLDERS = ("message", "delta")


def name_problem(name: str, *, dotted: bool) -> str | None:
    """Why ``name`` cannot be a configured field name (None when it can)."""
    m = _NAME.fullmatch(name)
    if m is None or (m.group(1) and not dotted):
        return (f"{name!r} is not a field name (letters, digits, '_'" + (", one '.' for a key inside an "
                "object field)" if dotted else ")"))
    return None


class FieldPolicy:
    """The compiled ``proxy`` section: what the request check and the answer scrub test, built once."""

    __slots__ = ("_known", "_logged", "_logged_unknown", "_nested", "_refused_metric", "_top", "_unknown_metric",
                 "_withheld_metric", "allowed", "headers", "pattern", "refused", "unknown", "withheld",
                 "withheld_responses")

    def __init__(self, refused: Iterable[str], headers: Iterable[str], withheld: Iterable[str], *,
                 unknown: UnknownFields = "pass", allowed: Iterable[str] = (),
                 refused_metric: Counter | None = None, withheld_metric: Counter | None = None,
                 unknown_metric: Counter | None = None) -> None:
        self.refused = {n: REFUSED_FIELDS.get(n, "listed by the operator") for n in refused}
        self.unknown = unknown
        self._unknown_metric = unknown_metric
        self.allowed = frozenset(allowed)
        self._logged_unknown: set[str] = set()
        self.headers = {h.lower(): REFUSED_HEADERS.get(h.lower(), "listed by the operator") for h in headers}
        self.withheld = frozenset(withheld)
        self.withheld_responses = self.withheld - RESPONSE_OBJECT_FIELDS
        nested: dict[str, dict[str, str]] = {}
        for n in self.refused:
            parent, _, child = n.partition(".")
            if child:
                nested.setdefault(parent, {})[child] = n
        self._nested = nested
        # the one set a request body is tested against: refused names and the parents of dotted ones
        self._top = frozenset(n for n in self.refused if "." not in n) | frozenset(nested)
        # refuse and log modes, per endpoint: (the known fields that are no block-list name: a body within it
        # needs no further look; every known field). None: pass mode, nothing tested.
        self._known: dict[str, tuple[frozenset[str], frozenset[str]]] | None = None if unknown == "pass" else {
            ep: (known_fields(ep, self.allowed) - self._top, known_fields(ep, self.allowed)) for ep in PATHS}
        names = b"|".join(re.escape(n.encode()) for n in sorted(self.withheld))
        first = b"".join(re.escape(bytes([c])) for c in sorted({n.encode()[0] for n in self.withheld}))
        # a key with a value other than null: vLLM 0.33 writes every one of its extension keys into every
        # non-streamed answer, null unless asked for; a null discloses nothing and must not cost a decode
        # (the lookahead on the first letter lets most of the quotes of a chunk fail at once: ~15 % faster)
        self.pattern = re.compile(b'"(?=[' + first + b'])(?:' + names + rb')"\s*:(?!\s*null)') \
            if self.withheld else None
        self._refused_metric = refused_metric
        self._withheld_metric = withheld_metric
        self._logged: set[str] = set()

    # --- requests ---------------------------------------------------------------------------------------------

    def check(self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None,
              endpoint: Endpoint | None = None) -> None:
        """Raise ``InvalidRequest`` (400) naming the first refused field (body order) or header present, then
        (``refuse`` mode, where ``endpoint`` is required) the first field ``endpoint`` does not know."""
        known = self._known
        if known is None:
            unknown = False
            if not self._top.isdisjoint(body):
                self._check_refused(body)
        else:
            if endpoint is None:  # a caller that forgot it must not turn the allowlist off without a word
                raise TypeError("FieldPolicy.check: endpoint is required when proxy.unknown_fields is "
                                f"{self.unknown}")
            # the common case is one C-level pass over the body's keys (their hashes are cached in the str):
            # every key a known field that is no block-list name either, so neither loop below has work
            unknown = not known[endpoint][0].issuperset(body)
            if unknown and not self._top.isdisjoint(body):
                self._check_refused(body)
        if headers is not None:
            for h, why in self.headers.items():
                if h in headers:
                    self._refuse(h, f"{h}: header not accepted by this gateway ({why}; proxy.refused_headers)",
                                 h)
        if unknown and known is not None and endpoint is not None:  # after the block list: its reason says more
            fields = known[endpoint][1]
            if not fields.issuperset(body):  # False when only a block-list parent took the slow path
                for key, value in body.items():
                    if value is not None and key not in fields:
                        if self.unknown == "refuse":
                            self._refuse_unknown(key, endpoint)
                        self._note_unknown(key, endpoint)  # log mode: what refuse would refuse, passed
                        break

    def _check_refused(self, body: Mapping[str, Any]) -> None:
        for key, value in body.items():
            if key not in self._top or value is None or value is False:
                continue
            if key in self.refused:
                self._refuse(key, f"{key}: not accepted by this gateway ({self.refused[key]}; "
                                  "proxy.refused_fields)", key)
            inner = self._nested.get(key)
            if inner is not None and isinstance(value, Mapping):
                for child, dotted in inner.items():
                    v = value.get(child)
                    if v is not None and v is not False:
                        self._refuse(dotted, f"{dotted}: not accepted by this gateway "
                                             f"({self.refused[dotted]}; proxy.refused_fields)", dotted)

    def _shown(self, name: str, endpoint: Endpoint, verb: str, detail: str) -> str:
        """``name`` as echoed (bounded: the client chose it), logged once per name for the first
        ``LOGGED_UNKNOWN`` names: ``verb`` (passed, refused) and ``detail`` (the mode, where it is counted)."""
        shown = name if len(name) <= _SHOWN else name[:_SHOWN] + "..."
        if len(self._logged_unknown) < LOGGED_UNKNOWN and shown not in self._logged_unknown:
            self._logged_unknown.add(shown)
            log.warning("%s the unknown request field %r on %s (%s), logged once per name for the first %d names",
                        verb, shown, PATHS[endpoint], detail, LOGGED_UNKNOWN)
        return shown

    def _note_unknown(self, name: str, endpoint: Endpoint) -> None:
        """``log`` mode (a dry run of ``refuse``): the request passes; counted, and the name logged (bounded)."""
        self._shown(name, endpoint, "passed", "proxy.unknown_fields: log; refuse mode would answer it 400: list it "
                                              "in proxy.allowed_fields if it is legitimate; counted in "
                                              "ipgate_request_fields_unknown_total")
        if self._unknown_metric is not None:
            self._unknown_metric.inc()

    def _refuse_unknown(self, name: str, endpoint: Endpoint) -> NoReturn:
        shown = self._shown(name, endpoint, "refused", "proxy.unknown_fields: refuse; list it in "
                                                       "proxy.allowed_fields to let it through; counted in "
                                                       f"ipgate_request_fields_refused_total{{field={UNKNOWN_LABEL!r}}}")
        if self._refused_metric is not None:
            self._refused_metric.labels(field=UNKNOWN_LABEL).inc()
        raise InvalidRequest(f"{shown}: not accepted by this gateway (unknown field: neither an OpenAI parameter of "
                             f"{PATHS[endpoint]} nor a known inference-server extension; proxy.unknown_fields)",
                             param=shown, code="field_not_accepted")

    def _refuse(self, name: str, message: str, param: str) -> NoReturn:
        if self._refused_metric is not None:
            self._refused_metric.labels(field=name).inc()
        raise InvalidRequest(message, param=param, code="field_not_accepted")

    # --- answers ----------------------------------------------------------------------------------------------

    def may_hold(self, raw: bytes) -> bool:
        """Whether ``raw`` (a JSON body or one stream event's data) may hold a withheld field as a key."""
        return self.pattern is not None and self.pattern.search(raw) is not None

    def scrub(self, obj: dict[str, Any]) -> bool:
        """Remove withheld fields from a chat/completions/embeddings answer or chunk (top level, choices and
        their message/delta) in place; True when something was removed."""
        w = self.withheld
        if not w:
            return False
        removed = self._drop(obj, w) if not w.isdisjoint(obj) else False
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            if not w.isdisjoint(choice):
                removed = self._drop(choice, w) or removed
            for k in _HOLDERS:
                holder = choice.get(k)
                if isinstance(holder, dict) and not w.isdisjoint(holder):
                    removed = self._drop(holder, w) or removed
        return removed

    def scrub_response(self, response: dict[str, Any]) -> bool:
        """``scrub`` for a Responses API response object (its top level; its items are allowlisted by the
        Responses relay itself)."""
        w = self.withheld_responses
        return bool(w) and not w.isdisjoint(response) and self._drop(response, w)

    def _drop(self, obj: dict[str, Any], names: frozenset[str]) -> bool:
        # a null discloses nothing: relayed as is (vLLM writes them all, so this runs on every decoded vLLM body)
        gone = [k for k in names.intersection(obj) if obj[k] is not None]
        for k in gone:
            del obj[k]
            if self._withheld_metric is not None:
                self._withheld_metric.labels(field=k).inc()
            if k not in self._logged:
                self._logged.add(k)
                log.warning("withheld %r from a backend's answer (%s; proxy.withheld_response_fields); counted "
                            "in ipgate_response_fields_withheld_total{field=%r}, logged once", k,
                            WITHHELD_RESPONSE_FIELDS.get(k, "listed by the operator"), k)
        return bool(gone)


def weakened(refused: Iterable[str], headers: Iterable[str], withheld: Iterable[str]) -> list[str]:
    """What ``ipgate check`` warns about: default entries a configuration no longer refuses or withholds."""
    out = []
    for section, configured, defaults in (
            ("refused_fields", set(refused), REFUSED_FIELDS),
            ("refused_headers", {h.lower() for h in headers}, REFUSED_HEADERS),
            ("withheld_response_fields", set(withheld), WITHHELD_RESPONSE_FIELDS)):
        for name, why in defaults.items():
            if name not in configured:
                out.append(f"proxy.{section} lacks {name!r} ({why}): it now reaches the "
                           + ("client" if section.startswith("withheld") else "backend"))
    return out


def allowlist_problems(unknown: UnknownFields, allowed: Iterable[str], refused: Iterable[str]) -> list[str]:
    """What ``ipgate check`` warns about in the allowlist settings: entries that contradict the block list (the
    block list wins: it is checked first, in both modes) and entries that do nothing."""
    allowed = list(allowed)
    if unknown == "pass":
        return [f"proxy.allowed_fields lists {len(allowed)} field(s) but has no effect while proxy.unknown_fields "
                "is pass (every field that is not refused reaches the backend)"] if allowed else []
    out = []
    blocked = set(refused)
    for name in allowed:
        if name in blocked:
            out.append(f"proxy.allowed_fields lists {name!r}, which proxy.refused_fields also lists: the block "
                       f"list wins and {name!r} is refused (remove it from one of the two)")
        elif all(name in known_fields(ep) for ep in PATHS):
            out.append(f"proxy.allowed_fields lists {name!r}, which every endpoint knows already (no effect)")
    return out
