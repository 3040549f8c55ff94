"""References in the documentation resolve: every ``steerlab.xxx`` dotted name in a docstring or
comment of src/ (and in README.md and docs/) names a module or object that exists, and every
citation of the design notes ("docs/design.md §4") names a section that docs/design.md has."""

from __future__ import annotations

import ast
import functools
import importlib
import io
import re
import tokenize
from pathlib import Path

import steerlab

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(steerlab.__file__).resolve().parent
DESIGN = ROOT / "docs" / "design.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a dotted name, not a format identifier such as ``steerlab.readout/1`` (a name then a slash)
DOTTED = re.compile(r"\bsteerlab(?:\.[A-Za-z_]\w*)++(?!/)")
# dotted names that are not Python: keys steerlab writes into GGUF files (steerlab.vectors.gguf)
NOT_PYTHON = {"steerlab.layer0", "steerlab.metadata"}
CITATION = re.compile(r"design\.md((?:,?\s*§\d+)+)")
OLD_CITATION = re.compile(r"\bSPEC §|\bSPEC\.md\b|\bDESIGN\.md\b")


def _documentation(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring (any string statement) and comment of a Python file."""
    text = path.read_text(encoding="utf-8")
    found = [
        (node.lineno, node.value.value)
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    ]
    found += [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]
    return found


def _texts() -> list[tuple[str, str]]:
    """(where, text) for the docstrings and comments of src/ and the Markdown documentation."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        out += [(f"{path.relative_to(ROOT)}:{line}", text) for line, text in _documentation(path)]
    out += [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")) for path in DOCS]
    return out


@functools.cache
def _resolves(name: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute chain on the longest importable module prefix
    (names in NOT_PYTHON count as resolved)."""
    if name in NOT_PYTHON:
        return True
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def test_every_dotted_steerlab_reference_resolves():
    texts = _texts()
    assert len(texts) > 500  # docstrings and comments were found
    broken = sorted({(where, name) for where, text in texts for name in DOTTED.findall(text) if not _resolves(name)})
    assert not broken, broken


def _sections() -> set[int]:
    return {int(n) for n in re.findall(r"^## §(\d+) ", DESIGN.read_text(encoding="utf-8"), re.M)}


def test_design_notes_are_numbered_in_order():
    sections = _sections()
    assert sections == set(range(1, len(sections) + 1)) and len(sections) >= 10


def test_every_design_citation_names_an_existing_section():
    sections = _sections()
    cited, stale = [], []
    for path in [*sorted(SRC.rglob("*.py")), *DOCS]:
        text = path.read_text(encoding="utf-8")
        for match in CITATION.finditer(text):
            cited += [(path.name, int(n)) for n in re.findall(r"§(\d+)", match.group(1))]
        stale += [(path.name, m.group(0)) for m in OLD_CITATION.finditer(text)]
    assert len(cited) > 40
    assert not [c for c in cited if c[1] not in sections], sections
    assert not stale, stale  # documents steerlab does not ship
