"""Atomic writes: write to a temp file or directory beside the target, then rename over it.

A crash or an error mid-write never leaves a partial file or directory at the target path. Temp
names start with ``.NAME.`` and end in ``.tmp``; they are removed on any exception (including
``KeyboardInterrupt``, and SIGTERM under :func:`steerlab.signals.sigterm_as_interrupt`). Only a
SIGKILL or a power cut can leave one behind. A target whose name no file system accepts (a NUL
byte, a name over 255 bytes) or whose folder cannot be created is a SteerlabError before anything is
written (a long NAME is shortened in the temp name).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import SteerlabError
from .files import name_problem, os_error_reason


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; on success it is renamed to ``target``.

    The temp file exists (empty) when yielded; on any exception it is removed and ``target`` is
    left as it was.
    """
    target = _usable(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise SteerlabError(f"cannot write {target}: {os_error_reason(exc, target)}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp directory beside ``target``; on success it takes ``target``'s place.

    An existing directory at ``target`` is replaced as a whole (moved aside, then deleted) only once
    the body finished; on any exception the temp directory is removed and ``target`` is untouched.
    The swap is two renames, so a SIGKILL between them can leave ``target`` missing (the old one
    then sits in a hidden ``.NAME.*.old`` beside it), never half written.

    Raises:
        SteerlabError: ``target`` exists and is not a directory.
    """
    target = _usable(target)
    if target.exists() and not target.is_dir():
        raise SteerlabError(f"{target}: exists and is not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise SteerlabError(f"cannot write {target}: {os_error_reason(exc, target)}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; use the usual mode
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _usable(target: str | os.PathLike[str]) -> Path:
    """``target`` as a Path, refused before anything is created when no file system accepts its name."""
    problem = name_problem(target)
    if problem is not None:
        raise SteerlabError(f"cannot write {target}: {problem}")
    return Path(target)


def _temp_prefix(target: Path) -> str:
    """``.NAME.`` for the temp file beside ``target``; a long NAME is shortened so that the temp name
    (prefix, random part, suffix) stays within the 255-byte limit of a file name."""
    name = target.name
    while len(os.fsencode(name)) > 200:
        name = name[: len(name) - 8]
    return f".{name}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON (non-JSON values via ``str``) to ``target`` atomically."""
    write_text(target, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(target: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON Lines (one object per line) to ``target`` atomically."""
    write_text(target, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
