"""The floor for a Python proxy: a bare aiohttp reverse proxy with one pooled ClientSession, no features.

No auth, no parsing, no limits, no telemetry: read the body, POST it upstream, relay the answer (streams
chunk by chunk). ``bench/run_gateway_bench.py`` runs ipgate side by side with this.

    python bench/bare_proxy.py --port 18100 --upstream http://127.0.0.1:18000
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    body = await request.read()
    headers = {"Content-Type": "application/json"}
    async with session.post(request.app[UPSTREAM] + request.path, data=body, headers=headers) as up:
        if up.content_type == "text/event-stream":
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)


def build(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/{tail:.*}", proxy)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    web.run_app(build(a.upstream), host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
