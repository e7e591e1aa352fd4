"""Verification: which scheme, which candidate keys, and the verdict that the CLI and the admin API print.

``scheme="auto"`` scores the lexical scheme, and KGW too when a tokenizer is available; each scheme's
family-wise p-value is then multiplied by the number of schemes tried (Bonferroni again), so "auto" never
claims more confidence than the schemes it combines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from watermark.base import Scheme
from watermark.keys import GIL_SLICE, ClientKey, KeyRing

SCHEMES = ("auto", "lexical", "kgw")


@dataclass(frozen=True, slots=True)
class Verdict:
    watermarked: bool
    p_value: float  # family-wise corrected p-value of the attributed client (over candidates and schemes)
    log10_p_value: float
    client: str | None
    key_version: int | None
    scheme: str
    scored: int
    # (client, key version, corrected p-value), best first: one hypothesis per client and key version, so with
    # several versions in force a client can be listed once per version
    candidates: tuple[tuple[str, int, float], ...]
    texts: int

    def to_json(self, corpus: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "watermarked": self.watermarked, "p_value": self.p_value, "log10_p_value": self.log10_p_value,
            "client": self.client, "key_version": self.key_version, "scheme": self.scheme,
            "scored": self.scored,
            "candidates": [{"client": c, "key_version": v, "p_value": p} for c, v, p in self.candidates],
        }
        if corpus:
            out["texts"] = self.texts
        return out


def utf8_encodable(s: str) -> bool:
    """False for a string with a lone surrogate (JSON can carry ``"\\ud800"``): it has no UTF-8 form, so no
    key can be derived for it and it cannot be written to a UTF-8 file."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def client_line(client_id: str) -> str:
    """One line of a client-list file (``--clients``, ``watermark.recipients_file``, ``--export-recipients``).

    A plain id is written as is. An id that would not read back unchanged -- surrounding whitespace, a line
    break of any kind (``str.splitlines`` also splits on U+2028, U+0085, ...), a leading ``#`` (a comment) or
    ``"``, a byte-order mark, a lone surrogate -- is written as a JSON string literal, which
    ``parse_client_lines`` decodes."""
    plain = (client_id and client_id == client_id.strip() and client_id[0] not in '#"'
             and len(client_id.splitlines()) == 1 and "\ufeff" not in client_id and utf8_encodable(client_id))
    return client_id if plain else json.dumps(client_id)


def parse_client_lines(text: str) -> list[str]:
    """The client ids of a client-list file: one per line (LF or CRLF), surrounding whitespace and a leading
    byte-order mark ignored, blank lines and ``#`` comments skipped, a line starting with ``"`` read as a JSON
    string (see ``client_line``), duplicates kept once (first occurrence). Raises ``ValueError`` naming the
    line of a malformed quoted id."""
    lines = text.removeprefix("\ufeff").split("\n")
    if '"' not in text and "#" not in text:  # the common file: no comments, no quoted ids -- 4x faster
        return list(dict.fromkeys(line for line in map(str.strip, lines) if line))
    out: dict[str, None] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"'):
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if not isinstance(value, str) or not value:
                raise ValueError(f"line {n}: a quoted client id must be one non-empty JSON string")
            line = value
        out.setdefault(line, None)
    return list(out)


def candidate_keys(ring: KeyRing, clients: Sequence[str],
                   recorded: dict[str, list[int]] | None = None) -> list[ClientKey]:
    """(client, version) hypotheses: the recorded versions of each client if known (versions no longer in
    force are not tested), else -- a client not in ``recorded``, or recorded with no versions (a
    ``recipients_file`` line) -- every version in force. Duplicated client ids are tested once."""
    seen: dict[str, None] = {}
    for i in range(0, len(clients), GIL_SLICE):  # in slices: see GIL_SLICE
        seen.update(dict.fromkeys(clients[i:i + GIL_SLICE]))
    unique = list(seen)
    if not recorded:
        return ring.candidates(unique)
    keys: list[ClientKey] = []
    for v in ring.versions:
        keys.extend(ring.derive(v, [c for c in unique if not recorded.get(c) or v in recorded[c]]))
    return keys


def verify(
    texts: str | Sequence[str],
    keys: Sequence[ClientKey],
    schemes: Sequence[Scheme],
    *,
    fpr: float = 1e-6,
    top: int = 5,
) -> Verdict:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    if not schemes:
        raise ValueError("no scheme to verify with")
    n_texts = 1 if isinstance(texts, str) else len(texts)
    scores = [s.score(texts, keys, top=top) for s in schemes]
    best = min(scores, key=lambda sc: (sc.log10_p_value, -sc.scored))
    m = len(scores)
    adj = min(0.0, best.log10_p_value + math.log10(m))
    family = best.family_size * m
    cands = tuple(
        (c.client_id, c.key_version, _p10(min(0.0, c.log10_p_value + math.log10(family))))
        for c in best.candidates
    )
    client = best.client_id
    return Verdict(
        watermarked=client is not None and adj < math.log10(fpr),
        p_value=_p10(adj), log10_p_value=adj, client=client, key_version=best.key_version,
        scheme=best.scheme if m == 1 or client is not None else "+".join(s.scheme for s in scores),
        scored=best.scored, candidates=cands, texts=n_texts,
    )


def _p10(log10_p: float) -> float:
    return 10.0 ** log10_p if log10_p > -307.0 else 0.0
