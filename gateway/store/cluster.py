"""``ClusterMux``: the store's connection to a Redis Cluster — one multiplexed ``RespMux`` per primary.

It offers the calls ``RedisStore`` makes on a ``RespMux`` (``execute_packed`` / ``execute`` /
``execute_many`` / ``ping`` / ``close``) and routes each one by its key's hash slot:

- **Slot map** from ``CLUSTER SLOTS`` (asked of the known primaries and the seed nodes at once; the first
  complete answer wins, an empty or partial one only if no node gives better), loaded on the
  first call and refreshed in the background after a redirect or a connection failure; a refresh never blocks
  a request. The slot of a key is CRC16 of its hash tag (``redis.crc.key_slot``, redis-py's implementation).
- **MOVED** (the slot lives elsewhere now): the slot is re-pointed at once, a full refresh is scheduled, and
  the command is sent again to the new owner. **ASK** (the slot is being migrated and this key has already
  moved): ``ASKING`` + the command on the target, in the same write (one ``ASKING`` per command of a pipeline:
  Redis clears the flag after one command, except inside ``MULTI``); the map is not changed. **TRYAGAIN**
  (a multi-key script during the migration of its slot, its keys split between the two nodes or missing on
  one): short pauses (1 ms doubling to 10 ms) for at most half the timeout, then the ``TRYAGAIN`` error reply
  is raised (``ResilientStore`` answers that one call by the failure mode; the store is not marked down). A
  **MOVED back** to a node that already sent the call away (a hand-over whose source was told before its
  target: each names the other for a moment) is waited out the same way. At most ``MAX_REDIRECTS`` other
  MOVED/ASK per call; past that the call fails like an unreachable Redis.
- A redirected script or ``MULTI``/``EXEC`` block is sent again **whole**: a redirect reply means the node
  did not execute it (a block's commands are refused all together). A pipeline outside ``MULTI``
  (``link_sketches``) is redirected **command by command**: only the commands answered by a redirect are sent
  again, because during a migration the source executes those of the keys it still holds.
- ``execute_many`` splits a pipeline whose commands touch keys in different slots (``link_sketches``: one
  sorted set per sketch) into one pipeline per slot, sent concurrently, replies put back in order.
- Scripts (``EVALSHA``) go to the node that owns their keys; a ``NOSCRIPT`` there is answered by the caller's
  ``EVAL`` fallback on the same node, so every primary loads the scripts it needs on first use.
- ``CLUSTERDOWN`` and exhausted redirects raise ``redis.exceptions.ConnectionError``: like a node that is
  down or hung (every node call is bounded by the timeout), they are an outage to ``ResilientStore``, which
  applies the configured failure mode to the **whole** store until ``ping`` (every primary answers
  ``CLUSTER INFO`` with ``cluster_state:ok``) succeeds.
- ``probe_keys`` names one key per primary (a hash tag chosen to fall in a slot that primary serves), so
  that the store's health probe writes to **every** primary: a primary that refuses writes (``OOM``,
  ``MISCONF``) while the others accept them keeps the store degraded instead of flapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import hiredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.store.resp import Arg, RespMux, check_replies, pack, reply_error

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5  # MOVED/ASK followed per call; a healthy cluster needs at most two
_TRYAGAIN_FIRST_PAUSE_S = 0.001
_TRYAGAIN_MAX_PAUSE_S = 0.010
_ASKING = pack(("ASKING",))
_NO_KEY_SLOT = 0  # PING and other key-less commands: any primary will do
# The decimal strings "0" .. "109757" hash to all 16384 slots (checked by a test), so a search for a hash tag
# in a given primary's slots over this range always succeeds.
PROBE_TAG_RANGE = 110_000


def _b(a: Arg) -> bytes:
    return a if isinstance(a, bytes) else str(a).encode()


def slot_of(key: Arg) -> int:
    return int(key_slot(_b(key)))


def _redirect(replies: Sequence[Any]) -> tuple[str, int, str] | None:
    """The first ``MOVED``/``ASK``/``TRYAGAIN`` reply as (kind, slot, "host:port"); CLUSTERDOWN raises.
    Redirects are always top-level replies: inside ``MULTI`` each queued command answers ``QUEUED`` or the
    redirect, and ``EXEC`` then answers ``EXECABORT`` (so nested replies need no scan)."""
    for r in replies:
        if not isinstance(r, hiredis.ReplyError):
            continue
        msg = str(r)
        if msg.startswith(("MOVED ", "ASK ")):
            kind, slot, addr = msg.split(" ", 2)
            return kind, int(slot), addr
        if msg.startswith("TRYAGAIN"):
            return "TRYAGAIN", -1, ""
        if msg.startswith("CLUSTERDOWN"):
            raise RedisConnectionError(f"Redis Cluster is down: {msg}")
    return None


def _is_redirect(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(("MOVED ", "ASK ", "TRYAGAIN"))


class ClusterMux:
    """Routes the store's commands to the primaries of a Redis Cluster found from ``seeds`` (URLs)."""

    def __init__(self, seeds: Sequence[str], *, timeout_s: float) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node URL")
        first = urlparse(seeds[0])
        if first.scheme not in ("redis", "rediss"):
            raise ValueError(f"Redis Cluster seed URLs are redis:// or rediss://, got {first.scheme!r}")
        if first.path.strip("/") not in ("", "0"):
            raise ValueError("Redis Cluster has only database 0; drop the /db from the URL")
        # Nodes learnt from CLUSTER SLOTS are reached with the seed's scheme and credentials.
        self._scheme = first.scheme
        self._auth = first.netloc.rpartition("@")[0] + "@" if "@" in first.netloc else ""
        self._seeds = [self._addr(urlparse(u).hostname or "127.0.0.1", urlparse(u).port or 6379) for u in seeds]
        self._timeout = timeout_s
        self._nodes: dict[str, RespMux] = {}
        self._slots: list[RespMux | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._loaded = False
        self._loading = asyncio.Lock()
        self._refresh_task: asyncio.Task[None] | None = None
        self.redirects: Counter[str] = Counter()  # MOVED / ASK / TRYAGAIN followed (tests, debugging)
        self._probe_tags: dict[RespMux, int] = {}  # primary → a hash tag (decimal) in one of its slots
        self._reconnects_gone = 0  # reconnects of node connections closed since (the sum never goes back)

    @staticmethod
    def _addr(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _node(self, addr: str) -> RespMux:
        mux = self._nodes.get(addr)
        if mux is None:
            mux = self._nodes[addr] = RespMux(f"{self._scheme}://{self._auth}{addr}/0", timeout_s=self._timeout)
        return mux

    # slot map ------------------------------------------------------------------------------------------------
    async def _load_map(self) -> None:
        """Ask the primaries we know and the seeds, all at once, for ``CLUSTER SLOTS``; the first complete map
        to arrive wins.

        All at once: asked one after the other, a hung node (a frozen host, a partition that drops packets)
        costs a whole timeout before the next is asked, which is all of the health probe's budget; after a
        failover away from such a node the probe could then never load the new map, and the store would stay
        degraded while the cluster is healthy. A node outside the cluster (after ``CLUSTER RESET``, or a
        replacement that lost its nodes.conf) answers an empty map, and one that has not yet learnt of a change
        may answer a partial one: such an answer must not win (an empty map would drop every primary, and with
        them the nodes asked next time). Without a complete answer the most complete one is used; without any
        slot at all the load fails."""
        serving = set(self._slots)
        known = list(dict.fromkeys([*(a for a, m in self._nodes.items() if m in serving), *self._seeds]))
        muxes = {addr: self._node(addr) for addr in known}

        async def ask(addr: str) -> tuple[str, Any]:
            return addr, await muxes[addr].execute("CLUSTER", "SLOTS")

        last: Exception | None = None
        best: list[RespMux | None] | None = None
        best_served = 0
        tasks = [asyncio.ensure_future(ask(addr)) for addr in known]
        try:
            for next_answer in asyncio.as_completed(tasks):
                try:
                    addr, rows = await next_answer
                except Exception as e:
                    last = e
                    continue
                host = addr.rpartition(":")[0].strip("[]")
                slots: list[RespMux | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
                for row in rows:
                    start, end, primary = int(row[0]), int(row[1]), row[2]
                    # an empty or "?" host means "the address you asked me on" (cluster-announce-ip unset)
                    node_host = primary[0].decode() if primary[0] not in (b"", b"?", None) else host
                    mux = self._node(self._addr(node_host, int(primary[1])))
                    slots[start:end + 1] = [mux] * (end - start + 1)
                served = REDIS_CLUSTER_HASH_SLOTS - slots.count(None)
                if served > best_served:
                    best, best_served = slots, served
                if served == REDIS_CLUSTER_HASH_SLOTS:
                    break
                last = RedisConnectionError(f"{addr} serves {served} of {REDIS_CLUSTER_HASH_SLOTS} slots")
        finally:
            for t in tasks:
                t.cancel()  # a cancelled call's reply is read and dropped: its connection stays in order
            await asyncio.gather(*tasks, return_exceptions=True)
        if best is None:
            raise RedisConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS with a slot map: {last}")
        self._slots = best
        self._loaded = True
        live = set(best)
        for gone in [a for a, m in self._nodes.items() if m not in live and a not in self._seeds]:
            mux = self._nodes.pop(gone)
            self._reconnects_gone += mux.reconnects
            await mux.close()

    async def refresh(self) -> None:
        async with self._loading:
            await self._load_map()

    def _schedule_refresh(self) -> None:
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.get_running_loop().create_task(self._background_refresh())

    async def _background_refresh(self) -> None:
        try:
            await self.refresh()
        except Exception as e:
            log.debug("Redis Cluster slot map refresh failed: %s", e)

    async def _owner(self, slot: int) -> RespMux:
        if not self._loaded:
            async with self._loading:
                if not self._loaded:
                    await self._load_map()
        mux = self._slots[slot]
        if mux is None:
            self._schedule_refresh()
            raise RedisConnectionError(f"no Redis Cluster node serves slot {slot}")
        return mux

    # routing -------------------------------------------------------------------------------------------------
    async def _send(self, slot: int, data: bytes, replies: int, commands: Sequence[bytes] | None = None
                    ) -> list[Any]:
        """``commands``: ``data`` split into its packed commands, for a pipeline outside ``MULTI``. Redis redirects
        such a pipeline command by command (ASK names only the keys that already moved), so only the commands
        answered by a redirect are sent again, each after its own ``ASKING`` on an ASK target (Redis clears the
        flag after one command, except inside ``MULTI``). Sent again whole, the commands the source did execute
        would run twice, and on the target they would read nothing and create a second copy of a key that is
        still on the source (whose own migration then fails with BUSYKEY)."""
        asking: RespMux | None = None
        redirects = 0
        pause = _TRYAGAIN_FIRST_PAUSE_S
        tryagain_until: float | None = None
        moved_to: set[str] = set()  # the nodes a MOVED sent this call to
        loop = asyncio.get_running_loop()
        pipeline = commands is not None and len(commands) > 1
        todo = list(range(len(commands))) if commands is not None and pipeline else []  # not answered yet
        done: list[Any] = [None] * len(todo)
        while True:
            mux = asking or await self._owner(slot)
            try:
                if commands is not None and pipeline:
                    part = [commands[i] for i in todo]
                    if asking is not None:
                        out = (await mux.execute_packed(b"".join(_ASKING + c for c in part), 2 * len(part)))[1::2]
                    else:
                        out = await mux.execute_packed(b"".join(part), len(part))
                elif asking is not None:
                    out = (await mux.execute_packed(_ASKING + data, replies + 1))[1:]
                else:
                    out = await mux.execute_packed(data, replies)
            except Exception:
                # A dead or hung primary: a failover may have moved its slots. Not when the node was closed by
                # us (``close``, or a refresh that dropped it): a refresh then would reconnect after close.
                if any(m is mux for m in self._nodes.values()):
                    self._schedule_refresh()
                raise
            if pipeline:
                for i, r in zip(todo, out, strict=True):
                    done[i] = r
                todo = [i for i, r in zip(todo, out, strict=True) if _is_redirect(r)]
            redirect = _redirect(out)
            if redirect is None:
                return done if pipeline else out
            kind, new_slot, addr = redirect
            self.redirects[kind] += 1
            if kind != "TRYAGAIN":
                host, _, port = addr.rpartition(":")
                if host in ("", "?"):  # no announced endpoint: the node we asked is on the same host
                    host = mux.host
                addr = self._addr(host, int(port))  # an IPv6 host comes unbracketed ("::1:7001"); the map brackets it
            # TRYAGAIN: the script's keys are split between the two nodes of a migrating slot; the migration
            # moves them within milliseconds. A MOVED back to a node that already sent this call away: the
            # slot is being handed over and the source was told before the target (each names the other
            # until the target is told). Both end within milliseconds: wait, but within half the call's
            # timeout, then give up with the error reply: ResilientStore answers this one call by the
            # failure mode without declaring the whole store down.
            bounced = kind == "MOVED" and addr in moved_to
            if kind == "TRYAGAIN" or bounced:
                tryagain_until = tryagain_until or loop.time() + self._timeout / 2
                if loop.time() + pause > tryagain_until:
                    what = "still being migrated" if kind == "TRYAGAIN" else "being handed over (MOVED back and forth)"
                    raise ResponseError(f"{kind}: slot {slot} is {what}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, _TRYAGAIN_MAX_PAUSE_S)
                redirects = 0  # source ASK → target TRYAGAIN can alternate; the time budget bounds that loop
                if kind == "TRYAGAIN":
                    continue  # to the same node (with ASKING again if it was the ASK target)
            else:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise RedisConnectionError(
                        f"more than {MAX_REDIRECTS} Redis Cluster redirects for slot {slot}")
            if kind == "MOVED":
                moved_to.add(addr)
                asking = None
                self._slots[new_slot] = self._node(addr)
                self._schedule_refresh()
            else:
                asking = self._node(addr)

    async def execute_packed(self, data: bytes, replies: int = 1, key: Arg | None = None) -> list[Any]:
        return await self._send(_NO_KEY_SLOT if key is None else slot_of(key), data, replies)

    async def execute(self, *args: Arg) -> Any:
        reply = (await self.execute_packed(pack(args), 1, args[1] if len(args) > 1 else None))[0]
        err = reply_error(reply)
        if err is not None:
            raise err
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """One pipeline per slot (sent concurrently), replies in the callers' order. A command without a key
        (``MULTI``, ``EXEC``) stays with its neighbours, so a transaction must touch one slot."""
        groups: dict[int, list[int]] = {}
        slot: int | None = None
        keyless: list[int] = []
        for i, cmd in enumerate(commands):
            if len(cmd) < 2:
                if slot is None:
                    keyless.append(i)  # before the first key: joins the first keyed command's group
                else:
                    groups[slot].append(i)
                continue
            slot = slot_of(cmd[1])
            groups.setdefault(slot, []).extend(keyless)
            keyless = []
            groups[slot].append(i)
        if keyless:
            groups.setdefault(_NO_KEY_SLOT, []).extend(keyless)
        multi = any(len(c) == 1 and _b(c[0]).upper() == b"MULTI" for c in commands)  # one ASKING covers MULTI
        if multi and len(groups) > 1:
            raise ValueError("a MULTI/EXEC block on Redis Cluster must touch keys of one slot")
        order = list(groups.items())
        packed = [pack(c) for c in commands]
        results = await asyncio.gather(*(self._send(s, b"".join(packed[i] for i in idx), len(idx),
                                                    None if multi else [packed[i] for i in idx])
                                         for s, idx in order))
        replies: list[Any] = [None] * len(commands)
        for (_, idx), out in zip(order, results, strict=True):
            for i, r in zip(idx, out, strict=True):
                replies[i] = r
        return check_replies(replies)

    async def ping(self) -> None:
        """Healthy means: the slot map loads, every slot has an owner, and every primary says
        ``cluster_state:ok``. ``CLUSTER INFO`` rather than ``PING``: a primary that answers ``CLUSTERDOWN`` to
        every key (it lost a slot, or sits in a minority partition) still answers ``PONG``, and the store's probe
        would then declare the store healthy only for the next request to that primary to flip it down again,
        two log lines per probe interval for as long as it lasts."""
        await self.refresh()
        if any(m is None for m in self._slots):
            raise RedisConnectionError("Redis Cluster slot map has unassigned slots")
        primaries = {id(m): m for m in self._slots if m is not None}
        infos = await asyncio.gather(*(m.execute("CLUSTER", "INFO") for m in primaries.values()))
        for mux, info in zip(primaries.values(), infos, strict=True):
            if b"cluster_state:ok" not in bytes(info):
                addr = next((a for a, m in self._nodes.items() if m is mux), mux.host)
                raise RedisConnectionError(f"Redis Cluster node {addr} is not serving (cluster_state is not ok)")

    def probe_keys(self, base: str) -> list[str]:
        """One key per primary of the current slot map, ``base:{N}`` with a hash tag ``N`` that falls in one of
        that primary's slots: the health probe writes them all. A write refusal (``OOM`` under maxmemory,
        ``MISCONF`` after a failed RDB save, ``READONLY``) is a property of one node; a probe that wrote to one
        primary only declared the store healthy while another refused every write, and the next request there
        degraded it again — flapping, with two log lines and two gauge changes per probe interval.

        The tag found for a primary is kept while that primary still serves its slot; a search costs about
        (16384 / slots it serves) CRC16s — microseconds for a usual share, at most ``PROBE_TAG_RANGE`` (tens of
        milliseconds) for a primary left with a single slot, once per map change, and only in the probe (at
        start-up and while degraded), never on a request."""
        slots = self._slots
        primaries = list({id(m): m for m in slots if m is not None}.values())
        tags = {m: n for m, n in self._probe_tags.items() if slots[slot_of(b"%d" % n)] is m}
        missing = {id(m) for m in primaries if m not in tags}
        n = 0
        while missing and n < PROBE_TAG_RANGE:
            owner = slots[slot_of(b"%d" % n)]
            if owner is not None and id(owner) in missing:
                tags[owner] = n
                missing.discard(id(owner))
            n += 1
        self._probe_tags = tags
        return [f"{base}:{{{tags[m]}}}" for m in primaries]

    @property
    def reconnects(self) -> int:
        """Node connections that replaced a lost one (``RespMux.reconnects``), over every node ever used."""
        return self._reconnects_gone + sum(m.reconnects for m in self._nodes.values())

    def primaries(self) -> list[RespMux]:
        return list({id(m): m for m in self._slots if m is not None}.values())

    async def close(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for mux in self._nodes.values():
            await mux.close()
        self._nodes.clear()
        self._slots = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._loaded = False
