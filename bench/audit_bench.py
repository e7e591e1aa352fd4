"""Cost of one admin-audit record: seal (hash chain) + the memory store, and + the fsynced JSONL file.

    .venv/bin/python bench/audit_bench.py [--n 2000]

Admin actions are rare (human-driven), so this only shows the audit adds little to an admin call's latency;
it is not on the proxy's hot path at all.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.audit.chain import verify_lines
from gateway.audit.trail import AuditTrail
from gateway.store.memory import MemoryStore

FIELDS = {"ts": 1.0, "request_id": "r" * 24, "actor": {"id": "admin-token", "auth": "token", "tenant": None},
          "source": "127.0.0.1", "method": "PUT", "route": "/admin/clients/{client_id}/override",
          "action": "client.override.set", "target": "mallory", "status": 200, "error": None,
          "before": {"override": None, "pinned_tier_name": None, "tier_name": "normal", "override_ttl_s": None},
          "after": {"override": "deny", "pinned_tier_name": None, "tier_name": "normal", "override_ttl_s": 3600.0},
          "details": None}


async def per_record_us(n: int, file: str | None) -> float:
    trail = AuditTrail(MemoryStore(), max_records=n, file=file)
    t0 = time.perf_counter()
    for _ in range(n):
        await trail.write(FIELDS)
    dt = time.perf_counter() - t0
    await trail.close()
    return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "audit.jsonl")
        store_only = asyncio.run(per_record_us(n, None))
        with_file = asyncio.run(per_record_us(n, path))
        t0 = time.perf_counter()
        report = verify_lines(Path(path).read_text().splitlines())
        verify_us = (time.perf_counter() - t0) / n * 1e6
    print(f"records: {n}")
    print(f"seal + memory store: {store_only:8.1f} us/record")
    print(f"  + fsynced file   : {with_file:8.1f} us/record")
    print(f"verify (file)      : {verify_us:8.1f} us/record  intact={report.intact}")


if __name__ == "__main__":
    main()
