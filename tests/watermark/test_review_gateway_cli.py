"""Adversarial review of watermarking in the gateway and of ``ipgate watermark`` / ``ipgate verify``.

Gateway probes run the real gateway in front of a real aiohttp backend whose answer is chosen by the user
message (a "scenario"), with the official ``openai`` client; the texts are then verified with the same code
``ipgate verify`` runs. CLI probes run the real subcommands through ``gateway.cli.main``.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.cli import main as cli_main
from tests.support.harness import app_backend, gateway_config, running_gateway
from tests.support.lexical import ANSWER
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.verify import Verdict, candidate_keys, client_line, parse_client_lines, verify

SECRET = "review-watermark-master-secret-0123456789"
RING = KeyRing(SECRET.encode())
SCHEME = LexicalScheme(RING.master)
CLIENTS = ["alice", "bob", "carol"]

# The same prose wrapped in non-Latin scripts and emoji (they must pass through byte-identical).
UNICODE = ("日本語のテキスト 🙂👍🏽 שלום עולם مرحبا " + ANSWER.replace(". ", ". 😀 ", 5)
           + " 中文结尾。 👨‍👩‍👧")
TOOL_ARGS = '{"query": "it is not hard, do not change", "n": 1}'


def _choices_text(scenario: str, n: int) -> list[str]:
    if scenario == "unicode":
        return [UNICODE] * n
    if scenario == "long-word":
        return ["x" * 20_000 + " " + ANSWER] * n
    return [ANSWER] * n


def _deltas(text: str, scenario: str) -> list[str]:
    if scenario == "long-word":  # one very long word in several deltas, then word-sized deltas
        return [text[:7_000], text[7_000:14_000], text[14_000:20_001], *re.findall(r"\S+\s*", text[20_001:])]
    if scenario == "contraction":  # "do" + "n't" style splits: cut right after every "do"/"is"
        out, rest = [], text
        while rest:
            i = min((j for j in (rest.find("do", 1), rest.find("is", 1)) if j > 0), default=-1)
            if i < 0:
                out.append(rest)
                break
            out.append(rest[: i + 2])
            rest = rest[i + 2:]
        return out
    return [text[i: i + 3] for i in range(0, len(text), 3)]  # tiny deltas, mid-word and mid-emoji-sequence


def backend() -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        scenario = body["messages"][-1]["content"]
        n = int(body.get("n") or 1)
        texts = _choices_text(scenario, n)
        base = {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"]}
        lp = {"content": [{"token": "It", "logprob": -0.1, "bytes": [73, 116], "top_logprobs": []}]}
        tool = [{"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "search", "arguments": TOOL_ARGS}}]
        if not body.get("stream"):
            choices = []
            for i, t in enumerate(texts):
                msg: dict[str, Any] = {"role": "assistant", "content": t}
                if scenario == "tool":
                    msg["tool_calls"] = [{k: v for k, v in tool[0].items() if k != "index"}]
                choices.append({"index": i, "message": msg, "finish_reason": "stop",
                                "logprobs": lp if body.get("logprobs") else None})
            return web.json_response({**base, "choices": choices,
                                      "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}

        async def send(obj: dict[str, Any]) -> None:
            raw = f"data: {json.dumps({**chunk, **obj}, ensure_ascii=False)}\n\n".encode()
            # split the bytes mid-character: the gateway's SSE decoder must reassemble UTF-8
            for j in range(0, len(raw), 7):
                await resp.write(raw[j: j + 7])

        per = [_deltas(t, scenario) for t in texts]
        for k in range(max(len(d) for d in per)):
            for i, d in enumerate(per):
                if k < len(d):
                    await send({"choices": [{"index": i, "delta": {"content": d[k]}, "finish_reason": None,
                                             "logprobs": lp if body.get("logprobs") else None}]})
            if scenario == "cut" and k == len(per[0]) // 2:
                return resp  # the backend goes away mid-answer: no finish_reason, no [DONE]
        if scenario == "tool":
            await send({"choices": [{"index": 0, "delta": {"tool_calls": tool}, "finish_reason": None}]})
        for i in range(len(texts)):
            await send({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "wm.secret"
    p.write_text(SECRET + "\n")
    return p


@pytest.fixture
async def gateway(secret_file: Path, tmp_path: Path) -> AsyncIterator[Any]:
    async with app_backend(backend()) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "lexical",
                                             "secret_file": str(secret_file),
                                             "recipients_file": str(tmp_path / "recipients.txt")})
        async with running_gateway(cfg) as gw:
            yield gw


def attribute(text: str, fpr: float = 1e-4, ring: KeyRing = RING) -> Verdict:
    return verify(text, candidate_keys(ring, CLIENTS), [LexicalScheme(ring.master)], fpr=fpr)


async def ask(gw: Any, client_id: str, scenario: str, stream: bool, **extra: Any) -> list[str]:
    """The text of every choice (streamed choices reassembled by index)."""
    client = gw.openai_client(client_id)
    msgs = [{"role": "user", "content": scenario}]
    try:
        if not stream:
            r = await client.chat.completions.create(model="sim", messages=msgs, **extra)
            return [c.message.content or "" for c in sorted(r.choices, key=lambda c: c.index)]
        s = await client.chat.completions.create(model="sim", messages=msgs, stream=True, **extra)
        parts: dict[int, list[str]] = {}
        async for c in s:
            for ch in c.choices:
                parts.setdefault(ch.index, []).append(ch.delta.content or "")
        return ["".join(parts[i]) for i in sorted(parts)]
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------- gateway


@pytest.mark.parametrize("scenario", ["plain", "unicode", "long-word", "contraction"])
async def test_stream_equals_non_stream_and_verifies(gateway: Any, scenario: str) -> None:
    (whole,) = await ask(gateway, "bob", scenario, stream=False)
    (streamed,) = await ask(gateway, "bob", scenario, stream=True, stream_options={"include_usage": True})
    assert streamed == whole != _choices_text(scenario, 1)[0]
    # nothing but the chosen phrasings changed: the non-Latin text and emoji survive byte for byte
    if scenario == "unicode":
        for piece in ("日本語のテキスト 🙂👍🏽 שלום עולם مرحبا", "😀", "中文结尾。 👨‍👩‍👧"):
            assert piece in whole
    if scenario == "long-word":
        assert whole.startswith("x" * 20_000 + " ")
    v = attribute(whole)
    assert v.watermarked and v.client == "bob", v


async def test_every_choice_of_n_is_watermarked(gateway: Any) -> None:
    for stream in (False, True):
        texts = await ask(gateway, "carol", "plain", stream=stream, n=3)
        assert len(texts) == 3
        for t in texts:
            v = attribute(t)
            assert t != ANSWER and v.watermarked and v.client == "carol", v


async def test_tool_call_arguments_untouched_and_content_marked(gateway: Any) -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    client = gateway.openai_client("alice")
    msgs = [{"role": "user", "content": "tool"}]
    try:
        r = await client.chat.completions.create(model="sim", messages=msgs, tools=tools)  # type: ignore[arg-type]
        call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.arguments == TOOL_ARGS  # type: ignore[union-attr]
        assert attribute(r.choices[0].message.content or "").client == "alice"
        s = await client.chat.completions.create(model="sim", messages=msgs, tools=tools,  # type: ignore[arg-type]
                                                 stream=True)
        content: list[str] = []
        args: list[str] = []
        async for c in s:
            for ch in c.choices:
                content.append(ch.delta.content or "")
                args.extend(tc.function.arguments or "" for tc in ch.delta.tool_calls or [] if tc.function)
        assert "".join(args) == TOOL_ARGS
        assert "".join(content) == r.choices[0].message.content
    finally:
        await client.close()


async def test_logprobs_are_withheld_from_watermarked_choices(gateway: Any) -> None:
    # The backend's logprob tokens spell the original text: serving them would undo the watermark.
    for stream in (False, True):
        client = gateway.openai_client("alice")
        try:
            msgs = [{"role": "user", "content": "plain"}]
            if not stream:
                r = await client.chat.completions.create(model="sim", messages=msgs, logprobs=True)
                assert r.choices[0].logprobs is None
            else:
                s = await client.chat.completions.create(model="sim", messages=msgs, logprobs=True, stream=True)
                served = [ch.logprobs async for c in s for ch in c.choices]
                assert served and all(lp is None for lp in served)
        finally:
            await client.close()


async def test_stream_cut_midway_still_verifies_what_was_served(gateway: Any) -> None:
    client = gateway.openai_client("alice")
    got: list[str] = []
    try:
        s = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "cut"}],
                                                 stream=True)
        with pytest.raises(Exception):  # noqa: B017 -- the terminating error event surfaces as an APIError
            async for c in s:
                got.extend(ch.delta.content or "" for ch in c.choices)
    finally:
        await client.close()
    text = "".join(got)
    assert 500 < len(text) < len(ANSWER)
    v = attribute(text, fpr=1e-3)
    assert v.watermarked and v.client == "alice", v


async def test_client_id_with_odd_characters_is_recorded_and_verifies(gateway: Any) -> None:
    odd = "tenant:ü/ä — x@y #1 🙂 שלום"
    (text,) = await ask(gateway, odd, "plain", stream=False)
    v = verify(text, candidate_keys(RING, [odd, "alice"]), [SCHEME], fpr=1e-4)
    assert v.watermarked and v.client == odd
    for _ in range(50):
        if odd in await gateway.ctx.store.recipients():
            break
        await asyncio.sleep(0.02)
    assert odd in await gateway.ctx.store.recipients()


async def test_strong_tier_and_key_rotation(secret_file: Path) -> None:
    async with app_backend(backend()) as url:
        wm = {"enabled": True, "scheme": "lexical", "secret_file": str(secret_file), "key_version": 2,
              "retained_versions": [1]}
        cfg = gateway_config(url, watermark=wm,
                             policy={"tiers": [{"name": "normal", "watermark_strength": "strong"}],
                                     "flag_tier": "normal"})
        async with running_gateway(cfg) as gw:
            (strong,) = await ask(gw, "alice", "plain", stream=True)
            for _ in range(50):
                if "alice" in await gw.ctx.store.recipients():
                    break
                await asyncio.sleep(0.02)
            assert (await gw.ctx.store.recipients())["alice"] == [2]
    rotated = KeyRing(SECRET.encode(), 2, (1,))
    v = attribute(strong, ring=rotated)
    assert v.watermarked and v.client == "alice" and v.key_version == 2, v
    # a text signed with the retained version 1 still verifies, to version 1
    old = SCHEME.embed(ANSWER, RING.key("bob"))
    v1 = attribute(old, ring=rotated)
    assert v1.watermarked and v1.client == "bob" and v1.key_version == 1, v1


async def test_watermark_capable_backend_records_the_recipient(secret_file: Path) -> None:
    """A KGW (in-engine) response is watermarked too, so its client must be a recorded recipient: otherwise
    ``ipgate verify`` without ``--clients`` can never attribute text served by a capable backend."""
    async with app_backend(backend()) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "kgw", "secret_file": str(secret_file)})
        cfg["models"][0]["backends"][0]["watermark_capable"] = True
        async with running_gateway(cfg) as gw:
            await ask(gw, "dave", "plain", stream=False)
            for _ in range(50):
                if "dave" in await gw.ctx.store.recipients():
                    break
                await asyncio.sleep(0.02)
            assert "dave" in await gw.ctx.store.recipients()


async def test_odd_client_ids_survive_the_recipients_file_and_export(gateway: Any, tmp_path: Path,
                                                                     secret_file: Path, capsys: Any) -> None:
    """The recipients file lost ids that start with ``#`` (read back as a comment), ``"``, or have
    surrounding spaces (stripped), and ``candidate_keys`` skipped every id known only from the file:
    verification against the recorded set never found the client that received the text."""
    odd = ["#1", " lead", "trail ", '"quoted', "plain-ü"]
    texts = {c: (await ask(gateway, c, "plain", stream=False))[0] for c in odd}
    rec_file = tmp_path / "recipients.txt"
    for _ in range(50):
        if rec_file.exists() and len(rec_file.read_text().split("\n")) > len(odd):
            break
        await asyncio.sleep(0.02)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(json.dumps({"store": {"kind": "memory"},
                               "models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
                               "watermark": {"recipients_file": str(rec_file), "secret_file": str(secret_file)}}))
    out = tmp_path / "exported.txt"
    assert await asyncio.to_thread(cli_main, ["watermark", "--export-recipients", str(out),
                                              "--config", str(cfg)]) == 0
    for c in odd:
        f = tmp_path / "leak.txt"
        f.write_text(texts[c])
        for src in (["--config", str(cfg)], ["--clients", str(out), "--secret-file", str(secret_file)]):
            capsys.readouterr()
            code = await asyncio.to_thread(cli_main, ["verify", str(f), "--fpr", "1e-4", "--json", *src])
            v = json.loads(capsys.readouterr().out)
            assert code == 0 and v["client"] == c, (c, src, v)


# ------------------------------------------------------------------------------------------------- CLI


def test_client_list_lines_round_trip_every_id() -> None:
    """Writers (recipients file, --export-recipients) and the reader (--clients, --config) agree on every id,
    including line breaks ``str.splitlines`` splits on (API-key ids are not restricted like JWT claims)."""
    ids = ["alice", " lead", "#h", '"q', "a\u2028b", "x\ny", "a\x85b", "\ufeffz", "tenant:ü/ä — x@y", "a\ud800b",
           "tab\tin"]
    text = "\ufeff" + "\r\n".join(client_line(i) for i in ids) + "\r\n\r\n# comment\nalice\n"
    assert parse_client_lines(text) == ids
    text.encode("utf-8")  # every line is writable to a UTF-8 file
    assert client_line("alice") == "alice" and client_line("tenant:ü") == "tenant:ü"  # plain ids stay plain


def test_recipients_file_ids_are_tested_under_every_version_in_force() -> None:
    """``recorded_recipients`` lists a ``recipients_file`` id with no versions (the file does not say which);
    ``candidate_keys`` used to read that as "no version", so such a client was never a candidate."""
    ring = KeyRing(SECRET.encode(), 2, (1,))
    keys = candidate_keys(ring, ["from-file", "from-store"], {"from-file": [], "from-store": [1]})
    assert sorted((k.client_id, k.version) for k in keys) == [("from-file", 1), ("from-file", 2),
                                                              ("from-store", 1)]


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: bytes | None = None) -> int:
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", SECRET)
    if stdin is not None:  # a real byte stream underneath, as a shell pipe gives
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8",
                                                             errors="surrogateescape"))
    return cli_main(argv)


def test_clients_file_with_bom_crlf_blanks_and_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: Any) -> None:
    # A BOM (Windows editors) used to become part of the first id: the true recipient scored p = 1.
    f = tmp_path / "leak.txt"
    f.write_text(SCHEME.embed(ANSWER, RING.key("alice")))
    clients = tmp_path / "clients.txt"
    clients.write_bytes("\ufeffalice\r\nbob\r\n\r\n  \r\nbob\r\n# a comment\r\ncarol".encode())
    assert run_cli(["verify", str(f), "--clients", str(clients), "--fpr", "1e-4", "--json"], monkeypatch) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["client"] == "alice" and sorted(c["client"] for c in v["candidates"]) == ["alice", "bob", "carol"]
    # the documented verdict fields, and nothing else
    assert set(v) == {"watermarked", "p_value", "log10_p_value", "client", "key_version", "scheme", "scored",
                      "candidates"}
    clients.write_text('alice\n"unterminated\n')
    assert run_cli(["verify", str(f), "--clients", str(clients)], monkeypatch) == 2
    assert "line 2" in capsys.readouterr().err


def test_non_utf8_stdin_is_an_error_like_a_non_utf8_file(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    # It used to be decoded with the locale's error handler and scored ("not watermarked", exit 1).
    assert run_cli(["verify", "--client", "a"], monkeypatch, stdin=b"It is \xff\xfe not") == 2
    assert "stdin" in capsys.readouterr().err
    assert run_cli(["watermark", "--client", "a"], monkeypatch, stdin=b"It is \xff not") == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_stdin_and_stdout_are_utf8_whatever_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")  # e.g. LANG=C on an old system, or PYTHONIOENCODING=ascii
    monkeypatch.setattr(sys, "stdout", out)
    text = "Es ist 日本語 🙂. " + ANSWER
    assert run_cli(["watermark", "--client", "alice"], monkeypatch, stdin=text.encode()) == 0
    out.flush()
    marked = raw.getvalue().decode("utf-8")
    assert marked.startswith("Es ist 日本語 🙂. ") and attribute(marked).client == "alice"


def test_jsonl_round_trip_with_line_separators_and_lone_surrogates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: Any) -> None:
    # U+2028 inside a JSON string is legal and `ensure_ascii=False` writes it raw: reading JSONL with
    # str.splitlines() split such a line in two ("not valid JSON"). A "\ud800" escape has no UTF-8 form:
    # writing it raw crashed `ipgate watermark --jsonl` with a traceback.
    src = tmp_path / "in.jsonl"
    rows = [{"id": 1, "text": ANSWER.replace(". ", ".\u2028", 3), "client": "alice"},
            {"id": 2, "text": "It is \ud800 not hard, and I do not mind.", "client": "bob"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert run_cli(["watermark", "--jsonl", str(src)], monkeypatch) == 0
    marked = tmp_path / "marked.jsonl"
    marked.write_text(capsys.readouterr().out)
    got = [json.loads(ln) for ln in marked.read_text().split("\n") if ln]
    assert [g["id"] for g in got] == [1, 2] and "\ud800" in got[1]["text"]
    assert run_cli(["verify", "--jsonl", str(marked), "--clients", "-", "--fpr", "1e-4"], monkeypatch,
                   stdin=b"alice\nbob\n") == 0
    verdicts = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert verdicts[0]["id"] == 1 and verdicts[0]["client"] == "alice" and verdicts[0]["watermarked"]


def test_bad_jsonl_line_fails_the_run_before_any_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: Any) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text('\ufeff{"id": 1, "text": "It is fine."}\n\n{"id": 2, "text": 5}\n')
    assert run_cli(["verify", "--jsonl", str(f), "--client", "a"], monkeypatch) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"{f}:3: field 'text'" in captured.err and "Traceback" not in captured.err
    f.write_text('{"id": 1, "text": "It is fine.", "client": ""}\n')
    assert run_cli(["watermark", "--jsonl", str(f)], monkeypatch) == 2
    assert f"{f}:1: field 'client'" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["verify", "-", "--client", ""], "--client: not a usable client id"),
    (["verify", "-", "--client", "a", "--top", "0"], "--top"),
    (["verify", "-", "--client", "a", "--key-versions", "0"], "--key-versions"),
    (["verify", "-", "--client", "a", "--fpr", "nan"], "--fpr"),
    (["verify", "-", "--client", "a", "--fpr=-1e-3"], "--fpr"),
    (["verify", "-", "--client", "a", "--fpr", "1"], "--fpr"),
    (["watermark", "--export-recipients", "x.txt"], "--export-recipients needs --config"),
    (["verify", "-", "--clients", "-"], "both come from stdin"),  # was: an empty text, "not watermarked"
])
def test_argument_errors_name_the_argument(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: Any) -> None:
    assert run_cli(argv, monkeypatch, stdin=b"It is not hard.") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_closed_early_is_not_a_traceback(tmp_path: Path) -> None:
    import os
    import subprocess

    f = tmp_path / "many.jsonl"
    f.write_text("".join(json.dumps({"id": i, "text": "It is not hard. " * 20}) + "\n" for i in range(3000)))
    ipgate = Path(sys.executable).with_name("ipgate")
    env = {**os.environ, "IPGATE_WATERMARK_SECRET": SECRET}
    p = subprocess.Popen([str(ipgate), "verify", "--jsonl", str(f), "--client", "a"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline().startswith(b'{"id": 0')
    p.stdout.close()  # like `| head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 2, err
    assert "Traceback" not in err and "output closed" in err


# ------------------------------------------------------------------------------------------- admin API


async def test_admin_verify_bounds_and_bad_client_ids(gateway: Any) -> None:
    headers = {"Authorization": f"Bearer {gateway.admin_token}"}
    url = gateway.admin_url + "/admin/watermark/verify"
    async with aiohttp.ClientSession() as http:
        # a lone surrogate is valid JSON but no client id: it used to be a 500 (UnicodeEncodeError)
        async with http.post(url, data=b'{"text": "It is not.", "clients": ["a\\ud800"]}', headers=headers) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "clients"
        # over the character limit but under 32 MiB: the route's own 400 naming the field, not aiohttp's
        # bare 1 MiB "Request Entity Too Large" (the documented 2 M characters were unreachable)
        async with http.post(url, json={"text": "word " * 420_000}, headers=headers) as r:
            body = await r.json()
            assert r.status == 400 and body["error"]["param"] == "text", body
        # within every limit, over the old 1 MiB body limit: served
        text = (SCHEME.embed(ANSWER, RING.key("alice")) + "\n\n") * 800
        assert 1 << 20 < len(text) < 2_000_000
        async with http.post(url, json={"text": text, "clients": ["bob", "alice"]}, headers=headers) as r:
            body = await r.json()
            assert r.status == 200 and body["client"] == "alice", body
        # a body over the route's bound: 413 naming the limit, without reading it all
        async with http.post(url, data=b"x" * (33 << 20), headers=headers) as r:
            body = await r.json()
            assert r.status == 413 and "bytes" in body["error"]["message"], body


async def test_admin_verify_without_recipients_or_with_a_broken_tokenizer(secret_file: Path,
                                                                          tmp_path: Path) -> None:
    bad_tok = tmp_path / "tokenizer.json"
    bad_tok.write_text("{not a tokenizer")
    cfg = gateway_config("http://127.0.0.1:9", watermark={"enabled": True, "scheme": "lexical",
                                                          "secret_file": str(secret_file),
                                                          "kgw_tokenizer_file": str(bad_tok)})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {gw.admin_token}"}
        url = gw.admin_url + "/admin/watermark/verify"
        # no recipient recorded yet: "not watermarked" over zero candidates would be a false statement
        async with http.post(url, json={"text": ANSWER, "scheme": "lexical"}, headers=headers) as r:
            body = await r.json()
            assert r.status == 400 and body["error"]["param"] == "clients", body
        # a tokenizer.json that does not load is the server's configuration problem, said as such (was a
        # bare 500 "The gateway failed to process the request.")
        async with http.post(url, json={"text": ANSWER, "clients": ["a"], "scheme": "kgw"}, headers=headers) as r:
            body = await r.json()
            assert r.status == 503 and "kgw_tokenizer_file" in body["error"]["message"], body


async def test_usage_chunk_and_strong_tier_text(secret_file: Path) -> None:
    async with app_backend(backend()) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "lexical", "secret_file": str(secret_file)},
                             policy={"tiers": [{"name": "normal", "watermark_strength": "strong"}],
                                     "flag_tier": "normal"})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            try:
                s = await client.chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": "plain"}], stream=True,
                    stream_options={"include_usage": True})
                chunks = [c async for c in s]
            finally:
                await client.close()
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 14
    text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    # the strong tier really used its extra groups: the text differs from the normal-strength embedding
    assert text == SCHEME.embed(ANSWER, RING.key("alice"), "strong") != SCHEME.embed(ANSWER, RING.key("alice"))
    assert attribute(text).client == "alice"


async def test_legacy_completions_echo_returns_the_prompt_verbatim(secret_file: Path) -> None:
    """``echo: true`` on /v1/completions: the backend's text starts with the client's own prompt. The
    embedder used to rewrite it too ("It is not" came back as "It's not"): the echo must be verbatim and only
    the completion after it watermarked."""
    prompt = "It is not hard, and I do not know what you are asking. Here is my answer:"

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = (body["prompt"] if body.get("echo") else "") + " " + ANSWER
        base = {"id": "c", "object": "text_completion", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(0, len(text), 4):
            choice = {"index": 0, "text": text[i: i + 4], "finish_reason": None}
            await resp.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())
        end = {"index": 0, "text": "", "finish_reason": "stop"}
        await resp.write(f"data: {json.dumps({**base, 'choices': [end]})}\n\ndata: [DONE]\n\n".encode())
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    async with app_backend(app) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "lexical", "secret_file": str(secret_file)})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            try:
                r = await client.completions.create(model="sim", prompt=prompt, echo=True, max_tokens=400)
                s = await client.completions.create(model="sim", prompt=prompt, echo=True, max_tokens=400,
                                                    stream=True)
                streamed = "".join([c.choices[0].text async for c in s if c.choices])
            finally:
                await client.close()
    text = r.choices[0].text
    assert text.startswith(prompt + " ") and streamed == text
    v = attribute(text[len(prompt):])
    assert v.watermarked and v.client == "alice", v


@pytest.mark.parametrize("prompt", ["It is not hard, I do not know", "It is not hard. ", "x"])
def test_prompt_echo_passthrough_for_any_chunking(prompt: str) -> None:
    import random

    from gateway.config import parse_config
    from gateway.principal import Principal
    from gateway.watermarking import GatewayWatermarking

    cfg = parse_config({"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
                        "watermark": {"scheme": "lexical"}}, env={})
    wm = GatewayWatermarking(cfg, RING)
    body = {"prompt": [prompt], "echo": True}
    text = prompt + ANSWER[:400]
    whole = wm.embedder_for(Principal("alice"), "m", "normal", body)
    assert whole is not None
    expected = whole.feed(text) + whole.finish()
    assert expected.startswith(prompt) and expected != text
    rng = random.Random(7)
    for _ in range(30):
        emb = wm.embedder_for(Principal("alice"), "m", "normal", body)
        assert emb is not None
        cuts = sorted(rng.sample(range(1, len(text)), 12))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert "".join(emb.feed(p) for p in pieces) + emb.finish() == expected
