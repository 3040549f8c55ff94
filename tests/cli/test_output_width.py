"""Output that does not depend on the terminal: off a terminal (pipes, logs, CI, test runners) no
message, log line or table cell is broken inside a path or sentence, whatever COLUMNS says; on a
terminal the layout is rich's, at the terminal's width."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from cli_helpers import invoke, run_steerlab

from steerlab.formats.traits import load_trait
from steerlab.progress import OutputConsole, progress_bar

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SENTENCE = "a sentence long enough to be wrapped anywhere narrow: " + "/some/deep/path" * 12


@pytest.fixture
def deep_model(tiny_dir, tmp_path):
    """The tiny model directory reached through a path of more than 300 characters."""
    path = _long_path(tmp_path) / "tiny-model"
    path.parent.mkdir(parents=True)
    path.symlink_to(tiny_dir, target_is_directory=True)
    return path


def _long_path(root: Path, length: int = 300) -> Path:
    """``root`` / several long directory names, at least ``length`` characters in all."""
    path = root
    while len(str(path)) < length:
        path = path / "a-directory-name-that-is-quite-long"
    return path


def _lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def _assert_whole_lines(output: str, model: Path) -> None:
    # the log line (logging -> RichHandler), the table title and the table's cells
    assert _lines_with(output, f"loaded {model}: 4 layers, d_model 64, float32 on cpu"), output
    assert _lines_with(output, f"steerlab info {model}"), output
    assert _lines_with(output, "LlamaForCausalLM"), output
    assert max(map(len, output.splitlines())) < len(str(model)) + 100, "lines padded beyond their content"


def test_log_lines_and_tables_whole_off_terminal(deep_model, monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    result = invoke("info", deep_model)
    assert result.exit_code == 0, result.output
    _assert_whole_lines(result.output, deep_model)


def test_error_line_whole_off_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    missing = _long_path(tmp_path) / "vector.safetensors"
    result = invoke("compare", missing, missing, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert f"error: vector file not found: {missing}" in result.output.splitlines(), result.output


def test_expanding_tables_take_their_natural_width(monkeypatch):
    """`traits show` prints expanding tables (ratio columns) and a panel: each question stays on one
    line, and no line is padded out to an unbounded width."""
    monkeypatch.setenv("COLUMNS", "20")
    result = invoke("traits", "show", "evil")
    assert result.exit_code == 0, result.output
    trait = load_trait("evil")
    for question in trait.questions:
        assert _lines_with(result.output, question), question
    longest = max(len(q) for q in [*trait.questions, *(p.pos for p in trait.instruction)])
    assert max(map(len, result.output.splitlines())) < 3 * longest + 50


def test_real_pipe_with_forced_colour(deep_model, monkeypatch):
    """A real process writing to two pipes, with COLUMNS small and colours forced as CI logs do: the
    table (the result) on stdout, the log line on stderr, each line whole."""
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.setenv("FORCE_COLOR", "1")
    proc = run_steerlab("info", deep_model)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" in proc.stdout + proc.stderr  # colours were forced ...
    out, err = ANSI.sub("", proc.stdout), ANSI.sub("", proc.stderr)
    _assert_whole_lines(out + err, deep_model)  # ... and nothing wrapped
    assert _lines_with(out, f"steerlab info {deep_model}") and _lines_with(out, "LlamaForCausalLM")
    assert _lines_with(err, f"loaded {deep_model}") and "LlamaForCausalLM" not in err


def test_forced_progress_bar_whole_off_terminal(monkeypatch, capsys):
    monkeypatch.setenv("STEERLAB_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "20")
    description = "working through " + "/a-long-directory" * 10
    with progress_bar(description, 3, loss="-") as advance:
        for _ in range(3):
            advance(loss="0.5")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(description) and "3/3 loss 0.5" in line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_layout_is_the_terminals():
    screen = _Terminal()
    OutputConsole(file=screen, width=30).print(SENTENCE)
    lines = ANSI.sub("", screen.getvalue()).splitlines()
    assert len(lines) > 1 and max(map(len, lines)) <= 30


def test_file_layout_ignores_width_and_forced_terminal():
    log = io.StringIO()
    OutputConsole(file=log, width=30, force_terminal=True).print(SENTENCE)
    assert ANSI.sub("", log.getvalue()).splitlines() == [SENTENCE]


def test_a_table_title_wider_than_its_cells_stays_whole_off_terminal():
    from rich.table import Table

    table = Table(title=SENTENCE)
    table.add_column("n")
    table.add_row("1")
    log = io.StringIO()
    OutputConsole(file=log, width=30).print(table)
    assert SENTENCE in log.getvalue().splitlines()[0]
    screen = _Terminal()
    OutputConsole(file=screen, width=30).print(table)
    assert max(map(len, ANSI.sub("", screen.getvalue()).splitlines())) <= 30  # a terminal still wraps it
