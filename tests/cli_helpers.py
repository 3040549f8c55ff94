"""Helpers for CLI tests: run `steerlab` in-process and check user errors."""

from __future__ import annotations

from typer.testing import CliRunner

from steerlab.cli import app


def flat(text) -> str:
    """Text without whitespace: rich wraps long lines (paths) at the console width."""
    return "".join(str(text).split())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles) -> None:
    """Exit status 2, one 'error:' line naming what is wrong, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    out = result.output
    assert out.count("error:") == 1, out
    assert "Traceback" not in out
    for needle in needles:
        assert flat(needle) in flat(out), (needle, out)
