"""Review of session 12's audit anchors (``ipgate audit verify --anchor W:S:H``; docs: review-session12.md).

- Two anchors naming the same record with different hashes: the last one silently replaced the first, so the
  verdict depended on the order of the flags (``--anchor forged --anchor genuine`` said intact). A file can
  match at most one of them: conflicting anchors are now always a problem.
- A seq in digits other than ASCII (``"١"`` is 1 to ``int``) named a record under another spelling, and one of
  thousands of digits was answered with ``int()``'s own message; both now get the format message.
- A writer that cannot be encoded (an undecodable byte in the argument, or a ``\\udcff`` escape in a file) made
  the text report die with UnicodeEncodeError on a strict UTF-8 stdout: "internal error" instead of the verdict.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from gateway.audit.chain import Anchor, Chain, canonical, verify_lines
from gateway.cli import main


def _write(path: Path, writer: str, n: int) -> list[dict[str, object]]:
    chain = Chain(writer)
    records = [chain.seal({"action": "client.override.set", "target": f"c{i}"}) for i in range(n)]
    path.write_text("".join(canonical(r) + "\n" for r in records))
    return records


def test_conflicting_anchors_for_one_record_are_a_problem_in_either_order(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    records = _write(path, "h:1:n", 3)
    genuine, forged = f"h:1:n:2:{records[2]['hash']}", "h:1:n:2:" + "a" * 64
    for order in ((genuine, forged), (forged, genuine)):
        args = ["audit", "verify", str(path), "--json"]
        for a in order:
            args += ["--anchor", a]
        assert main(args) == 1, order
        problems = json.loads(capsys.readouterr().out)["problems"]
        assert [p["reason"] for p in problems] == [
            "seq 2: not the record the anchor names (hash aaaaaaaaaaaa…): the chain was rewritten"], order
    assert main(["audit", "verify", str(path), "--anchor", genuine, "--anchor", genuine]) == 0  # a repeat is fine
    capsys.readouterr()


@pytest.mark.parametrize("seq", ["\u0661", "\uff11", "9" * 5000, "+1", " 1", ""])
def test_anchor_seq_must_be_ascii_decimal(seq: str) -> None:
    with pytest.raises(ValueError, match="is not WRITER:SEQ:HASH"):
        Anchor.parse(f"h:1:n:{seq}:" + "a" * 64)


def test_anchor_with_a_seq_beyond_the_chain_or_another_writer_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    records = _write(path, "h:1:n", 3)
    lines = path.read_text().splitlines()
    beyond = Anchor("h:1:n", 10**30, str(records[0]["hash"]))
    other = Anchor("h:2:n", 0, str(records[0]["hash"]))
    report = verify_lines(lines, anchors=[beyond, other])
    assert [p.reason for p in report.problems] == [
        f"anchor seq {10**30} is missing (the files end at seq 2): records were cut off",
        "anchor seq 0 is missing (the files hold no record of it): records were cut off"]


def test_an_unencodable_writer_gets_the_verdict_not_an_internal_error(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    records = _write(path, "h:\udcff:n", 2)  # written as the JSON escape \udcff (canonical JSON is ASCII)
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)  # a strict UTF-8 terminal (an en_US.UTF-8 locale)
    # a forged anchor from the command line (an undecodable byte reads as a lone surrogate) and the file's own
    assert main(["audit", "verify", str(path), "--anchor", "w\udcff:0:" + "a" * 64,
                 "--anchor", f"h:\udcff:n:1:{'b' * 64}"]) == 1
    text = out.buffer.getvalue().decode()
    assert text.startswith("BROKEN: first bad line ") and "\\udcff" in text, text
    assert records[1]["hash"] != "b" * 64
