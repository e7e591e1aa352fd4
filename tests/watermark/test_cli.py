"""``ipgate watermark`` and ``ipgate verify``: exit codes, JSON shapes, bulk and corpus modes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import verify as verify_cli
from gateway.cli import watermark as watermark_cli
from gateway.config import StoreConfig
from gateway.store.factory import open_store

SECRET = "cli-test-master-secret-0123456789"
VERDICT_FIELDS = {"watermarked", "p_value", "client", "scheme", "scored", "candidates"}


def cli(argv: list[str], stdin: str | None = None, monkeypatch: Any = None) -> int:
    if stdin is not None:
        import io
        import sys

        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    p = argparse.ArgumentParser(prog="ipgate")
    sub = p.add_subparsers(dest="command", required=True)
    verify_cli.register(sub)
    watermark_cli.register(sub)
    args = p.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", SECRET)


def mark(text: str, client: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> str:
    capsys.readouterr()
    assert cli(["watermark", "--client", client], stdin=text, monkeypatch=monkeypatch) == 0
    out: str = capsys.readouterr().out
    return out


def test_watermark_then_verify_json(responses: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: Any) -> None:
    text = "\n\n".join(responses[:6])
    marked = mark(text, "alice", monkeypatch, capsys)
    assert marked != text and len(marked.split()) > 0.9 * len(text.split())
    f = tmp_path / "t.txt"
    f.write_text(marked)
    (tmp_path / "clients").write_text("# candidates\nbob\nalice\n\ncarol\n")
    assert cli(["verify", str(f), "--clients", str(tmp_path / "clients"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= VERDICT_FIELDS and out["client"] == "alice" and out["watermarked"] is True
    assert out["scheme"] == "lexical" and out["scored"] > 10 and out["p_value"] < 1e-6
    assert next(c["client"] for c in out["candidates"]) == "alice" and len(out["candidates"]) == 3
    # not watermarked for another client: exit 1, and the human-readable line says so
    assert cli(["verify", str(f), "--client", "bob"]) == 1
    assert "not watermarked" in capsys.readouterr().out
    # stdin works too
    assert cli(["verify", "-", "--client", "alice"], stdin=marked, monkeypatch=monkeypatch) == 0
    assert "WATERMARKED: client alice" in capsys.readouterr().out


def test_bulk_and_corpus(responses: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: Any) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t, "client": "alice" if i % 2 else "bob"}) + "\n"
                           for i, t in enumerate(responses[:12])))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is drawn on a terminal only
    assert cli(["watermark", "--jsonl", str(src)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["id"] for r in rows] == list(range(12)) and all(set(r) == {"id", "text"} for r in rows)
    assert "watermark [" in captured.err and "12/12" in captured.err  # the progress bar
    marked = tmp_path / "marked.jsonl"
    marked.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] % 2))  # alice's only
    (tmp_path / "clients").write_text("alice\nbob\n")
    args = ["verify", "--jsonl", str(marked), "--clients", str(tmp_path / "clients"), "--fpr", "0.5"]
    assert cli(args) == 0
    captured = capsys.readouterr()
    verdicts = [json.loads(line) for line in captured.out.splitlines()]
    assert len(verdicts) == 6 and all(VERDICT_FIELDS | {"id"} <= set(v) for v in verdicts)
    assert "verify [" in captured.err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # redirected: results only, no \r frames
    assert cli(args) == 0
    assert capsys.readouterr().err == ""
    # pooled corpus: one verdict with "texts", attributed to alice
    assert cli([*args[:-2], "--fpr", "1e-6", "--corpus", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["texts"] == 6 and out["client"] == "alice" and out["watermarked"]
    # each tuple is counted once across the corpus: at most the sum, at least the largest single text
    assert max(v["scored"] for v in verdicts) <= out["scored"] <= sum(v["scored"] for v in verdicts)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["verify", "--client", "a", "--corpus"], "--corpus needs --jsonl"),
        (["verify", "--client", "a", "--fpr", "2"], "--fpr must be in (0, 1)"),
        (["verify", "--client", "a", "--scheme", "kgw"], "needs --tokenizer"),
        (["verify", "-"], "no candidate clients"),
        (["verify", "--clients", "/nonexistent/clients"], "cannot read"),
        (["verify", "--client", "a", "--jsonl", "BAD"], "not valid JSON"),
        (["verify", "--client", "a", "--key-versions", "x"], "--key-versions"),
        (["watermark"], "--client is required"),
        (["watermark", "--client", "a", "--scheme", "kgw"], "while the model samples"),
        (["watermark", "--export-recipients", "out.txt"], "--config"),
    ],
)
def test_errors_exit_2(argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\nnot json\n')
    argv = [str(bad) if a == "BAD" else a for a in argv]
    monkeypatch.chdir(tmp_path)
    assert cli(argv, stdin="it is", monkeypatch=monkeypatch) == 2
    assert message in capsys.readouterr().err


def test_missing_secret_is_an_error(monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path) -> None:
    monkeypatch.delenv("IPGATE_WATERMARK_SECRET")
    assert cli(["verify", "--client", "a"], stdin="x", monkeypatch=monkeypatch) == 2
    assert "IPGATE_WATERMARK_SECRET" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_text("tiny\n")
    assert cli(["watermark", "--client", "a", "--secret-file", str(short)], stdin="x", monkeypatch=monkeypatch) == 2
    assert "at least 16 bytes" in capsys.readouterr().err


@pytest.mark.redis
def test_recorded_recipients_from_redis(redis_url: str, responses: list[str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    async def record() -> None:
        store = await open_store(StoreConfig(kind="redis", url=redis_url), None)
        try:
            for c in ("alice", "bob", "carol"):
                await store.add_recipient(c, 1, 3600)
        finally:
            await store.close()

    asyncio.run(record())
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"store: {{kind: redis, url: '{redis_url}'}}\nmodels: [{{name: m, backends: "
                   "[{name: b, url: 'http://127.0.0.1:9'}]}]\n")
    out = tmp_path / "recipients.txt"
    assert cli(["watermark", "--export-recipients", str(out), "--config", str(cfg)]) == 0
    assert out.read_text().split() == ["alice", "bob", "carol"]
    marked = mark("\n\n".join(responses[:6]), "carol", monkeypatch, capsys)
    (tmp_path / "t.txt").write_text(marked)
    assert cli(["verify", str(tmp_path / "t.txt"), "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["client"] == "carol"


def test_verify_scores_list_markers_only_where_the_gateway_chose_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """With ``watermark.lexical_markdown: false`` (or ``--no-markdown``) list markers were left alone when
    the text was served; scoring them anyway would only add coin flips."""
    lists = "\n\n".join(f"Step {i} of the plan:\n\n- it is fine\n- we do not know\n- check it" for i in range(8))
    assert cli(["watermark", "--client", "alice", "--no-markdown"], stdin=lists, monkeypatch=monkeypatch) == 0
    marked = capsys.readouterr().out
    (tmp_path / "t.txt").write_text(marked)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("watermark: {lexical_markdown: false}\nmodels: [{name: m, backends: "
                   "[{name: b, url: 'http://127.0.0.1:9'}]}]\n")
    scored = {}
    for name, extra in (("default", []), ("flag", ["--no-markdown"]), ("config", ["--config", str(cfg)])):
        cli(["verify", str(tmp_path / "t.txt"), "--client", "alice", "--json", *extra])
        scored[name] = json.loads(capsys.readouterr().out)["scored"]
    assert scored["flag"] == scored["config"] < scored["default"]


@pytest.mark.redis
def test_verify_config_tests_a_file_recipient_under_every_version(redis_url: str, responses: list[str],
                                                                   tmp_path: Path, capsys: Any) -> None:
    """The store lost (alice, 1) and knows (alice, 2) only; the recipients file lists alice with no version: a
    text served to her under the retained version 1 must still verify (the store's versions used to win)."""
    from watermark.keys import KeyRing, parse_master_secret
    from watermark.lexical import LexicalScheme

    async def record() -> None:
        store = await open_store(StoreConfig(kind="redis", url=redis_url), None)
        try:
            await store.add_recipient("alice", 2, 3600)
        finally:
            await store.close()

    asyncio.run(record())
    (tmp_path / "r.txt").write_text("alice\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"store: {{kind: redis, url: '{redis_url}'}}\nwatermark: {{key_version: 2, retained_versions: [1], "
                   f"recipients_file: '{tmp_path / 'r.txt'}'}}\nmodels: [{{name: m, backends: "
                   "[{name: b, url: 'http://127.0.0.1:9'}]}]\n")
    ring = KeyRing(parse_master_secret(SECRET), 2, (1,))
    (tmp_path / "t.txt").write_text(LexicalScheme(ring.master).embed("\n\n".join(responses[:6]), ring.key("alice", 1)))
    assert cli(["verify", str(tmp_path / "t.txt"), "--config", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["client"] == "alice"


@pytest.mark.parametrize("argv", [["--client", "alice"], ["--clients", "missing.txt", "t.txt"],
                                  ["--client", "alice", "--fpr", "2", "t.txt"], ["--client", "alice", "missing.txt"]])
def test_json_is_one_object_on_an_error_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                            argv: list[str]) -> None:
    """`ipgate verify --json` printed nothing on stdout on an error (exit 2): `... --json | jq .watermarked`
    read empty input. Now `{"watermarked": null, "error"}`, as `fingerprint check --json` does."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("some text")
    assert cli(["verify", *argv, "--json"], stdin="", monkeypatch=monkeypatch) == 2  # (empty stdin: an error)
    out, err = capsys.readouterr()
    body = json.loads(out)
    assert body == {"watermarked": None, "error": body["error"]} and body["error"] in err


def test_candidates_name_their_key_version(responses: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: Any) -> None:
    """With several key versions in force every (client, version) is a hypothesis: `--key-versions 2,1` listed
    alice twice, as {"client": "alice", "p_value": ...} both times, one of them "not watermarked"-looking."""
    marked = mark("\n\n".join(responses[:6]), "alice", monkeypatch, capsys)
    f = tmp_path / "t.txt"
    f.write_text(marked)
    (tmp_path / "clients").write_text("alice\nbob\n")
    assert cli(["verify", str(f), "--clients", str(tmp_path / "clients"), "--key-versions", "2,1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["key_version"] == 1
    pairs = [(c["client"], c["key_version"]) for c in out["candidates"]]
    assert pairs[0] == ("alice", 1) and sorted(pairs) == [("alice", 1), ("alice", 2), ("bob", 1), ("bob", 2)]
