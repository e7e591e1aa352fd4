"""The periodic ``malloc_trim`` (``server.malloc_trim_interval_s``, gateway/memtrim.py): called every interval with
pad 0 when set, never when 0, refused with one WARNING where the C library has no such call; a real ``ipgate
serve`` starts it from its configuration. The trim calls are glibc's own (counted on the way through)."""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
import time
from pathlib import Path

import pytest

from gateway import memtrim
from tests.support.harness import gateway_config, sim_backend
from tests.support.process import GatewayProcess

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


class Counted:
    """glibc's malloc_trim, with each call's argument recorded."""

    def __init__(self) -> None:
        trim = memtrim.glibc_malloc_trim()
        assert trim is not None
        self.trim, self.pads = trim, list[int]()

    def __call__(self, pad: int) -> object:
        self.pads.append(pad)
        return self.trim(pad)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_glibc_malloc_trim_is_found_and_callable() -> None:
    trim = memtrim.glibc_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)  # 1: memory was given back


@pytest.mark.parametrize(("plat", "libc"), [("darwin", ("", "")), ("linux", ("", "")), ("linux", ("musl", "1.2"))])
def test_no_malloc_trim_off_glibc(monkeypatch: pytest.MonkeyPatch, plat: str, libc: tuple[str, str]) -> None:
    monkeypatch.setattr(sys, "platform", plat)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: libc)
    assert memtrim.glibc_malloc_trim() is None


@pytest.mark.skipif(not GLIBC, reason="glibc only")
async def test_trims_every_interval_with_pad_zero() -> None:
    trim = Counted()
    t0 = time.monotonic()
    task = memtrim.start(0.05, trim)
    assert task is not None
    try:
        while len(trim.pads) < 4 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        took = time.monotonic() - t0
    finally:
        task.cancel()
    assert len(trim.pads) >= 4
    assert took >= 0.2  # one call per interval, not a busy loop
    assert set(trim.pads) == {0}
    n = len(trim.pads)
    await asyncio.sleep(0.15)
    assert len(trim.pads) == n  # cancelled: no more calls


@pytest.mark.skipif(not GLIBC, reason="glibc only")
async def test_zero_is_off() -> None:
    trim = Counted()
    assert memtrim.start(0, trim) is None
    await asyncio.sleep(0.1)
    assert trim.pads == []


async def test_no_malloc_trim_here_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ipgate.memtrim"):
        assert memtrim.start(30, None) is None
    lines = [r for r in caplog.records if r.name == "ipgate.memtrim"]
    assert [r.levelno for r in lines] == [logging.WARNING]
    assert "server.malloc_trim_interval_s" in lines[0].getMessage()
    assert "glibc only" in lines[0].getMessage()


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize(("interval", "on"), [(0.5, True), (0, False), (None, True)])
async def test_serve_starts_it_from_the_config(tmp_path: Path, interval: float | None, on: bool) -> None:
    async with sim_backend() as sim:
        cfg = gateway_config(sim.url)
        cfg["auth"]["jwt"].pop("secret_file", None)
        if interval is not None:
            cfg.setdefault("server", {})["malloc_trim_interval_s"] = interval
        with GatewayProcess(cfg, tmp_path) as gw:
            await asyncio.sleep(0.2)
            out = gw.output()
    every = f"every {interval if interval is not None else 60:g} s (malloc_trim)"
    assert (every in out) is on, out[-2000:]
