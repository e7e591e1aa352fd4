"""``RedisStore``: the shared ``StateStore`` for any number of gateway processes and hosts.

- The hot path is ONE ``EVALSHA`` of ``lua/hot_path.lua`` (``EVAL`` with the source on ``NOSCRIPT``, e.g.
  after a Redis restart). The script reads Redis ``TIME``, so every replica decides against the same clock,
  and runs GCRA for requests and tokens atomically at the client's effective tier.
- Every key written has a TTL (rate-limit hashes expire one second after their bucket is full again); writes
  that set a value and its TTL are atomic (a Lua script or MULTI/EXEC).
- A client's keys share the hash tag ``{client_id}`` so that, in Redis Cluster, the hot-path script's four
  keys live in one slot. Keys that are not per client are touched one key per command.
- All traffic goes over one multiplexed connection per process (``resp.RespMux``): every call is bounded by
  ``StoreConfig.timeout_ms``, connect included, and never retried here. With ``StoreConfig.cluster`` the
  connection is a ``cluster.ClusterMux`` instead (one ``RespMux`` per primary, routed by hash slot, following
  ``MOVED``/``ASK``); every call names the key it is routed by.

Errors propagate (``redis.exceptions.RedisError``, ``TimeoutError``): wrap this store in ``ResilientStore``
to apply the configured failure mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from gateway.config import StoreConfig
from gateway.ratelimit import interval_us
from gateway.store.base import AdmitRequest, AdmitResult, ClientRecord, Limits, Override, RateDecision
from gateway.store.cluster import ClusterMux
from gateway.store.lua_script import Conn, LuaScript
from gateway.store.memory import (
    ALERTS_TTL_S,
    AUDIT_TTL_S,
    DEFAULT_MAX_STATE_BYTES,
    MAX_SKETCH_MEMBERS,
    check_state,
    effective_tier,
)
from gateway.store.paging import BULK_PAGE, newest, retried
from gateway.store.resp import Arg, RespMux, pack_bulks

log = logging.getLogger(__name__)

TIER_ARGS_CACHE_MAX = 256  # encoded limits_by_tier tuples kept (the policy has one per limit class)
OVERRIDE_INDEX_MAX = 100_000  # overrides listed in the index the failure modes read (soonest to expire dropped)
_OVERRIDE_PAGE = 500  # index members read per call (each call stays well inside timeout_ms)
# How often at most the keyspace is scanned for override keys the index does not list (``_index_unlisted``)
OVERRIDE_SCAN_EVERY_MS = 3600 * 1000
_SCAN_PAGE = 1000  # keys SCAN looks at per call
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_UNESCAPE = re.compile(r"%(25|7B|7D)")
_UNESCAPED = {"25": "%", "7B": "{", "7D": "}"}


def _ms(ttl_s: float) -> int:
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    return max(1, int(ttl_s * 1000))


def _lease_us(lease_s: float) -> int:
    return max(1000, int(lease_s * 1e6))


def _decision(row: Sequence[Any], i: int) -> RateDecision:
    return RateDecision(bool(row[i]), int(row[i + 1]), int(row[i + 2]), int(row[i + 3]) / 1e6, int(row[i + 4]) / 1e6)


def _override(raw: Any) -> Override | None:
    return "allow" if raw == b"allow" else "deny" if raw == b"deny" else None




class RedisStore:
    def __init__(self, url: str, *, timeout_s: float = 0.05, prefix: str = "ipgate:",
                 max_state_bytes: int = DEFAULT_MAX_STATE_BYTES, cluster_seeds: Sequence[str] | None = None) -> None:
        """``cluster_seeds``: Redis Cluster seed node URLs (``url`` is then ignored); None = one endpoint."""
        self._mux: Conn = (ClusterMux(cluster_seeds, timeout_s=timeout_s) if cluster_seeds is not None
                           else RespMux(url, timeout_s=timeout_s))
        self._p = prefix
        self._max_state = max_state_bytes
        self._hot = LuaScript("hot_path.lua")
        self._peek = LuaScript("peek.lua")
        self._reconcile = LuaScript("reconcile.lua")
        self._renew = LuaScript("renew.lua")
        self._save = LuaScript("save_state.lua")
        self._swap = LuaScript("swap_state.lua")
        self._merge = LuaScript("merge_state.lua")
        self._ov_index = LuaScript("override_index.lua")
        self._lease = LuaScript("lease.lua")
        self._recipient = LuaScript("recipient.lua")
        self._recipients = LuaScript("recipients.lua")
        # id(limits_by_tier) -> (that tuple, its packed Lua arguments, their count): one entry per limit class
        self._tier_args: dict[int, tuple[Sequence[Limits], bytes, int]] = {}
        self._scanned_overrides = False  # this process has listed the overrides the index lacked (or cannot)

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> RedisStore:
        return cls(cfg.url, timeout_s=cfg.timeout_ms / 1000.0, prefix=cfg.key_prefix,
                   max_state_bytes=cfg.max_state_bytes,
                   cluster_seeds=cfg.cluster_urls)

    @property
    def connection(self) -> Conn:
        return self._mux

    @property
    def reconnects(self) -> int:
        """Connections to Redis that replaced a lost one: a Redis restarted between two calls shows only here."""
        return self._mux.reconnects

    # key layout ------------------------------------------------------------------------------------------
    def client_keys(self, client_id: str) -> tuple[str, str, str, str]:
        # Braces inside the id would end (or empty) the hash tag; percent-encoding them keeps the tag intact
        # and the mapping injective.
        if "{" in client_id or "}" in client_id or "%" in client_id:
            client_id = client_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        elif not client_id:
            # an empty tag "{}" is no tag: the keys would hash to three slots (CROSSSLOT in a cluster). A lone
            # "%" never results from the encoding above ("%" is always escaped), so it names "" alone.
            client_id = "%"
        tag = f"{self._p}{{{client_id}}}"
        return f"{tag}:rl", f"{tag}:st", f"{tag}:ov", f"{tag}:if"  # rate limits, state, override, in flight

    def _limit_args(self, limits_by_tier: Sequence[Limits]) -> tuple[bytes, int]:
        # The policy passes one tuple per limit class, the same object on every request: encode each once. Keyed
        # by identity (hashing the tuple would hash every Limits per call); the entry keeps the tuple alive, so
        # its id cannot be reused by another object while cached, and the `is` check makes that explicit.
        cached = self._tier_args.get(id(limits_by_tier))
        if cached is not None and cached[0] is limits_by_tier:
            return cached[1], cached[2]
        args: list[Arg] = [len(limits_by_tier)]
        for lim in limits_by_tier:
            args += [repr(interval_us(lim.requests_per_minute)), lim.burst_requests,
                     repr(interval_us(lim.tokens_per_minute)), lim.burst_tokens, lim.max_in_flight]
        packed = pack_bulks(args)
        if len(self._tier_args) >= TIER_ARGS_CACHE_MAX:  # callers that build tuples per call: stay bounded
            self._tier_args.clear()
        self._tier_args[id(limits_by_tier)] = (limits_by_tier, packed, len(args))
        return packed, len(args)

    # hot path ----------------------------------------------------------------------------------------------
    async def hot_path(self, req: AdmitRequest) -> AdmitResult:
        state_ttl = int(req.state_ttl_s * 1000) if req.state_ttl_s > 0 else 0
        tiers, ntier_args = self._limit_args(req.limits_by_tier)
        keys = self.client_keys(req.client_id)
        body = pack_bulks([4, *keys, req.tokens, state_ttl, req.lease, _lease_us(req.lease_s)]) + tiers
        row = await self._hot.run_packed(self._mux, body, 9 + ntier_args, keys[0])
        return AdmitResult(
            allowed=bool(row[0]),
            tier=int(row[1]),
            override=_override(row[2]),
            requests=_decision(row, 4),
            tokens=_decision(row, 9),
            detector_state=row[17] if len(row) > 17 else None,
            now=int(row[3]) / 1e6,
            slot=row[14] == 1,
            in_flight=int(row[15]),
            in_flight_limit=int(row[16]),
        )

    async def peek(self, req: AdmitRequest) -> AdmitResult:
        """One ``EVALSHA`` of ``lua/peek.lua`` (read-only) on the client's keys."""
        tiers, ntier_args = self._limit_args(req.limits_by_tier)
        keys = self.client_keys(req.client_id)
        row = await self._peek.run_packed(self._mux, pack_bulks([4, *keys, req.tokens]) + tiers, 6 + ntier_args,
                                          keys[0])
        return AdmitResult(allowed=bool(row[0]), tier=int(row[1]), override=_override(row[2]),
                           requests=_decision(row, 4), tokens=_decision(row, 9), detector_state=None,
                           now=int(row[3]) / 1e6, in_flight=int(row[14]), in_flight_limit=int(row[15]))

    async def reconcile_tokens(self, client_id: str, reserved: int, actual: int, limits: Limits,
                               until_us: float | None = None, lease: str = "") -> None:
        delta = max(0, actual) - reserved  # a negative usage must not refund other in-flight reservations
        if not delta and not lease:
            return
        keys = self.client_keys(client_id)
        args: list[Arg] = [delta, repr(interval_us(limits.tokens_per_minute)),
                           repr(float(until_us)) if until_us is not None else ""]
        if lease:  # the in-flight slot goes back in the same call
            await self._reconcile.run(self._mux, [keys[0], keys[3]], [*args, lease])
        else:
            await self._reconcile.run(self._mux, [keys[0]], args)

    async def renew_leases(self, leases: Sequence[tuple[str, str]], lease_s: float) -> None:
        """One call per client (its key's slot), all sent at once over the multiplexed connection."""
        by_client: dict[str, list[Arg]] = {}
        for client_id, lease in leases:
            by_client.setdefault(client_id, []).append(lease)
        if not by_client:
            return
        lease_us = _lease_us(lease_s)
        results = await asyncio.gather(*(self._renew.run(self._mux, [self.client_keys(c)[3]], [lease_us, *ids])
                                         for c, ids in by_client.items()), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    # per-client state and overrides ---------------------------------------------------------------------------
    async def save_client_state(self, client_id: str, state: bytes, tier: int, score: float, ttl_s: float) -> None:
        check_state(state, tier, self._max_state)
        await self._save.run(self._mux, [self.client_keys(client_id)[1]],
                             [bytes(state), tier, repr(float(score)), _ms(ttl_s)])

    async def swap_client_state(self, client_id: str, expect: bytes | None, state: bytes, tier: int, score: float,
                                ttl_s: float) -> tuple[bool, bytes | None]:
        check_state(state, tier, self._max_state)
        # the expected state travels as its SHA-1 (40 bytes instead of ~7 KB); Redis hashes the stored one
        digest = hashlib.sha1(expect, usedforsecurity=False).hexdigest() if expect else ""
        r = await self._swap.run(self._mux, [self.client_keys(client_id)[1]],
                                 [bytes(state), tier, repr(float(score)), _ms(ttl_s), digest])
        if r[0] == 1:
            return True, None
        return False, (bytes(r[1]) if len(r) > 1 and r[1] else None)

    async def merge_client_state(self, client_id: str, state: bytes, tier: int, score: float, ttl_s: float) -> bool:
        """``save_client_state`` unless the stored tier is already ``tier`` or higher; True when written. For
        states kept in process memory during an outage (``ResilientStore``'s write-back on recovery)."""
        check_state(state, tier, self._max_state)
        return bool(await self._merge.run(self._mux, [self.client_keys(client_id)[1]],
                                          [bytes(state), tier, repr(float(score)), _ms(ttl_s)]))

    async def set_override(self, client_id: str, override: Override | None, tier: int | None, ttl_s: float) -> None:
        ov = self.client_keys(client_id)[2]
        # First the entry in the index the failure modes read (another slot on a cluster: its own call), then the
        # override the hot path applies: a failure in between leaves an index entry without an override, which
        # ``overrides`` skips, and the caller is told that nothing was saved.
        index = [f"{self._p}overrides"]
        if override is None and tier is None:
            # lifting: the other way round for the same reason (the index entry outlives the override it lists)
            await self._mux.execute("DEL", ov)
            await self._ov_index.run(self._mux, index, [client_id, 0, OVERRIDE_INDEX_MAX])
            return
        if tier is not None and tier < 0:
            raise ValueError(f"tier must be >= 0, got {tier}")
        fields: list[Arg] = []
        if override is not None:
            fields += ["o", override]
        if tier is not None:
            fields += ["t", tier]
        await self._ov_index.run(self._mux, index, [client_id, _ms(ttl_s), OVERRIDE_INDEX_MAX])
        await self._mux.execute_many([("MULTI",), ("DEL", ov), ("HSET", ov, *fields), ("PEXPIRE", ov, _ms(ttl_s)),
                                      ("EXEC",)])

    async def overrides(self) -> dict[str, tuple[Override | None, int | None, float]]:
        """Every live administrator override: client -> (override, pinned tier, expiry in unix seconds). Read
        page by page from the index ``set_override`` keeps (at most ``OVERRIDE_INDEX_MAX``), each client's
        override from its own key (an index entry whose key is gone, expired or lost, is skipped)."""
        index = f"{self._p}overrides"
        if not self._scanned_overrides:
            self._scanned_overrides = await self._index_unlisted(index)
        out: dict[str, tuple[Override | None, int | None, float]] = {}
        now_ms = time.time() * 1000
        # ZSCAN, not pages by offset: an entry removed (lifted, expired) between two pages shifted every later one
        # by one place and as many live overrides were skipped; ZSCAN returns every member present throughout.
        cursor: Any = 0
        while True:
            cursor, flat = await self._mux.execute("ZSCAN", index, cursor, "COUNT", _OVERRIDE_PAGE)
            rows = [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]
            rows = [(c, exp) for c, exp in rows if exp > now_ms and c not in out]
            if rows:
                got = await self._mux.execute_many([("HMGET", self.client_keys(c)[2], "o", "t") for c, _ in rows])
                for (c, exp), (o, t) in zip(rows, got, strict=True):
                    if o is not None or t is not None:
                        out[c] = (_override(o), int(t) if t is not None else None, exp / 1000)
            if int(cursor) == 0 or len(out) >= OVERRIDE_INDEX_MAX:
                break
        return out

    async def _index_unlisted(self, index: str) -> bool:
        """List in the index the override keys it lacks: those set by a build before the index (commit c6c0320),
        which every process of this build would otherwise miss during an outage until they expire (90 days by
        default). One ``SCAN`` of the keyspace (of each primary), on this process's first read of the index,
        skipped where another process scanned within ``OVERRIDE_SCAN_EVERY_MS`` (the marker key); an entry
        added keeps its override's own expiry, and one already listed is left alone (``ZADD NX``). True when
        done, or refused for good (an ACL without ``SCAN``: logged); False after an outage or a timeout (the
        next read scans again). Never raises: the index is read whatever became of the scan."""
        marker = f"{self._p}overrides:scanned"
        try:
            if await self._mux.execute("EXISTS", marker):
                return True
            nodes = self._mux.primaries() if isinstance(self._mux, ClusterMux) else [self._mux]
            pattern = _GLOB_SPECIAL.sub(r"\\\1", self._p) + "{*}:ov"
            head, added = len(self._p) + 1, 0
            for node in nodes:
                cursor: Any = b"0"
                while True:
                    cursor, keys = await node.execute("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_PAGE,
                                                      "TYPE", "hash")
                    added += await self._list_unlisted(index, keys, head)
                    if int(cursor) == 0:
                        break
            await self._mux.execute("SET", marker, "1", "PX", OVERRIDE_SCAN_EVERY_MS)
        except ResponseError as e:
            log.warning("state store: the keyspace could not be scanned for overrides set before the override "
                        "index (%s); such overrides are not known to the failure modes until set again", e)
            return True
        except Exception as e:  # an outage or a timeout: the index is read (or fails) as before
            log.debug("state store: scan for unlisted overrides interrupted: %r", e)
            return False
        if added:
            log.warning("state store: %d override(s) set by an earlier build listed in the override index", added)
        return True

    async def _list_unlisted(self, index: str, keys: Sequence[bytes], head: int) -> int:
        """Add ``keys`` (override keys) to the index with their expiry; the index's TTL covers the latest."""
        if not keys:
            return 0
        t = await self._mux.execute("TIME")
        now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
        pttls = await self._mux.execute_many([("PTTL", k) for k in keys])
        entries: list[Arg] = []
        for key, pttl in zip(keys, pttls, strict=True):
            enc = key.decode(errors="replace")[head:-4]  # ``<prefix>{<client>}:ov``: a tag holds no brace
            if int(pttl) > 0 and "{" not in enc and "}" not in enc:
                client = "" if enc == "%" else _UNESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], enc)
                entries += [now_ms + int(pttl), client]
        if not entries:
            return 0
        latest = max(int(e) for e in entries[0::2])
        added, ttl = await self._mux.execute_many([("ZADD", index, "NX", *entries), ("PTTL", index)])
        if int(ttl) < latest - now_ms:  # -1: created here, without a TTL; or expiring before these entries
            await self._mux.execute("PEXPIREAT", index, latest)
        return int(added)

    async def get_client(self, client_id: str) -> ClientRecord | None:
        _, st, ov, _ = self.client_keys(client_id)
        (tier_raw, score_raw), (o_raw, pin_raw), pttl = await self._mux.execute_many(
            [("HMGET", st, "t", "c"), ("HMGET", ov, "o", "t"), ("PTTL", ov)])
        if tier_raw is None and o_raw is None and pin_raw is None:
            return None
        override = _override(o_raw)
        pinned = int(pin_raw) if pin_raw is not None else None
        stored = int(tier_raw) if tier_raw is not None else 0
        has_ov = o_raw is not None or pin_raw is not None
        return ClientRecord(
            client_id=client_id,
            tier=effective_tier(stored, pinned, override),
            override=override,
            score=float(score_raw) if score_raw is not None else 0.0,
            detector_tier=stored,
            pinned_tier=pinned,
            override_ttl_s=pttl / 1000 if has_ov and pttl > 0 else None,
        )

    async def get_client_state(self, client_id: str) -> bytes | None:
        raw = await self._mux.execute("HGET", self.client_keys(client_id)[1], "s")
        return bytes(raw) if raw else None

    # cross-account linking ----------------------------------------------------------------------------------
    async def link_sketches(self, client_id: str, sketches: Sequence[int], ttl_s: float) -> dict[str, int]:
        """One pipelined round trip; one key per command so it also works key-by-key on Redis Cluster."""
        unique = list(dict.fromkeys(sketches))
        if not unique:
            return {}
        ttl, now = _ms(ttl_s), repr(time.time())
        cmds: list[tuple[Arg, ...]] = []
        for sk in unique:
            key = f"{self._p}sk:{sk}"
            cmds += [("ZRANGE", key, 0, -1), ("ZADD", key, now, client_id),
                     ("ZREMRANGEBYRANK", key, 0, -(MAX_SKETCH_MEMBERS + 1)),  # keep the most recent members
                     ("PEXPIRE", key, ttl)]
        replies = await self._mux.execute_many(cmds)
        shared: dict[str, int] = {}
        for members in replies[0::4]:
            for m in members:
                other = m.decode()
                if other != client_id:
                    shared[other] = shared.get(other, 0) + 1
        return shared

    # alerts, recipients, leases, blobs ---------------------------------------------------------------------
    async def append_alert(self, alert_json: str, max_len: int) -> None:
        key = f"{self._p}alerts"
        await self._mux.execute_many([("MULTI",), ("LPUSH", key, alert_json), ("LTRIM", key, 0, max(1, max_len) - 1),
                                      ("PEXPIRE", key, _ms(ALERTS_TTL_S)), ("EXEC",)])

    async def recent_alerts(self, count: int) -> list[str]:
        return await newest(self._mux, f"{self._p}alerts", count)

    async def append_audit(self, record_json: str, max_len: int) -> None:
        key = f"{self._p}audit"
        await self._mux.execute_many([("MULTI",), ("LPUSH", key, record_json), ("LTRIM", key, 0, max(1, max_len) - 1),
                                      ("PEXPIRE", key, _ms(AUDIT_TTL_S)), ("EXEC",)])

    async def recent_audit(self, count: int) -> list[str]:
        return await newest(self._mux, f"{self._p}audit", count)

    async def add_recipient(self, client_id: str, key_version: int, ttl_s: float) -> None:
        await self._recipient.run(self._mux, [f"{self._p}wm:recipients"], [f"{key_version}:{client_id}", _ms(ttl_s)])

    async def recipients(self) -> dict[str, list[int]]:
        """Every live recipient and its key versions, page by page (ZSCAN: a member present throughout the
        scan is returned, possibly twice; kept once)."""
        found: dict[str, set[int]] = {}
        cursor: Any = 0
        while True:
            cursor, *members = await retried(self._recipients.run, self._mux, [f"{self._p}wm:recipients"],
                                              [cursor, BULK_PAGE])
            for raw in members:
                version, _, client = raw.decode().partition(":")
                found.setdefault(client, set()).add(int(version))
            if int(cursor) == 0:
                break
        return {c: sorted(v) for c, v in found.items()}

    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(await self._lease.run(self._mux, [f"{self._p}lease:{name}"], [owner, _ms(ttl_s)]))

    async def get_blob(self, name: str) -> bytes | None:
        value = await self._mux.execute("GET", f"{self._p}blob:{name}")
        return value if isinstance(value, bytes) else None

    async def set_blob(self, name: str, value: bytes, ttl_s: float) -> None:
        await self._mux.execute("SET", f"{self._p}blob:{name}", bytes(value), "PX", _ms(ttl_s))

    # lifecycle ---------------------------------------------------------------------------------------------
    async def ping(self) -> None:
        """Health probe: PING (on a cluster: ``CLUSTER INFO`` on every primary), then a tiny write with a TTL
        (on a cluster: one on every primary, ``<prefix>health:{N}``, concurrently).

        PING alone answers PONG on a primary demoted to a replica, and under maxmemory/noeviction, so a probe
        that only pinged would declare such a store healthy while every hot-path write fails. A single endpoint
        that answers ``READONLY`` is reconnected, so that a DNS name or VIP that moved to the new primary after a
        failover is followed (the old connection would otherwise stay on the replica for ever).
        """
        await self._mux.ping()
        if isinstance(self._mux, ClusterMux):
            mux = self._mux
            results = await asyncio.gather(*(mux.execute("SET", key, "1", "PX", 10_000)
                                              for key in mux.probe_keys(f"{self._p}health")),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            return
        try:
            await self._mux.execute("SET", f"{self._p}health", "1", "PX", 10_000)
        except ResponseError as e:
            if str(e).startswith("READONLY"):
                await self._mux.close()  # RespMux reconnects lazily on the next call
            raise

    async def close(self) -> None:
        await self._mux.close()
