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


_CONVERTIBLE = {"model", "messages", "max_tokens", "temperature", "top_p", "seed", "logprobs", "top_logprobs",
                "stream"}


def _as_responses(body: dict[str, object]) -> dict[str, object] | None:
    """The Responses API request a chat request's client would have sent instead (None: no equivalent)."""
    if set(body) - _CONVERTIBLE or body.get("stream"):
        return None
    msgs = body["messages"]
    assert isinstance(msgs, list)
    system = [m["content"] for m in msgs if m["role"] == "system"]
    out: dict[str, object] = {"model": body["model"], "input": [
        {"role": m["role"], "content": m["content"]} for m in msgs if m["role"] != "system"]}
    if system:
        if len(system) > 1 or msgs[0]["role"] != "system":
            return None
        out["instructions"] = system[0]
    for src, dst in (("max_tokens", "max_output_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                     ("seed", "seed")):
        if src in body:
            out[dst] = body[src]
    if body.get("logprobs"):
        out["include"] = ["message.output_text.logprobs"]
        out["top_logprobs"] = body.get("top_logprobs", 0)
    return out


def test_a_responses_api_trace_scores_as_its_chat_twin(
        trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Replay reads a /v1/responses record through the gateway's own chat reading of it, so the same requests
    sent through the Responses API score, flag and link exactly as through chat."""
    records = [json.loads(line) for line in trace.read_text(encoding="utf-8").split("\n") if line]
    twin, converted = [], 0
    for r in records:
        body = _as_responses(r["body"]) if r["endpoint"] == "/v1/chat/completions" else None
        if body is not None:
            r = {**r, "endpoint": "/v1/responses", "body": body}
            converted += 1
        twin.append(r)
    assert converted > len(records) // 2  # most of the generated chat traffic has a Responses equivalent
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in twin), encoding="utf-8")
    capsys.readouterr()
    assert main(["replay", str(trace), "--json"]) == 0
    chat = json.loads(capsys.readouterr().out)
    assert main(["replay", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == chat


def test_a_responses_record_the_gateway_would_refuse_names_the_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ts": 1, "client": "a", "endpoint": "/v1/responses", "body": {"model": "m", "input": "hi"}}\n'
                    '{"ts": 2, "client": "a", "endpoint": "/v1/responses", "body": {"model": "m", "input": "hi", '
                    '"background": true}}\n')
    assert main(["replay", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "record 2" in err and "background" in err
