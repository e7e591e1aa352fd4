"""Hash-chained audit records: sealing (one writer) and verification (any number of writers). No I/O.

Each gateway process is one *writer* (``writer`` = host, pid and a random nonce, so a restart starts a new
chain). A writer numbers its records ``seq`` = 0, 1, 2 ... and each record carries ``prev``, the ``hash`` of
the writer's previous record (``GENESIS`` for seq 0), and ``hash``, the SHA-256 of the record's canonical JSON
without the ``hash`` field. Canonical JSON is Python's ``json.dumps`` with sorted keys, ``(",", ":")``
separators and ASCII escapes: one line, the same bytes whoever re-serialises the parsed record, and no
encoding error for a client id with a lone surrogate.

What the verifier detects, per writer: an edited record (its hash no longer matches its content), a deleted
record (the next one's ``seq`` jumps and its ``prev`` names a record that is not there), records moved
within one writer's chain (``prev`` mismatch), a duplicated record, and a line that is not a record.
Interleaving of different writers (several workers appending to one file, replicas sharing one store list)
is fine: each chain is checked on its own.

What a plain hash chain cannot detect on its own: the removal of a writer's *last* records (nothing follows
them) and a file rewritten wholesale with recomputed hashes. The copy in the shared store (and any copy
shipped off the host) is the independent witness for those: compare its hashes with the file's. With a key
(``admin.audit_key_env``) the chain is keyed: ``hash`` is HMAC-SHA256 under the key and ``alg`` says
``hmac-sha256``, so whoever can write the file but does not hold the key cannot recompute a consistent chain;
the verifier, given the key, refuses unkeyed records (a downgrade).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
RECORD_VERSION = 1
# default=str: a value a handler noted that JSON cannot hold (a bug) becomes its string, never a failed write
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                            default=str)


def canonical(record: Mapping[str, Any]) -> str:
    """The one-line canonical JSON of ``record`` (what is hashed, and what is written)."""
    return _ENCODER.encode(record)


ALG_PLAIN = "sha256"
ALG_KEYED = "hmac-sha256"


def record_hash(record: Mapping[str, Any], key: bytes | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON of ``record`` without its ``hash`` field; HMAC-SHA256 with a key."""
    body = canonical({k: v for k, v in record.items() if k != "hash"}).encode("ascii")
    if key is not None:
        return hmac.new(key, body, hashlib.sha256).hexdigest()
    return hashlib.sha256(body).hexdigest()


class Chain:
    """One writer's chain. ``seal`` is not thread-safe: the trail calls it under its lock, in write order."""

    def __init__(self, writer: str, key: bytes | None = None) -> None:
        self.writer = writer
        self.key = key
        self.seq = 0
        self.prev = GENESIS

    def seal(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``fields`` plus ``v``, ``alg``, ``writer``, ``seq``, ``prev`` and ``hash``; advances the chain."""
        record = dict(fields)
        record.update(v=RECORD_VERSION, alg=ALG_KEYED if self.key is not None else ALG_PLAIN,
                      writer=self.writer, seq=self.seq, prev=self.prev)
        record["hash"] = record_hash(record, self.key)
        self.seq += 1
        self.prev = record["hash"]
        return record


@dataclass(frozen=True, slots=True)
class Problem:
    line: int  # 1-based position in the input (a file's line number; a store list's oldest-first index)
    writer: str | None
    reason: str
    needs_key: bool = False  # a keyed record checked without the key: its hash cannot be told good or bad


@dataclass(frozen=True, slots=True)
class ChainReport:
    records: int
    writers: int
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def intact(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class _Head:
    seq: int
    hash: str


class _Unreadable(ValueError):
    """A line whose parse is ambiguous or cannot be serialised again (see ``_parse``)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Unreadable(f"duplicate key {k!r} (parsers disagree on which value counts)")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise _Unreadable(f"{name} is not JSON (the record cannot be hashed)")


def _parse(line: str) -> Any:
    """``json.loads`` that refuses what no writer produces and what would let a line show one thing and hash
    another: a duplicated key (Python keeps the last value, which is what was hashed; first-wins readers and
    a grep see the first, which can be forged freely), NaN/Infinity (canonical JSON cannot hold them) and
    nesting deeper than the parser's stack."""
    try:
        return json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise _Unreadable("nested too deeply") from None


@dataclass(frozen=True, slots=True)
class Anchor:
    """A record known from outside the audit files: its writer, ``seq`` and ``hash``, as the gateway logs each
    record it writes (``audit record writer=... seq=... hash=...``, shipped off the host with the logs)."""

    writer: str
    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``WRITER:SEQ:HASH`` (a writer id holds colons itself: host:pid:nonce)."""
        writer, seq, digest = text.rsplit(":", 2) if text.count(":") >= 2 else ("", "", "")
        # ASCII digits only: isdigit() takes "١" or "１" (int() reads both as 1), and int() refuses > 4 300 digits
        if not writer or not (seq.isascii() and seq.isdigit() and len(seq) <= 20) or len(digest) != 64 \
                or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{text!r} is not WRITER:SEQ:HASH (SEQ in decimal digits, HASH 64 lower-case hex digits)")
        return cls(writer, int(seq), digest)


def verify_lines(lines: Iterable[str], *, partial_start: bool = False, key: bytes | None = None,
                 anchors: Iterable[Anchor] = ()) -> ChainReport:
    """Check every writer's chain in ``lines`` (oldest first; blank lines are skipped).

    ``partial_start``: a writer's first record may be mid-chain (a capped store list whose oldest records
    were trimmed, a file whose earlier part was rotated away); by default its chain must start at seq 0.
    ``key``: the chain key; every record must then be keyed. Without it a keyed record cannot be checked
    and is reported as such.
    ``anchors``: records that must be there with exactly that hash. A plain chain cannot show that its last
    records were cut off; an anchor taken later (from the shipped log) can: a missing anchor is a problem at
    line 0.
    """
    # a set per record: two anchors naming one record with different hashes cannot both hold (a dict of one hash
    # kept the last flag's and dropped the other, so the verdict depended on the order of the flags)
    wanted: dict[tuple[str, int], set[str]] = {}
    for a in anchors:
        wanted.setdefault((a.writer, a.seq), set()).add(a.hash)
    heads: dict[str, _Head] = {}
    problems: list[Problem] = []
    records = 0
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            rec = _parse(line)
        except _Unreadable as e:
            problems.append(Problem(no, None, f"not a valid record: {e}"))
            continue
        except ValueError:
            problems.append(Problem(no, None, "not a JSON record"))
            continue
        records += 1
        # type(...) is int: a bool is an int to isinstance, and no writer writes "seq": true
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), t) for k, t in
                                                (("writer", str), ("prev", str), ("hash", str))) \
                or type(rec.get("seq")) is not int:
            problems.append(Problem(no, None, "not an audit record (writer, seq, prev or hash missing)"))
            continue
        writer, seq = rec["writer"], rec["seq"]
        keyed = rec.get("alg") == ALG_KEYED
        if keyed and key is None:
            problems.append(Problem(no, writer, f"seq {seq}: a keyed record (hmac-sha256): give the key",
                                    needs_key=True))
        elif key is not None and not keyed:
            problems.append(Problem(no, writer, f"seq {seq}: not keyed, but the chain is (replaced or forged)"))
        elif record_hash(rec, key) != rec["hash"]:
            problems.append(Problem(no, writer, f"seq {seq}: the hash does not match the content (edited)"))
        head = heads.get(writer)
        if head is None:
            if seq != 0 and not partial_start:
                problems.append(Problem(no, writer, f"seq {seq}: the chain's first {seq} record(s) are missing"))
            elif seq == 0 and rec["prev"] != GENESIS:
                problems.append(Problem(no, writer, "seq 0: prev is not the genesis value"))
        elif seq != head.seq + 1:
            what = (f"{seq - head.seq - 1} record(s) missing before it" if seq > head.seq + 1
                    else "out of order or duplicated")
            problems.append(Problem(no, writer, f"seq {seq} follows seq {head.seq}: {what}"))
        elif rec["prev"] != head.hash:
            problems.append(Problem(no, writer, f"seq {seq}: prev does not match the previous record's hash"))
        heads[writer] = _Head(seq, rec["hash"])
        for anchored in sorted(wanted.pop((writer, seq), ())) if wanted else ():
            if anchored != rec["hash"]:
                problems.append(Problem(no, writer, f"seq {seq}: not the record the anchor names (hash "
                                                    f"{anchored[:12]}…): the chain was rewritten"))
    for (writer, seq), _ in sorted(wanted.items()):
        head = heads.get(writer)
        after = f"the files end at seq {head.seq}" if head is not None else "the files hold no record of it"
        problems.append(Problem(0, writer, f"anchor seq {seq} is missing ({after}): records were cut off"))
    return ChainReport(records, len(heads), tuple(problems))
