"""Shared plumbing of ``ipgate watermark`` and ``ipgate verify``: secret, key ring, input, progress line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from watermark.keys import KeyRing, parse_master_secret

if TYPE_CHECKING:  # imported lazily: `ipgate verify --clients FILE` needs neither pydantic nor redis
    from gateway.config import GatewayConfig

SECRET_ENV = "IPGATE_WATERMARK_SECRET"


class CliError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def lexical_markdown(args: argparse.Namespace, cfg: GatewayConfig | None) -> bool:
    """Whether markdown list markers are lexical choice points: ``--no-markdown`` turns them off, else the
    config's ``watermark.lexical_markdown`` decides (on without a config), as in the gateway."""
    return not args.no_markdown and (cfg is None or cfg.watermark.lexical_markdown)


def add_key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret-file", help=f"file holding the master secret (default: ${SECRET_ENV})")
    p.add_argument("--config", help="gateway config (key versions, secret location, recorded recipients)")
    p.add_argument("--key-versions", help="comma-separated key versions to use, current first (default: 1, "
                   "or the config's key_version + retained_versions)")


def load_gateway_config(args: argparse.Namespace) -> GatewayConfig | None:
    if not getattr(args, "config", None):
        return None
    from gateway.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:  # names the file and the field
        raise CliError(str(e)) from e


def key_ring(args: argparse.Namespace, cfg: GatewayConfig | None) -> KeyRing:
    raw: str | None = None
    if args.secret_file:
        raw = _read(args.secret_file, "--secret-file")
    elif os.environ.get(SECRET_ENV):
        raw = os.environ[SECRET_ENV]
    elif cfg is not None and cfg.watermark.secret_file:
        raw = _read(cfg.watermark.secret_file, "watermark.secret_file")
    elif cfg is not None and os.environ.get(cfg.watermark.secret_env):
        raw = os.environ[cfg.watermark.secret_env]
    if raw is None:
        raise CliError(f"no master secret: set ${SECRET_ENV} or pass --secret-file")
    try:
        master = parse_master_secret(raw)
        if args.key_versions:
            try:
                versions = [int(v) for v in args.key_versions.split(",") if v.strip()]
            except ValueError as e:
                raise CliError(f"--key-versions: expected integers like 2,1, got {args.key_versions!r}") from e
            if not versions:
                raise CliError("--key-versions: empty")
            return KeyRing(master, versions[0], tuple(versions[1:]))
        if cfg is not None:
            return KeyRing(master, cfg.watermark.key_version, tuple(cfg.watermark.retained_versions))
        return KeyRing(master)
    except ValueError as e:
        raise CliError(str(e)) from e


def recorded_recipients(cfg: GatewayConfig | None) -> dict[str, list[int]]:
    """The recipients recorded by the gateway: its store, plus its ``recipients_file`` if configured."""
    if cfg is None:
        raise CliError("no candidate clients: pass --client, --clients FILE, or --config to use the recipients "
                       "recorded by the gateway")
    from redis.exceptions import RedisError

    from gateway.errors import GatewayError

    out: dict[str, list[int]] = {}
    if cfg.watermark.recipients_file and Path(cfg.watermark.recipients_file).exists():
        for c in read_lines(cfg.watermark.recipients_file, "watermark.recipients_file"):
            out.setdefault(c, [])
    try:
        out.update(asyncio.run(_store_recipients(cfg)))
    except (GatewayError, OSError, RedisError) as e:
        raise CliError(f"cannot read the recorded recipients from the {cfg.store.kind} store: {e}") from e
    return out


async def _store_recipients(cfg: GatewayConfig) -> dict[str, list[int]]:
    from gateway.store.factory import open_store

    store = await open_store(cfg.store, None)
    try:
        return await store.recipients()
    finally:
        await store.close()


def read_lines(path: str, what: str) -> list[str]:
    text = sys.stdin.read() if path == "-" else _read(path, what)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def read_text(path: str | None) -> str:
    if path is None or path == "-":
        return sys.stdin.read()
    return _read(path, "input file")


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"{what} {path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise CliError(f"{what} {path}: not UTF-8 text") from e


def read_jsonl(path: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    text = read_text(path)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CliError(f"{path}:{n}: not valid JSON: {e.msg}") from e
        if not isinstance(obj, dict):
            raise CliError(f"{path}:{n}: expected a JSON object")
        for f in required:
            if not isinstance(obj.get(f), str):
                raise CliError(f"{path}:{n}: field {f!r} must be a string")
        rows.append(obj)
    return rows


class Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second (no dependency needed)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self._total, self._label = total, label
        self._out = stream or sys.stderr
        self._last = 0.0
        self._done = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self._total):
            yield i
            self.step()
        self.close()

    def step(self) -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._last >= 0.1 or self._done == self._total:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        frac = self._done / self._total if self._total else 1.0
        bar = "#" * int(frac * 30)
        self._out.write(f"\r{self._label} [{bar:<30}] {self._done}/{self._total}")
        self._out.flush()

    def close(self) -> None:
        if self._total:
            self._out.write("\n")
            self._out.flush()
