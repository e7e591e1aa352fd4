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
                if not (seg.isdigit() and int(seg) < len(node)):
                    raise ConfigError(f"{key}: {'.'.join(path[:i]) or path[0]} is a list of {len(node)}; "
                                      f"{seg!r} is not an index in it")
                node = node[int(seg)]
                continue
            child = node.get(seg)
            if not isinstance(child, (dict, list)):
                child = {}
                node[seg] = child
            node = child
        value = yaml.safe_load(raw) if raw != "" else None
        last = path[-1]
        if isinstance(node, list):
            if not (last.isdigit() and int(last) < len(node)):
                raise ConfigError(f"{key}: {'.'.join(path[:-1])} is a list of {len(node)}; "
                                  f"{last!r} is not an index in it")
            node[int(last)] = value
        else:
            node[last] = value
        origins[tuple(path)] = key
    return origins


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


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
    merged = _deep_copy(data)  # overrides must not write into the caller's (or a reused) mapping
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
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from e


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys without a word: a second ``store:`` section (or a
    key repeated in a flow mapping) would silently replace the first. Refuse duplicates; keys brought in by a
    merge key (``<<: *anchor``) may still be overridden, which is what merge keys are for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
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
    except yaml.MarkedYAMLError as e:  # one line: file:line:column and what is wrong there
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got a {type(data).__name__}")
    return parse_config(data, source=str(p), env=env)
