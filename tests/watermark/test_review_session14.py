"""Review session 14 (watermark area): defects found and fixed, each with the test that failed before the fix.

Gateway probes run the real gateway in front of a real aiohttp backend with the official ``openai`` client;
CLI probes run the real subcommands through ``gateway.cli.main``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.cli import main as cli_main
from gateway.config import parse_config
from gateway.principal import Principal
from gateway.store.memory import MemoryStore
from gateway.watermarking import GatewayWatermarking, key_ring
from tests.support.harness import GatewayHandle, app_backend, gateway_config, running_gateway
from tests.support.lexical import ANSWER
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme
from watermark.verify import candidate_keys, verify

SECRET = "review14-watermark-master-secret-0123456789"
RING = KeyRing(SECRET.encode())
DAY = 86400.0


def _chat_backend() -> web.Application:
    """Answers every chat request with ANSWER as free text, whatever tools the request declares (what a model
    does when tool_choice lets it answer in a message)."""
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base = {"id": "x", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(0, len(ANSWER), 5):
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": ANSWER[i:i + 5]}, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        done = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {},
                                                                         "finish_reason": "stop"}]}
        await resp.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def responses(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({
            "id": "resp_1", "object": "response", "created_at": int(time.time()), "model": body["model"],
            "status": "completed", "output": [{"type": "message", "id": "msg_1", "role": "assistant",
                                               "status": "completed", "content": [
                                                   {"type": "output_text", "text": ANSWER, "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/responses", responses)
    return app


def _wm_cfg(secret: Path, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "scheme": "lexical", "secret_file": str(secret), **extra}


@contextlib.asynccontextmanager
async def _gateway(app: web.Application, secret: Path, **wm: Any) -> AsyncIterator[GatewayHandle]:
    async with app_backend(app) as url, running_gateway(gateway_config(url, watermark=_wm_cfg(secret, **wm))) as gw:
        yield gw


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "wm.secret"
    p.write_text(SECRET + "\n")
    return p


def _attributed_to(text: str, client: str) -> bool:
    v = verify(text, candidate_keys(RING, [client, "someone-else"]), [LexicalScheme(RING.master)], fpr=1e-3)
    return v.watermarked and v.client == client


# ------------------------------------------------------------------ 1. allowed_tools in mode "auto"

_TOOLS: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
_ALLOWED_AUTO: Any = {"type": "allowed_tools",
                 "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "lookup"}}]}}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_allowed_tools_auto_answer_is_watermarked(secret_file: Path, stream: bool) -> None:
    """``tool_choice: {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}`` lets the model answer in a
    message (OpenAI: "generate a message"); any object tool_choice counted as a forced call, so that free
    text was served without the watermark to every client below the throttle tier."""
    async with _gateway(_chat_backend(), secret_file) as gw:
        client = gw.openai_client("alice")
        try:
            msgs: Any = [{"role": "user", "content": "hi"}]
            if stream:
                s = await client.chat.completions.create(model="sim", messages=msgs, tools=_TOOLS,
                                                         tool_choice=_ALLOWED_AUTO, stream=True)
                text = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
            else:
                r = await client.chat.completions.create(model="sim", messages=msgs, tools=_TOOLS,
                                                         tool_choice=_ALLOWED_AUTO)
                text = r.choices[0].message.content or ""
        finally:
            await client.close()
        skipped = gw.ctx.metrics.watermark_skipped_total.labels(reason="tool_choice")._value.get()
    assert text != ANSWER and _attributed_to(text, "alice")
    assert skipped == 0


async def test_a_responses_allowed_tools_auto_answer_is_watermarked(secret_file: Path) -> None:
    async with _gateway(_chat_backend(), secret_file) as gw:
        client = gw.openai_client("alice")
        try:
            tools: Any = [{"type": "function", "name": "lookup", "parameters": {}}]
            choice: Any = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "lookup"}]}
            r = await client.responses.create(model="sim", input="hi", tools=tools, tool_choice=choice)
        finally:
            await client.close()
    assert r.output_text != ANSWER and _attributed_to(r.output_text, "alice")


@pytest.mark.parametrize("tc, forced", [
    ("required", True), ("auto", False), ("none", False), (None, False),
    ({"type": "function", "function": {"name": "f"}}, True),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}, True),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}, False),
    ({"type": "allowed_tools", "mode": "required", "tools": []}, True),  # Responses' shape
    ({"type": "allowed_tools", "mode": "auto", "tools": []}, False),
    # the two shapes disagree: the one that lets the model write text wins (watermarking a call is harmless)
    ({"type": "allowed_tools", "mode": "auto", "allowed_tools": {"mode": "required"}}, False),
])
def test_which_tool_choices_force_a_call(tc: Any, forced: bool) -> None:
    from gateway.watermarking import responses_unwatermarkable, unwatermarkable

    body = {"tools": _TOOLS, "tool_choice": tc}
    assert (unwatermarkable(body) == "tool_choice") is forced
    assert (responses_unwatermarkable(body) == "tool_choice") is forced


async def test_allowed_tools_auto_is_still_refused_at_the_throttle_tier(secret_file: Path) -> None:
    """What the fix must keep: a tier that refuses unwatermarkable output refuses declared tools the model may
    call (their arguments carry no watermark), in mode auto too."""
    async with app_backend(_chat_backend()) as url:
        cfg = gateway_config(url, watermark=_wm_cfg(secret_file))
        async with running_gateway(cfg) as gw:
            await gw.ctx.store.set_override("alice", None, 2, 3600)  # throttle
            client = gw.openai_client("alice")
            try:
                with pytest.raises(Exception) as exc:
                    await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                                         tools=_TOOLS, tool_choice=_ALLOWED_AUTO)
            finally:
                await client.close()
    assert getattr(exc.value, "status_code", None) == 403


# ------------------------------------------------------------------ 2. recipient records outlived by their client


async def test_a_client_served_longer_than_the_recipient_ttl_stays_a_recorded_recipient(tmp_path: Path) -> None:
    """A recipient was written once per process, so its store record expired ``recipient_ttl_s`` after the
    first answer even while the process kept serving the client: after 400 days by default (days where an
    operator shortens the TTL), ``ipgate verify --config`` and the admin API no longer found a client served
    the day before. One clock drives both the store and the gateway's memory of what it recorded."""
    now_s = [1_800_000_000.0]
    cfg = parse_config({"models": [{"name": "m1", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
                        "watermark": {"scheme": "lexical", "recipients_file": str(tmp_path / "r.txt")}}, env={})
    wm = GatewayWatermarking(cfg, key_ring(cfg.watermark, SECRET.encode()), clock=lambda: now_s[0])
    store = MemoryStore(clock=lambda: int(now_s[0] * 1e6))
    for _ in range(401):  # one answer a day for 401 days, one process
        await wm.record_recipient(store, Principal("alice"))
        now_s[0] += DAY
    assert await store.recipients() == {"alice": [1]}
    # still once per process for a while: the file holds one line per half TTL, not one per answer
    lines = (tmp_path / "r.txt").read_text().splitlines()
    assert set(lines) == {"alice"} and len(lines) == 3


@pytest.mark.parametrize("field, value", [("retained_versions", [0]), ("retained_versions", [-1]),
                                          ("key_version", 2**32)])
def test_an_out_of_range_key_version_is_a_config_error_naming_the_field(field: str, value: Any) -> None:
    """``retained_versions: [0]`` passed the config schema, then the key ring refused it: ``ipgate check``
    answered "internal error: KeyMaterialError" instead of a finding, and the gateway did not start."""
    from gateway.config import ConfigError

    cfg = parse_config({"models": [{"name": "m1", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
                        "watermark": {"scheme": "lexical", field: value}}, env={})
    with pytest.raises(ConfigError, match=f"watermark.{field}"):
        key_ring(cfg.watermark, SECRET.encode())


def test_ipgate_check_and_verify_name_an_out_of_range_retained_version(tmp_path: Path, capsys: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    conf = tmp_path / "ipgate.yaml"
    conf.write_text(json.dumps({
        "store": {"kind": "memory"}, "auth": {"api_keys": {"file": str(tmp_path / "keys.txt")}},
        "watermark": {"secret_file": str(secret), "key_version": 2, "retained_versions": [0]},
        "models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}]}))
    (tmp_path / "keys.txt").write_text("")
    assert cli_main(["check", "--config", str(conf)]) == 2
    out = capsys.readouterr()
    assert "internal error" not in out.err
    assert "watermark.retained_versions" in out.out
    monkeypatch.setattr(sys, "stdin", io.StringIO("some text"))
    assert cli_main(["verify", "-", "--config", str(conf), "--client", "a"]) == 2
    err = capsys.readouterr().err
    assert "watermark.retained_versions" in err and "internal error" not in err


# ------------------------------------------------------------------ 3. the admin API's recorded recipients


async def test_admin_verify_attributes_among_the_recipients_file_too(secret_file: Path, tmp_path: Path) -> None:
    """``ipgate verify --config`` reads the recorded recipients from the store and ``watermark.recipients_file``;
    the admin route read the store only. With the memory store (the demo's) every restart emptied it, so the
    dashboard answered 400 "no watermark recipients are recorded" for text the CLI attributes."""
    recipients = tmp_path / "recipients.txt"
    recipients.write_text('alice\n" bob"\n', encoding="utf-8")  # as a previous process left it
    leaked = LexicalScheme(RING.master).embed(ANSWER * 3, RING.key("alice"))
    async with _gateway(_chat_backend(), secret_file, recipients_file=str(recipients)) as gw, \
            aiohttp.ClientSession() as s, \
            s.post(gw.admin_url + "/admin/watermark/verify", json={"text": leaked, "fpr": 1e-3},
                   headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        status, body = r.status, await r.json()
    assert status == 200, body
    assert body["watermarked"] and body["client"] == "alice" and body["key_version"] == 1
    assert {c["client"] for c in body["candidates"]} == {"alice", " bob"}


async def test_admin_verify_unreadable_recipients_file_is_a_503(secret_file: Path, tmp_path: Path) -> None:
    recipients = tmp_path / "recipients.txt"
    recipients.write_bytes(b"alice\n\xff\xfe\n")
    async with _gateway(_chat_backend(), secret_file, recipients_file=str(recipients)) as gw, \
            aiohttp.ClientSession() as s, \
            s.post(gw.admin_url + "/admin/watermark/verify", json={"text": ANSWER},
                   headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        status, body = r.status, await r.json()
    assert status == 503 and body["error"]["code"] == "recipients_unavailable", body


# ------------------------------------------------------------------ 4. the CLI on empty and odd input


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: bytes = b"") -> int:
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", SECRET)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    return cli_main(argv)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff\n"])
@pytest.mark.parametrize("corpus", [False, True])
def test_verify_jsonl_without_texts_is_an_error_not_a_verdict(content: str, corpus: bool, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """An empty JSONL (a pipeline that produced nothing) exited 1, "not watermarked", with no output at all (or
    a corpus verdict over 0 texts): a claim about texts that were never there."""
    f = tmp_path / "suspects.jsonl"
    f.write_text(content, encoding="utf-8")
    assert _run(["verify", "--jsonl", str(f), "--client", "a", *(["--corpus"] if corpus else [])], monkeypatch) == 2
    out = capsys.readouterr()
    assert out.out == "" and f"--jsonl {f}: no texts" in out.err


def test_verify_jsonl_from_stdin_with_clients_from_stdin_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: Any) -> None:
    """``--jsonl - --clients -``: the clients took all of stdin and the texts read nothing: exit 1 with no
    output, as if every text had been checked."""
    stdin = json.dumps({"id": 1, "text": ANSWER}).encode() + b"\n"
    assert _run(["verify", "--jsonl", "-", "--clients", "-"], monkeypatch, stdin) == 2
    assert "both come from stdin" in capsys.readouterr().err


def test_verify_jsonl_from_stdin_still_works(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    leaked = LexicalScheme(RING.master).embed(ANSWER * 3, RING.key("alice"))
    stdin = json.dumps({"id": 7, "text": leaked}).encode() + b"\n"
    assert _run(["verify", "--jsonl", "-", "--client", "alice", "--fpr", "1e-3"], monkeypatch, stdin) == 0
    assert json.loads(capsys.readouterr().out)["id"] == 7


@pytest.mark.parametrize("command", [["verify", "--client", "a"], ["watermark"]])
def test_a_deeply_nested_jsonl_line_is_named(command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: Any) -> None:
    """A line nested deeper than the JSON parser's stack was "internal error: RecursionError", without the
    line; every other bad line is named ``FILE:LINE``."""
    f = tmp_path / "in.jsonl"
    f.write_text('{"id": 1, "text": "fine", "client": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    assert _run([*command, "--jsonl", str(f)], monkeypatch) == 2
    out = capsys.readouterr()
    assert out.out == "" and f"{f}:2: not valid JSON" in out.err and "internal error" not in out.err


# ------------------------------------------------------------------ 5. echo: true on a backend that does not echo


def _completions_backend(echo_as: str) -> web.Application:
    """A legacy completions server. ``echo_as``: "ignore" (many servers ignore ``echo``), "tail" (echoes only
    the prompt's last words, as after ``truncate_prompt_tokens``), "full" (vLLM's echo)."""
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["prompt"]
        echo = {"ignore": "", "tail": prompt[-12:], "full": prompt}[echo_as] if body.get("echo") else ""
        text = echo + " " + ANSWER
        base = {"id": "c", "object": "text_completion", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(0, len(text), 7):
            choice = {"index": 0, "text": text[i: i + 7], "finish_reason": None}
            await resp.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())
        end = {"index": 0, "text": "", "finish_reason": "stop"}
        await resp.write(f"data: {json.dumps({**base, 'choices': [end]})}\n\ndata: [DONE]\n\n".encode())
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    return app


@pytest.mark.parametrize("echo_as", ["ignore", "tail", "full"])
@pytest.mark.parametrize("stream", [False, True])
async def test_echo_passes_only_the_echoed_prompt_through(secret_file: Path, echo_as: str, stream: bool) -> None:
    """``echo: true`` passed the first ``len(prompt)`` characters through unwatermarked, whatever they were: with a
    backend that ignores ``echo`` (or echoes less of the prompt), a client sending a prompt as long as the answer
    it wants got that answer without the watermark."""
    prompt = "Please continue. " + "filler words " * (len(ANSWER) // 13 + 10)
    async with _gateway(_completions_backend(echo_as), secret_file) as gw:
        client = gw.openai_client("alice")
        try:
            if stream:
                s = await client.completions.create(model="sim", prompt=prompt, echo=True, max_tokens=400,
                                                    stream=True)
                text = "".join([c.choices[0].text async for c in s if c.choices])
            else:
                r = await client.completions.create(model="sim", prompt=prompt, echo=True, max_tokens=400)
                text = r.choices[0].text
        finally:
            await client.close()
    echoed = {"ignore": "", "tail": prompt[-12:], "full": prompt}[echo_as]
    assert text.startswith(echoed + " ")  # the echo holds no slot: verbatim either way
    completion = text[len(echoed):]
    assert completion != " " + ANSWER and _attributed_to(completion, "alice")


@pytest.mark.parametrize("text", [
    ANSWER,  # the backend ignored echo
    "It is not hard, I do not kn" + "ow it. " + ANSWER,  # echoed, then stopped spelling the prompt mid-word
    "It is not hard, I do not know" + " " + ANSWER,  # all of it echoed
    "It is" + ANSWER,  # a short match, then the completion
])
def test_prompt_echo_is_chunking_independent_when_the_echo_differs(text: str) -> None:
    import random

    cfg = parse_config({"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
                        "watermark": {"scheme": "lexical"}}, env={})
    wm = GatewayWatermarking(cfg, RING)
    body = {"prompt": "It is not hard, I do not know", "echo": True}
    whole = wm.embedder_for(Principal("alice"), "m", "normal", body)
    assert whole is not None
    expected = whole.feed(text) + whole.finish()
    rng = random.Random(11)
    for _ in range(40):
        emb = wm.embedder_for(Principal("alice"), "m", "normal", body)
        assert emb is not None
        cuts = sorted(rng.sample(range(1, len(text)), 15))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert "".join(emb.feed(p) for p in pieces) + emb.finish() == expected
    common = len(__import__("os").path.commonprefix([text, body["prompt"]]))
    assert expected[:common] == text[:common]  # what spells the prompt is never rewritten
    assert expected != text  # and the rest is watermarked


# ------------------------------------------------------------------ 6. audio output


def _audio_backend() -> web.Application:
    """OpenAI's audio models: ``modalities: ["text", "audio"]`` answers with speech and its transcript in
    ``message.audio``, ``content`` null."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        msg: dict[str, Any] = {"role": "assistant", "content": ANSWER}
        if "audio" in (body.get("modalities") or []):
            msg = {"role": "assistant", "content": None,
                   "audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 2_000_000_000, "transcript": ANSWER}}
        return web.json_response({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": msg}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_audio_output_is_counted_as_unwatermarked_and_refused_at_throttle(secret_file: Path) -> None:
    """Speech and its transcript carry no lexical watermark: such answers were served without a count or a
    refusal at the throttle tier, unlike every other kind of output the watermark cannot reach."""
    async with _gateway(_audio_backend(), secret_file) as gw:
        await gw.ctx.store.set_override("eve", None, 2, 3600)  # throttle
        client, eve = gw.openai_client("alice"), gw.openai_client("eve")
        try:
            audio: Any = {"voice": "alloy", "format": "wav"}
            r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                                     modalities=["text", "audio"], audio=audio)
            with pytest.raises(Exception) as exc:
                await eve.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                                  modalities=["text", "audio"], audio=audio)
            plain = await eve.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                                      modalities=["text"])
        finally:
            await client.close()
            await eve.close()
        skipped = gw.ctx.metrics.watermark_skipped_total.labels(reason="modalities")._value.get()
    assert r.choices[0].message.audio is not None and skipped == 1
    assert getattr(exc.value, "status_code", None) == 403 and "modalities" in str(exc.value)
    assert _attributed_to(plain.choices[0].message.content or "", "eve")  # text-only output is watermarked


# ------------------------------------------------------------------ 7. a recipients file that cannot be written


async def test_an_unwritable_recipients_file_is_logged_once_and_retried(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """``recipients_file`` that cannot be written (here a file stands where its directory must go; a missing
    directory is created since 2026-11-27): every watermarked answer logged a full traceback ("record_recipient
    failed") and wrote the store again. Now one ERROR, a retry with each answer (nothing is remembered as
    recorded until the line is written), and one line when it works again."""
    target = tmp_path / "later" / "recipients.txt"
    target.parent.write_text("not a directory")
    cfg = parse_config({"models": [{"name": "m1", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}],
                        "watermark": {"scheme": "lexical", "recipients_file": str(target)}}, env={})
    wm = GatewayWatermarking(cfg, key_ring(cfg.watermark, SECRET.encode()))
    store = MemoryStore()
    with caplog.at_level("INFO", logger="gateway.watermarking"):
        for c in ("alice", "bob", "alice"):
            await wm.record_recipient(store, Principal(c))  # never raises: the caller logged a traceback per call
        target.parent.unlink()  # the operator fixes it: the next write creates the directory
        await wm.record_recipient(store, Principal("alice"))
        await wm.record_recipient(store, Principal("alice"))  # remembered now: no second line
    records = [r for r in caplog.records if r.name == "gateway.watermarking"]
    assert [r.levelname for r in records] == ["ERROR", "WARNING"]
    assert target.read_text().splitlines() == ["alice"]
    assert set(await store.recipients()) == {"alice", "bob"}


# --- the lead's fixes of findings A (a model's own scheme under `scheme: none`) --------------------------------

async def test_a_models_own_scheme_applies_when_the_section_says_none(tmp_path: Path) -> None:
    """``watermark.scheme`` is every model's default; a model's ``watermark_scheme: lexical`` under a section
    scheme of ``none`` used to watermark nothing (the watermarking component was never built)."""
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET)
    async with app_backend(_chat_backend()) as url:
        cfg = gateway_config(url, watermark={"enabled": True, "scheme": "none", "secret_file": str(secret)})
        cfg["models"][0]["watermark_scheme"] = "lexical"
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            r = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}])
            await client.close()
    text = r.choices[0].message.content or ""
    assert text != ANSWER and text == LexicalScheme(RING.master).embed(ANSWER, RING.key("alice"))
