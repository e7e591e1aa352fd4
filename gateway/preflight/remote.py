"""``online(cfg)``: the pre-flight checks that ask the outside world, read-only (``ipgate check --connect``).

Redis (the store's, and each ``redis_stream`` alert sink's) answers PING, every backend answers its health path
with its credential, every watermark-capable backend passes the KGW plugin probe (a refusal by design: nothing
is generated), the JWKS endpoint serves usable keys. Webhook sinks are not called: a request would deliver an
alert.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import aiohttp

from gateway.config import AlertSinkConfig, BackendConfig, ConfigError, GatewayConfig
from gateway.kgw_probe import KgwPluginProbe
from gateway.preflight.finding import Finding
from gateway.routing.health import HealthChecker, health_session


async def online(cfg: GatewayConfig, env: Mapping[str, str] | None = None) -> list[Finding]:
    env = os.environ if env is None else env
    out: list[Finding] = []
    if cfg.store.kind == "redis":
        out.append(await _redis(cfg))
    if cfg.auth.jwt is not None and cfg.auth.jwt.jwks_url:
        out.append(await _jwks(cfg))
    for sink in cfg.alerts.sinks:
        if sink.kind == "redis_stream":
            out.append(await _alert_stream(cfg, sink))
    probe: KgwPluginProbe | None = None
    if cfg.watermark.enabled and any(b.watermark_capable and b.kgw_probe for m in cfg.models for b in m.backends):
        from gateway.watermarking import GatewayWatermarking

        try:
            probe = GatewayWatermarking.from_config(cfg, environ=env).plugin_probe()
        except ConfigError:
            probe = None  # reported by offline()
    async with health_session() as session:
        checker = HealthChecker(cfg.routing.health, session, list)
        jobs = [_reach(cfg, checker, probe, session, m.name, b) for m in cfg.models for b in m.backends]
        for found in await asyncio.gather(*jobs):
            out.extend(found)
    return out


async def _redis(cfg: GatewayConfig) -> Finding:
    from gateway.store.redis import RedisStore

    store = RedisStore.from_config(cfg.store)
    try:
        await asyncio.wait_for(store.ping(), timeout=max(2.0, cfg.store.timeout_ms / 1000.0))
    except Exception as e:  # any failure to answer PING is the finding
        return Finding("error", "store", f"Redis at {cfg.store.url} did not answer PING: {type(e).__name__}: {e}")
    finally:
        await store.close()
    return Finding("ok", "store", f"Redis at {cfg.store.url} answers PING")


async def _alert_stream(cfg: GatewayConfig, sink: AlertSinkConfig) -> Finding:
    from gateway.alerts.sinks import RedisStreamSink, SinkError

    s = RedisStreamSink(sink, cfg.store.url, cfg.store.cluster_urls)
    try:
        await asyncio.wait_for(s.ping(), timeout=sink.timeout_s + 1.0)
    except (SinkError, TimeoutError) as e:
        return Finding("error", "alerts", f"redis_stream sink {s.name}: its Redis did not answer PING: "
                                          f"{e or 'timed out'}")
    finally:
        await s.close()
    mode = " (a Redis Cluster: every primary)" if s.cluster else ""
    return Finding("ok", "alerts", f"redis_stream sink {s.name}: its Redis answers PING{mode}")


async def _jwks(cfg: GatewayConfig) -> Finding:
    from gateway.auth.jwks import JwksKeys

    j = cfg.auth.jwt
    assert j is not None and j.jwks_url
    try:
        keys = JwksKeys(j.jwks_url, j.algorithms, timeout_s=j.jwks_timeout_s)
    except ConfigError as e:
        return Finding("error", "auth", str(e))
    n = await keys.fetch_once()
    if n == 0:
        return Finding("error", "auth", f"JWKS {j.jwks_url}: no usable {'/'.join(j.algorithms)} signing key "
                                        "(unreachable, or no key of that family)")
    return Finding("ok", "auth", f"JWKS {j.jwks_url}: {n} usable key(s)")


async def _reach(cfg: GatewayConfig, checker: HealthChecker, probe: KgwPluginProbe | None,
                 session: aiohttp.ClientSession, model: str, b: BackendConfig) -> list[Finding]:
    area = f"backend {model}/{b.name}"
    problem = await checker.probe(b)
    found = [Finding("error", area, f"{b.url}{b.health_path}: {problem}") if problem is not None
             else Finding("ok", area, f"{b.url}{b.health_path} answers")]
    if probe is not None and b.watermark_capable and b.kgw_probe and problem is None:
        # the health probe just read the same credential: an unreadable key file would have failed it
        verdict = await probe.run(session, b, model, checker.auth_headers(b), cfg.routing.health.timeout_s)
        if verdict.ok:
            found.append(Finding("ok", area, "KGW plugin verified: responses are watermarked in the engine"))
        else:
            found.append(Finding("warning", area, f"KGW plugin not verified ({verdict.reason}: {verdict.detail}): "
                                                  "its responses get the lexical watermark"))
    return found
