"""Contrastive pairs (JSONL): ``{"question", "positive", "negative", "system"?}`` per line.

``positive`` shows the behaviour, ``negative`` does not. Extra keys (e.g. ``split``) are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import SteerlabError

BUILTIN_DATA = Path(__file__).resolve().parent.parent / "data"


class Pair(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    question: str
    positive: str
    negative: str
    system: str | None = None

    @field_validator("question", "positive", "negative")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value

    @property
    def split(self) -> str | None:
        return (self.model_extra or {}).get("split")


def read_jsonl(path: str | Path, what: str = "file") -> list[tuple[int, dict]]:
    """Parse a JSONL file into ``(line number, object)``; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SteerlabError(f"{what} {path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SteerlabError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise SteerlabError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            rows.append((number, obj))
    if not rows:
        raise SteerlabError(f"{what} {path} is empty")
    return rows


def load_pairs(path: str | Path, split: str | None = None) -> list[Pair]:
    """Load and validate a pairs JSONL file (optionally only rows whose ``split`` matches)."""
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
    if not path.is_file():
        raise SteerlabError(f"no built-in pairs named {name!r}")
    return path
