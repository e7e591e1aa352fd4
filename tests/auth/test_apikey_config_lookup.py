"""``ipgate apikey create --limits CLASS`` checks CLASS whenever it can find the gateway's configuration.

The configuration comes from ``--config``, else ``$IPGATE_CONFIG``, else ``/etc/ipgate/ipgate.yaml`` when it
exists (here a path under tmp_path). An unknown class is refused (exit 2, no key made); a configuration that is
found but cannot be loaded is an error naming where it came from; finding none makes the key with a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import findconfig, main

MODELS = [{"name": "m", "backends": [{"name": "a", "url": "http://127.0.0.1:1"}]}]
LIMIT = {"requests_per_minute": 60, "tokens_per_minute": 20_000}




def write_config(path: Path, *classes: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"models": MODELS, "limits": {"default": LIMIT, **{c: LIMIT for c in classes}}}))
    return path


# (the config's classes (None: no file there), where it is given, --limits, exit code, what stderr says)
CASES = [
    (("free",), "--config", "free", 0, None),
    (("free",), "--config", "gold", 2, "--limits 'gold' is not a limit class of {config} (classes: default, free, "),
    (("free",), "env", "gold", 2, "--limits 'gold' is not a limit class of {config}"),
    (("free",), "env", "free", 0, "--limits 'free' checked against {config} ($IPGATE_CONFIG)"),
    (("free",), "default", "gold", 2, "--limits 'gold' is not a limit class of {default}"),
    (("free",), "default", "free", 0, "--limits 'free' checked against {default} (the default path)"),
    (None, "env", "free", 2, "{config}: cannot read: No such file or directory (found through $IPGATE_CONFIG; "
                             "pass --config FILE to use another)"),
    (("free",), "empty-env", "gold", 2, "is not a limit class of {default}"),  # IPGATE_CONFIG= is unset
    (None, "none", "gold", 0, "warning: --limits 'gold' was not checked: no gateway configuration found "
                              "(--config, $IPGATE_CONFIG, {default}); the gateway refuses the key file"),
    (("free",), "both", "free", 0, None),  # --config wins over $IPGATE_CONFIG (whose file lacks 'free')
]


@pytest.mark.parametrize(("classes", "source", "limits", "code", "message"), CASES)
def test_limits_checked_against_the_config_found(
    tmp_path: Path, default_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    classes: tuple[str, ...] | None, source: str, limits: str, code: int, message: str | None,
) -> None:
    config = tmp_path / "ipgate.yaml"
    argv = ["apikey", "create", "--client", "trial-7", "--limits", limits]
    if classes is not None:
        write_config(default_config if source in ("default", "empty-env") else config, *classes)
    if source in ("--config", "both"):
        argv += ["--config", str(config)]
    if source in ("env", "both"):
        env_file = config if source == "env" else write_config(tmp_path / "other.yaml")
        monkeypatch.setenv("IPGATE_CONFIG", str(env_file))
    if source == "empty-env":
        monkeypatch.setenv("IPGATE_CONFIG", "")
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert ("store it now" in out) is (code == 0)  # a refused class makes no key
    if code == 0:
        assert out.rstrip().endswith(f" trial-7 limits={limits}")
    if message is None:
        assert err == ""
    else:
        assert message.format(config=config, default=default_config) in err, err


def test_without_limits_no_config_is_read(
    tmp_path: Path, default_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IPGATE_CONFIG", str(tmp_path / "absent.yaml"))  # would be an error if it were read
    assert main(["apikey", "create", "--client", "svc"]) == 0
    out, err = capsys.readouterr()
    assert "store it now" in out and err == ""


class _StatDenied(type(Path())):  # type: ignore[misc]
    """A path whose stat fails as it does for a user who cannot search ``/etc/ipgate`` (root:ipgate 0750): the
    tests run as root here, for whom the kernel never refuses."""

    def stat(self, *, follow_symlinks: bool = True) -> Any:
        raise PermissionError(13, "Permission denied", str(self))


@pytest.mark.parametrize("how", ["directory", "file"])
def test_an_unreadable_default_config_is_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """An operator who may not read /etc/ipgate still makes the key (as before the lookup existed), with the
    warning that the class was not checked and why; it was an internal error (PermissionError) or exit 2."""
    monkeypatch.delenv("IPGATE_CONFIG", raising=False)
    path = write_config(tmp_path / "etc" / "ipgate.yaml", "free")
    if how == "directory":
        monkeypatch.setattr(findconfig, "DEFAULT_CONFIG", _StatDenied(path))
    else:  # the file is there but not readable by this user (0640 root:ipgate)
        monkeypatch.setattr(findconfig, "DEFAULT_CONFIG", path)
        monkeypatch.setattr("gateway.cli.findconfig.os.access", lambda p, mode: Path(p) != path)
    assert main(["apikey", "create", "--client", "trial-7", "--limits", "free"]) == 0
    out, err = capsys.readouterr()
    assert "store it now" in out and out.rstrip().endswith(" trial-7 limits=free")
    assert f"was not checked: no gateway configuration found (--config, $IPGATE_CONFIG, {path} (not readable " \
           "by this user))" in err, err
