"""The user's manual against the product: README.md and docs/*.md must name only CLI flags, metrics, admin
routes and configuration keys that exist, with the defaults the code has, and must name every one an
operator can use. Drift in either direction fails here, with the file and line that is wrong.

Everything is read from the code itself (argparse parsers, the Prometheus registry, the admin route tables,
the pydantic models); nothing is started, so the whole file runs in well under two seconds.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.cli import SUBCOMMANDS, _module_for, build_parser
from gateway.config import (
    AlertSinkConfig,
    BackendConfig,
    CanaryAnalysisConfig,
    GatewayConfig,
    ModelConfig,
    WatermarkConfig,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MANUAL = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md"]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- the command line ---------------------------------------------------------------------------------------

def _parsers() -> dict[str, argparse.ArgumentParser]:
    """``"verify"`` / ``"fingerprint check"`` -> its parser."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out[f"{prefix}{name}"] = sub
                    walk(sub, f"{prefix}{name} ")

    walk(build_parser(), "")
    return out


def _flags(parser: argparse.ArgumentParser, *, visible_only: bool = False) -> list[tuple[str, ...]]:
    return [tuple(a.option_strings) for a in parser._actions if a.option_strings
            and "-h" not in a.option_strings and not (visible_only and a.help == argparse.SUPPRESS)]


_INVOCATION = re.compile(r"(?:^|[\s(`$])(?:\.venv/bin/)?ipgate ([a-z][a-z-]*)(?: (record|check|create)\b)?")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-o\b)")


def _logical_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(first line number, text)``, shell continuation lines (ending in ``\\``) joined."""
    pending, start = "", 0
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        start = start or no
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", 0


def _invocations() -> Iterator[tuple[str, int, str, str]]:
    """``(file, line, subcommand, text after it)`` for every ``ipgate ...`` in a code block or an inline code
    span. In a code block, a comment line right below an ``ipgate`` line (``#   also: --top N``) belongs to
    that command; a blank line ends it."""
    for path in MANUAL:
        in_block, last = False, None
        for no, line in _logical_lines(path):
            if line.lstrip().startswith("```"):
                in_block, last = not in_block, None
                continue
            if in_block:
                code, _, comment = line.partition("#")
                m = _INVOCATION.search(code)
                if m:
                    last = m.group(1) + (f" {m.group(2)}" if m.group(2) else "")
                    yield _rel(path), no, last, line[m.end():]
                elif last is not None and not code.strip() and comment:
                    yield _rel(path), no, last, comment
                else:
                    last = None
                continue
            for span in re.findall(r"`([^`]+)`", line):
                m = _INVOCATION.match(span)
                if m and span.startswith(("ipgate ", ".venv/bin/ipgate ")):
                    sub = m.group(1) + (f" {m.group(2)}" if m.group(2) else "")
                    yield _rel(path), no, sub, span[m.end():]


def test_every_documented_invocation_names_a_real_subcommand_and_real_flags() -> None:
    parsers = _parsers()
    problems = []
    for file, no, sub, rest in _invocations():
        if sub not in parsers:
            problems.append(f"{file}:{no}: `ipgate {sub}` is not a subcommand")
            continue
        known = {f for names in _flags(parsers[sub]) for f in names}
        problems += [f"{file}:{no}: `ipgate {sub}` has no flag {flag}" for flag in _FLAG.findall(rest)
                     if flag not in known]
    assert not problems, "\n".join(problems)


_SYNOPSIS = re.compile(r"\[|\||\.\.\.|…|<[A-Z]")  # `DEBUG|INFO`, `FILE ...`: a synopsis, not a command


def _bash_examples() -> Iterator[tuple[str, int, list[str]]]:
    """``(file, line, argv after "ipgate")`` of every ``ipgate`` command in a ```bash block, shell redirections,
    pipes and comments cut off, optional parts in brackets (``[--workers 4]``) left out; a line that is still a
    synopsis (``A|B``, ``...``) is skipped."""
    for path in MANUAL:
        in_bash = False
        for no, line in _logical_lines(path):
            if line.lstrip().startswith("```"):
                in_bash = not in_bash and line.strip() == "```bash"
                continue
            code = line.split(" #", 1)[0]
            m = re.search(r"(?:^|[\s($])(?:\S*/)?ipgate (?=[a-z])", code)
            if not in_bash or not m or code.lstrip().startswith("#"):
                continue
            command = re.sub(r"\[[^]]*\]", "", re.split(r" [<>|&]|\)", code[m.end():])[0])
            if not _SYNOPSIS.search(command):
                yield _rel(path), no, shlex.split(command)


def test_every_documented_command_line_parses_as_written() -> None:
    """The flags exist (above), and each example is also a valid command line: values of the right type and
    range, required arguments present, no two exclusive flags together."""
    examples = list(_bash_examples())
    assert len(examples) >= 40, len(examples)
    problems = []
    for file, no, argv in examples:
        try:
            build_parser(_module_for(argv[0])).parse_args(argv)
        except SystemExit:
            problems.append(f"{file}:{no}: ipgate {' '.join(argv)}")
    assert not problems, "\n".join(problems)


def test_every_subcommand_and_flag_is_documented() -> None:
    """The README's command table lists every subcommand; every visible flag is shown with its command."""
    readme = README.read_text(encoding="utf-8")
    table = readme[readme.index("## Command line"):readme.index("```bash", readme.index("## Command line"))]
    missing = [s for s in SUBCOMMANDS if not re.search(rf"`{s.replace('_', '-')}[` ]", table)]
    assert not missing, f"README's command table lacks {missing}"
    shown: dict[str, set[str]] = {}
    for _, _, sub, rest in _invocations():
        shown.setdefault(sub, set()).update(_FLAG.findall(rest))
    undocumented = [f"ipgate {sub} {'/'.join(names)}" for sub, parser in _parsers().items()
                    for names in _flags(parser, visible_only=True) if not shown.get(sub, set()) & set(names)]
    assert not undocumented, f"flags never shown with their command in README/docs: {undocumented}"


def test_every_flag_says_what_it_does_in_its_help() -> None:
    """README: "`ipgate <command> --help` lists every flag": each with a line saying what it is."""
    silent = [f"ipgate {sub} {'/'.join(names)}" for sub, parser in _parsers().items() for names, action in
              ((tuple(a.option_strings), a) for a in parser._actions if a.option_strings and "-h" not in
               a.option_strings and a.help != argparse.SUPPRESS) if not action.help]
    assert not silent, f"flags --help shows without a word: {silent}"


def test_every_extra_is_in_the_readme_extras_table() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    readme = README.read_text(encoding="utf-8")
    table = readme[readme.index("Optional extras:"):readme.index("System packages")]
    listed = set(re.findall(r"^\| `\[([a-z]+)\]` \|", table, re.M))
    assert listed == set(extras), f"README extras table: {sorted(listed)}, pyproject: {sorted(extras)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (an en dash too) dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    out, in_block = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif not in_block and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def test_relative_links_in_the_manual_reach_a_file_and_heading() -> None:
    problems = []
    for path in [*MANUAL, ROOT / "BENCHMARKS.md", ROOT / "EVALUATION.md"]:
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for link in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", link):
                    continue
                target, _, anchor = link.partition("#")
                file = (path.parent / target).resolve() if target else path
                if not file.exists():
                    problems.append(f"{_rel(path)}:{no}: {link}: no such file")
                elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                    problems.append(f"{_rel(path)}:{no}: {link}: no such heading")
    assert not problems, "\n".join(problems)


# --- metrics ------------------------------------------------------------------------------------------------

def _code_metrics() -> dict[str, tuple[str, ...]]:
    """Every metric the gateway exports (exposition name, ``_total`` included) -> its labels."""
    from gateway.embedding import _Metrics as EmbeddingMetrics
    from gateway.telemetry.metrics import Metrics

    m = Metrics(CollectorRegistry())
    m.set_tls_certificate_expiry(0.0)  # made on first use (absent without TLS)
    collectors: list[Any] = [*vars(m).values(), *vars(EmbeddingMetrics(m)).values()]
    out: dict[str, tuple[str, ...]] = {}
    for c in collectors:
        if hasattr(c, "_labelnames") and hasattr(c, "_type"):
            name = c._name + ("_total" if c._type == "counter" else "")
            out[name] = tuple(c._labelnames)
    return out


def test_documented_metric_names_exist() -> None:
    names = _code_metrics()
    suffixes = ("", "_bucket", "_count", "_sum")
    problems = []
    for path in [*MANUAL, ROOT / "BENCHMARKS.md", ROOT / "EVALUATION.md"]:
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for word in re.findall(r"\bipgate_[a-z_]+", line):
                if word.startswith(("ipgate_kgw", "ipgate_admin_")) or word == "ipgate_":
                    continue  # the vLLM plugin's directive fields and entry point, aiohttp keys
                if not any(word.removesuffix(s) in names for s in suffixes if word.endswith(s)):
                    problems.append(f"{_rel(path)}:{no}: no metric {word}")
    assert not problems, "\n".join(problems)


def test_every_metric_is_in_the_table_with_its_labels_and_in_the_readme() -> None:
    table: dict[str, tuple[str, ...]] = {}
    for line in (ROOT / "docs" / "auth-telemetry.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| `(ipgate_[a-z_]+)` \| \w+ \|\s*([^|]*?)\s*\|", line)
        if m:
            labels = re.sub(r"\([^)]*\)", "", m.group(2))
            table[m.group(1)] = tuple(x.strip() for x in labels.split(",") if x.strip() not in ("", "—"))
    readme = README.read_text(encoding="utf-8")
    listing = readme[readme.index("- **Metrics**"):readme.index("- **Tracing**")]
    listed = {f"ipgate_{n}" for n in re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", listing)}
    code = _code_metrics()
    assert table == code, "docs/auth-telemetry.md's metrics table (name: labels) differs from the code"
    assert listed >= set(code), f"README's metrics list lacks {sorted(set(code) - listed)}"


# --- admin API ----------------------------------------------------------------------------------------------

def _norm(path: str) -> str:
    path = re.sub(r"\[.*$|\?.*$", "", path)  # [?model=M], ?client_id=ID
    return re.sub(r"\{[^}]*\}", "{}", path)


def _code_routes() -> set[tuple[str, str]]:
    from gateway.admin.app import ADMIN_MODULES

    ctx: Any = types.SimpleNamespace()  # route tables only capture ctx; nothing is called
    routes = set()
    for name in ADMIN_MODULES:
        for r in importlib.import_module(f"gateway.admin.{name}").routes(ctx):
            routes.add((r.method, _norm(r.path)))
    return routes


def test_admin_table_matches_the_admin_routes() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("## Admin API"):readme.index("## Operations")]
    documented = set()
    for row in re.findall(r"^\| (`[^|]*(?:\\\|[^|]*)*) \|", section, re.M):
        for part in row.split(", "):
            methods = re.findall(r"\b(GET|PUT|POST|DELETE)\b", part)
            paths = re.findall(r"(/[a-z][^\s`]*)", part)
            assert methods and len(paths) == 1, f"cannot read README admin table cell {part!r}"
            documented |= {(m, _norm(paths[0])) for m in methods}
    code = _code_routes()
    assert documented == code, (f"documented only: {sorted(documented - code)}; "
                                f"in code only: {sorted(code - documented)}")
    from gateway.routing.canary import Op

    ops = re.search(r"/admin/canary/\{model\}/\{([^}]*)\}", section)
    assert ops is not None and ops.group(1).split("\\|") == [o.value for o in Op]


# --- configuration ------------------------------------------------------------------------------------------

def _readme_yaml() -> tuple[dict[str, Any], str, dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2, "README has the smallest file and the annotated one"
    return yaml.safe_load(blocks[0]), blocks[1], yaml.safe_load(blocks[1])


def _example_paths(block: str) -> list[tuple[str, ...]]:
    """Dotted paths of the keys whose comment says "example" (their values are not the defaults)."""
    stack: list[tuple[int, str]] = []
    out = []
    for line in block.splitlines():
        m = re.match(r"^(\s*)(- )?([a-z_]+):", line)
        if not m:
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(3)))
        if re.search(r"#\s*example", line):
            out.append(tuple(k for _, k in stack))
    return out


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree and isinstance(tree[0], dict):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): tree}


def _drop(tree: dict[str, Any], path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree.pop(path[-1], None)  # an example may add what has no default (a limit class such as `free`)


def test_readme_config_files_are_valid_and_the_annotated_one_shows_the_defaults() -> None:
    smallest, text, annotated = _readme_yaml()
    parse_config(smallest, source="README smallest", env={})
    documented = parse_config(annotated, source="README annotated", env={}).model_dump()
    defaults = parse_config({"models": annotated["models"]}, source="defaults", env={}).model_dump()
    examples = _example_paths(text)
    assert ("models",) in examples and ("auth", "jwt", "issuer") in examples
    for path in examples:
        if path[0] != "models":
            _drop(documented, path)
            _drop(defaults, path)
    shown, default = _flat(documented), _flat(defaults)
    differ = sorted(k for k in shown | default if shown.get(k) != default.get(k))
    assert not differ, f"README's annotated config shows non-defaults (mark them '# example'): {differ}"
    # inside the example model, every field the example does not choose shows its default
    model, backend = annotated["models"][0], annotated["models"][0]["backends"][0]
    for cls, given, chosen in ((ModelConfig, model, {"name", "backends", "canary"}),
                               (BackendConfig, backend, {"name", "url", "weight"}),
                               (CanaryAnalysisConfig, model["canary"]["analysis"], set())):
        for key, value in given.items():
            if key not in chosen:
                assert cls.model_fields[key].get_default() == value, f"{cls.__name__}.{key}"
    for sink in annotated["alerts"]["sinks"]:
        for key, value in sink.items():
            if key not in {"kind", "name", "url", "path", "secret_env"}:
                assert AlertSinkConfig.model_fields[key].get_default() == value, f"alerts.sinks {key}"


def _fields(cls: type[Any]) -> Iterator[tuple[str, type[Any]]]:
    for name, field in cls.model_fields.items():
        yield name, cls
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            for inner in [arg, *getattr(arg, "__args__", ())]:
                if isinstance(inner, type) and hasattr(inner, "model_fields"):
                    yield from _fields(inner)


def test_every_config_field_is_in_the_annotated_readme_config() -> None:
    _, text, _ = _readme_yaml()
    missing = sorted({f"{cls.__name__}.{name}" for name, cls in _fields(GatewayConfig)
                      if not re.search(rf"\b{name}\b", text)})
    assert not missing, f"config fields the README's annotated file never mentions: {missing}"


@pytest.mark.parametrize("path", MANUAL[1:], ids=lambda p: p.name)
def test_config_fragments_in_docs_are_valid(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    sections = set(GatewayConfig.model_fields)
    for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
        data = yaml.safe_load(m.group(1))
        if isinstance(data, dict) and set(data) <= sections:
            backend = {"name": "a", "url": "http://127.0.0.1:1"}
            data.setdefault("models", [{"name": "m", "backends": [backend]}])
            parse_config(data, source=f"{path.name}:{text[:m.start()].count(chr(10)) + 1}", env={})


# --- the watermark CLI reads the master secret as the gateway does ------------------------------------------

def test_cli_with_config_uses_the_gateways_secret_not_a_stray_env_var(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "where both are offered, the file wins". The gateway reads ``watermark.secret_file`` first;
    ``ipgate verify --config`` must derive the same keys even when ``$IPGATE_WATERMARK_SECRET`` holds
    another secret (a demo's, a shell's leftover), or every verdict would be a false "not watermarked"."""
    from gateway.cli.wm_common import CliError, key_ring
    from gateway.watermarking import load_master_secret

    secret = tmp_path / "wm.secret"
    secret.write_text("the-gateway-secret-0123456789\n")
    monkeypatch.setenv("IPGATE_WATERMARK_SECRET", "some-other-secret-0123456789")
    monkeypatch.setenv("OTHER_WM_SECRET", "the-env-secret-of-the-config-0123")
    args = argparse.Namespace(secret_file=None, key_versions=None)
    models = [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]
    for wm in ({"secret_file": str(secret)}, {"secret_env": "OTHER_WM_SECRET"}):
        cfg = parse_config({"models": models, "watermark": wm}, env={})
        assert key_ring(args, cfg).master == load_master_secret(cfg.watermark), wm
    # the config names a variable that is unset: an error naming it, not the other variable's secret
    cfg = parse_config({"models": models, "watermark": {"secret_env": "UNSET_WM_SECRET"}}, env={})
    monkeypatch.delenv("UNSET_WM_SECRET", raising=False)
    with pytest.raises(CliError, match="UNSET_WM_SECRET"):
        key_ring(args, cfg)
    # without --config the default variable is used; --secret-file always wins
    assert key_ring(args, None).master == load_master_secret(WatermarkConfig())
    explicit = argparse.Namespace(secret_file=str(secret), key_versions=None)
    assert key_ring(explicit, None).master == load_master_secret(WatermarkConfig(secret_file=str(secret)))
