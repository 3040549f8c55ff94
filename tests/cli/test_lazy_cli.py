"""``steerlab --help`` imports no command module; the registry matches the real commands."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import typer

from steerlab.cli import COMMANDS
from steerlab.cli.app import app


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_root_help_lists_every_command_without_importing_them():
    code = (
        "import sys; from typer.testing import CliRunner; from steerlab.cli.app import app; "
        "r = CliRunner().invoke(app, ['--help']); print(r.exit_code); "
        "print(sorted(m for m in ('torch', 'transformers', 'steerlab.cli.steer') if m in sys.modules)); "
        "print(r.output)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"COLUMNS": "200", "PATH": ""}
    ).stdout
    exit_code, loaded, *help_lines = out.splitlines()
    assert exit_code == "0" and loaded == "[]", loaded
    for name in COMMANDS:
        assert re.search(rf"│ {name}\s", "\n".join(help_lines)), name


def test_registry_matches_the_registered_commands():
    for modules, _ in COMMANDS.values():
        for module in modules:
            importlib.import_module(f"steerlab.cli.{module}")
    group = typer.main.get_group(app)
    assert set(group.commands) == set(COMMANDS)
    for name, (_, summary) in COMMANDS.items():
        help_text = _normal(re.sub(r"\[/?bold\]", "", group.commands[name].help or ""))
        assert help_text.startswith(_normal(summary).rstrip(".")), (name, help_text[:120])


def test_running_a_command_imports_only_its_modules():
    code = (
        "import sys; from typer.testing import CliRunner; from steerlab.cli.app import app; "
        "r = CliRunner().invoke(app, ['traits', 'list']); print(r.exit_code); "
        "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('steerlab.cli.') "
        "and m.rsplit('.', 1)[1] not in ('app', 'options')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    exit_code, loaded = out.splitlines()[:2]
    assert exit_code == "0" and loaded == "['traits']", out


def test_a_group_spread_over_modules_is_complete_whatever_was_imported_first():
    code = (
        "import steerlab.cli.diff; from typer.testing import CliRunner; from steerlab.cli.app import app; "
        "r = CliRunner().invoke(app, ['diff', '--help']); print(r.exit_code, 'study' in r.output)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"COLUMNS": "200", "PATH": ""}
    ).stdout
    assert out.split() == ["0", "True"], out
