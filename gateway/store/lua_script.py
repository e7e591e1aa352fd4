"""A Lua script the Redis store runs by SHA (``EVALSHA``), with its source sent only when the server does not
know it yet (``NOSCRIPT``: a new or restarted Redis, a cluster node that never ran it)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from gateway.store.cluster import ClusterMux
from gateway.store.resp import Arg, RespMux, pack_bulks, reply_error


class LuaScript:
    """A Lua script run by SHA, falling back to its source when the server does not know it (yet)."""

    def __init__(self, name: str) -> None:
        self.src = resources.files("gateway.store").joinpath("lua", name).read_bytes()
        self.sha = hashlib.sha1(self.src).hexdigest().encode()

    async def run(self, mux: Conn, keys: Sequence[Arg], args: Sequence[Arg] = ()) -> Any:
        return await self.run_packed(mux, pack_bulks([len(keys), *keys, *args]), 1 + len(keys) + len(args), keys[0])

    async def run_packed(self, mux: Conn, body: bytes, nbody: int, key: Arg) -> Any:
        """``body`` is ``numkeys keys... args...`` as ``nbody`` packed bulk strings (``pack_bulks``); ``key`` is
        one of the keys (Redis Cluster routes by it; on a cluster the EVAL fallback loads the script on that
        key's node)."""
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (nbody + 2, self.sha)
        (reply,) = await mux.execute_packed(head + body, 1, key)
        err = reply_error(reply)
        if err is not None and str(err).startswith("NOSCRIPT"):
            head = b"*%d\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (nbody + 2, len(self.src), self.src)
            (reply,) = await mux.execute_packed(head + body, 1, key)
            err = reply_error(reply)
        if err is not None:
            raise err
        return reply


Conn = RespMux | ClusterMux
