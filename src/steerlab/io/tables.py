"""Row files: reading and writing JSONL and CSV, the one implementation steerlab uses.

Reading validates and names the place at fault as ``FILE:LINE`` (1-based line numbers of the file
as opened in an editor; blank lines are skipped). Writing is atomic (temp file + rename, see
:mod:`steerlab.io.atomic`): a failed write leaves no partial file.

- :func:`iter_jsonl` / :func:`read_jsonl` — ``(line number, value)`` per non-blank line.
- :func:`write_jsonl` — one JSON object per line (UTF-8, non-ASCII kept, ``default=str``).
- :func:`read_csv` — ``(line number, {column: text})`` per data row, with the header checked.
- :func:`write_csv` / :func:`csv_text` — rows of dicts; the header is the union of their keys in
  first-seen order.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SteerlabError
from .atomic import write_jsonl, write_text
from .files import iter_lines, parse_json

PathLike = str | os.PathLike[str]
_CELL_LIMIT = 2**31 - 1


def iter_jsonl(path: PathLike, what: str = "file", objects: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed value)`` for each non-blank line of a JSONL file, lazily.

    With ``objects`` (default) every value must be a JSON object. Raises SteerlabError naming the
    file: not a readable regular file or not UTF-8 (:mod:`steerlab.io.files`),
    ``"FILE:LINE: invalid JSON (...)"`` or ``"FILE:LINE: expected a JSON object, got ..."``.
    """
    for number, line in iter_lines(path, what):
        if not line.strip():
            continue
        value = parse_json(line, str(path), number)
        if objects and not isinstance(value, dict):
            raise SteerlabError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
        yield number, value


def read_jsonl(path: PathLike, what: str = "file", objects: bool = True) -> list[tuple[int, Any]]:
    """All ``(line number, value)`` rows of a JSONL file (see :func:`iter_jsonl`).

    Raises SteerlabError ``"{what} FILE is empty"`` when it has no rows.
    """
    rows = list(iter_jsonl(path, what, objects))
    if not rows:
        raise SteerlabError(f"{what} {path} is empty")
    return rows


def first_jsonl_row(path: PathLike, what: str = "file", objects: bool = True) -> tuple[int, Any]:
    """The first ``(line number, value)`` of a JSONL file, reading no further. Raises as
    :func:`read_jsonl` does."""
    for row in iter_jsonl(path, what, objects):
        return row
    raise SteerlabError(f"{what} {path} is empty")


def read_csv(
    path: PathLike, what: str = "file", columns: Sequence[str] = ()
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """``(header, [(line number, {column: text}), ...])`` of a CSV file with a header row.

    Rows whose cells are all blank are skipped; cells may be of any size. ``columns`` must all be in
    the header. Raises SteerlabError naming the file (and line) for a file that is missing, not
    UTF-8 (:mod:`steerlab.io.files`), empty or not CSV, a missing column, or a row with more cells
    than the header.
    """
    lines = iter_lines(path, what, newline="")
    reader = csv.reader(line for _, line in lines)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, _CELL_LIMIT))  # rendered chats can be long: cells of any size
    try:
        header = next(reader, None)
        if header is None:
            raise SteerlabError(f"{what} {path} is empty")
        missing = [c for c in columns if c not in header]
        if missing:
            raise SteerlabError(f"{path}: column(s) {missing} not in the header {header}")
        rows = []
        start = reader.line_num + 1  # a quoted cell may span lines: number rows by their first line
        for record in reader:
            number, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(header):
                raise SteerlabError(f"{path}:{number}: {len(record)} cells for {len(header)} columns {header}")
            rows.append((number, dict(zip(header, record + [""] * (len(header) - len(record)), strict=True))))
    except csv.Error as exc:
        raise SteerlabError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)
        lines.close()
    return header, rows


def csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows of dicts as CSV text (``\\n`` line ends); the header is the union of the keys in
    first-seen order, absent cells are empty, ``None`` is written as an empty cell."""
    rows = list(rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(target: PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows of dicts as CSV atomically (see :func:`csv_text`); returns the path."""
    write_text(target, csv_text(rows))
    return Path(target)


def cell_value(text: str) -> Any:
    """A CSV cell as written by :func:`write_csv`: ``None`` for an empty or ``None`` cell, else an
    int, a float, or the text itself."""
    if text in ("", "None"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


__all__ = [
    "cell_value",
    "csv_text",
    "first_jsonl_row",
    "iter_jsonl",
    "read_csv",
    "read_jsonl",
    "write_csv",
    "write_jsonl",
]
