"""steerlab's command line. Each command group lives in its own module and registers on `app`."""

from __future__ import annotations

from . import compare, dataset, demo, diff, diff_study, info, monitor, persona, report, serve, steer, traits, vectors  # noqa: F401 - registers commands
from .app import app


def main() -> None:
    """The ``steerlab`` console script (``[project.scripts]``): run the typer app on ``sys.argv``.

    A SteerlabError in any command ends it with one ``error:`` line on stderr and exit status 2
    (see :class:`steerlab.cli.app.SteerlabGroup`).
    """
    app()


__all__ = ["app", "main"]
