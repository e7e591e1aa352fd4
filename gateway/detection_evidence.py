"""What a replica keeps of its clients' recent suspicious requests, for the alerts it raises.

``RecentEvidence`` holds, per client, the last few suspicious requests seen on this replica (request id, the
prompt that was scored, the client's address) in a bounded LRU: benign traffic costs nothing, and the memory
is a few MB whatever the number of clients. An alert reads its evidence from here, and the accounts seen from
its addresses: suspicious ones in this replica's evidence and any account of the recent alerts every replica
shares through the store (``address_peers``).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

from detectors.features import prompt_of
from gateway.alerts.model import Alert
from gateway.store.base import StateStore

log = logging.getLogger(__name__)

EVIDENCE_PER_CLIENT = 5  # recent suspicious requests kept per client for alert evidence
EVIDENCE_CLIENTS = 4096  # clients tracked (LRU); bounds the memory of evidence to a few MB
EVIDENCE_CHARS = 400  # raw prompt characters kept per example (redacted again on output)
MAX_ADDRESS_PEERS = 20  # accounts named as seen from an alert's addresses
ADDRESS_PEER_ALERTS = 200  # recent shared alerts searched for them (when an alert is built)
EVIDENCE_MIN_SCORE = 0.2  # only requests this suspicious are kept as evidence: benign traffic costs nothing


class RecentEvidence:
    """Each client's recent suspicious requests on this replica: (request id, example prompt, address)."""

    __slots__ = ("_rings",)

    def __init__(self) -> None:
        self._rings: OrderedDict[str, deque[tuple[str, str, str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rings)

    def clear(self) -> None:
        self._rings.clear()

    def remember(self, client_id: str, request_id: str | None, endpoint: str, body: Mapping[str, Any],
                 ip: str | None = None, scored: str | None = None) -> None:
        # ``scored``: the history turn the engine read instead of the last one (the last turn of a made-up
        # conversation is its cover, "Go ahead."): the example an analyst needs is what was scored
        text = scored if scored is not None else prompt_of(endpoint, body)[0]
        ring = self._rings.get(client_id)
        if ring is None:
            ring = self._rings[client_id] = deque(maxlen=EVIDENCE_PER_CLIENT)
            if len(self._rings) > EVIDENCE_CLIENTS:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(client_id)
        ring.append((request_id or "", text[:EVIDENCE_CHARS], ip or ""))

    def local_peers(self, client_id: str, ips: tuple[str, ...]) -> list[str]:
        """Other clients whose recent suspicious requests on this replica came from one of ``ips`` (at most
        ``MAX_ADDRESS_PEERS``, most recently active first). Run when an alert is built, never per request."""
        if not ips:
            return []
        wanted = set(ips)
        out: list[str] = []
        for other, ring in reversed(self._rings.items()):
            if other != client_id and any(a in wanted for _, _, a in ring):
                out.append(other)
                if len(out) >= MAX_ADDRESS_PEERS:
                    break
        return out

    def of(self, client_id: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(request ids, example prompts, distinct client addresses) of this client's recent suspicious
        requests on this replica."""
        ring = self._rings.get(client_id, ())
        return (tuple(r for r, _, _ in ring if r), tuple(dict.fromkeys(t for _, t, _ in ring if t)),
                tuple(dict.fromkeys(a for _, _, a in ring if a)))


async def address_peers(evidence: RecentEvidence, store: StateStore, alert: Alert) -> tuple[str, ...]:
    """Accounts seen from the alert's client addresses: suspicious ones in this replica's evidence, and any
    account of the recent alerts every replica shares through the store (a hydra campaign's accounts often
    share exits). A lead for the security team, not a score: nothing here changes a tier."""
    found = evidence.local_peers(alert.client, alert.ips)
    wanted = set(alert.ips)
    try:
        recent = await store.recent_alerts(ADDRESS_PEER_ALERTS)
    except Exception as e:  # a lead is not worth failing the alert for; the store logs and counts its faults
        log.debug("recent alerts not read for address peers: %s", e)
        recent = []
    for raw in recent:
        if not any(a in raw for a in wanted):  # an address in its evidence is in its text: most need no parse
            continue
        try:
            d = json.loads(raw)
            ev = d.get("evidence") or {}
            other, seen = d.get("client"), ev.get("ips") or ()
        except (ValueError, AttributeError):
            continue
        if isinstance(other, str) and other != alert.client and other not in found and \
                any(isinstance(a, str) and a in wanted for a in seen):
            found.append(other)
    return tuple(found[:MAX_ADDRESS_PEERS])
