"""Every command's ``--help``, the root's and every group's and subcommand's: lines break only at
paragraph boundaries or where the width forces them, never where the source's docstring did; an
example keeps its own line and its indentation."""

from __future__ import annotations

import itertools

import pytest
import typer
from cli_helpers import invoke
from typer.core import TyperGroup

from steerlab.cli import COMMANDS
from steerlab.cli.app import app, reflow


def _command_paths() -> list[tuple[str, ...]]:
    """``()`` for the root, then every group and command, as the words that reach it."""
    paths: list[tuple[str, ...]] = [()]

    def walk(group: TyperGroup, prefix: tuple[str, ...]) -> None:
        for name in group.list_commands(typer.Context(group)):
            command = group.get_command(typer.Context(group), name)
            paths.append((*prefix, name))
            if isinstance(command, TyperGroup):
                walk(command, (*prefix, name))

    walk(typer.main.get_group(app), ())
    return paths


PATHS = _command_paths()


def _description(output: str) -> list[str]:
    """The lines between ``Usage:`` and the first panel, right-stripped."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    return [line.rstrip() for line in lines[start:end]]


def _panel_rows(output: str, title: str) -> list[str]:
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"╭─ {title} ")), None)
    if start is None:
        return []
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("╰"))
    return lines[start + 1 : end]


def test_every_command_is_reached():
    assert {p[0] for p in PATHS if p} == set(COMMANDS)
    assert ("diff", "study") in PATHS and ("persona", "extract") in PATHS and len(PATHS) > 25


@pytest.mark.parametrize("width", [72, 2000])
def test_help_breaks_lines_only_at_paragraphs_or_where_the_width_forces_it(width, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    for path in PATHS:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        lines = _description(result.output)
        assert any(lines), path
        for above, below in itertools.pairwise(lines):
            if not above.strip() or not below.strip() or below.startswith("     ") or below.strip().startswith("- "):
                continue  # a paragraph boundary, an example's own line, a bullet
            # the first word below did not fit on the line above (typer pads the text by one column each side)
            assert len(above) + 1 + len(below.split()[0]) > width - 2, (path, above, below)
        if width == 2000:  # nothing wraps: one line per command in the commands panel
            for row in _panel_rows(result.output, "Commands"):
                assert row.startswith("│ ") and row[2] != " ", (path, row)


def test_examples_keep_their_indentation():
    result = invoke("diff", "extract", "--help")
    example = [line for line in result.output.splitlines() if "steerlab diff extract -m smollm2" in line]
    assert example and example[0].startswith("     steerlab"), example


def test_reflow_joins_lines_within_paragraphs_only():
    text = """First line
    goes on.

    Second paragraph
    goes on, then an example:

        steerlab x -m y
        steerlab z
    - a bullet
    continued
    """
    assert reflow(text) == (
        "First line goes on.\n\nSecond paragraph goes on, then an example:\n\n"
        "[bold][/bold]    steerlab x -m y\n[bold][/bold]    steerlab z\n- a bullet continued"
    )
    assert reflow(reflow(text)) == reflow(text)
