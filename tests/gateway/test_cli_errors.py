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


@pytest.mark.parametrize(("argv", "names"), [
    ([], "COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["verify", "--fpr", "abc", "-"], "argument --fpr"),
    (["serve", "--workers", "many"], "argument --workers"),
    (["fingerprint", "check", "--url", "http://x", "--model", "m", "--reference", "r", "--timeout", "0"],
     "argument --timeout"),
    (["apikey", "create"], "--client"),
    (["audit", "verify"], "FILE"),
])
def test_a_usage_error_is_one_line_naming_the_argument(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                       names: str) -> None:
    """README: "A usage or input error exits 2 with one line on stderr". argparse put its usage synopsis
    (up to seven lines) before the reason; a journal or CI log then shows the synopsis."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert names in err and "error:" in err and "usage:" not in err
    assert err.startswith("ipgate")


@pytest.mark.parametrize(("flag", "value"), [
    ("--fail-rate", "2"), ("--fail-rate", "-0.1"), ("--fail-rate", "nan"), ("--fail-status", "200"),
    ("--fail-status", "42"), ("--latency-ms", "-5"), ("--latency-ms", "inf"), ("--tokens-per-s", "-1"),
    ("--cut-after", "-3"), ("--stall-after", "-1"),
])
def test_sim_backend_refuses_failure_injection_it_cannot_honour(capsys: pytest.CaptureFixture[str], flag: str,
                                                                value: str) -> None:
    """`ipgate sim-backend --fail-rate 2` started a server that failed every request (and `--fail-status 200`
    answered "failures" as successes): an error naming the flag, before anything listens."""
    from gateway.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser("sim_backend").parse_args(["sim-backend", "--port", "0", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and len(err.splitlines()) == 1, err
    args = build_parser("sim_backend").parse_args(  # the documented example still parses
        ["sim-backend", "--latency-ms", "50", "--tokens-per-s", "40", "--fail-rate", "0.05", "--fail-status", "503",
         "--cut-after", "20", "--stall-after", "0"])
    assert (args.fail_rate, args.fail_status, args.cut_after, args.stall_after) == (0.05, 503, 20, 0)
