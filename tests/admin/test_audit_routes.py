"""Every state-changing admin route writes exactly one audit record (right actor, action, target, before,
after, status), read-only and unauthenticated calls none, and no record holds a secret or a verified text.
Driven through the real admin app (auth middleware included) over a real context."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from gateway.cli import main
from tests.admin.audit_app import ADMIN_TOKEN, AUTH, JWT_SECRET, Audited
from tests.support.harness import mint_token

LEAKED = "The quarterly roadmap moves the launch to March; keep this between us, said the memo."


async def act(gw: Audited, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | None]:
    """Call the route; return its status and the one record it added (None if it added none)."""
    before = await gw.records()
    resp = await gw.client.request(method, path, headers=AUTH if headers is None else headers,
                                   data=None if body is None else json.dumps(body))
    after = await gw.records()
    added = len(after) - len(before)
    assert added in (0, 1), f"{method} {path} wrote {added} records"
    return resp.status, (after[0] if added else None)


async def test_each_state_changing_route_writes_one_record(audited: Audited) -> None:
    gw = audited
    cases: list[tuple[str, str, Any, int, str, str | None, dict[str, Any] | None, dict[str, Any] | None]] = [
        ("PUT", "/admin/clients/mallory/override", {"override": "allow", "ttl_s": 3600}, 200,
         "client.override.set", "mallory", {"override": None}, {"override": "allow", "override_ttl_s": 3600.0}),
        ("PUT", "/admin/client/override?client_id=..", {"tier": "throttle"}, 200,
         "client.override.set", "..", {"pinned_tier_name": None}, {"pinned_tier_name": "throttle"}),
        ("PUT", "/admin/clients/mallory/override", {"override": None, "tier": None}, 200,
         "client.override.clear", "mallory", {"override": "allow"}, {"override": None}),
        ("PUT", "/admin/clients/mallory/override", {"override": "deny"}, 200,
         "client.override.set", "mallory", {"override": None}, {"override": "deny"}),
        ("DELETE", "/admin/clients/mallory/override", None, 200,
         "client.override.clear", "mallory", {"override": "deny"}, {"override": None}),
        ("DELETE", "/admin/client/override?client_id=..", None, 200,
         "client.override.clear", "..", {"pinned_tier_name": "throttle"}, {"pinned_tier_name": None}),
        ("POST", "/admin/canary/sim/pause", None, 200, "canary.pause", "sim",
         {"phase": "progressing"}, {"phase": "paused"}),
        ("POST", "/admin/canary/sim/abort", None, 200, "canary.abort", "sim",
         {"phase": "paused"}, {"phase": "aborted", "weight": 0.0}),
        ("POST", "/admin/routing/reload", None, 200, "routing.reload", str(gw.config_file),
         {"models": ["sim"]}, {"models": ["sim"]}),
        ("POST", "/admin/fingerprint/sim/canary/release", None, 200, "fingerprint.release", "sim/canary",
         {"quarantine": None}, {"quarantine": None}),
        ("POST", "/admin/fingerprint/check?model=sim&backend=nope", None, 404, "fingerprint.check", "sim/nope",
         None, None),
        ("POST", "/admin/fingerprint/check", None, 200, "fingerprint.check", None, None, None),
        ("POST", "/admin/watermark/verify", {"text": LEAKED, "clients": ["alice", "bob"]}, 200,
         "watermark.verify", None, None, {"watermarked": False, "client": None}),
        # refused calls are recorded too, with their status (an attempt is evidence)
        ("PUT", "/admin/clients/mallory/override", {"override": "maybe"}, 400,
         "client.override.set", "mallory", None, None),
        ("POST", "/admin/canary/nope/abort", None, 404, "canary.abort", "nope", None, None),
    ]
    for method, path, body, status, action, target, before, after in cases:
        got, rec = await act(gw, method, path, body)
        where = f"{method} {path}"
        assert got == status and rec is not None, (where, got)
        assert rec["action"] == action and rec["target"] == target and rec["status"] == status, (where, rec)
        assert rec["actor"] == {"id": "admin-token", "auth": "token", "tenant": None}, where
        assert rec["method"] == method and rec["source"] == "127.0.0.1", where
        for key, want in ((before, "before"), (after, "after")):
            if key is not None:
                # (a TTL read back is what is left of it: seconds, not the milliseconds a loaded host takes)
                got_view = {k: round(v) if isinstance(v, float) else v for k, v in rec[want].items() if k in key}
                assert got_view == key, (where, want, rec[want])
        assert (rec["error"] is None) == (status == 200), (where, rec["error"])

    recs = await gw.records()
    assert len(recs) == len(cases)
    reload = next(r for r in recs if r["action"] == "routing.reload")
    assert reload["details"] == {"restart_required": []}
    assert len(reload["before"]["live_config_sha256"]) == 64
    verify = recs[next(i for i, r in enumerate(recs) if r["action"] == "watermark.verify")]
    assert verify["details"] == {"texts": 1, "chars": len(LEAKED), "clients": 2, "candidates": 2,
                                 "scheme": "auto", "fpr": 1e-6,
                                 "texts_sha256": hashlib.sha256(LEAKED.encode()).hexdigest()}
    assert next(r for r in recs if r["action"] == "fingerprint.check" and r["status"] == 404)["error"] == \
        "backend_not_found"
    assert next(r for r in recs if r["action"] == "fingerprint.check" and r["status"] == 200)["details"] == \
        {"verdicts": []}  # no backend has a fingerprint_reference here

    # the JSONL file holds the same records, oldest first, and its chain verifies; so does the store's list
    lines = gw.audit_file.read_text().splitlines()
    assert [json.loads(x)["hash"] for x in lines] == [r["hash"] for r in reversed(recs)]
    assert main(["audit", "verify", str(gw.audit_file)]) == 0
    resp = await gw.client.get("/admin/audit/verify", headers=AUTH)
    assert await resp.json() == {"intact": True, "records": len(cases), "writers": 1, "problems": []}

    # nothing secret: not the admin token, not the JWT secret, not a backend password, not the verified text
    blob = gw.audit_file.read_text() + json.dumps(recs)
    for secret in (ADMIN_TOKEN, JWT_SECRET, "hunter2", LEAKED, LEAKED[:30]):
        assert secret not in blob


async def test_reads_and_refused_credentials_write_nothing(audited: Audited) -> None:
    gw = audited
    user = {"Authorization": "Bearer " + mint_token(JWT_SECRET, "eve")}
    calls: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "/admin/clients/alice", AUTH), ("GET", "/admin/routing", AUTH), ("GET", "/admin/audit", AUTH),
        ("GET", "/admin/audit/verify", AUTH), ("GET", "/admin/alerts", AUTH),
        ("PUT", "/admin/clients/eve/override", {}),  # 401: no credential
        ("PUT", "/admin/clients/eve/override", user),  # 403: not an admin
        ("POST", "/admin/nothing-here", AUTH),  # 404: no route
        ("PATCH", "/admin/clients/eve/override", AUTH),  # 405
    ]
    for method, path, headers in calls:
        status, rec = await act(gw, method, path, {"override": "allow"} if method == "PUT" else None, headers)
        assert rec is None, (method, path, status)
    assert (await gw.ctx.store.get_client("eve")) is None


async def test_actor_of_an_admin_jwt_and_the_request_id(audited: Audited) -> None:
    gw = audited
    token = mint_token(JWT_SECRET, "ops-alice", roles=["admin"], tenant="acme")
    headers = {"Authorization": f"Bearer {token}", "X-Request-Id": "change-4711"}
    resp = await gw.client.put("/admin/clients/bob/override", headers=headers, data='{"override": "deny"}')
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "change-4711"
    resp = await gw.client.put("/admin/clients/bob/override", headers=headers, data="{")
    assert resp.status == 400 and resp.headers["X-Request-Id"] == "change-4711"
    recs = await gw.records()
    assert [r["status"] for r in recs] == [400, 200]
    assert all(r["actor"] == {"id": "ops-alice", "auth": "jwt", "tenant": "acme"} for r in recs)
    assert all(r["request_id"] == "change-4711" for r in recs)
    assert token not in gw.audit_file.read_text()
    # without a caller's id the answer names the fresh one the record holds
    resp = await gw.client.delete("/admin/clients/bob/override", headers=AUTH)
    assert resp.headers["X-Request-Id"] == (await gw.records("limit=1"))[0]["request_id"]


async def test_filters_and_limit(audited: Audited) -> None:
    gw = audited
    alice = {"Authorization": "Bearer " + mint_token(JWT_SECRET, "ops-alice", roles=["admin"])}
    await gw.client.put("/admin/clients/mallory/override", headers=alice, data='{"override": "allow"}')
    await gw.client.put("/admin/clients/bob/override", headers=AUTH, data='{"override": "deny"}')
    await gw.client.post("/admin/canary/sim/pause", headers=AUTH)
    await gw.client.delete("/admin/clients/mallory/override", headers=AUTH)
    assert [r["action"] for r in await gw.records("action=client.*")] == [
        "client.override.clear", "client.override.set", "client.override.set"]
    assert [r["target"] for r in await gw.records("actor=ops-alice")] == ["mallory"]
    assert [r["action"] for r in await gw.records("target=mallory")] == ["client.override.clear",
                                                                        "client.override.set"]
    assert [r["action"] for r in await gw.records("action=canary.pause")] == ["canary.pause"]
    assert len(await gw.records("limit=2")) == 2
    assert len(await gw.records("target=mallory&limit=1")) == 1
    resp = await gw.client.get("/admin/audit?limit=0", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "limit"


async def test_a_reload_with_a_bad_file_is_recorded_as_refused(audited: Audited) -> None:
    gw = audited
    data = yaml.safe_load(gw.config_file.read_text())
    data["models"][0]["backends"][0]["weight"] = -5
    gw.config_file.write_text(yaml.safe_dump(data))
    status, rec = await act(gw, "POST", "/admin/routing/reload")
    assert status == 400 and rec is not None
    assert (rec["action"], rec["error"], rec["after"]) == ("routing.reload", "invalid_config", None)
