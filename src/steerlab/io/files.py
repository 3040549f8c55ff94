"""Reading input files: path checks, UTF-8 text and JSON, each problem one clear SteerlabError.

Every reader of a user's file (pairs, chat data, trait files, prompts, vectors, run directories)
goes through these, so one kind of bad input reads the same everywhere. Each message starts with
``what`` and the path (``"pairs file data/p.jsonl: ..."``) or with ``FILE:LINE`` and says what was
expected:

- :func:`file_problem` / :func:`input_file` — the path is an existing regular file. A missing file,
  a directory, a name the file system refuses (a component over 255 bytes: ``Path.is_file()``
  raises ``OSError: [Errno 36]`` on Python 3.11), a NUL byte or a permission problem is reported,
  never raised as ``OSError``/``ValueError``.
- :func:`read_text` / :func:`iter_lines` — UTF-8 text (a leading byte-order mark is dropped); bytes
  that are not UTF-8 are reported with their line and column. :func:`iter_lines` streams (1-based
  line numbers as an editor shows them) and stops at the first bad line.
- :func:`parse_json` / :func:`read_json` — JSON, including what ``json.loads`` raises besides
  ``JSONDecodeError``: nesting deeper than the parser's recursion limit and integers longer than
  Python's 4300-digit conversion limit.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import SteerlabError

PathLike = str | os.PathLike[str]

FILE_NOT_FOUND = "file not found"
IS_DIRECTORY = "is a directory, expected a file"
NAME_MAX = 255  # bytes in one path component on common file systems (ext4, APFS, NTFS: 255 units)
_CHUNK = 1 << 20
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as errors="surrogateescape" keeps them


def name_problem(path: PathLike) -> str | None:
    """What no file system accepts in ``path`` (checked without touching the disk): a NUL byte, or a
    name (path component) over :data:`NAME_MAX` bytes; None otherwise."""
    text = os.fspath(path)
    if "\0" in text:
        return "invalid path (it contains a NUL byte)"
    longest = max((len(os.fsencode(part)) for part in Path(text).parts), default=0)
    if longest > NAME_MAX:
        return f"file name too long ({longest} bytes in one name; file systems allow {NAME_MAX})"
    return None


def os_error_reason(exc: BaseException, path: PathLike) -> str:
    """A short reason for an ``OSError`` (or the ``ValueError`` of a NUL byte) raised on ``path``."""
    if isinstance(exc, ValueError):
        return "invalid path (it contains a NUL byte)"
    number = getattr(exc, "errno", None)
    if number == errno.ENAMETOOLONG:
        return name_problem(path) or f"path too long ({len(os.fsencode(path))} bytes)"
    if number == errno.ENOENT:
        return FILE_NOT_FOUND
    if number in (errno.ENOTDIR, errno.EEXIST):  # EEXIST: mkdir where a file is in the way
        return "a parent folder in the path is a file, not a directory"
    if number == errno.ELOOP:
        return "too many levels of symbolic links"
    return f"cannot access it ({getattr(exc, 'strerror', None) or exc})"


def file_problem(path: PathLike) -> str | None:
    """What is wrong with ``path`` as an input file, or None when it is a regular file.

    One of ``"file not found"`` (:data:`FILE_NOT_FOUND`), :data:`IS_DIRECTORY`,
    ``"not a regular file"``, or a reason from :func:`os_error_reason` (``"file name too long
    (...)"``, ``"invalid path (it contains a NUL byte)"``, ``"cannot access it (<reason>)"``...).
    Never raises.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        return os_error_reason(exc, path)
    if stat.S_ISDIR(info.st_mode):
        return IS_DIRECTORY
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return None


def input_file(path: PathLike, what: str = "file") -> Path:
    """``path`` as a :class:`Path` after checking it is a regular file.

    Raises:
        SteerlabError: ``"{what} {path}: {problem}"`` with a problem from :func:`file_problem`.
    """
    problem = file_problem(path)
    if problem is not None:
        raise SteerlabError(f"{what} {path}: {problem}")
    return Path(path)


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of character ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _not_utf8(where: str, raw: bytes, line: int, column: int) -> SteerlabError:
    hint = " (it looks like UTF-16)" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ""
    return SteerlabError(
        f"{where}: not UTF-8 text{hint}: byte 0x{raw[0]:02x} at line {line}, column {column} cannot be "
        "decoded; expected a UTF-8 text file (save it as UTF-8)"
    )


def read_text(path: PathLike, what: str = "file") -> str:
    """The whole file as text, checked to be UTF-8 (a leading UTF-8 byte-order mark is dropped).

    Decodes as it reads, so a binary file fails at its first bad byte without being read whole.

    Raises:
        SteerlabError: naming ``what`` and the path: not a regular file (see :func:`input_file`),
            unreadable (``cannot read it (<reason>)``), or not UTF-8 (byte, line and column).
    """
    path = input_file(path, what)
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    parts: list[str] = []
    try:
        with path.open("rb") as fh:
            while True:
                chunk = fh.read(_CHUNK)
                try:
                    parts.append(decoder.decode(chunk, final=not chunk))
                except UnicodeDecodeError as exc:
                    done = "".join(parts) + exc.object[: exc.start].decode("utf-8", "replace")
                    raise _not_utf8(f"{what} {path}", exc.object[exc.start :], *_position(done, len(done))) from None
                if not chunk:
                    break
    except OSError as exc:
        raise SteerlabError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    return "".join(parts)


def iter_lines(path: PathLike, what: str = "file", newline: str | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` of a UTF-8 text file, lazily (line ends kept, as ``open``
    gives them; ``newline`` as for :func:`open`, e.g. ``""`` for the csv module).

    Raises:
        SteerlabError: as :func:`read_text` (lines before a line that is not UTF-8 have been
            yielded).
    """
    path = input_file(path, what)
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline=newline) as fh:
            for number, line in enumerate(fh, 1):
                check_utf8(line, f"{what} {path}", number)
                yield number, line
    except OSError as exc:
        raise SteerlabError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


def check_utf8(text: str, where: str, line: int = 1) -> str:
    """Check that ``text`` (starting at line ``line`` of its file), read with
    ``errors="surrogateescape"``, held only UTF-8; returns it.

    Raises:
        SteerlabError: ``"{where}: not UTF-8 text: byte 0x.. at line L, column C ..."``.
    """
    bad = _ESCAPED.search(text)
    if bad is not None:
        raw = text[bad.start() :].encode("utf-8", "surrogateescape")
        first, column = _position(text, bad.start())
        raise _not_utf8(where, raw, line + first - 1, column)
    return text


def parse_json(text: str, where: str, line: int | None = None) -> Any:
    """``json.loads(text)``, every failure a SteerlabError starting with ``where``.

    Messages: ``"{where}: not valid JSON (line L, column C: <reason>)"``, ``"... (nested deeper
    than the parser allows)"`` or ``"... (a number with more than N digits)"``. For one line of a
    JSON Lines file pass its number as ``line``: ``"{where}:{line}: invalid JSON (<reason> at
    column C)"``.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if line is None:
            reason = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
        else:
            reason = f"{exc.msg} at column {exc.colno}"
    except RecursionError:
        reason = "nested deeper than the parser allows"
    except ValueError as exc:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        reason = str(exc)
        if "integer string conversion" in reason:
            reason = f"a number with more than {sys.get_int_max_str_digits()} digits"
    if line is None:
        raise SteerlabError(f"{where}: not valid JSON ({reason})")
    raise SteerlabError(f"{where}:{line}: invalid JSON ({reason})")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages: object, list, string, number, boolean
    or null."""
    if value is None:
        return "null"
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def read_json(path: PathLike, what: str = "file") -> Any:
    """The JSON value of a whole file (UTF-8, see :func:`read_text`).

    Raises:
        SteerlabError: ``"{what} {path}: ..."`` for every problem of :func:`read_text` and
            :func:`parse_json`.
    """
    return parse_json(read_text(path, what), f"{what} {path}")


__all__ = [
    "FILE_NOT_FOUND",
    "IS_DIRECTORY",
    "check_utf8",
    "file_problem",
    "input_file",
    "iter_lines",
    "json_type",
    "name_problem",
    "os_error_reason",
    "parse_json",
    "read_json",
    "read_text",
]
