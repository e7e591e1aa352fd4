"""An unexpected failure inside a command is an error (exit 2), never a verdict: for ``ipgate verify`` exit 1
means "not watermarked", for ``ipgate fingerprint check`` "no match"."""

from __future__ import annotations

import argparse

import pytest

import gateway.cli.verify
from gateway.cli import main


def _boom(args: argparse.Namespace) -> int:
    raise TypeError("a bug")


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_exception_is_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], debug: bool) -> None:
    real = gateway.cli.verify.register

    def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        real(sub)
        sub.choices["verify"].set_defaults(func=_boom)

    monkeypatch.setattr(gateway.cli.verify, "register", register)
    if debug:
        monkeypatch.setenv("IPGATE_DEBUG", "1")
    else:
        monkeypatch.delenv("IPGATE_DEBUG", raising=False)
    assert main(["verify", "-", "--client", "alice"]) == 2
    err = capsys.readouterr().err
    assert "ipgate verify: internal error: TypeError: a bug" in err
    assert ("Traceback" in err) is debug


def test_a_closed_stdout_is_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`ipgate fingerprint check --json | head` and the like: no BrokenPipeError traceback, never a verdict."""
    real = gateway.cli.verify.register

    def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        real(sub)

        def closed(args: argparse.Namespace) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        sub.choices["verify"].set_defaults(func=closed)

    monkeypatch.setattr(gateway.cli.verify, "register", register)
    assert main(["verify", "-", "--client", "alice"]) == 2
    assert "output closed before all results were written" in capsys.readouterr().err
