"""Reading the configuration: strict YAML (no duplicate keys), ``IPGATE_*`` environment overrides, and
validation errors turned into one ``ConfigError`` naming file, dotted field and overriding variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import (
    ValidationError,
)

from gateway.config.base import ConfigError
from gateway.config.gateway import GatewayConfig

if TYPE_CHECKING:
    pass


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Apply ``IPGATE_<SECTION>__<FIELD>`` overrides to ``data`` in place; returns path -> variable name, so
    that an error in an overridden value names the variable (it is not in the file). A numeric segment
    indexes a list (``IPGATE_MODELS__0__BACKENDS__1__WEIGHT=0``)."""
    top = set(GatewayConfig.model_fields)
    origins: dict[tuple[str, ...], str] = {}
    for key, raw in sorted(env.items()):
        if not key.startswith("IPGATE_"):
            continue
        path = [p.lower() for p in key[len("IPGATE_"):].split("__")]
        if path[0] not in top:
            if len(path) > 1:  # IPGATE_X__Y has the override shape: a typo in the section must not pass silently
                raise ConfigError(f"{key}: {path[0]!r} is not a configuration section "
                                  f"(overrides are IPGATE_<SECTION>__<FIELD>, sections: {', '.join(sorted(top))})")
            continue  # a secret the config names (IPGATE_JWT_SECRET, ...)
        node: Any = data
        for i, seg in enumerate(path[:-1]):
            if isinstance(node, list):
                at = _index(seg, len(node))
                if at is None:
                    raise ConfigError(f"{key}: {'.'.join(path[:i]) or path[0]} is a list of {len(node)}; "
                                      f"{seg!r} is not an index in it")
                if not isinstance(node[at], (dict, list)):  # a scalar element: the override sets a field in it
                    node[at] = {}
                node = node[at]
                continue
            child = node.get(seg)
            if not isinstance(child, (dict, list)):
                child = {}
                node[seg] = child
            node = child
        if not raw.strip():
            # An empty value is a template or compose file expanding an unset variable: read as YAML it would
            # be null, which turns protections off without a word (IPGATE_AUTH__JWT__AUDIENCE= drops the
            # audience check, the TLS file pair plain HTTP). Null is asked for explicitly.
            raise ConfigError(f"{key} is set but empty: write null (or ~) to set the field to null, or unset the "
                              "variable to keep the file's value")
        try:
            value = load_yaml(raw)
        except RecursionError:  # PyYAML composes and constructs recursively: [[[[... a thousand deep
            raise _too_deep(key) from None
        except yaml.YAMLError as e:
            # Neither the value nor YAML's problem text, which quotes pieces of it (an alias name, a tag): the
            # value may be a credential. Where it broke is enough to find it.
            mark = getattr(e, "problem_mark", None)
            where = f" at character {mark.column + 1}" if mark is not None and mark.line == 0 else ""
            raise ConfigError(f"{key}: not a valid YAML value ({type(e).__name__}{where}); to pass it as a string, "
                              "put it in single quotes") from None
        try:
            value = _deep_copy(value)
        except _TooLarge:
            raise _too_large(key) from None
        last = path[-1]
        if isinstance(node, list):
            at = _index(last, len(node))
            if at is None:
                raise ConfigError(f"{key}: {'.'.join(path[:-1])} is a list of {len(node)}; "
                                  f"{last!r} is not an index in it")
            node[at] = value
        else:
            node[last] = value
        origins[tuple(path)] = key
    return origins


def _index(seg: str, n: int) -> int | None:
    """``seg`` as an index into a list of ``n``, or None. ``isdigit`` also accepts "²" (which ``int`` refuses),
    and a number of thousands of digits exceeds ``int``'s limit: neither may escape as a ValueError."""
    if not (seg.isdecimal() and len(seg) <= 9):
        return None
    at = int(seg)
    return at if at < n else None


# YAML aliases share one node: `b: [*a, *a, ...]` nested eight deep is a 400-byte file of 43 million values
# once copied (a minute of CPU and gigabytes, on the event loop when a SIGHUP reload reads it), and `a: &a [*a]`
# contains itself. A real configuration has thousands of values at most, a few dozen levels deep.
MAX_VALUES = 1_000_000
MAX_DEPTH = 64


class _TooLarge(Exception):
    pass


def _deep_copy(data: Any, budget: list[int] | None = None, depth: int = 0) -> Any:
    """A copy of ``data``'s mappings and lists; ``_TooLarge`` past ``MAX_VALUES`` values or ``MAX_DEPTH`` levels."""
    if budget is None:
        budget = [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise _TooLarge
    if isinstance(data, Mapping):
        return {k: _deep_copy(v, budget, depth + 1) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v, budget, depth + 1) for v in data]
    return data


def _too_large(where: str) -> ConfigError:
    return ConfigError(f"{where}: more than {MAX_VALUES} values or {MAX_DEPTH} levels of nesting once YAML aliases "
                       "are expanded (an alias that contains itself, or aliases of aliases)")


def _too_deep(where: str) -> ConfigError:
    return ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep (more than the YAML reader can take)")


def _origin(loc: tuple[str | int, ...], origins: Mapping[tuple[str, ...], str]) -> str:
    path = tuple(str(p) for p in loc)
    for opath, var in origins.items():
        n = min(len(opath), len(path))
        if n and opath[:n] == path[:n]:
            return f" (set by {var})"
    return ""


def parse_config(
    data: Mapping[str, Any], *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    try:
        merged = _deep_copy(data)  # overrides must not write into the caller's (or a reused) mapping
    except _TooLarge:
        raise _too_large(source) from None
    origins = _apply_env(merged, os.environ if env is None else env)
    try:
        return GatewayConfig.model_validate(merged)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
            problems.append(f"{source}: {loc}: {msg}{_origin(err['loc'], origins)}")
        if len(problems) == 1:  # the common case fits one line (log-friendly)
            raise ConfigError(f"invalid configuration: {problems[0]}") from e
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), tuple(problems)) from e


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys without a word: a second ``store:`` section (or a
    key repeated in a flow mapping) would silently replace the first. Refuse duplicates; keys brought in by a
    merge key (``<<: *anchor``) may still be overridden, which is what merge keys are for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # `!!map [1]`: the base class says "expected a mapping node"
            return super().construct_mapping(node, deep=deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A scalar YAML resolves but Python cannot build escaped as a bare ValueError ("internal error" from
        # check/serve, a 500 from the admin reload): a date-like name that is no date (`2024-02-30`), an integer
        # past Python's 4300-digit limit. As a YAML error it carries its line and column.
        # PyYAML's constructors also fail with KeyError/TypeError/... on an explicit tag its value does not fit
        # (`!!bool x`, `!!map [1]`, `!!timestamp .nan`).
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[no-untyped-call]
        except ValueError as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(e).split(';')[0]} (quote it to pass it as a string)", node.start_mark) from None
        except (KeyError, AttributeError, IndexError, TypeError):
            raise yaml.constructor.ConstructorError(
                None, None, f"the value does not fit its tag {node.tag}", node.start_mark) from None


def load_yaml(text: str) -> Any:
    """Parse configuration YAML: safe types only, duplicate keys refused."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe types only


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (invalid byte at offset {e.start})") from None
    try:
        data = load_yaml(text)
    except RecursionError:  # an "internal error" from check/serve, a 500 from the admin reload
        raise _too_deep(str(p)) from None
    except yaml.MarkedYAMLError as e:  # one line: file:line:column and what is wrong there
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from e
    except yaml.reader.ReaderError as e:  # a control character (a pasted BEL, NUL): its line, on one line
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ConfigError(f"{p}:{line}:{col}: not valid YAML: control character #x{e.character:04x} "
                          "(YAML allows tab, line breaks and printable characters only)") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got a {type(data).__name__}")
    return parse_config(data, source=str(p), env=env)
