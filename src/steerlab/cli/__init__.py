"""steerlab's command line. Each command group lives in its own module and registers on `app`."""

from __future__ import annotations

from . import compare, dataset, demo, diff, diff_study, info, monitor, persona, report, serve, steer, traits, vectors  # noqa: F401 - registers commands
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
