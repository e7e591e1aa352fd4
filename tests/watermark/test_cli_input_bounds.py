"""``ipgate verify`` / ``ipgate watermark`` on an input too large to score: exit 2 with a message naming the
input (and the JSONL line), read no further than the bound. Before, a single JSONL line or text was read
whole and scored: a 256 MiB line peaked at 4.6 GB, so a 1 GB one ended in an OOM kill (exit 137, no message)
minutes later, where the README promises 2 for every error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.wm_common import MAX_TEXT_BYTES, CliError, read_jsonl

SECRET = "cli-input-bounds-secret-0123456789"
ROOT = Path(__file__).resolve().parents[2]
WORDS = "It is a plain answer with a few words in it. "


def _ipgate(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "IPGATE_WATERMARK_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True, env=env,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def long_text() -> str:
    return (WORDS * (MAX_TEXT_BYTES // len(WORDS) + 2))[:MAX_TEXT_BYTES + 100]


def test_a_jsonl_line_over_the_bound_is_an_error_naming_it(tmp_path: Path, long_text: str) -> None:
    jsonl = tmp_path / "suspects.jsonl"
    with jsonl.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"id": 1, "text": WORDS}) + "\n")
        f.write(json.dumps({"id": 2, "text": long_text}) + "\n")
    r = _ipgate("verify", "--jsonl", str(jsonl), "--client", "alice")
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{jsonl}:2: over 32 MiB" in r.stderr.decode() and b"Traceback" not in r.stderr
    assert r.stdout == b""  # nothing processed, as for any bad line
    r = _ipgate("verify", "--jsonl", "-", "--client", "alice", stdin=jsonl.read_bytes())
    assert r.returncode == 2 and b"stdin:2: over 32 MiB" in r.stderr, r.stderr[-2000:]
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    jsonl.write_text("\n".join(line[:-1] + ', "client": "alice"}' for line in lines) + "\n", encoding="utf-8")
    r = _ipgate("watermark", "--jsonl", str(jsonl))
    assert r.returncode == 2 and f"{jsonl}:2: over 32 MiB".encode() in r.stderr and r.stdout == b"", \
        r.stderr[-2000:]


def test_a_single_text_over_the_bound_is_an_error(tmp_path: Path, long_text: str) -> None:
    leak = tmp_path / "leak.txt"
    leak.write_text(long_text, encoding="utf-8")
    r = _ipgate("verify", str(leak), "--client", "alice")
    assert r.returncode == 2 and f"{leak}: over 32 MiB".encode() in r.stderr, r.stderr[-2000:]
    r = _ipgate("verify", "-", "--client", "alice", stdin=leak.read_bytes())
    assert r.returncode == 2 and b"(stdin): over 32 MiB" in r.stderr, r.stderr[-2000:]
    r = _ipgate("watermark", "--client", "alice", stdin=leak.read_bytes())
    assert r.returncode == 2 and b"(stdin): over 32 MiB" in r.stderr and r.stdout == b"", r.stderr[-2000:]


def test_a_line_of_exactly_the_bound_is_read(tmp_path: Path) -> None:
    # the bound is on the line's content: a line of MAX_TEXT_BYTES plus its newline is read (not scored here:
    # 32 MiB take about a minute), one byte more is refused
    prefix, suffix = '{"text": "', '"}'
    body = (WORDS * (MAX_TEXT_BYTES // len(WORDS) + 1))[:MAX_TEXT_BYTES - len(prefix) - len(suffix)]
    jsonl = tmp_path / "edge.jsonl"
    jsonl.write_text(prefix + body + suffix + "\n", encoding="utf-8")
    assert jsonl.stat().st_size == MAX_TEXT_BYTES + 1
    rows = read_jsonl(str(jsonl), ("text",))
    assert len(rows) == 1 and [len(r["text"]) for r in rows] == [len(body)]
    jsonl.write_text(prefix + body + "x" + suffix + "\n", encoding="utf-8")
    with pytest.raises(CliError, match=r"edge.jsonl:1: over 32 MiB"):
        read_jsonl(str(jsonl), ("text",))
