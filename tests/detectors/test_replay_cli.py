"""``ipgate traffic`` + ``ipgate replay --json``: the output object's shape on a small generated trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "trace.jsonl"
    code = main(["traffic", "-o", str(path), "--benign", "4", "--attack", "logit_probe=1",
                 "--attack", "template=1", "--hydra", "3", "--requests", "80", "--seed", "3"])
    assert code == 0
    return path


def test_replay_json_shape(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["replay", str(trace), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"clients", "clusters", "summary"}
    by_id = {c["client"]: c for c in out["clients"]}
    records = [json.loads(line) for line in trace.read_text(encoding="utf-8").split("\n") if line]
    assert set(by_id) == {r["client"] for r in records}
    for c in out["clients"]:
        assert set(c) >= {"client", "flagged", "tier", "score", "max_score", "first_flag_index", "reasons"}
        assert isinstance(c["flagged"], bool) and isinstance(c["tier"], int) and 0 <= c["score"] <= 1
        assert c["max_score"] >= c["score"]
        if c["flagged"]:
            assert 1 <= c["first_flag_index"] <= c["requests"]
        else:
            assert c["first_flag_index"] is None
    probe = by_id["logit_probe-0"]
    assert probe["flagged"] and probe["first_flag_index"] <= 30
    assert any("logit_bias" in r or "echo" in r for r in probe["reasons"])
    assert by_id["template-0"]["flagged"]
    assert not any(by_id[f"user-{i}"]["flagged"] for i in range(4))
    # (the linking quality itself is measured by test_sanity_eval and scripts/eval/evaluate.py)
    assert all(not any(c.startswith("user-") for c in g) for g in out["clusters"])
    assert out["summary"]["records"] == len(records) and out["summary"]["clients"] == len(by_id)


def test_replay_human_output(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["replay", str(trace)]) == 0
    text = capsys.readouterr().out
    assert "flagged" in text and "logit_probe-0" in text


@pytest.mark.parametrize(
    ("line", "field"),
    [('{"ts": "x", "client": "a", "endpoint": "/v1/completions", "body": {}}', "'ts'"),
     ('{"ts": 1, "client": "", "endpoint": "/v1/completions", "body": {}}', "'client'"),
     ('{"ts": 1, "client": "a", "endpoint": "/v1/embeddings", "body": {}}', "'endpoint'"),
     ('{"ts": 1, "client": "a", "endpoint": "/v1/completions", "body": []}', "'body'"),
     ("not json", "not valid JSON")],
)
def test_malformed_trace_names_record_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, field: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ts": 1, "client": "a", "endpoint": "/v1/completions", "body": {"prompt": "hi"}}\n' + line + "\n")
    assert main(["replay", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "record 2" in err and field in err


def test_replay_with_a_config_file(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "models:\n  - name: ipgate-sim\n    backends:\n      - name: b1\n        url: http://127.0.0.1:1\n"
        "detection:\n  detectors:\n    logit_probing:\n      enabled: false\n"
    )
    capsys.readouterr()
    code = main(["replay", str(trace), "--config", str(cfg), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)["summary"]
    assert "logit_probing" not in summary["detectors"]
