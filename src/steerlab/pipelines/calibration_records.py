"""The shape of ``calibration.json`` (:mod:`steerlab.pipelines.calibration`), declared once like those of
:mod:`steerlab.pipelines.records`, with the units every coefficient is given in and the reading.

A coefficient is reported in three units at its layer L (``‖v_L‖`` the vector's norm there, ``‖h_L‖``
the mean residual norm on the pairs' questions): ``raw`` c (c·v is added), ``unit`` c·‖v_L‖ (the norm
added, activation units) and ``relative`` c·‖v_L‖/‖h_L‖ (the norm added as a fraction of the residual
stream's), so "coefficient 400 in raw" reads as "0.6 of the residual norm". Signed: a subtracting
coefficient is negative in every unit. Margins and their changes in nats/token, coherence 0-100,
layers are numbers (layer L = output of decoder block L).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from ..evaluate.bisection import Crossing
from ..evaluate.evidence import EvidenceDoc

Direction = Literal["add", "subtract"]
SIGNS: dict[str, int] = {"add": 1, "subtract": -1}


class Units(TypedDict):
    """One coefficient in the three scales (see the module docstring)."""

    raw: float
    unit: float
    relative: float


class CalibrationPoint(TypedDict):
    """One evaluated coefficient of a layer and direction: ``coeff`` (signed, in the calibration's
    scale) and its ``units``, the bisection ``step`` that evaluated it, the margin and fluency
    (nats/token) and fluency drop from unsteered, judged ``coherence`` (mean 0-100 over ``coherence_n``
    answers; None unjudged), whether it is ``effective`` (beyond the random band at the test's level)
    and ``fluent``, and its whole ``evidence`` (:meth:`~steerlab.evaluate.evidence.Evidence.to_dict`)."""

    coeff: float
    units: Units
    step: int
    margin: float
    fluency: float
    fluency_drop: float
    coherence: float | None
    coherence_n: int
    effective: bool
    fluent: bool
    evidence: EvidenceDoc


class Bound(TypedDict):
    """A threshold: its ``value`` in the three units (None when not found), the ``bracket`` around it
    (signed coefficients in the calibration's scale, the one nearer zero first; an end None where it
    lies beyond the points evaluated) and its ``status`` (``found``; ``at_range_end``: the search
    range's end, the true bound may lie beyond it; ``not_found``)."""

    value: Units | None
    bracket: list[float | None]
    status: str


class CalibrationTrack(TypedDict):
    """One layer and direction: the thresholds ``c_min`` (smallest effective), ``c_fluent`` (largest
    fluent) and ``c_max`` (top of the usable range), ``usable`` and the ``range`` [c_min, c_max] in each
    unit (None when empty), the evidence at c_max (``effect_at_c_max`` with ``ci95_at_c_max``,
    ``verdict_at_c_max``), a one-line ``reading`` and the ``curve`` (every point, by |coeff|)."""

    layer: int
    direction: Direction
    vector_norm: float
    residual_norm: float
    c_min: Bound
    c_fluent: Bound
    c_max: Bound | None
    usable: bool
    range: dict[str, list[float]] | None
    effect_at_c_max: float | None
    ci95_at_c_max: list[float | None] | None
    verdict_at_c_max: str | None
    fluency_drop_at_c_max: float | None
    reading: str
    curve: list[CalibrationPoint]


class Recommended(TypedDict):
    """The recommended layer and its range: the one layer rule
    (:func:`steerlab.evaluate.selection.choose_layer`) on each usable track's point at c_max."""

    layer: int
    direction: Direction
    scale: str
    range: list[float]
    units: dict[str, list[float]]
    effect_at_c_max: float | None


class CalibrationDoc(TypedDict):
    """``calibration.json``: what was calibrated (``model``, ``vector`` with its ``sha256``, the pairs),
    how (``config``, ``criterion``), the unsteered reference, one track per layer and direction, the
    ``recommended`` layer and range (None when no layer has a usable range), the ``reading``, the
    ``plan`` (steps, engine calls, rows) and ``timings``."""

    steerlab_version: str
    model: str
    engine: str
    vector: dict[str, Any]
    pairs: dict[str, Any]
    config: dict[str, Any]
    criterion: dict[str, Any]
    unsteered: dict[str, Any]
    tracks: list[CalibrationTrack]
    recommended: Recommended | None
    reading: list[str]
    plan: dict[str, int]
    timings: dict[str, float]
    judge: NotRequired[str | None]


def units(raw: float, vector_norm: float, residual_norm: float) -> Units:
    """A raw coefficient in the three units (see the module docstring)."""
    return {"raw": raw, "unit": raw * vector_norm, "relative": raw * vector_norm / residual_norm}


def to_raw(coeff: float, scale: str, vector_norm: float, residual_norm: float) -> float:
    """A coefficient in ``scale`` (raw, unit, relative) as a raw coefficient at a layer with these norms."""
    if scale == "raw":
        return coeff
    added = coeff if scale == "unit" else coeff * residual_norm
    return added / vector_norm


def bound(crossing: Crossing | None, sign: int, convert: Any) -> Bound | None:
    """A :class:`Bound` of a crossing of magnitudes, signed by ``sign``; ``convert(signed coeff) -> Units``."""
    if crossing is None:
        return None
    bracket = [None if m is None else sign * m for m in (crossing.lo, crossing.hi)]
    value = None if crossing.value is None else convert(sign * crossing.value)
    return {"value": value, "bracket": bracket, "status": crossing.status}


def _fmt(u: Units | None, scale: str) -> str:
    if u is None:
        return "?"
    others = ", ".join(f"{u[s]:.3g} {s}" for s in ("raw", "unit", "relative") if s != scale)
    return f"{u[scale]:.3g} ({others})"


def track_reading(track: CalibrationTrack, scale: str, max_drop: float, criterion: str) -> str:
    """One sentence for a layer and direction: its usable range with the evidence at c_max, or why it
    has none."""
    head = f"layer {track['layer']}, {track['direction']}"
    c_min, c_fluent = track["c_min"], track["c_fluent"]
    if track["usable"] and track["range"] is not None and track["c_max"] is not None:
        lo, hi = track["c_min"]["value"], track["c_max"]["value"]
        edge = " (the bottom of the search range)" if c_min["status"] == "at_range_end" else ""
        top = " (the top of the search range)" if track["c_max"]["status"] == "at_range_end" else ""
        ci = track["ci95_at_c_max"]
        interval = "" if not ci or None in ci else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        return (
            f"{head}: coefficients {_fmt(lo, scale)}{edge} to {_fmt(hi, scale)}{top} are {criterion} and fluent "
            f"(fluency drop {track['fluency_drop_at_c_max']:.2f} <= {max_drop:g} nats/token at the top); margin "
            f"change there {track['effect_at_c_max']:+.3f}{interval} nats/token, {track['verdict_at_c_max']}"
        )
    if c_fluent["status"] == "not_found":
        return f"{head}: no usable coefficient — not fluent even at the bottom of the search range"
    if c_min["status"] == "not_found":
        return (
            f"{head}: no usable coefficient — never {criterion} up to {_fmt(c_fluent['value'], scale)}, the "
            "largest fluent coefficient (or the top of the search range)"
        )
    return (
        f"{head}: no usable coefficient — {criterion} only from {_fmt(c_min['value'], scale)}, beyond the largest "
        f"fluent coefficient {_fmt(c_fluent['value'], scale)}"
    )


__all__ = [
    "SIGNS",
    "Bound",
    "CalibrationDoc",
    "CalibrationPoint",
    "CalibrationTrack",
    "Direction",
    "Recommended",
    "Units",
    "bound",
    "to_raw",
    "track_reading",
    "units",
]
