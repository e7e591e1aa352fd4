"""Limit classes (plans): which class a credential resolves to, key-file compatibility, and the CLI."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client import CollectorRegistry

from gateway.auth.apikeys import ApiKeyFile, ApiKeyTable, format_line, hash_key
from gateway.auth.authenticator import Authenticator
from gateway.auth.jwt import JwtVerifier
from gateway.auth.limitclass import LimitClasses
from gateway.cli import main
from gateway.config import ConfigError, JwtConfig, parse_config
from gateway.telemetry.metrics import Metrics

SECRET = "limit-class-test-secret-0123456789abcdef"
MODELS = [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]
DEFAULT = {"requests_per_minute": 600, "tokens_per_minute": 200_000}
CLASSES = ("default", "free", "enterprise", "suspicious")
TENANTS = {"acme": "enterprise", "hobby": "free"}
H = {c: hash_key(f"sk-{c}") for c in ("a", "b", "c", "d", "e")}


def classes(metrics: Metrics | None = None) -> LimitClasses:
    return LimitClasses(CLASSES, TENANTS, metrics=metrics)


def key_table(text: str) -> ApiKeyTable:
    return ApiKeyTable.parse(text, source="keys.txt", classes=classes())


# --- API keys: key file field first, then the tenant map, then default -------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    (f"{H['a']} u1", "default"),                                    # 2 fields: the old format
    (f"{H['a']} u1 acme", "enterprise"),                            # 3 fields: tenant map
    (f"{H['a']} u1 hobby chat,embed", "free"),                      # 4 fields: tenant map
    (f"{H['a']} u1 other chat", "default"),                         # unmapped tenant
    (f"{H['a']} u1 acme chat limits=free", "free"),                 # the key's class beats the tenant's
    (f"{H['a']} u1 limits=enterprise", "enterprise"),               # no tenant, no roles
    (f"{H['a']} u1 - chat limits=default", "default"),              # explicit default beats the tenant map
    (f"{H['a']} u1 acme limits=free chat", "free"),                 # anywhere after the client id
    (f"{H['a']} u1 acme limits=default", "default"),
])
def test_api_key_class(line: str, expected: str) -> None:
    p = key_table(line + "\n").lookup("sk-a")
    assert p is not None and p.limit_class == expected and p.client_id == "u1"


def test_old_key_files_load_unchanged() -> None:
    text = (f"# comment\n{H['a']} u1\n\n{H['b']} u2 acme\n{H['c']} u3 - chat,embed  # trailing comment\n"
            f"{H['d']} u4 t4 admin\n")
    old = ApiKeyTable.parse(text, source="keys.txt")  # no classes given: only `default` exists
    new = key_table(text)
    for k, client, tenant in (("a", "u1", None), ("b", "u2", "acme"), ("c", "u3", None), ("d", "u4", "t4")):
        p_old, p_new = old.lookup(f"sk-{k}"), new.lookup(f"sk-{k}")
        assert p_old is not None and p_new is not None
        assert (p_old.client_id, p_old.tenant, p_old.roles) == (p_new.client_id, p_new.tenant, p_new.roles)
        assert p_old.client_id == client and p_old.tenant == tenant and p_old.limit_class == "default"
    assert new.lookup("sk-b").limit_class == "enterprise"  # type: ignore[union-attr]  # the tenant map


@pytest.mark.parametrize(("line", "message"), [
    (f"{H['a']} u1 limits=gold", r"keys\.txt:2: limits=gold is not a limit class of the configuration "
                                 r"\(classes: default, enterprise, free, suspicious\)"),
    (f"{H['a']} u1 acme chat limits=", r"keys\.txt:2: limits=\(a name with characters outside"),
    (f"{H['a']} u1 limits=free limits=free", r"keys\.txt:2: more than one limits= field"),
    (f"{H['a']} u1 acme chat extra", r"keys\.txt:2: expected .*\[limits=CLASS\].*got 5 fields"),
    (f"{H['a']} u1 acme chat limits=free extra", r"keys\.txt:2: expected .* got 5 fields besides limits="),
    (f"{H['a']} u1 limits=a\u00e9b", r"keys\.txt:2: limits=\(a name with characters outside"),
])
def test_bad_class_fields_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        key_table(f"{H['b']} ok\n{line}\n")


def test_without_configured_classes_a_named_class_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"keys\.txt:1: limits=free is not a limit class .*\(classes: default\)"):
        ApiKeyTable.parse(f"{H['a']} u1 limits=free\n", source="keys.txt")


def test_format_line_round_trips() -> None:
    for tenant, roles, cls in ((None, frozenset(), None), (None, frozenset(), "free"), ("acme", frozenset(), "free"),
                               (None, frozenset({"chat"}), "enterprise"), ("hobby", frozenset({"a", "b"}), None)):
        p = key_table(format_line(H["e"], "c1", tenant, roles, cls)).lookup("sk-e")
        assert p is not None and (p.tenant, p.roles) == (tenant, roles)
        assert p.limit_class == (cls or classes().for_tenant(tenant))


def test_reload_with_an_unknown_class_keeps_the_previous_keys(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"{H['a']} u1 limits=free\n")
    f = ApiKeyFile(path, classes())
    assert f.table.lookup("sk-a").limit_class == "free"  # type: ignore[union-attr]
    path.write_text(f"{H['a']} u1 limits=free\n{H['b']} u2 limits=platinum\n")
    with caplog.at_level(logging.ERROR, logger="gateway.auth.apikeys"):
        assert f.reload_if_changed() is False
    assert "keys.txt:2: limits=platinum" in caplog.text
    assert f.table.lookup("sk-a").limit_class == "free" and f.table.lookup("sk-b") is None  # type: ignore[union-attr]
    path.write_text(f"{H['a']} u1 limits=enterprise\n")
    assert f.reload_if_changed() is True and f.table.lookup("sk-a").limit_class == "enterprise"  # type: ignore[union-attr]


# --- JWTs: the claim first (when configured), then the tenant map, then default ----------------------------

def token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "u1", "iat": now, "exp": now + 600, "aud": "ipgate", **claims}, SECRET,
                      algorithm="HS256")


def verifier(claim: str | None, metrics: Metrics | None = None) -> JwtVerifier:
    cfg = JwtConfig(secret_env="LC_SECRET", limits_claim=claim)
    return JwtVerifier.from_config(cfg, env={"LC_SECRET": SECRET}, classes=classes(metrics))


@pytest.mark.parametrize(("claim_name", "claims", "expected"), [
    (None, {}, "default"),
    (None, {"plan": "free"}, "default"),                        # claim off: ignored
    (None, {"tenant": "acme", "plan": "free"}, "enterprise"),   # claim off: tenant map
    ("plan", {"plan": "free"}, "free"),
    ("plan", {"plan": "free", "tenant": "acme"}, "free"),       # the claim beats the tenant map
    ("plan", {"tenant": "acme"}, "enterprise"),                 # absent: tenant map
    ("plan", {"plan": None, "tenant": "hobby"}, "free"),        # null: tenant map
    ("plan", {"plan": "", "tenant": "hobby"}, "free"),          # empty: tenant map
    ("plan", {"tenant": "nomap"}, "default"),
    ("plan", {"plan": "suspicious"}, "suspicious"),             # any key of limits is a class
])
async def test_jwt_class(claim_name: str | None, claims: dict[str, Any], expected: str) -> None:
    v = verifier(claim_name)
    assert (await v.verify(token(**claims))).principal.limit_class == expected


@pytest.mark.parametrize("bad", ["gold", "FREE", ["free"], 7, {"name": "free"}, "x" * 200])
async def test_jwt_unknown_class_gets_default_logged_once_and_counted(
        bad: Any, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    v = verifier("plan", metrics)
    with caplog.at_level(logging.WARNING, logger="gateway.auth.limitclass"):
        for _ in range(3):  # the token is valid: it authenticates, at `default`, even with a tenant mapped
            assert (await v.verify(token(plan=bad, tenant="acme"))).principal.limit_class == "default"
    lines = [r for r in caplog.records if "not in limits" in r.getMessage()]
    assert len(lines) == 1, "once per name, not once per token"
    assert "(known: default, enterprise, free, suspicious)" in lines[0].getMessage()
    assert len(lines[0].getMessage()) < 300, "a long claim is cut in the log"
    assert metrics.limit_class_unknown_total._value.get() == 3


async def test_authenticator_caches_the_resolved_class() -> None:
    metrics = Metrics(CollectorRegistry())
    cfg = parse_config({"models": MODELS, "auth": {"jwt": {"secret_env": "LC_SECRET", "limits_claim": "plan"}},
                        "limits": {"default": DEFAULT, "free": {"requests_per_minute": 6, "tokens_per_minute": 600}},
                        "limits_by_tenant": {"acme": "free"}}, env={})
    auth = Authenticator.from_config(cfg.auth, metrics=metrics, env={"LC_SECRET": SECRET},
                                     classes=LimitClasses.from_config(cfg, metrics))
    t = token(plan="gold")
    for _ in range(2):
        assert (await auth.authenticate(f"Bearer {t}")).limit_class == "default"
    assert metrics.limit_class_unknown_total._value.get() == 1, "the second request was a cache hit"
    assert (await auth.authenticate(f"Bearer {token(tenant='acme')}")).limit_class == "free"
    assert auth.limit_classes("u1") == {"default", "free"}  # what the admin API shows


# --- config validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ({"limits_by_tenant": {"acme": "gold"}}, r"limits_by_tenant: tenant 'acme' names limit class 'gold', not "
                                              r"defined in limits \(defined: default, suspicious\)"),
    ({"policy": {"tiers": [{"name": "n", "limits": "gold"}], "flag_tier": "n"}}, r"uses limits 'gold'"),
    ({"limits": {"free": DEFAULT}}, r"limits must define 'default' \(the limit class of clients that name none\)"),
])
def test_config_rejects_unknown_class_names(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"models": MODELS, **extra}, env={})


def test_limits_by_tenant_from_the_environment() -> None:
    cfg = parse_config({"models": MODELS, "limits": {"default": DEFAULT,
                                                     "gold": {"requests_per_minute": 1, "tokens_per_minute": 1}}},
                       env={"IPGATE_LIMITS_BY_TENANT__ACME": "gold"})
    assert cfg.limits_by_tenant == {"acme": "gold"}  # override path segments are lower-cased (documented)


# --- CLI ------------------------------------------------------------------------------------------------------

def write_config(tmp_path: Path, **extra: Any) -> Path:
    import yaml

    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump({"models": MODELS, "limits": {
        "default": DEFAULT, "free": {"requests_per_minute": 60, "tokens_per_minute": 20_000}}, **extra}))
    return path


def test_apikey_create_with_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys, config = tmp_path / "keys.txt", write_config(tmp_path)
    assert main(["apikey", "create", "--client", "trial", "--limits", "free", "--config", str(config),
                 "--append", str(keys)]) == 0
    raw = capsys.readouterr().out.split("store it now): ")[1].split()[0]
    assert keys.read_text().rstrip().endswith(" trial limits=free")
    cfg = parse_config({"models": MODELS, "limits": {"default": DEFAULT, "free": {"requests_per_minute": 60,
                                                                                  "tokens_per_minute": 20_000}}},
                       env={})
    p = ApiKeyFile(keys, LimitClasses.from_config(cfg)).table.lookup(raw)
    assert p is not None and p.limit_class == "free"
    # an unknown class is refused with --config, and a malformed one always
    assert main(["apikey", "create", "--client", "x", "--limits", "gold", "--config", str(config)]) == 2
    assert "'gold' is not a limit class" in capsys.readouterr().err
    assert main(["apikey", "create", "--client", "x", "--limits", "a b"]) == 2
    assert "--limits 'a b' has characters outside" in capsys.readouterr().err


def test_token_with_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPGATE_JWT_SECRET", SECRET)
    config = write_config(tmp_path, auth={"jwt": {"limits_claim": "plan"}})
    assert main(["token", "--client", "u9", "--limits", "free", "--config", str(config)]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"], audience="ipgate")
    assert claims["plan"] == "free"
    assert main(["token", "--client", "u9", "--limits", "gold", "--config", str(config)]) == 2
    assert "'gold' is not a limit class" in capsys.readouterr().err
    assert main(["token", "--client", "u9", "--limits", "free"]) == 2  # defaults: no limits_claim
    assert "limits_claim is not set" in capsys.readouterr().err
