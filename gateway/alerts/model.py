"""The alert a security team receives, and how its evidence is redacted.

An ``Alert`` is raised when a client's tier rises to one whose policy says ``alert``. It carries enough to
act on without opening the logs: who (client, tenant), how bad (tier, score), why (the engine's reasons,
strongest first, and the detectors behind them), and evidence (recent request ids, example prompts, the
accounts linked to it). Example prompts are user data: they are redacted by default at serialisation time
(``to_dict(redact=True)``), so a sink has to opt out explicitly (``alerts.sinks[].redact: false``) to see
raw text, and the shared alert list in the store only ever holds redacted alerts.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
MAX_EXAMPLE_CHARS = 160

# Order matters: URLs and emails first (they contain digits and long words), then secrets-looking tokens.
_URL = re.compile(r"\bhttps?://\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_LONG = re.compile(r"\b\w{15,}\b")  # keys, hashes, identifiers, long names: content that identifies
_DIGITS = re.compile(r"\d")
_SPACE = re.compile(r"\s+")
# "scheme://user:password@" in any text: a backend or sink URL with credentials in it (e.g. a fingerprint
# mismatch reason names the backend's URL). The password is a secret wherever the text goes.
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]*):[^/\s@]+@")
# A lone surrogate (a JSON body may carry "\ud800"; json.loads accepts it) cannot be encoded as UTF-8: left in,
# it made every sink fail on this alert, so a client could keep alerts about itself from being delivered.
_SURROGATE = re.compile("[\ud800-\udfff]")


def mask_url_passwords(text: str) -> str:
    """``http://user:secret@host`` -> ``http://user:***@host`` everywhere in ``text``."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def redact_text(text: str, max_chars: int = MAX_EXAMPLE_CHARS) -> str:
    """Mask what may identify a person or leak a secret, keep the shape that shows a template.

    URLs -> ``<url>``, emails -> ``<email>``, words of 15+ characters -> ``<long>``, every digit -> ``#``;
    whitespace collapsed; cut to ``max_chars`` with an ellipsis. The template's fixed words stay readable,
    which is what an analyst needs to recognise a harvesting pipeline.
    """
    t = _URL.sub("<url>", text)
    t = _EMAIL.sub("<email>", t)
    t = _LONG.sub("<long>", t)
    t = _DIGITS.sub("#", t)
    t = _SPACE.sub(" ", t).strip()
    if len(t) > max_chars:
        t = t[: max_chars - 1].rstrip() + "…"
    return t


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    ts: float  # unix seconds (store clock when known)
    client: str
    tenant: str | None
    tier: str  # the policy tier's name
    tier_index: int
    previous_tier: str
    score: float  # calibrated suspicion in [0, 1]
    reasons: tuple[str, ...]  # human-readable, strongest first
    detectors: tuple[str, ...] = ()  # detectors that scored high, strongest first (dedup key)
    request_ids: tuple[str, ...] = ()  # most recent last
    examples: tuple[str, ...] = ()  # raw example prompts; redacted on output unless a sink opts out
    cluster: tuple[str, ...] = ()  # other accounts linked to this one
    cluster_score: float = 0.0
    unscored: bool = False  # a detector failed on the request that raised it
    ips: tuple[str, ...] = ()  # distinct client addresses of the requests in the evidence (server.trusted_proxies)
    address_peers: tuple[str, ...] = ()  # other accounts seen from those addresses (a lead, not a score)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def dedup_key(self) -> tuple[str, int, frozenset[str]]:
        """Same client, same tier, same set of detectors behind it: the same alert for a human."""
        basis = self.detectors or tuple(_DIGITS.sub("", r) for r in self.reasons)
        return (self.client, self.tier_index, frozenset(basis))

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        examples = [redact_text(e) for e in self.examples] if redact else list(self.examples)
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "ts": round(self.ts, 3),
            "client": self.client,
            "tenant": self.tenant,
            "tier": self.tier,
            "tier_index": self.tier_index,
            "previous_tier": self.previous_tier,
            "score": round(self.score, 4),
            "reasons": [mask_url_passwords(r) for r in self.reasons],
            "detectors": list(self.detectors),
            "evidence": {
                "request_ids": list(self.request_ids),
                "ips": list(self.ips),
                "address_peers": list(self.address_peers),
                "examples": examples,
                "redacted": redact,
                "cluster": list(self.cluster),
                "cluster_score": round(self.cluster_score, 4),
            },
            "unscored": self.unscored,
        }

    def to_json(self, *, redact: bool = True) -> str:
        text = json.dumps(self.to_dict(redact=redact), ensure_ascii=False, separators=(",", ":"))
        return _SURROGATE.sub("\ufffd", text)  # valid UTF-8 for every sink (see _SURROGATE)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        """Inverse of ``to_dict`` (examples come back as they were written, redacted or not)."""
        ev = d.get("evidence") or {}
        return cls(
            id=str(d["id"]), ts=float(d["ts"]), client=str(d["client"]), tenant=d.get("tenant"),
            tier=str(d["tier"]), tier_index=int(d["tier_index"]), previous_tier=str(d.get("previous_tier", "")),
            score=float(d["score"]), reasons=tuple(d.get("reasons", ())), detectors=tuple(d.get("detectors", ())),
            request_ids=tuple(ev.get("request_ids", ())), examples=tuple(ev.get("examples", ())),
            cluster=tuple(ev.get("cluster", ())), cluster_score=float(ev.get("cluster_score", 0.0)),
            unscored=bool(d.get("unscored", False)), ips=tuple(ev.get("ips", ())),
            address_peers=tuple(ev.get("address_peers", ())),
        )
