"""``ipgate serve --workers 2`` whose workers refuse the configuration at start-up (here an admin token that is
too short: checked when the admin app is built, after load_config) restarted them once a second for ever; the
supervisor never exited and never served. With one worker the same file exits 2 with one line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.harness import free_port, gateway_config


def test_workers_that_refuse_the_config_end_the_supervisor(tmp_path: Path) -> None:
    cfg = gateway_config("http://127.0.0.1:1", admin={"token_env": "S14_SHORT"},
                         listen=f"127.0.0.1:{free_port()}", admin_listen=f"127.0.0.1:{free_port()}")
    cfg["auth"]["jwt"]["secret_env"] = "S14_JWT"
    path = tmp_path / "ipgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {"PATH": "/usr/bin:/bin", "S14_SHORT": "short", "S14_JWT": "x" * 40}
    p = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--workers", "2"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # (two workers' start-up takes a few seconds, longer on a loaded host: the bound is generous)
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # the supervisor stops its workers
        out, _ = p.communicate(timeout=15)
        raise AssertionError(f"still restarting its workers after 30 s:\n{out[-600:]}") from None
    assert p.returncode == 2 and "admin.token_env" in out
    assert "restarting it" not in out, out[-600:]  # ended at the first refusal, no worker started again
