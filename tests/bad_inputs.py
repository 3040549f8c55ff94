"""Bad input for every file format steerlab reads (docs/design.md §10): hypothesis strategies, and the one
property every reader must have.

The property (:func:`read_or_clear_error`): reading a file either works or raises ONE
``SteerlabError`` whose message is one line, names the file and stays short however big the input
was. Any other exception type (``UnicodeDecodeError``, ``OSError``, ``RecursionError``,
``KeyError``...) escapes and fails the test with its traceback.

Runs are bounded and reproducible (:data:`BAD_INPUT`): a modest number of examples, no deadline,
derandomized (the same examples on every run and in CI), no example database. Hypothesis's other
cache (constants read from the source, in ``.hypothesis/``) goes to the temp directory, not the
checkout, unless ``HYPOTHESIS_STORAGE_DIRECTORY`` says otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from steerlab.errors import SteerlabError

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "steerlab-hypothesis")

BAD_INPUT = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

# Byte sequences that are not UTF-8: a lone 0xff, a truncated two-byte sequence, an encoded
# surrogate, Latin-1 "été", a lone continuation byte.
NOT_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9t\xe9", b"\x80")

LONG_NAME = "x" * 300  # one path component over the 255-byte limit of common file systems


@dataclass(frozen=True)
class Damage:
    """One way to damage a file's bytes, independent of the bytes (so a file whose content varies
    from run to run, such as a stage marker holding timings, is damaged reproducibly)."""

    kind: str  # "truncate" | "replace" | "insert" | "reencode"
    at: float = 0.0  # where, as a fraction of the length
    data: bytes = b""

    def __call__(self, valid: bytes) -> bytes:
        cut = int(len(valid) * self.at)
        if self.kind == "truncate":
            return valid[:cut]
        if self.kind == "insert":
            return valid[:cut] + self.data + valid[cut:]
        if self.kind == "reencode":
            try:
                return valid.decode("utf-8").encode("utf-16")
            except UnicodeDecodeError:
                return bytes(reversed(valid))
        return self.data


def damages() -> st.SearchStrategy[Damage]:
    """Truncated at any point (empty included), replaced by blank or binary content, non-UTF-8
    bytes spliced in anywhere, re-encoded as UTF-16 (binary files: byte-reversed)."""
    where = st.floats(0, 1, exclude_max=True)
    return st.one_of(
        st.builds(Damage, st.just("truncate"), where),
        st.builds(Damage, st.just("replace"), st.just(0.0), st.sampled_from([b"", b"\n", b"  \n\n\t\n", b"\x00" * 16])),
        st.builds(Damage, st.just("insert"), st.floats(0, 1), st.sampled_from(NOT_UTF8)),
        st.just(Damage("reencode")),
        st.builds(Damage, st.just("replace"), st.just(0.0), st.binary(max_size=200)),
    )


def corruptions(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` damaged in every way of :func:`damages`."""
    return damages().map(lambda damage: damage(valid))


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value (null, booleans, numbers, strings, lists, objects), small."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=max_leaves,
    )


def huge_json_texts() -> st.SearchStrategy[str]:
    """JSON (or JSON-like) text too big in one way: nesting far deeper than the parser's recursion
    limit, an integer beyond Python's 4300-digit conversion limit, a number beyond float range, a
    2 MB string, 100 000 list items."""
    return st.sampled_from(
        [
            "[" * 50_000 + "]" * 50_000,
            '{"a": ' * 20_000 + "1" + "}" * 20_000,
            "1" * 5_000,
            "1e999999",
            json.dumps("x" * 2_000_000),
            json.dumps(list(range(100_000))),
        ]
    )


def odd_names(suffix: str) -> st.SearchStrategy[str]:
    """File names a user may pass: over 255 bytes, with spaces, brackets (rich markup), unicode."""
    return st.sampled_from(
        [
            LONG_NAME + suffix,
            "with space" + suffix,
            "[bold]data[1]" + suffix,
            "données-数据" + suffix,
            "." + suffix,
        ]
    )


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh empty directory for one hypothesis example (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="steerlab-bad-") as tmp:
        yield Path(tmp)


def write(path: Path, content: bytes | str) -> Path:
    """Write bytes (or UTF-8 text) to ``path``; returns it."""
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def read_or_clear_error(read: Callable[[Path], Any], path: Path, *needles: str) -> str | None:
    """Call ``read(path)``: None when it returns; else the message of the SteerlabError it raised,
    checked to be one line that names ``path`` (and each of ``needles``) and stays under 1000
    characters besides the path. Any other exception propagates (the test fails)."""
    try:
        read(path)
    except SteerlabError as exc:
        return check_message(str(exc), path, *needles)
    return None


def check_message(message: str, path: Path | str, *needles: str) -> str:
    """Assert ``message`` is one line naming ``path`` and each of ``needles``, and short."""
    assert "\n" not in message, message
    assert str(path) in message, (str(path), message)
    assert len(message) - message.count(str(path)) * len(str(path)) < 1000, message[:2000]
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def clear_error(read: Callable[[Path], Any], path: Path, *needles: str) -> str:
    """Like :func:`read_or_clear_error`, but the read must fail."""
    message = read_or_clear_error(read, path, *needles)
    assert message is not None, f"{path} was accepted"
    return message
