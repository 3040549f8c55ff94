"""The demo's calibration stage: at which coefficients do its two vectors steer deception?

For the contrastive and the model-diff vector of the diff study, :func:`steerlab.pipelines.calibration.run_calibration`
on the held-out deception pairs, adding each vector to the base model (inducing the behaviour, raw
scale, steered at the study's positions), at the study's best layer (and, at ``full`` size, its two
neighbours), with the study's number of random controls. Each writes
``calibration/<vector>/calibration.json``; the report shows both. The search is kept small on a CPU
(``small``: 5 candidates over 0.005-5 times the residual norm, then 2 steps of one candidate per
open bracket) — the demo is near its time budget — and full at ``full`` size.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..engines.base import Engine
from ..formats.pairs import Pair
from ..vectors.vector import SteeringVector
from .calibration import CalibrationConfig, run_calibration

CALIBRATION_DIR = "calibration"
DEMO_VECTORS = ("contrastive", "model_diff")

# per demo size: the search, and how many neighbours of the best layer on each side are calibrated too
SEARCH = {
    "ci": (CalibrationConfig(grid=3, steps=1, per_bracket=1, tolerance=2.0, n_bootstrap=200), 0),
    "small": (CalibrationConfig(grid=5, steps=2, per_bracket=1, tolerance=1.5), 0),
    "full": (CalibrationConfig(), 1),
}


def calibrate_demo_vectors(
    engine: Engine,
    out: Path,
    vectors: dict[str, Path],
    heldout: list[Pair],
    best_layer: int,
    size: str,
    controls: int,
    positions: str,
) -> dict[str, Any]:
    """Calibrate the demo's two vectors (see the module docstring) into ``out/calibration/<name>/``.
    ``controls`` < 1 (the study's controls turned off) skips the stage. Returns the ``calibration``
    part of summary.json: per vector the recommended layer and range (raw and relative) with the
    evidence at its top, and the reading."""
    if controls < 1:
        return {"skipped": "--controls 0: a calibration tests every coefficient against random directions"}
    search, reach = SEARCH.get(size, SEARCH["small"])
    layers = [x for x in range(best_layer - reach, best_layer + reach + 1) if 0 <= x < engine.n_layers]
    config = replace(search, layers=layers, controls=controls, positions=positions)
    summary: dict[str, Any] = {}
    for name in DEMO_VECTORS:
        result = run_calibration(
            engine, SteeringVector.load(vectors[name]), heldout, out / CALIBRATION_DIR / name, config,
            pairs_source="built-in deception pairs (held-out split)", vector_file=str(vectors[name]),
        )  # fmt: skip
        rec = result.recommended
        summary[name] = {
            "recommended": rec,
            "reading": result.reading,
            "plan": result.doc["plan"],
            "criterion": result.doc["criterion"]["effective"],
        }
    return summary


def calibration_readings(calibration: dict[str, Any]) -> list[str]:
    """The demo reading's sentences on the calibration: per vector, each calibrated layer's range or why
    it has none (the evidence at its top included)."""
    if "skipped" in calibration:
        return [f"Calibration skipped ({calibration['skipped']})."]
    return [
        f"Calibration of the {name.replace('_', '-')} vector (added to the base model, raw coefficients): "
        + "; ".join(entry["reading"][1:])
        for name, entry in calibration.items()
    ]


__all__ = ["CALIBRATION_DIR", "DEMO_VECTORS", "SEARCH", "calibrate_demo_vectors", "calibration_readings"]
