"""Review session 15 (watermark verification): attribution and the statistics a dispute relies on.

Real parts: a real gateway and aiohttp backend (tests.support.harness), the official ``openai`` client, the
admin API over HTTP, the real key ring and lexical scheme.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.harness import app_backend, gateway_config, running_gateway
from tests.support.lexical import ANSWER
from watermark.detection_text import detection_text as _detection_text
from watermark.keys import KeyRing
from watermark.lexical import LexicalScheme

SECRET = "review15-watermark-verify-secret-0123456789"


def _chat_backend() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _admin_verify(gw: Any, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, \
            s.post(gw.admin_url + "/admin/watermark/verify", json=payload,
                   headers={"Authorization": f"Bearer {gw.admin_token}"}) as r:
        return r.status, await r.json()


# ------------------------------------------------------------------ 1. store versions vs recipients_file


async def test_admin_verify_tests_a_file_recipient_under_every_version_even_if_the_store_knows_another(
        tmp_path: Path) -> None:
    """Key rotation with the memory store (the demo's): the gateway served alice under version 1 and wrote her
    to ``watermark.recipients_file``; the operator rotated to version 2 (retaining 1), which is a restart, so
    the memory store started empty; alice's next answer recorded (alice, 2) in the store. The admin route took
    the store's versions over the file's "served, version unknown", tested alice under version 2 only, and
    answered "not watermarked" for a text served to her under version 1 -- a version still in force."""
    secret = tmp_path / "wm.secret"
    secret.write_text(SECRET + "\n")
    recipients = tmp_path / "recipients.txt"
    recipients.write_text("alice\n", encoding="utf-8")  # what the version-1 process left
    ring = KeyRing(SECRET.encode(), 2, (1,))
    leaked = LexicalScheme(ring.master).embed(ANSWER * 3, ring.key("alice", 1))
    wm = {"enabled": True, "scheme": "lexical", "secret_file": str(secret), "key_version": 2,
          "retained_versions": [1], "recipients_file": str(recipients)}
    async with app_backend(_chat_backend()) as url, running_gateway(gateway_config(url, watermark=wm)) as gw:
        client = gw.openai_client("alice")
        try:
            await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}])
        finally:
            await client.close()
        for _ in range(200):  # the recipient is recorded in the background account step
            if (await gw.ctx.store.recipients()).get("alice") == [2]:
                break
            await asyncio.sleep(0.01)
        assert (await gw.ctx.store.recipients()) == {"alice": [2]}
        status, body = await _admin_verify(gw, {"text": leaked, "fpr": 1e-3})
    assert status == 200, body
    assert body["watermarked"] and body["client"] == "alice" and body["key_version"] == 1, body


def test_recorded_keys_merge_store_and_file() -> None:
    """Store-only ids keep their recorded versions; an id the file lists is tested under every version in
    force (the file records no version, and the store may have lost some); versions out of force never."""
    from gateway.admin.watermark import recorded_keys

    ring = KeyRing(SECRET.encode(), 3, (2,))
    keys = recorded_keys(ring, {"a": [2], "b": [1, 3], "c": [1]}, ["b", "d"])
    assert sorted((k.client_id, k.version) for k in keys) == [
        ("a", 2), ("b", 2), ("b", 3), ("d", 2), ("d", 3)]
    assert json.dumps(sorted({k.client_id for k in keys})) == '["a", "b", "d"]'


# ------------------------------------------------------------------ 2. invisible edits and lookalike letters

_RING1 = KeyRing(SECRET.encode())


def _invisible_attacks(text: str) -> dict[str, str]:
    import re

    return {
        "zero-width space inside every word": re.sub(r"(\w)(\w)", "\\1\u200b\\2", text),
        "soft hyphen inside every word": re.sub(r"(\w)(\w)", "\\1\u00ad\\2", text),
        "word joiner after every space": text.replace(" ", " \u2060"),
        "tag characters inside every word": re.sub(r"(\w)(\w)", "\\1\U000e0041\\2", text),
        "Cyrillic a, e, o, c, p for the Latin ones": text.translate(str.maketrans("aeocp", "аеоср")),
        "Greek omicron, Cyrillic dze and palochka": text.translate(str.maketrans("osl", "οѕӏ")),
        "Armenian o, u, n, h": text.translate(str.maketrans("ounh", "օսոհ")),
        "modifier-letter apostrophe in contractions": text.replace("'", "\u02bc").replace("\u2019", "\u02bc"),
    }


@pytest.mark.parametrize("attack", list(_invisible_attacks("")))
def test_an_invisible_edit_does_not_erase_the_watermark(attack: str) -> None:
    """A zero-width character inside each word, or Cyrillic lookalikes for Latin letters, change nothing a
    reader sees, need no knowledge of the table or of any key, and erased every slot: scored 0, "not
    watermarked". The detector now reads the text with those undone (watermark.detection_text)."""
    from watermark.verify import candidate_keys, verify

    scheme = LexicalScheme(_RING1.master)
    served = scheme.embed(ANSWER * 3, _RING1.key("alice"))
    keys = candidate_keys(_RING1, ["alice", "bob", "carol"])
    clean = verify(served, keys, [scheme], fpr=1e-3)
    assert clean.watermarked and clean.client == "alice"
    attacked = _invisible_attacks(served)[attack]
    assert attacked != served
    got = verify(attacked, keys, [scheme], fpr=1e-3)
    assert (got.watermarked, got.client, got.scored, got.log10_p_value) == \
        (True, "alice", clean.scored, clean.log10_p_value)


def test_text_in_another_alphabet_is_read_as_it_is() -> None:
    """Russian or Greek text is not mapped to Latin letters (it would only be garbled), and a text without
    invisible characters or lookalikes is read unchanged."""
    from watermark.detection_text import detection_text

    for text in ("Привет, как дела? Это сор и ересь.", "Καλημέρα, ο κόσμος είναι μικρός.", ANSWER,
                 "E = mc², 👩\u200d💻 at 5 °C", "Ω is the ohm"):
        assert detection_text(text) == text.replace("\u200d", "")
    assert detection_text("The answer (ответ) is tһе same.") == "The answer (oтвeт) is the same."


def test_the_normalised_reading_leaves_real_answers_as_they_were_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    """On real answers (the shared corpus, red-team source left out) watermarked as the gateway does, the
    detector's reading finds exactly the tuples and variants it found before the normalisation (all 9 023
    responses were checked once; 2 000 here)."""
    import watermark.lexical as lexical_module
    from tests.watermark.conftest import DATA

    if not DATA.exists():
        pytest.skip("../shared/data/responses.jsonl is not beside the repository")
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()[:2500]]
    texts = [r["response"] for r in rows if "harmless" not in r["source"]][:2000]
    scheme = LexicalScheme(_RING1.master)
    served = [scheme.embed(t, _RING1.key("alice")) for t in texts]
    touched = [t for t in served if _detection_text(t) != t]
    assert touched  # the corpus has such texts (emoji with joiners, Cyrillic quotes): the check ran
    after = [scheme.observe(t) for t in touched]
    monkeypatch.setattr(lexical_module, "detection_text", lambda t: t)  # the reading before the fix
    before = [scheme.observe(t) for t in touched]
    for b, a in zip(before, after, strict=True):
        assert b.contexts == a.contexts and b.observed.tolist() == a.observed.tolist()


def test_the_normalised_reading_keeps_p_values_valid_under_wrong_keys() -> None:
    """The normalisation reads the text alone, so under H0 (keys that did not mark it) the p-values stay
    valid: a text marked by another client and then attacked, scored against 2 000 unrelated keys."""
    scheme = LexicalScheme(_RING1.master)
    served = scheme.embed(ANSWER * 3, _RING1.key("mallory"))
    attacked = _invisible_attacks(served)["Cyrillic a, e, o, c, p for the Latin ones"]
    keys = _RING1.candidates([f"other-{i}" for i in range(2000)])
    score = scheme.score(attacked, keys, top=len(keys))
    assert score.scored > 10
    ps = [c.p_value for c in score.candidates]
    for a in (0.1, 0.01):
        n = len(ps) * a
        assert sum(p <= a for p in ps) <= n + 4 * n ** 0.5 + 2, a


# ------------------------------------------------------------------ 3. memory of a large corpus


def test_scoring_a_large_corpus_against_many_clients_keeps_memory_bounded() -> None:
    """Clients were scored 16 384 at a time whatever the number of tuples, so each numpy temporary was
    16 384 x tuples x 8 bytes: a 2 M-character corpus (the admin API's limit; 7 000-20 000 tuples) against the
    recorded recipients took 2.7 GB (7 000 tuples, measured) to several GB in the gateway's own process.
    Here: 4 000 tuples of real table groups against 4 000 keys; before the fix the peak was about 0.4 GB."""
    import tracemalloc

    import numpy as np

    from watermark.lexical import Observation
    from watermark.lexicon import default_lexicon

    groups = default_lexicon().groups
    rng = np.random.default_rng(15)
    g = rng.integers(0, len(groups), 4_000)
    obs = Observation(
        contexts=tuple(f"w{i}" for i in range(len(g))), groups=g.astype(np.int64),
        observed=np.array([rng.integers(0, groups[x].k) for x in g.tolist()], dtype=np.int64),
        level=np.array([groups[x].level for x in g.tolist()], dtype=np.int64))
    keys = _RING1.candidates([f"c{i}" for i in range(4000)])
    scheme = LexicalScheme(_RING1.master)
    tracemalloc.start()
    try:
        score = scheme.score_observation(obs, keys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert score.scored > 0 and score.family_size == 4000
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
