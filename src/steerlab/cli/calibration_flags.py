"""Calibration flags shared by ``calibrate``, ``generate --coeff auto`` and ``sweep --coeff auto``,
declared once: where the held-out pairs come from (``--pairs``/``--trait``), ``--calibration FILE``,
and the one way a calibration runs from the command line (:func:`run_cli_calibration`: the pipeline,
then its plot beside ``calibration.json``).

``--coeff auto`` reads ``--calibration FILE`` (a ``calibration.json`` or the directory holding one) and
refuses one made on another model or vector; without it, it calibrates first on ``--pairs`` or
``--trait`` (``sweep``: into ``OUT/calibration``; ``generate``: beside ``--out``, else in a temporary
directory); with neither it is an error naming both ways. It takes the calibration's steering
positions (an explicit ``--positions`` must agree) and gives its coefficients in the command's
``--scale``; it calibrates ``--operator add`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer

from ..errors import SteerlabError
from ..formats.pairs import load_pairs
from ..progress import console
from .options import is_auto

CalibrationOpt = typer.Option(
    None,
    "--calibration",
    help="With --coeff auto: calibration.json of steerlab calibrate (or its directory), made for this model and "
    "vector. Without it, --coeff auto calibrates first on --pairs or --trait.",
)
PairsSplitOpt = typer.Option(None, "--pairs-split", help="Use only pairs with this 'split' (e.g. heldout).")


def pairs_option(help: str = "Held-out pairs JSONL to calibrate on.") -> Any:
    """``--pairs``/``-p``: a pairs file."""
    return typer.Option(None, "--pairs", "-p", help=help)


def trait_option(help: str = "Built-in trait or trait file: calibrate on its eval pairs (the model's answers "
                 "to its eval questions under its positive vs negative persona prompt).") -> Any:  # fmt: skip
    """``--trait``/``-t``: a built-in trait name or trait file."""
    return typer.Option(None, "--trait", "-t", help=help)


@dataclass
class AutoFlags:
    """What ``--coeff auto`` reads or calibrates on: ``calibration`` (a file or directory), or ``pairs``
    (with ``pairs_split``) / ``trait``; ``auto``: whether ``--coeff auto`` was given."""

    auto: bool
    calibration: Path | None = None
    pairs: Path | None = None
    pairs_split: str | None = None
    trait: str | None = None

    @classmethod
    def of(cls, coeff: str | None, calibration: Path | None, pairs: Path | None, pairs_split: str | None,
           trait: str | None) -> AutoFlags:  # fmt: skip
        """The flags of one command line."""
        return cls(is_auto(coeff), calibration, pairs, pairs_split, trait)

    def check(self, vector: Any, operator: str, sources: bool = True) -> AutoFlags:
        """Refuse bad combinations before any model loads: ``--coeff auto`` without a vector, with another
        operator, or with nothing to calibrate on; ``--calibration`` without ``--coeff auto``; ``sources``:
        whether ``--pairs``/``--trait`` serve ``--coeff auto`` only (``generate``). Returns ``self``."""
        from ..pipelines.calibration_auto import NOTHING_TO_CALIBRATE

        if not self.auto:
            used = [f for f, v in (("--calibration", self.calibration),) if v is not None]
            if sources:
                used += [f for f, v in (("--pairs", self.pairs), ("--trait", self.trait)) if v is not None]
            if used:
                raise SteerlabError(f"{'/'.join(used)}: used with --coeff auto only")
            return self
        if vector is None:
            raise SteerlabError("--coeff auto needs --vector (the vector whose coefficients to calibrate)")
        if operator != "add":
            raise SteerlabError(f"--coeff auto calibrates --operator add, not {operator!r}")
        if self.calibration is None and self.pairs is None and self.trait is None:
            raise SteerlabError(NOTHING_TO_CALIBRATE)
        if self.pairs is not None and self.trait is not None:
            raise SteerlabError("--pairs and --trait: give one to calibrate on")
        return self


def held_out_pairs(lm: Any, pairs: Path | None, pairs_split: str | None, trait: str | None, out_dir: Path,
                   trait_questions: int, max_new_tokens: int) -> tuple[list[Any], str]:  # fmt: skip
    """The pairs to calibrate on and where they came from: ``--pairs`` (with ``--pairs-split``), or
    ``--trait``'s eval pairs generated on the engine (cached in ``out_dir``)."""
    from ..pipelines.calibration_auto import trait_pairs

    if pairs is not None:
        return load_pairs(pairs, split=pairs_split), str(pairs) + (f" (split {pairs_split})" if pairs_split else "")
    if trait is None:
        raise SteerlabError("calibrate: give --pairs FILE or --trait NAME (held-out pairs to calibrate on)")
    found = trait_pairs(lm, trait, out_dir, trait_questions, max_new_tokens)
    return found, f"trait {trait}: eval pairs from the model's answers under its persona prompts"


def run_cli_calibration(lm: Any, vector: Any, vector_path: Path, pairs: list[Any], source: str, out_dir: Path,
                        config: Any, judge: Any = None, judge_name: str | None = None) -> Any:  # fmt: skip
    """Run (or reuse) a calibration and write its plot beside ``calibration.json``; returns the
    :class:`~steerlab.pipelines.calibration.CalibrationResult`."""
    from ..pipelines.artifacts import CALIBRATION_PLOT
    from ..pipelines.calibration import run_calibration
    from ..report.calibration import calibration_figure
    from ..report.plots import write_figure

    result = run_calibration(
        lm, vector, pairs, out_dir, config, judge=judge, judge_name=judge_name, pairs_source=source,
        vector_file=str(vector_path),
    )  # fmt: skip
    write_figure(out_dir / CALIBRATION_PLOT, calibration_figure(result.doc))
    return result


def auto_calibration(flags: AutoFlags, lm: Any, vector: Any, vector_path: Path, model: str, out_dir: Path,
                     scale: str, positions: str | None, layers: str | None, judge: Any = None,
                     judge_name: str | None = None) -> tuple[dict[str, Any], Path, str]:  # fmt: skip
    """The calibration ``--coeff auto`` uses — read from ``--calibration`` (checked against the model and
    vector) or made now on ``--pairs``/``--trait`` into ``out_dir`` — with its path and the steering
    positions the command must use (the calibration's; an explicit other ``positions`` is an error)."""
    from ..pipelines.calibration import CalibrationConfig
    from ..pipelines.calibration_auto import check_calibration, load_calibration

    if flags.calibration is not None:
        doc, path = load_calibration(flags.calibration), flags.calibration
        check_calibration(doc, path, model, vector)
    else:
        config = CalibrationConfig(layers=layers, scale=scale)
        if positions is not None:
            config = replace(config, positions=positions)
        console.print(f"--coeff auto: calibrating {vector_path} on {model} into {out_dir} (steerlab calibrate)")
        pairs, source = held_out_pairs(lm, flags.pairs, flags.pairs_split, flags.trait, out_dir, 10, 48)
        result = run_cli_calibration(lm, vector, vector_path, pairs, source, out_dir, config, judge, judge_name)
        doc, path = result.doc, result.path
    calibrated = doc["config"]["positions"]
    if positions is not None and positions != calibrated:
        raise SteerlabError(
            f"--positions {positions}: the calibration steered at {calibrated} positions, and its coefficients mean "
            f"that there; pass --positions {calibrated}, or calibrate with --positions {positions}"
        )
    return doc, path, calibrated


__all__ = [
    "AutoFlags",
    "CalibrationOpt",
    "PairsSplitOpt",
    "auto_calibration",
    "held_out_pairs",
    "pairs_option",
    "run_cli_calibration",
    "trait_option",
]
