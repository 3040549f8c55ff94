"""`steerlab report DIR`: render a self-contained report.html for any run directory."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ..report.html import build_report
from .app import app


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory: demo, diff study, persona extract or sweep."),
) -> None:
    """Build DIR/report.html (plots, tables, sample generations; opens offline). Missing stages are
    listed in the page and here, never an error."""
    path, missing = build_report(run_dir)
    console.print(f"wrote {path}")
    if missing:
        console.print(f"[yellow]not in this run:[/] {', '.join(missing)}")
