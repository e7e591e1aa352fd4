"""Static API keys (``Authorization: Bearer sk-...``), stored only as SHA-256 hashes in a file.

File format, one key per line (``#`` starts a comment, blank lines are ignored)::

    <sha256 hex of the whole key, 64 chars>  <client_id>  [tenant or ->]  [role,role,...]  [limits=CLASS]

``limits=CLASS`` (anywhere after the client id; lines without it are the older format and load unchanged)
gives the key its limit class, a key of the config's ``limits`` (gateway/auth/limitclass.py); a name that is
not one is an error naming the line, at start-up and at reload (the previous table then stays in force).

``ipgate apikey create`` prints a new key once and the line to append. The raw key is never stored, here
or in memory: a presented key is hashed and looked up by digest.

Why a digest lookup is safe against timing attacks: the dictionary probe compares SHA-256 digests, so its
timing can reveal at most how a digest of the attacker's own input relates to stored digests; turning that
into a working key needs a SHA-256 preimage. The final equality is still checked with
``hmac.compare_digest`` so no byte comparison of secrets short-circuits.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.limitclass import LimitClasses, parse_limits_field
from gateway.config import ConfigError
from gateway.principal import Principal

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-"
_HEX64 = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9._:@/+-]{1,128}")


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new key: ``sk-`` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def format_line(digest_hex: str, client_id: str, tenant: str | None = None, roles: frozenset[str] = frozenset(),
                limit_class: str | None = None) -> str:
    parts = [digest_hex, client_id]
    if tenant or roles:
        parts.append(tenant or "-")
    if roles:
        parts.append(",".join(sorted(roles)))
    if limit_class is not None:
        parts.append(f"limits={limit_class}")
    return " ".join(parts)


def _limit_class(fields: list[str], where: str, classes: LimitClasses) -> tuple[list[str], str | None]:
    """``fields`` without the ``limits=CLASS`` field, and CLASS (None when the line names none)."""
    named = [(i, n) for i, f in enumerate(fields) if i >= 2 and (n := parse_limits_field(f)) is not None]
    if not named:
        return fields, None
    if len(named) > 1:
        raise ConfigError(f"{where}: more than one limits= field")
    i, name = named[0]
    if name not in classes.known:
        shown = name if NAME_RE.fullmatch(name) else "(a name with characters outside [A-Za-z0-9._:@/+-])"
        raise ConfigError(f"{where}: limits={shown} is not a limit class of the configuration "
                          f"(classes: {classes.describe()})")
    return fields[:i] + fields[i + 1:], name


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


class ApiKeyTable:
    """An immutable digest → principal table; ``lookup`` costs one SHA-256 and one dict probe (≈ 1 µs)."""

    def __init__(self, entries: Mapping[bytes, Principal]) -> None:
        self._entries = {d: _Entry(d, p) for d, p in entries.items()}
        # for the admin API: a client's keys may name different classes (e.g. a batch key on another plan)
        self._classes: dict[str, set[str]] = {}
        for p in entries.values():
            self._classes.setdefault(p.client_id, set()).add(p.limit_class)

    def limit_classes(self, client_id: str) -> frozenset[str]:
        """The limit classes of ``client_id``'s keys (empty when it has none)."""
        return frozenset(self._classes.get(client_id, ()))

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, raw_key: str) -> Principal | None:
        # surrogateescape: a header's undecodable bytes arrive as lone surrogates; hash them, never raise.
        digest = hashlib.sha256(raw_key.encode("utf-8", "surrogateescape")).digest()
        entry = self._entries.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None
        return entry.principal

    @classmethod
    def parse(cls, text: str, *, source: str, classes: LimitClasses | None = None) -> ApiKeyTable:
        """``classes``: the configured limit classes (None: only ``default`` exists)."""
        classes = classes if classes is not None else LimitClasses(())
        entries: dict[bytes, Principal] = {}
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{lineno}"
            fields, named_class = _limit_class(line.split(), where, classes)
            if len(fields) < 2 or len(fields) > 4:
                raise ConfigError(
                    f"{where}: expected 'sha256-hex client_id [tenant] [roles] [limits=CLASS]', "
                    f"got {len(fields)} fields besides limits="
                )
            digest_hex = fields[0].lower()
            if not _HEX64.fullmatch(digest_hex):
                # The most likely mistake is pasting the raw key: say so without echoing it.
                hint = " (this looks like a raw key: store its hash)" if fields[0].startswith(KEY_PREFIX) else ""
                raise ConfigError(f"{where}: the first field must be a 64-character SHA-256 hex digest{hint}")
            client_id = fields[1]
            if not NAME_RE.fullmatch(client_id):
                raise ConfigError(f"{where}: client_id {client_id!r} has characters outside [A-Za-z0-9._:@/+-]")
            tenant = fields[2] if len(fields) > 2 and fields[2] != "-" else None
            if tenant is not None and not NAME_RE.fullmatch(tenant):
                raise ConfigError(f"{where}: tenant {tenant!r} has characters outside [A-Za-z0-9._:@/+-]")
            roles = frozenset(r for r in fields[3].split(",") if r) if len(fields) > 3 else frozenset()
            digest = bytes.fromhex(digest_hex)
            if digest in entries:
                raise ConfigError(f"{where}: duplicate key hash (already mapped to {entries[digest].client_id!r})")
            entries[digest] = Principal(client_id=client_id, tenant=tenant, roles=roles, auth_method="api_key",
                                        limit_class=classes.for_api_key(named_class, tenant))
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path, classes: LimitClasses | None = None) -> ApiKeyTable:
        p = Path(path)
        try:
            # utf-8-sig: a BOM (Windows editors) is no part of the first line, whose digest it made "not a
            # 64-character SHA-256 hex digest", an error no one can see in the file (read_secret does the same)
            text = p.read_text(encoding="utf-8-sig")
        except OSError as e:
            raise ConfigError(f"auth.api_keys.file: cannot read {p}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            # Not a ConfigError, this escaped every caller: a crash at start-up, and at reload it ended the
            # polling task for good (later revocations were never read) and broke SIGHUP's config reload.
            line = e.object[:e.start].count(b"\n") + 1
            raise ConfigError(f"{p}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from e
        return cls.parse(text, source=str(p), classes=classes)


class ApiKeyFile:
    """The table behind a file, re-read when the file's (mtime, size, inode) changes.

    A reload that fails to parse keeps the previous table (the gateway keeps serving known clients) and logs
    the error once per distinct failure, not once per poll.
    """

    def __init__(self, path: str | Path, classes: LimitClasses | None = None) -> None:
        self.path = Path(path)
        self._classes = classes
        # The stamp is taken before the read, as in reload_if_changed: taken after, a change written while the
        # file was being read (a revocation) had the stamp of the table already in force and was never read.
        self._stamp = self._file_stamp()
        self.table = ApiKeyTable.load(self.path, classes)  # at start-up a bad file is fatal: ConfigError
        self._last_error: str | None = None
        log.info("loaded %d API keys from %s", len(self.table), self.path)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> bool:
        """Returns True when a new table was installed."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        try:
            table = ApiKeyTable.load(self.path, self._classes)
        except ConfigError as e:
            if str(e) != self._last_error:
                log.error("API key file not reloaded, keeping %d keys: %s", len(self.table), e)
                self._last_error = str(e)
            return False
        self._stamp, self._last_error = stamp, None
        self.table = table
        log.info("reloaded %d API keys from %s", len(table), self.path)
        return True
