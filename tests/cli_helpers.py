"""Helpers for CLI tests: run `steerlab` in-process or as a real process, and check user errors."""

from __future__ import annotations

import os
import subprocess
import sys

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


def run_steerlab(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m steerlab ARGS`` as a user runs it: a real process whose stdout and stderr are two
    separate pipes (not terminals). Progress bars are forced on, so that a test also shows they stay
    on stderr; one thread, offline."""
    env = {**os.environ, "STEERLAB_PROGRESS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "steerlab", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def assert_streams(proc: subprocess.CompletedProcess, stdout=(), stderr=()) -> None:
    """Exit status 0; each ``stdout`` needle is in the results (stdout) and not among the messages
    (stderr), and each ``stderr`` needle the other way round."""
    assert proc.returncode == 0, proc.stderr
    for needle in stdout:
        assert needle in proc.stdout, (needle, proc.stdout, proc.stderr)
        assert needle not in proc.stderr, (needle, proc.stderr)
    for needle in stderr:
        assert needle in proc.stderr, (needle, proc.stdout, proc.stderr)
        assert needle not in proc.stdout, (needle, proc.stdout)
