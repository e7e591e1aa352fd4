"""Shared plumbing of ``ipgate watermark`` and ``ipgate verify``: secret, key ring, input, progress line."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.cli.findconfig import config_arg
from watermark.keys import KeyRing, parse_master_secret
from watermark.verify import parse_client_lines, utf8_encodable

if TYPE_CHECKING:  # imported lazily: `ipgate verify --clients FILE` needs neither pydantic nor redis
    from gateway.config import GatewayConfig

SECRET_ENV = "IPGATE_WATERMARK_SECRET"
# One text (a file, stdin, or one JSONL line) is read up to this, as the admin API's body. Scoring holds ~18x
# the text in memory (its words as objects): a 256 MiB line peaked at 4.6 GB, so a 1 GB one was an OOM kill
# (exit 137, no message) after minutes, not an error naming the input.
MAX_TEXT_BYTES = 32 * 1024 * 1024


class CliError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def lexical_markdown(args: argparse.Namespace, cfg: GatewayConfig | None) -> bool:
    """Whether markdown list markers are lexical choice points: ``--no-markdown`` turns them off, else the
    config's ``watermark.lexical_markdown`` decides (on without a config), as in the gateway."""
    return not args.no_markdown and (cfg is None or cfg.watermark.lexical_markdown)


def add_key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret-file", help=f"file holding the master secret (default: with --config its "
                   f"watermark.secret_file, else its secret_env; without: ${SECRET_ENV})")
    p.add_argument("--config", type=config_arg,
                   help="gateway config (key versions, secret location, recorded recipients)")
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
    # With --config, the gateway's own order (gateway/watermarking.py: secret_file, then secret_env), so the
    # CLI derives the keys the gateway used even when $IPGATE_WATERMARK_SECRET holds some other secret.
    if args.secret_file:
        raw = _read_secret(args.secret_file, "--secret-file")
    elif cfg is not None and cfg.watermark.secret_file:
        raw = _read_secret(cfg.watermark.secret_file, "watermark.secret_file")
    elif cfg is not None:
        raw = os.environ.get(cfg.watermark.secret_env) or None
        if raw is None:
            raise CliError(f"no master secret: set ${cfg.watermark.secret_env} (the config's "
                           "watermark.secret_env), watermark.secret_file, or pass --secret-file")
    elif os.environ.get(SECRET_ENV):
        raw = os.environ[SECRET_ENV]
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
            try:
                return KeyRing(master, versions[0], tuple(versions[1:]))
            except ValueError as e:
                raise CliError(f"--key-versions: {e}") from e
        if cfg is not None:
            from gateway.config import ConfigError
            from gateway.watermarking import key_ring as config_key_ring

            try:  # the gateway's own check: an out-of-range version is named by its field
                return config_key_ring(cfg.watermark, master)
            except ConfigError as e:
                raise CliError(f"--config {args.config}: {e}") from None
        return KeyRing(master)
    except ValueError as e:
        raise CliError(str(e)) from e


def recorded_recipients(cfg: GatewayConfig | None, missing: str | None = None) -> dict[str, list[int]]:
    """The recipients recorded by the gateway: its store, plus its ``recipients_file`` if configured.
    ``missing`` is the error when there is no ``--config`` to find them through."""
    if cfg is None:
        raise CliError(missing or "no candidate clients: pass --client, --clients FILE, or --config to use the "
                       "recipients recorded by the gateway")
    from redis.exceptions import RedisError

    from gateway.errors import GatewayError

    out: dict[str, list[int]] = {}
    file_ids: list[str] = []
    if cfg.watermark.recipients_file and Path(cfg.watermark.recipients_file).exists():
        file_ids = read_lines(cfg.watermark.recipients_file, "watermark.recipients_file")
    try:
        import asyncio  # here: 45 ms of start-up that `--clients FILE` never needs

        out.update(asyncio.run(_store_recipients(cfg)))
    except (GatewayError, OSError, RedisError) as e:
        raise CliError(f"cannot read the recorded recipients from the {cfg.store.kind} store: {e}") from e
    # the file records no version: its ids are tried under every version in force ([]), also where the store
    # knows some (a store that lost a version's record would otherwise hide the text served under it)
    out.update((c, []) for c in file_ids)
    return out


async def _store_recipients(cfg: GatewayConfig) -> dict[str, list[int]]:
    from gateway.store.factory import open_store

    store = await open_store(cfg.store, None)
    try:
        return await store.recipients()
    finally:
        await store.close()


def read_lines(path: str, what: str) -> list[str]:
    """Client ids, one per line (see ``watermark.verify.parse_client_lines``: BOM, CRLF, blank lines,
    ``#`` comments, duplicates and JSON-quoted odd ids are handled there)."""
    text = read_text(path, what)
    try:
        ids = parse_client_lines(text)
    except ValueError as e:
        raise CliError(f"{what} {path}: {e}") from e
    for c in ids:
        if not utf8_encodable(c):
            raise CliError(f"{what} {path}: client id {c!r} is not valid Unicode (lone surrogate)")
    return ids


def too_long(where: str) -> CliError:
    return CliError(f"{where}: over {MAX_TEXT_BYTES // 2**20} MiB in one text, more than can be scored (it "
                    "takes ~18x its size in memory): split it into several texts, one per line of a --jsonl "
                    "file (`ipgate verify --jsonl FILE --corpus` pools them into one verdict)")


def read_text(path: str | None, what: str = "input file", *, limit: int | None = None) -> str:
    """A UTF-8 file, or stdin (``-``) read as bytes and decoded as strict UTF-8 whatever the locale: a
    non-UTF-8 input is an error (exit 2) rather than being scored as mangled text. ``limit``: at most that many
    bytes are read, and a longer input is an error (``too_long``)."""
    if path is None or path == "-":
        buf = getattr(sys.stdin, "buffer", None)
        if buf is None:  # a text stream without bytes underneath (embedding callers, tests)
            text = sys.stdin.read() if limit is None else sys.stdin.read(limit + 1)
            if limit is not None and len(text.encode("utf-8", "surrogatepass")) > limit:
                raise too_long(f"{what} (stdin)")
            return text
        data = bytes(buf.read() if limit is None else buf.read(limit + 1))
        if limit is not None and len(data) > limit:
            raise too_long(f"{what} (stdin)")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CliError(f"{what} (stdin): not UTF-8 text (byte {e.start})") from e
    return _read(path, what, limit)


def _read_secret(path: str, what: str) -> str:
    """As the gateway reads it (``decode_secret_file``): the same bytes must give the same keys."""
    from gateway.config import ConfigError
    from gateway.watermarking import decode_secret_file

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CliError(f"{what} {path}: cannot read: {e.strerror}") from e
    try:
        return decode_secret_file(data, f"{what} {path}")
    except ConfigError as e:
        raise CliError(str(e)) from None


def _read(path: str, what: str, limit: int | None = None) -> str:
    try:
        if limit is None:
            return Path(path).read_text(encoding="utf-8")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise too_long(f"{what} {path}")
        return data.decode("utf-8")
    except OSError as e:
        raise CliError(f"{what} {path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise CliError(f"{what} {path}: not UTF-8 text (byte {e.start})") from e


def write_out(text: str) -> None:
    """Write to stdout as UTF-8 whatever the locale's encoding (input is UTF-8, so output is too)."""
    out = sys.stdout
    buf = getattr(out, "buffer", None)
    if buf is None or (out.encoding or "").lower().replace("_", "-") in ("utf-8", "utf8"):
        out.write(text)
        return
    out.flush()
    buf.write(text.encode("utf-8"))


def json_line(obj: Any) -> str:
    """One JSONL line, non-ASCII kept readable; a string with a lone surrogate (from a ``\\ud800`` escape in
    the input) has no UTF-8 form, so such a line is written with ASCII escapes, which read back the same."""
    line = json.dumps(obj, ensure_ascii=False)
    return line if utf8_encodable(line) else json.dumps(obj)


def output_closed(prog: str) -> int:
    """stdout went away (``ipgate verify --jsonl big.jsonl | head``): stop with one line, no traceback."""
    # Python would hit the broken pipe again when it flushes stdout at exit (not redirectable under pytest)
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    print(f"{prog}: output closed before all results were written", file=sys.stderr)
    return 2


def read_jsonl(path: str, required: tuple[str, ...]) -> JsonlRows:
    """Every row, validated before any is processed: one bad line stops the run (exit 2) with
    ``FILE:LINE: why`` and nothing on stdout, so a partial result is never mistaken for a complete one."""
    return JsonlRows(path, required)


class JsonlRows:
    """The rows of a JSONL file (``len``, ``bool``, iteration), all validated when this is made.

    A regular file is read twice: a first pass validates every line and counts the rows, and each iteration
    reads it again, so memory holds one line at a time however large the file (a bulk run over a dump of
    suspect texts held the file about four times over). Stdin, a pipe or a FIFO can be read only once: its
    rows are held in memory. A line over ``MAX_TEXT_BYTES`` is an error naming it, found without reading
    more of it than that."""

    def __init__(self, path: str, required: tuple[str, ...]) -> None:
        self._path, self._required = path, required
        self._rows: list[dict[str, Any]] | None = None
        if _regular_file(path):
            self._count = sum(1 for _ in self._parse(self._file_lines()))
        elif path == "-" and getattr(sys.stdin, "buffer", None) is None:  # a text stream (embedding callers)
            text = read_text(path).removeprefix("\ufeff")
            lines = list(enumerate(text.split("\n"), 1))
            long = next((n for n, line in lines if len(line.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES),
                        None)
            if long is not None:
                raise too_long(f"{path}:{long}")
            self._rows = list(self._parse(lines))
            self._count = len(self._rows)
        else:
            self._rows = list(self._parse(self._file_lines()))
            self._count = len(self._rows)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._rows is not None:
            yield from self._rows
            return
        n = 0
        for row in self._parse(self._file_lines()):
            n += 1
            if n > self._count:
                break
            yield row
        if n != self._count:  # rewritten or appended to since the first pass: its results are not those checked
            raise CliError(f"{self._path}: the file changed while it was read ({self._count} rows checked, "
                           f"{'more' if n > self._count else n} read)")

    def _file_lines(self) -> Iterator[tuple[int, str]]:
        """``(line number, text)``, split on ``\\n`` only (a raw U+2028 inside a JSON string is not a line end),
        strict UTF-8 with the offending byte's offset in the file, a leading byte-order mark dropped."""
        offset = 0
        stdin = self._path == "-"
        where = "input file (stdin)" if stdin else f"input file {self._path}"
        try:
            with contextlib.nullcontext(sys.stdin.buffer) if stdin else open(self._path, "rb") as f:
                # a line is read up to MAX_TEXT_BYTES (+ its newline), never whole: a 1 GB line is an error
                for n, raw in enumerate(iter(lambda: f.readline(MAX_TEXT_BYTES + 1), b""), 1):
                    if len(raw) > MAX_TEXT_BYTES and not raw.endswith(b"\n"):
                        raise too_long(f"{'stdin' if stdin else self._path}:{n}")
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise CliError(f"{where}: not UTF-8 text (byte {offset + e.start})") from e
                    yield n, line.removeprefix("\ufeff") if n == 1 else line
                    offset += len(raw)
        except OSError as e:
            raise CliError(f"{where}: cannot read: {e.strerror}") from e

    def _parse(self, lines: Iterable[tuple[int, str]]) -> Iterator[dict[str, Any]]:
        path, required = self._path, self._required
        for n, line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CliError(f"{path}:{n}: not valid JSON: {e.msg}") from e
            except RecursionError:  # nesting deeper than the parser's stack: a bad line, not an internal error
                raise CliError(f"{path}:{n}: not valid JSON: nested too deeply") from None
            if not isinstance(obj, dict):
                raise CliError(f"{path}:{n}: expected a JSON object")
            for f in required:
                if not isinstance(obj.get(f), str):
                    raise CliError(f"{path}:{n}: field {f!r} must be a string")
            if "client" in required and not (obj["client"] and utf8_encodable(obj["client"])):
                raise CliError(f"{path}:{n}: field 'client' must be a non-empty, valid Unicode client id")
            yield obj


def _regular_file(path: str) -> bool:
    """A file that can be read twice (not stdin, a pipe or a FIFO); one that cannot be stat'ed is read once,
    where its error is reported."""
    if path == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


class Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second (no dependency needed); only on a
    terminal: stderr redirected to a file or a pipe gets no carriage-return frames, only real messages."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self._total, self._label = total, label
        self._out = stream or sys.stderr
        try:
            self._shown = self._out.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream: no bar
            self._shown = False
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
        if not self._shown:
            return
        frac = self._done / self._total if self._total else 1.0
        bar = "#" * int(frac * 30)
        self._out.write(f"\r{self._label} [{bar:<30}] {self._done}/{self._total}")
        self._out.flush()

    def close(self) -> None:
        if self._total and self._shown:
            self._out.write("\n")
            self._out.flush()
