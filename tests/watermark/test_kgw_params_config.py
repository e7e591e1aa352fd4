"""KGW's green-list parameters come from one place: ``watermark.kgw_params`` (and ``kgw_delta``) for the
gateway's directives and the admin verification, ``--kgw-params`` (else the config) for ``ipgate verify``."""

from __future__ import annotations

import argparse

import pytest

from gateway.cli.verify import _kgw_params
from gateway.cli.wm_common import CliError
from gateway.config import ConfigError, parse_config
from tests.support.harness import gateway_config, running_gateway, sim_backend
from watermark.kgw.params import KgwParams

MODELS = {"models": [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}]}


def test_the_config_names_the_params_and_refuses_bad_ones() -> None:
    cfg = parse_config({**MODELS, "watermark": {"kgw_params": "g0.5-h2-lefthash", "kgw_delta": 3.0}},
                       source="<t>", env={})
    assert cfg.watermark.kgw() == KgwParams(gamma=0.5, delta=3.0, context_width=2, seeding="lefthash")
    assert parse_config(MODELS, source="<t>", env={}).watermark.kgw() == KgwParams()
    for bad in ("g2-h4-selfhash", "g0.25-h4-sha", "0.25/4", "g0.25-h40-selfhash"):
        with pytest.raises(ConfigError, match=r"watermark\.kgw_params"):
            parse_config({**MODELS, "watermark": {"kgw_params": bad}}, source="<t>", env={})


def test_verify_takes_the_flag_then_the_config_then_the_default() -> None:
    cfg = parse_config({**MODELS, "watermark": {"kgw_params": "g0.5-h2-lefthash"}}, source="<t>", env={})
    assert _kgw_params(argparse.Namespace(kgw_params="g0.3-h3-minhash"), cfg).seeding == "minhash"
    assert _kgw_params(argparse.Namespace(kgw_params=None), cfg).gamma == 0.5
    assert _kgw_params(argparse.Namespace(kgw_params=None), None) == KgwParams()
    with pytest.raises(CliError, match="--kgw-params"):
        _kgw_params(argparse.Namespace(kgw_params="nonsense"), cfg)


async def test_the_gateway_sends_the_configured_spec_and_delta(tmp_path: object) -> None:
    from pathlib import Path

    secret = Path(str(tmp_path)) / "wm.secret"
    secret.write_text("0123456789abcdef0123456789abcdef")
    # the sim emulates vLLM with the plugin loaded under the same spec and secret: without it the gateway's
    # probe would find no plugin and send no directive (tests/watermark/test_kgw_plugin_probe.py)
    async with sim_backend(kgw_plugin=True, kgw_spec="g0.5-h2-lefthash",
                           kgw_secret=b"0123456789abcdef0123456789abcdef") as sim:
        cfg = gateway_config(sim.url, watermark={"enabled": True, "scheme": "kgw", "secret_file": str(secret),
                                                 "kgw_params": "g0.5-h2-lefthash", "kgw_delta": 3.0})
        cfg["models"][0]["backends"][0]["watermark_capable"] = True
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2)
            await client.close()
    xargs = sim.stats.last_body["vllm_xargs"]
    assert xargs["ipgate_kgw_spec"] == "g0.5-h2-lefthash" and xargs["ipgate_kgw_delta"] == 3.0


def test_secret_files_are_read_alike_by_the_gateway_and_the_cli(tmp_path: object) -> None:
    """A byte-order mark is not part of the secret (both sides drop it, so both derive the same keys); a
    binary file is a named error that never echoes its bytes (they are the secret)."""
    from pathlib import Path

    from gateway.cli.wm_common import _read_secret
    from gateway.config import WatermarkConfig
    from gateway.watermarking import load_master_secret
    from watermark.keys import parse_master_secret

    d = Path(str(tmp_path))
    bom = d / "bom.secret"
    bom.write_bytes(b"\xef\xbb\xbf" + b"0123456789abcdef0123456789abcdef\r\n")
    gw = load_master_secret(WatermarkConfig(secret_file=str(bom)), environ={})
    assert gw == parse_master_secret(_read_secret(str(bom), "--secret-file")) == b"0123456789abcdef0123456789abcdef"
    binary = d / "bin.secret"
    binary.write_bytes(b"\xff\xfe\x9c" + b"S" * 40)
    with pytest.raises(ConfigError, match="not UTF-8") as e1:
        load_master_secret(WatermarkConfig(secret_file=str(binary)), environ={})
    with pytest.raises(CliError, match="not UTF-8") as e2:
        _read_secret(str(binary), "--secret-file")
    for e in (e1, e2):
        assert "SSSS" not in str(e.value) and "\\x9c" not in str(e.value)
