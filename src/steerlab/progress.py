"""steerlab's two consoles, and rich progress bars with ETA for long work.

:data:`console` (stderr) carries messages: what was loaded or written, notes, warnings, errors, logs and
progress bars. :data:`results` (stdout) carries what a command was asked for: its tables, readings and
values, so that ``steerlab traits list | grep evil`` and ``steerlab compare ... > cosines.txt`` work
(docs/design.md §11).

On a terminal each console is rich's: it lays output out at the terminal's width. Anywhere else (a pipe,
a log file, CI, a test runner) its output does not depend on a terminal: every print is laid out at its
*natural* width, the width its content needs unwrapped, so no message, log line or table cell is broken
inside a path or a sentence, whatever ``COLUMNS`` says and however long the paths printed are.
Progress bars are quiet when stderr is not a terminal unless forced (``STEERLAB_PROGRESS=1``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.control import Control
from rich.measure import Measurement
from rich.pretty import Pretty
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.protocol import is_renderable
from rich.table import Table
from rich.text import Text

# The width a print may take off a terminal: far beyond any line steerlab writes.
UNWRAPPED_WIDTH = 1_000_000


class OutputConsole(Console):
    """rich's Console, whose layout follows the device it writes to.

    ``is_terminal`` keeps rich's meaning (colours, also forced by ``FORCE_COLOR``); layout asks the
    file itself (``isatty``), so forcing colours in CI does not bring back wrapping at 80 columns.
    """

    def writes_to_terminal(self) -> bool:
        """Whether the file written to now (stderr or stdout, looked up at each print) is a terminal."""
        isatty = getattr(self.file, "isatty", None)
        try:
            return bool(isatty is not None and isatty())
        except ValueError:  # a closed stream (e.g. at interpreter exit)
            return False

    @property
    def size(self) -> ConsoleDimensions:
        """rich's size on a terminal; off a terminal, an unbounded width (nothing wraps), same height."""
        size = super().size
        return size if self.writes_to_terminal() else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        """Set (width, height) as rich's Console does."""
        Console.size.fset(self, new_size)

    def natural_width(self, objects: tuple[Any, ...], sep: str = " ", markup: bool | None = None) -> int:
        """Columns that ``print(*objects)`` needs so that nothing wraps.

        Control codes alone (a live display, e.g. a progress bar, printing its renderable, which then
        takes its own natural width) get the unbounded width; content that rich cannot measure
        (Markdown, tracebacks: they fill any width) gets rich's default width (80, or ``COLUMNS``).
        """
        content = [obj for obj in objects if not isinstance(obj, Control)]
        if not content:
            return UNWRAPPED_WIDTH
        options = self.options.update(markup=markup)
        widths = [
            Measurement.get(self, options, obj if isinstance(obj, str) or is_renderable(obj) else Pretty(obj)).maximum
            for obj in content
        ]
        if max(widths) >= UNWRAPPED_WIDTH:
            return super().size.width
        return max(1, sum(widths) + len(sep) * (len(content) - 1))

    def print(self, *objects: Any, sep: str = " ", width: int | None = None, **kwargs: Any) -> None:
        """rich's ``print``; off a terminal, laid out at the objects' natural width (see the module),
        and a table at least as wide as its title (rich wraps a title to its table's width)."""
        if objects and not self.writes_to_terminal():
            objects = tuple(_title_wide(obj) for obj in objects)
            if width is None:
                width = self.natural_width(objects, sep, kwargs.get("markup"))
        super().print(*objects, sep=sep, width=width, **kwargs)


def _title_wide(obj: Any) -> Any:
    """A copy of a titled table whose minimum width fits its title on one line; anything else as is."""
    if not isinstance(obj, Table) or obj.title is None or obj.min_width is not None:
        return obj
    title = obj.title if isinstance(obj.title, Text) else Text.from_markup(str(obj.title))
    wide = copy.copy(obj)
    wide.min_width = title.cell_len
    return wide


console = OutputConsole(stderr=True)  # messages, warnings, errors, logs, progress
results = OutputConsole()  # a command's results: tables, readings, values (stdout)


def progress_enabled() -> bool:
    """Whether progress bars show: ``$STEERLAB_PROGRESS`` decides when set (``0``, ``false`` or ``no``
    turn them off, anything else on); otherwise only when stderr is a terminal."""
    env = os.environ.get("STEERLAB_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no")
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, **fields: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; shows a bar with elapsed time and ETA when progress is enabled.

    Extra ``fields`` (e.g. ``loss="-"``) are shown after the count and updated by ``advance``.
    """
    if not progress_enabled():
        yield lambda n=1, **_: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, **fields)
        yield lambda n=1, **updates: bar.update(task, advance=n, **updates)
