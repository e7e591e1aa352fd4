"""``ipgate fingerprint record`` checks the set against ``fingerprint.probes_per_check`` before probing.

A set with fewer probes than ``probes_per_check`` cannot rotate (every round sends all of it) and ``ipgate
check`` refuses its reference: ``record`` refuses it too (exit 2, nothing sent, nothing written), with the
configuration from ``--config``, ``$IPGATE_CONFIG`` or the default path. Exactly as many is a warning; a private
set recorded with no configuration found is recorded with a warning that it was not checked.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from tests.fingerprint.conftest import ModelServer
from tests.support.harness import free_port


def write_config(path: Path, probes_per_check: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, object] = {"models": [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]}
    if probes_per_check is not None:
        data["fingerprint"] = {"probes_per_check": probes_per_check}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_probes(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Describe a tidal pool, detail {i}."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


# (probes in the set (None: the bundled 8), where the config comes from, its probes_per_check, message)
REFUSED = [
    (8, "--config", 12, "--probes {probes}: 8 probes, fewer than fingerprint.probes_per_check (12) in {config}:"),
    (8, "env", 9, "fewer than fingerprint.probes_per_check (9) in {config} ($IPGATE_CONFIG)"),
    (6, "default", 7, "fewer than fingerprint.probes_per_check (7) in {config} (the default path)"),
    (None, "--config", 10, "the 8 bundled probes, fewer than fingerprint.probes_per_check (10) in {config}: "
                           "every round would send all of them and `ipgate check` refuses such a reference; "
                           "record from a private set (--probes FILE) or lower probes_per_check"),
    (8, "override", None, "fewer than fingerprint.probes_per_check (12)"),  # IPGATE_FINGERPRINT__... applies
    (8, "missing", None, "cannot read: No such file or directory (found through $IPGATE_CONFIG; pass --config "
                         "FILE to use another)"),
]


@pytest.mark.parametrize(("n", "source", "k", "message"), REFUSED)
def test_a_set_the_gateway_cannot_rotate_is_refused_before_probing(
    tmp_path: Path, default_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    n: int | None, source: str, k: int | None, message: str,
) -> None:
    config = default_config if source == "default" else tmp_path / "ipgate.yaml"
    if source != "missing":
        write_config(config, k)
    argv = ["fingerprint", "record", "--url", f"http://127.0.0.1:{free_port()}", "--model", "m",
            "-o", str(tmp_path / "ref.json")]
    if n is not None:
        argv += ["--probes", str(write_probes(tmp_path / "p.jsonl", n))]
    if source == "--config":
        argv += ["--config", str(config)]
    elif source in ("env", "missing"):
        monkeypatch.setenv("IPGATE_CONFIG", str(config))
    elif source == "override":
        monkeypatch.setenv("IPGATE_CONFIG", str(config))
        monkeypatch.setenv("IPGATE_FINGERPRINT__PROBES_PER_CHECK", "12")
    code = main(argv)
    err = capsys.readouterr().err
    # nothing listens on the URL: an error about the set proves it was judged before any probe was sent
    assert code == 2, err
    assert message.format(probes=tmp_path / "p.jsonl", config=config) in err
    assert err.startswith("ipgate fingerprint: ") and "tidal pool" not in err
    assert not (tmp_path / "ref.json").exists()


async def record(*argv: str) -> int:
    # The CLI runs its own event loop (asyncio.run): in a thread, while this loop serves the backend.
    return await asyncio.to_thread(main, ["fingerprint", "record", *argv])


# (probes, where the config comes from, its probes_per_check, what stderr says (None: nothing))
RECORDED = [
    (9, "--config", 8, None),
    (8, "--config", 8, "warning: --probes {probes}: 8 probes, exactly fingerprint.probes_per_check in {config}: "
                       "every round sends all of them"),
    (9, "env", 8, "note: --probes {probes}: 9 probes checked against fingerprint.probes_per_check (8) in "
                  "{config} ($IPGATE_CONFIG)"),
    (5, "none", None, "warning: no gateway configuration found (--config, $IPGATE_CONFIG, {default}): the set's 5 "
                      "probes were not checked against fingerprint.probes_per_check"),
]


@pytest.mark.parametrize(("n", "source", "k", "message"), RECORDED)
async def test_a_set_that_rotates_is_recorded_and_the_check_is_never_silent(
    tmp_path: Path, default_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    n: int, source: str, k: int | None, message: str | None,
) -> None:
    server = ModelServer()
    await server.start()
    try:
        probes, out, config = write_probes(tmp_path / "p.jsonl", n), tmp_path / "ref.json", tmp_path / "ipgate.yaml"
        argv = ["--url", server.url, "--model", "m", "--probes", str(probes), "-o", str(out)]
        if source != "none":
            write_config(config, k)
        if source == "--config":
            argv += ["--config", str(config)]
        elif source == "env":
            monkeypatch.setenv("IPGATE_CONFIG", str(config))
        assert await record(*argv) == 0
    finally:
        await server.close()
    err = capsys.readouterr().err
    assert len(server.requests) == n and out.exists()
    if message is None:
        assert err == ""
    else:
        assert message.format(probes=probes, config=config, default=default_config) in err
