"""Per-request cost of session 13's detection reading (the whole last user turn, the earlier user turns as
history, the engine's memory of last turns), next to the reading before it (``detectors/features.py`` at
commit 3eab4d1, loaded from git): a single-turn chat, a 10-turn chat and a 10 001-message request, real prompts.

    .venv/bin/python bench/turn_reading.py

Prints a markdown table of microseconds per call (timeit, best of 9 repeats). ``read_turn`` (column ``_turns``)
is measured on a warm state whose turn memory holds the earlier turns (a conversation sent turn by turn: no rebase).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from detectors import features as new
from detectors import state as envelope
from detectors.combiner import CombinerParams, default_combiner_path
from detectors.engine import Engine
from detectors.turns import read_turn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "prompts.jsonl"
CHAT = "/v1/chat/completions"
BEFORE = "3eab4d1"


def _old_features() -> ModuleType:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:detectors/features.py"], check=True,
                         capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("features_before", f.name)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    Path(f.name).unlink()
    return mod


def _bodies() -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").split("\n") if line]  # not splitlines: U+2028
    texts = [r["turns"][0] for r in rows if r.get("category") != "harmless-redteam" and r.get("turns")][:40]
    system = {"role": "system", "content": "You are helpful."}
    msgs: list[dict[str, str]] = [system]
    for i in range(10):
        msgs += [{"role": "user", "content": texts[i]}, {"role": "assistant", "content": texts[i + 10]}]
    return {
        "single-turn": {"model": "m", "messages": [system, {"role": "user", "content": texts[0]}]},
        "10-turn": {"model": "m", "messages": msgs[:-1]},
        "10 001 messages": {"model": "m", "messages": [
            m for i in range(5000) for m in ({"role": "user", "content": texts[i % 40]},
                                             {"role": "assistant", "content": "ok"})]
            + [{"role": "user", "content": "last"}]},
    }


def _best(fn: Callable[[], object], n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=9)) / n * 1e6


def main() -> None:
    old = _old_features()
    engine = Engine.from_params(CombinerParams.from_json(default_combiner_path().read_text(encoding="utf-8")))
    print("| request | prompt_of before → now (µs) | turn_crc | history_of | _turns | added | extract now |")
    print("|---|---|---|---|---|---|---|")
    for name, body in _bodies().items():
        n = 30 if name.startswith("10 001") else 3000
        po = _best(lambda: old.prompt_of(CHAT, body), n)  # noqa: B023  (called before the loop moves on)
        pn = _best(lambda: new.prompt_of(CHAT, body), n)  # noqa: B023
        text = new.prompt_of(CHAT, body)[0]
        tc = _best(lambda: new.turn_crc(text), n)  # noqa: B023
        single = len(body["messages"]) <= 2
        h = 0.0 if single else _best(lambda: new.history_of(body), n)  # noqa: B023
        feats = new.extract(CHAT, body, 0.0)
        conv = body["messages"]
        users = [i for i, m in enumerate(conv) if m.get("role") == "user"]
        state: bytes | None = None
        for k, i in enumerate(users[-9:]):  # the conversation's last turns, sent one by one
            state = engine.observe(state, new.extract(CHAT, {"messages": conv[: i + 1]}, float(k)), float(k)).state
        blobs = dict(envelope.decode(state).blobs) if state else {}

        def turns() -> None:
            read_turn(envelope.Envelope(blobs=dict(blobs)), feats)  # noqa: B023

        def base() -> None:
            envelope.Envelope(blobs=dict(blobs))  # noqa: B023

        t = max(_best(turns, n) - _best(base, n), 0.0)
        ex = _best(lambda: new.extract(CHAT, body, 0.0), max(n // 10, 10))  # noqa: B023
        print(f"| {name} | {po:.2f} → {pn:.2f} | {tc:.2f} | {'-' if single else f'{h:.2f}'} | {t:.2f} | "
              f"{pn - po + tc + h + t:.1f} | {ex:.0f} |")


if __name__ == "__main__":
    main()
