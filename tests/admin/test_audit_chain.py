"""The audit hash chain and ``ipgate audit verify``: intact chains pass; an edited, deleted, moved or
duplicated line is found at the right line. The file is written by the real ``AuditTrail``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.audit.chain import GENESIS, Chain, canonical, record_hash, verify_lines
from gateway.audit.trail import AuditTrail
from gateway.cli import main
from gateway.store.memory import MemoryStore


def sealed(writer: str, n: int) -> list[str]:
    chain = Chain(writer)
    return [canonical(chain.seal({"action": "client.override.set", "target": f"c{i}"})) for i in range(n)]


def test_a_chain_links_each_record_to_the_previous_one() -> None:
    chain = Chain("w1")
    a = chain.seal({"action": "x"})
    b = chain.seal({"action": "y"})
    assert (a["seq"], a["prev"], b["seq"], b["prev"]) == (0, GENESIS, 1, a["hash"])
    assert record_hash(a) == a["hash"] and record_hash(b) == b["hash"]
    assert verify_lines([json.dumps(a), json.dumps(b)]).intact


def test_interleaved_writers_verify_each_on_its_own() -> None:
    a, b = sealed("wa", 3), sealed("wb", 3)
    report = verify_lines([a[0], b[0], b[1], a[1], "", a[2], b[2]])
    assert report.intact and report.records == 6 and report.writers == 2


@pytest.mark.parametrize(("tamper", "bad_line", "reason"), [
    ("edit", 3, "edited"),
    ("delete", 3, "missing"),
    ("swap", 2, "missing"),
    ("duplicate", 3, "out of order or duplicated"),
    ("garbage", 3, "not a JSON record"),
    ("drop_first", 1, "first 1 record(s) are missing"),
    ("relink", 4, "prev does not match"),
])
def test_tampering_is_found_at_the_right_line(tamper: str, bad_line: int, reason: str) -> None:
    lines = sealed("w", 5)
    if tamper == "edit":  # an allowlisting turned into something harmless, hash left as it was
        lines[2] = lines[2].replace('"target":"c2"', '"target":"c9"')
        assert '"target":"c9"' in lines[2]
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "duplicate":
        lines.insert(2, lines[1])
    elif tamper == "garbage":
        lines[2] = "{not json"
    elif tamper == "drop_first":
        del lines[0]
    elif tamper == "relink":  # edited AND re-hashed: the record itself checks out, the next one's prev does not
        rec = json.loads(lines[2])
        rec["target"] = "c9"
        rec["hash"] = record_hash(rec)
        lines[2] = json.dumps(rec)
    report = verify_lines(lines)
    assert not report.intact
    first = report.problems[0]
    assert first.line == bad_line and reason in first.reason, report.problems


def test_partial_start_accepts_a_mid_chain_beginning_but_not_a_gap() -> None:
    lines = sealed("w", 5)[2:]
    assert not verify_lines(lines).intact
    assert verify_lines(lines, partial_start=True).intact
    assert not verify_lines([lines[0], lines[2]], partial_start=True).intact


async def write_file(path: Path, n: int) -> MemoryStore:
    store = MemoryStore()
    trail = AuditTrail(store, max_records=100, file=str(path))
    for i in range(n):
        await trail.write({"action": "canary.abort", "target": f"m{i}", "status": 200})
    await trail.close()
    return store


async def test_file_lines_are_the_store_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    store = await write_file(path, 4)
    assert path.read_text().splitlines() == list(reversed(await store.recent_audit(10)))


async def test_cli_verify_exit_codes_and_first_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    await write_file(path, 5)
    assert main(["audit", "verify", str(path)]) == 0
    assert "intact: 5 records from 1 writer(s)" in capsys.readouterr().out

    lines = path.read_text().splitlines()
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # line 4 deleted
    assert main(["audit", "verify", str(tampered)]) == 1
    out = capsys.readouterr().out
    assert f"first bad line {tampered}:4" in out and "1 record(s) missing" in out

    tampered.write_text("\n".join([lines[0], lines[1].replace("m1", "m7"), *lines[2:]]) + "\n")
    assert main(["audit", "verify", str(tampered), "--json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert not body["intact"] and body["problems"][0]["line"] == 2 and "edited" in body["problems"][0]["reason"]

    # rotated files, oldest first, are one stream; the newer file alone is a partial chain
    old, new = tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2"
    old.write_text("\n".join(lines[:2]) + "\n")
    new.write_text("\n".join(lines[2:]) + "\n")
    assert main(["audit", "verify", str(old), str(new)]) == 0
    assert main(["audit", "verify", str(new)]) == 1
    assert main(["audit", "verify", str(new), "--partial"]) == 0
    assert main(["audit", "verify", str(new), str(old)]) == 1  # wrong order: moved records
    capsys.readouterr()

    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["audit", "verify", str(empty)]) == 2
    assert "no audit record" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["missing.jsonl"], ["empty.jsonl"], ["audit.jsonl", "--key-env", "S19_UNSET_KEY"],
                                  ["audit.jsonl", "--anchor", "x"]])
def test_cli_json_is_one_object_on_an_error_too(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    """README: `ipgate audit verify audit.jsonl --partial --json` prints "one JSON object". On an error (exit 2)
    stdout was empty, so a script reading it failed on the input instead of seeing the error."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("S19_UNSET_KEY", raising=False)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "audit.jsonl").write_text("{}\n")
    assert main(["audit", "verify", *argv, "--json"]) == 2
    out, err = capsys.readouterr()
    body = json.loads(out)
    assert body["intact"] is None and body["error"] and body["error"] in err


def test_a_keyed_chain_needs_the_key_and_refuses_a_downgrade() -> None:
    key = b"audit-chain-key-0123456789"
    chain = Chain("w", key)
    lines = [canonical(chain.seal({"action": "canary.abort", "target": f"m{i}"})) for i in range(3)]
    assert json.loads(lines[0])["alg"] == "hmac-sha256"
    assert verify_lines(lines, key=key).intact
    assert "edited" in verify_lines(lines, key=b"another-key-0123456789").problems[0].reason
    assert "give the key" in verify_lines(lines).problems[0].reason
    # someone without the key rewrites the chain as a plain one: the key holder sees it at once
    assert "not keyed" in verify_lines(sealed("w", 3), key=key).problems[0].reason


async def test_cli_key_env(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(MemoryStore(), max_records=10, file=str(path), key=b"audit-chain-key-0123456789")
    await trail.write({"action": "routing.reload", "status": 200})
    await trail.close()
    monkeypatch.setenv("AUDIT_KEY", "audit-chain-key-0123456789")
    monkeypatch.setenv("WRONG_KEY", "not-the-audit-chain-key-01")
    monkeypatch.delenv("UNSET_KEY", raising=False)
    assert main(["audit", "verify", str(path), "--key-env", "AUDIT_KEY"]) == 0
    assert main(["audit", "verify", str(path), "--key-env", "WRONG_KEY"]) == 1
    capsys.readouterr()
    # without the key a keyed chain in order is no verdict (exit 1 read as tampering): an error naming the flag
    assert main(["audit", "verify", str(path)]) == 2
    assert "give --key-env" in capsys.readouterr().err
    assert main(["audit", "verify", str(path), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["intact"] is None
    # a structural fault is still one without the key: a record cut out of a chain (another writer's)
    more = AuditTrail(MemoryStore(), max_records=10, file=str(path), key=b"audit-chain-key-0123456789")
    await more.write({"action": "canary.abort", "status": 200})
    await more.write({"action": "canary.abort", "status": 200})
    await more.close()
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(["audit", "verify", str(path), "--key-env", "UNSET_KEY"]) == 2
    assert "UNSET_KEY is not set" in capsys.readouterr().err


def test_ipgate_check_reports_a_bad_audit_file_and_key(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from gateway.preflight import offline

    models = [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]
    cfg = parse_config({"models": models, "admin": {"audit_file": str(tmp_path / "nope" / "audit.jsonl"),
                                                    "audit_key_env": "AUDIT_KEY"}}, env={})
    errors = [f.message for f in offline(cfg, env={}) if f.level == "error" and f.area == "admin"]
    assert any("admin.audit_file" in m and "does not exist" in m for m in errors), errors
    assert any("admin.audit_key_env: AUDIT_KEY" in m for m in errors), errors
    ok = parse_config({"models": models, "admin": {"audit_key_env": "AUDIT_KEY"}}, env={})
    found = offline(ok, env={"AUDIT_KEY": "audit-chain-key-0123456789"})
    assert any(f.level == "ok" and "audit chain keyed from AUDIT_KEY" in f.message for f in found)


async def test_an_anchor_from_the_log_shows_records_cut_off_the_end(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The chain alone cannot show that its last records were deleted; the anchor the gateway logs for each
    record (shipped off the host with the logs) can."""
    path = tmp_path / "audit.jsonl"
    with caplog.at_level("INFO", logger="gateway.audit.trail"):
        await write_file(path, 5)
    anchors = [r.getMessage().rsplit("(anchor ", 1)[1].rstrip(")") for r in caplog.records
               if r.getMessage().startswith("audit record ")]
    assert len(anchors) == 5
    last = anchors[-1]
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert last == f"{records[-1]['writer']}:4:{records[-1]['hash']}"
    assert main(["audit", "verify", str(path), "--anchor", last, "--anchor", anchors[1]]) == 0
    capsys.readouterr()

    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")  # the last two records deleted
    assert main(["audit", "verify", str(cut)]) == 0  # what the chain alone says
    capsys.readouterr()
    assert main(["audit", "verify", str(cut), "--anchor", last, "--json"]) == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert problem["file"] == "(anchor)" and "anchor seq 4 is missing (the files end at seq 2)" in problem["reason"]

    # rewritten wholesale: the same seqs with recomputed hashes over edited content
    forged = Chain(records[0]["writer"])
    fake = [canonical(forged.seal({k: v for k, v in r.items() if k not in ("v", "alg", "writer", "seq", "prev", "hash")}
                                  | {"target": "someone-else"})) for r in records]
    rewritten = tmp_path / "rewritten.jsonl"
    rewritten.write_text("\n".join(fake) + "\n")
    assert main(["audit", "verify", str(rewritten)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(rewritten), "--anchor", last]) == 1
    assert "not the record the anchor names" in capsys.readouterr().out

    assert main(["audit", "verify", str(path), "--anchor", "w:1:abc"]) == 2
    assert "is not WRITER:SEQ:HASH" in capsys.readouterr().err
