"""Contrastive pairs (JSONL): ``{"question", "positive", "negative", "system"?}`` per line.

``positive`` shows the behaviour, ``negative`` does not. Extra keys (e.g. ``split``) are kept.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import SteerlabError
from ..io.files import file_problem
from ..io.tables import read_jsonl

BUILTIN_DATA = Path(__file__).resolve().parent.parent / "data"


class Pair(BaseModel):
    """One contrastive pair: a question, the answer with the behaviour and the one without."""

    model_config = ConfigDict(extra="allow", frozen=True)

    question: str
    positive: str
    negative: str
    system: str | None = None

    @field_validator("question", "positive", "negative")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        """Reject blank strings (pydantic reports the field)."""
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value

    @property
    def split(self) -> str | None:
        """The row's ``split`` field (e.g. ``train`` / ``heldout``), or None."""
        return (self.model_extra or {}).get("split")


def load_pairs(path: str | Path, split: str | None = None) -> list[Pair]:
    """Load and validate a pairs JSONL file (UTF-8; optionally only rows whose ``split`` matches).

    Raises SteerlabError naming the file (and ``FILE:LINE`` and field) for a path that is not a
    readable regular file, text that is not UTF-8, a line that is not a JSON object, a missing,
    wrongly typed or blank field, no rows, or no rows of ``split``.
    """
    pairs = []
    for number, obj in read_jsonl(path, "pairs file"):
        try:
            pairs.append(Pair.model_validate(obj))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "line"
            raise SteerlabError(f"{path}:{number}: field {field!r}: {err['msg']}") from None
    if split is not None:
        pairs = [p for p in pairs if p.split == split]
        if not pairs:
            raise SteerlabError(f"pairs file {path}: no rows with split {split!r}")
    return pairs


def builtin_pairs_path(name: str = "deception") -> Path:
    """Path of a pairs file shipped with steerlab (``deception``: data/deception/pairs.jsonl)."""
    path = BUILTIN_DATA / name / "pairs.jsonl"
    if file_problem(path) is not None:
        raise SteerlabError(f"no built-in pairs named {name!r}")
    return path
