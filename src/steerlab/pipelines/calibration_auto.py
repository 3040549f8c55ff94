"""Using a calibration: ``--coeff auto`` on ``generate`` and ``sweep``, and the pairs a trait is
calibrated on.

- :func:`load_calibration` reads ``calibration.json`` (a file, or a run directory holding one) and
  refuses one made for another model or vector (:func:`check_calibration`: the model spec and the
  vector's SHA-256 recorded in it).
- :func:`generate_coeffs`: at one layer (default the recommended one), three coefficients per usable
  direction — the range's ends c_min and c_max and their geometric mean — so one ``generate`` shows the
  weakest coefficient that moves the behaviour, the strongest that stays fluent, and one between.
- :func:`sweep_coeffs`: per layer with a usable range, 0 (unsteered) and ``n`` coefficients spaced
  geometrically from c_min to c_max per usable direction: a grid spanning each layer's range.

Coefficients are given in the command's ``--scale`` from the units the calibration recorded at each
layer (raw c, unit c·‖v‖, relative c·‖v‖/‖h‖ with ‖h‖ measured on the calibration's pairs).

- :func:`trait_pairs`: held-out pairs for ``-t TRAIT``, as the multi-trait study makes its eval pairs
  (:func:`steerlab.pipelines.trait_steering.eval_items` / ``eval_pairs``): the model's own greedy
  answers to the trait's eval questions under its first positive and first negative persona prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines.base import Engine
from ..errors import SteerlabError
from ..formats.pairs import Pair
from ..formats.traits import load_trait
from ..io.files import IS_DIRECTORY, file_problem, read_json
from ..io.runs import ROWS
from ..vectors.vector import SteeringVector
from .artifacts import CALIBRATION
from .calibration import vector_sha256
from .calibration_records import CalibrationDoc, CalibrationTrack
from .runs import RunDir
from .trait_steering import eval_items, eval_pairs

AUTO = "auto"
NOTHING_TO_CALIBRATE = "--coeff auto needs --calibration calibration.json, or --pairs/--trait to calibrate on"


def calibration_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/calibration.json`` when ``path`` is a directory."""
    p = Path(path)
    return p / CALIBRATION if file_problem(p) == IS_DIRECTORY else p


def load_calibration(path: str | Path) -> CalibrationDoc:
    """The ``calibration.json`` at ``path`` (or in the directory ``path``).

    Raises:
        SteerlabError: naming the file, when it is missing, not JSON, or not a calibration.
    """
    p = calibration_path(path)
    doc = read_json(p, "--calibration")
    if not isinstance(doc, dict) or not {"model", "vector", "tracks", "recommended"} <= set(doc):
        raise SteerlabError(f"--calibration {p}: not a calibration (expected calibration.json of steerlab calibrate)")
    return doc  # type: ignore[return-value]


def check_calibration(doc: CalibrationDoc, path: str | Path, model: str, vector: SteeringVector) -> None:
    """Refuse a calibration made on another model or vector.

    Raises:
        SteerlabError: the recorded model spec is not ``model``, or the recorded vector SHA-256 is not
            ``vector``'s.
    """
    where = f"--calibration {calibration_path(path)}"
    if doc["model"] != model:
        raise SteerlabError(f"{where}: made for model {doc['model']!r}, not {model!r}; calibrate this model first")
    if doc["vector"].get("sha256") != vector_sha256(vector):
        made = doc["vector"].get("file") or "another vector"
        raise SteerlabError(f"{where}: made for another vector ({made}); calibrate this --vector first")


def _tracks(doc: CalibrationDoc, layer: int) -> list[CalibrationTrack]:
    return [t for t in doc["tracks"] if t["layer"] == layer]


def auto_layer(doc: CalibrationDoc, path: str | Path, layer: int | None) -> int:
    """``layer`` (checked: calibrated, with a usable range) or, when None, the recommended layer.

    Raises:
        SteerlabError: no recommended layer, a layer that was not calibrated, or one without a usable range.
    """
    where = f"--calibration {calibration_path(path)}"
    if layer is None:
        if doc["recommended"] is None:
            raise SteerlabError(f"{where}: no layer has a usable range (no coefficient was both effective and fluent)")
        return int(doc["recommended"]["layer"])
    tracks = _tracks(doc, layer)
    if not tracks:
        calibrated = sorted({t["layer"] for t in doc["tracks"]})
        raise SteerlabError(f"--layer {layer}: not calibrated ({where} holds layers {calibrated})")
    if not any(t["usable"] for t in tracks):
        raise SteerlabError(f"--layer {layer}: no usable range at this layer ({tracks[0]['reading']})")
    return layer


def _range(track: CalibrationTrack, scale: str) -> tuple[float, float]:
    assert track["range"] is not None
    lo, hi = track["range"][scale]
    return lo, hi


def _geometric(lo: float, hi: float, n: int) -> list[float]:
    """``n`` signed coefficients from lo to hi (same sign), evenly spaced on a log scale."""
    if n == 1 or lo == hi:
        return [lo] if n == 1 else [lo] * n
    sign = 1.0 if lo > 0 else -1.0
    a, b = abs(lo), abs(hi)
    return [sign * a * (b / a) ** (i / (n - 1)) for i in range(n)]


def generate_coeffs(doc: CalibrationDoc, path: str | Path, layer: int | None, scale: str) -> tuple[int, list[float]]:
    """The layer and coefficients ``generate --coeff auto`` runs: c_min, the geometric mean of c_min and
    c_max, and c_max of each usable direction at the layer, in ``scale`` units (see the module docstring).

    Raises:
        SteerlabError: as :func:`auto_layer`.
    """
    layer = auto_layer(doc, path, layer)
    coeffs = [c for t in _tracks(doc, layer) if t["usable"] for c in _geometric(*_range(t, scale), 3)]
    return layer, sorted(coeffs)


def sweep_coeffs(
    doc: CalibrationDoc, path: str | Path, layers: Sequence[int] | None, scale: str, n: int = 4
) -> dict[int, list[float]]:
    """``{layer: coefficients}`` for ``sweep --coeff auto``: 0 and ``n`` coefficients from c_min to c_max
    per usable direction, in ``scale`` units, at each of ``layers`` (default: every calibrated layer
    with a usable range).

    Raises:
        SteerlabError: no layer with a usable range, or a given layer without one (as :func:`auto_layer`).
    """
    if layers is None:
        layers = sorted({t["layer"] for t in doc["tracks"] if t["usable"]})
        if not layers:
            auto_layer(doc, path, None)  # raises: no usable range anywhere
    out: dict[int, list[float]] = {}
    for layer in layers:
        auto_layer(doc, path, layer)
        grid = [c for t in _tracks(doc, layer) if t["usable"] for c in _geometric(*_range(t, scale), n)]
        out[layer] = sorted({0.0, *grid})
    return out


def describe_auto(doc: CalibrationDoc, layer: int, coeffs: Sequence[float], scale: str) -> str:
    """One line for stderr: what ``--coeff auto`` chose and from which calibration."""
    shown = ", ".join(f"{c:.3g}" for c in coeffs)
    relative = [t["range"]["relative"] for t in _tracks(doc, layer) if t["usable"] and t["range"]]
    rel = "; ".join(f"{lo:.3g} to {hi:.3g}" for lo, hi in relative)
    return f"--coeff auto: layer {layer}, coefficients {shown} ({scale}; calibrated range {rel} of the residual norm)"


def trait_pairs(
    engine: Engine, trait: str, out_dir: str | Path, n_questions: int = 10, max_new_tokens: int = 48
) -> list[Pair]:
    """Held-out pairs of a built-in trait (or trait file): the engine's greedy answers to its first
    ``n_questions`` eval questions under the first positive and first negative persona prompt (see the
    module docstring), cached in ``out_dir/eval_answers.jsonl``.

    Raises:
        SteerlabError: an unknown trait, or no pair (every answer blank).
    """
    spec = load_trait(trait, "eval")
    items = eval_items(spec, n_questions)

    def answer(_: Any) -> list[dict[str, Any]]:
        prompts = [
            [{"role": "system", "content": it["system"]}, {"role": "user", "content": it["question"]}] for it in items
        ]
        gens = engine.generate(prompts, max_new_tokens=max_new_tokens, description=f"{trait}: eval answers")
        return [{**it, "response": g.text} for it, g in zip(items, gens, strict=True)]

    inputs = {"model": engine.name, **engine.fingerprint(), "items": items, "max_new_tokens": max_new_tokens}
    rows = RunDir(out_dir).cached("eval_answers", "eval_answers.jsonl", inputs, answer, codec=ROWS).value
    pairs = eval_pairs(rows)
    if not pairs:
        raise SteerlabError(f"--trait {trait}: no pairs: the model's answers to its eval questions were blank")
    return pairs


__all__ = [
    "AUTO",
    "NOTHING_TO_CALIBRATE",
    "auto_layer",
    "calibration_path",
    "check_calibration",
    "describe_auto",
    "generate_coeffs",
    "load_calibration",
    "sweep_coeffs",
    "trait_pairs",
]
