"""The example configuration of issue 2 §6 is accepted as written; the demo configuration is valid and the
packaged copy equals config/demo.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.cli.demo import demo_config
from gateway.config import parse_config

ROOT = Path(__file__).resolve().parents[2]

ISSUE_EXAMPLE = """
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
store:
  kind: memory                 # memory | redis
  url: redis://127.0.0.1:6379/0
  failure_mode: local          # open | closed | local
auth:
  jwt:
    algorithms: [HS256]
    secret_env: IPGATE_JWT_SECRET
    audience: ipgate
    issuer: https://idp.example.com
    client_claim: sub
    tenant_claim: tenant
limits:
  default:
    requests_per_minute: 600
    tokens_per_minute: 200000
models:
  - name: sim
    backends:
      - {name: stable, url: "http://127.0.0.1:18000", weight: 90}
      - {name: canary, url: "http://127.0.0.1:18010", weight: 10}
"""


def test_issue_example_is_accepted_as_written() -> None:
    cfg = parse_config(yaml.safe_load(ISSUE_EXAMPLE), source="issue-2-example", env={})
    assert cfg.listen_addr == ("127.0.0.1", 8080) and cfg.admin_addr == ("127.0.0.1", 9090)
    assert [b.weight for b in cfg.models[0].backends] == [90, 10]
    assert cfg.auth.jwt is not None and cfg.auth.jwt.issuer == "https://idp.example.com"


def test_demo_config_valid_and_in_sync() -> None:
    packaged = (ROOT / "gateway" / "cli" / "demo.yaml").read_text()
    assert (ROOT / "config" / "demo.yaml").read_text() == packaged
    cfg = demo_config()
    assert cfg.store.kind == "memory" and cfg.detection.enabled and cfg.watermark.enabled
    assert demo_config(18123).listen_addr == ("127.0.0.1", 18123)


def test_the_deploy_example_is_valid() -> None:
    from gateway.config import load_config

    cfg = load_config(ROOT / "deploy" / "ipgate.yaml", env={})
    assert cfg.store.kind == "redis" and cfg.models[0].canary is not None
    assert cfg.admin_addr[0] == "127.0.0.1"  # the admin API stays off the public interface


def test_the_deploy_example_keeps_the_built_in_limits_it_does_not_set() -> None:
    """A `limits` entry written in the file replaces the built-in one of that name whole. deploy/ipgate.yaml
    wrote `suspicious` with its rates only, so the throttle and block tiers' cap on requests in flight went
    from the built-in 4 to the default 64 per client in the configuration operators start from."""
    from gateway.config import TierLimitsConfig, load_config

    path = ROOT / "deploy" / "ipgate.yaml"
    written = yaml.safe_load(path.read_text())["limits"]
    cfg = load_config(path, env={})
    models = [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]
    built_in = parse_config({"models": models}, env={}).limits
    for name in written.keys() & built_in.keys():
        for field in TierLimitsConfig.model_fields:
            if field not in written[name]:
                assert getattr(cfg.limits[name], field) == getattr(built_in[name], field), f"limits.{name}.{field}"
