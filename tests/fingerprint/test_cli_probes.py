"""``ipgate fingerprint record --probes`` / ``check --sample``: errors are one line, exit 2, and name the file's
line and field (never a prompt); nothing is probed and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.support.harness import free_port

SECRET = "How would you explain a lighthouse keeper's logbook to a stranger?"


def _probes(n: int) -> str:
    return "".join(json.dumps({"id": f"p{i}", "prompt": f"{SECRET} ({i})"}) + "\n" for i in range(n))


@pytest.mark.parametrize(("content", "message"), [
    (_probes(5) + '{"id": "p9", "prompt": 3}\n', "p.jsonl:6: field 'prompt' must be a non-empty string"),
    ('{"id": "a b", "prompt": "' + SECRET + '"}\n', "p.jsonl:1: field 'id'"),
    (_probes(4) + '{"id": "p0", "prompt": "other"}\n', "p.jsonl:5: field 'id': 'p0' is already used on line 1"),
    ("{oops\n", "p.jsonl:1: not valid JSON"),
    (_probes(3), "3 probes; at least 4 are needed"),
    (None, "cannot be read"),
])
def test_bad_probe_files_are_refused_before_any_probe_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "p.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "ref.json"
    # nothing listens on the URL: an error about the file proves the file was judged first
    code = main(["fingerprint", "record", "--url", f"http://127.0.0.1:{free_port()}", "--model", "m",
                 "--probes", str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("ipgate fingerprint: --probes ")
    assert "Traceback" not in err and "lighthouse" not in err and not out.exists()


def test_sample_larger_than_the_reference_or_too_small_for_a_verdict_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"model": "m", "answers": [
        {"probe_id": f"p{i}", "text": "t", "prompt": f"{SECRET} {i}", "max_tokens": 8} for i in range(6)]}))
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["fingerprint", "check", "--url", url, "--model", "m", "--reference", str(ref),
                 "--sample", "7", "--json"])
    captured = capsys.readouterr()
    assert code == 2 and "--sample 7: the reference has only 6 probes" in captured.err
    assert json.loads(captured.out)["verdict"] is None
    code = main(["fingerprint", "check", "--url", url, "--model", "m", "--reference", str(ref), "--sample", "3"])
    assert code == 2 and "--sample 3: at least 4 probes are needed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: "must be >= 1"
        main(["fingerprint", "check", "--url", url, "--model", "m", "--reference", str(ref), "--sample", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_a_set_with_public_probes_is_recorded_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fingerprint import DEFAULT_PROBES

    path = tmp_path / "p.jsonl"
    path.write_text(_probes(4) + json.dumps({"id": "b", "prompt": DEFAULT_PROBES[0].prompt}) + "\n")
    code = main(["fingerprint", "record", "--url", f"http://127.0.0.1:{free_port()}", "--model", "m",
                 "--probes", str(path), "-o", str(tmp_path / "ref.json"), "--timeout", "1"])
    err = capsys.readouterr().err
    assert "warning: 1 of the 5 probes are bundled public ones (b)" in err
    assert code == 2 and "lighthouse" not in err  # then the unreachable backend: an error naming the probe
