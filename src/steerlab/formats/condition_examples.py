"""Example prompts of a condition (CAST): prompts a gate should pass (positives) and prompts it should
not (negatives), read from two prompt files or from a built-in set (``data/conditions/NAME/``).

Built-in sets ship as ``positive.txt`` and ``negative.txt`` (one prompt per line); every 4th line of
each (lines 4, 8, ...) is the ``heldout`` split, the others ``train``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SteerlabError
from ..model.chat import Prompt
from .prompts import load_prompts

CONDITIONS_DIR = Path(__file__).resolve().parent.parent / "data" / "conditions"
SPLITS = ("train", "heldout")
HELDOUT_EVERY = 4


def list_condition_examples() -> list[str]:
    """Names of the built-in condition example sets (e.g. ``cooking``), sorted."""
    return sorted(p.name for p in CONDITIONS_DIR.iterdir() if (p / "positive.txt").is_file())


def _split(prompts: list[Prompt], split: str | None) -> list[Prompt]:
    if split is None:
        return prompts
    heldout = split == "heldout"
    return [p for i, p in enumerate(prompts, 1) if (i % HELDOUT_EVERY == 0) == heldout]


def condition_examples(name: str = "cooking", split: str | None = None) -> tuple[list[Prompt], list[Prompt]]:
    """``(positives, negatives)`` of a built-in condition example set (``cooking``: 40 + 40 prompts about
    cooking vs other everyday topics, written for steerlab), all lines or one ``split`` (``train``:
    30 + 30, ``heldout``: 10 + 10). Raises SteerlabError for an unknown name or split."""
    if split is not None and split not in SPLITS:
        raise SteerlabError(f"condition examples split {split!r}: expected one of {', '.join(SPLITS)}")
    names = list_condition_examples()
    if name not in names:
        raise SteerlabError(f"no built-in condition examples named {name!r}; available: {', '.join(names)}")
    folder = CONDITIONS_DIR / name
    return (
        _split(load_prompts(folder / "positive.txt"), split),
        _split(load_prompts(folder / "negative.txt"), split),
    )


def load_condition_examples(positive: str | Path, negative: str | Path) -> tuple[list[Prompt], list[Prompt]]:
    """``(positives, negatives)`` from two prompt files (``.txt``, ``.jsonl`` or ``.json``, as
    :func:`steerlab.formats.prompts.load_prompts` reads them). Raises SteerlabError naming the file."""
    return load_prompts(positive), load_prompts(negative)
