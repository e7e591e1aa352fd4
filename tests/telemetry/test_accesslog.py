"""The access log: one JSON object per line, the documented fields, nothing else."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

import pytest

from gateway.config import TelemetryConfig
from gateway.telemetry.accesslog import AccessLog, AccessRecord, format_record

REC = AccessRecord(
    request_id="req-1", client_id="acme-7", tenant="acme", model="sim", backend="stable",
    route="/v1/chat/completions", status=200, latency_ms=41.23456, overhead_ms=0.3141, prompt_tokens=12,
    completion_tokens=96, tier="normal", stream=True, error_type=None,
)


def test_lines_are_json_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.from_config(TelemetryConfig(access_log_file=str(path)))
    log.write(REC)
    log.write(AccessRecord("req-2", None, None, None, None, "/v1/models", 401, 0.2, error_type="authentication_error"))
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert set(first) == {"ts"} | {f.name for f in fields(AccessRecord)}
    assert first["client_id"] == "acme-7" and first["latency_ms"] == 41.235 and first["stream"] is True
    assert abs(first["ts"] - time.time()) < 60
    assert second["status"] == 401 and second["client_id"] is None and second["error_type"] == "authentication_error"


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog.from_config(TelemetryConfig(access_log=False, access_log_file=str(path)))
    log.write(REC)
    log.close()
    assert not path.exists()


def test_does_not_propagate_to_the_application_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog(file=str(tmp_path / "a.log"))
    with caplog.at_level("INFO"):
        log.write(REC)
    log.close()
    assert "req-1" not in caplog.text


def test_format_is_compact_and_unicode_safe() -> None:
    line = format_record(AccessRecord("r", "clïent", None, "m", None, "/x", 200, 1.0), 1.0)
    assert ", " not in line and ": " not in line
    assert json.loads(line)["client_id"] == "clïent"


def test_rotation_reopens_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.telemetry import accesslog

    monkeypatch.setattr(accesslog, "_STAT_INTERVAL_S", 0.0)
    path = tmp_path / "access.log"
    log = AccessLog(file=str(path))
    log.write(REC)
    for _ in range(200):  # wait for the writer thread to flush the first line
        if path.exists() and path.read_text():
            break
        time.sleep(0.01)
    path.rename(tmp_path / "access.log.1")
    log.write(AccessRecord("after-rotation", None, None, None, None, "/x", 200, 1.0))
    log.close()
    assert "req-1" in (tmp_path / "access.log.1").read_text()
    assert "after-rotation" in path.read_text()


def test_backlog_is_bounded_and_drops_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog(file=str(tmp_path / "a.log"), max_pending=0)  # every line is "too far behind"
    with caplog.at_level("WARNING"):
        for _ in range(3):
            log.write(REC)
    log.close()
    assert log.dropped == 3
    assert caplog.text.count("dropping lines") == 1


def test_bad_path_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        AccessLog(file=str(tmp_path / "missing-dir" / "a.log"))


def test_close_flushes_many_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(file=str(path))
    for i in range(2000):
        log.write(AccessRecord(f"r{i}", "c", None, "m", "b", "/x", 200, 1.0))
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [f"r{i}" for i in range(2000)]
