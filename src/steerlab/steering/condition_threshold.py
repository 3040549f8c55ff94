"""Calibrating a CAST condition on example prompts: the threshold (and comparator) that best separates
prompts that should be steered (positives) from prompts that should not (negatives), per layer.

:func:`fit_threshold` is the rule: over every θ between two consecutive distinct observed similarities
(their midpoint), the one with the highest accuracy ``(#positives passing + #negatives not passing) / n``;
ties go to the widest empty interval around θ (the clearest separation), then to the comparator that
agrees with the groups' means. CAST's own search (IBM ``activation-steering``,
``find_best_condition_point``) scans a grid of thresholds for the best F1; steerlab scans the exact
breakpoints (no grid step to choose) and maximises accuracy, the number reported with it.

:func:`calibrate_condition` measures the similarities (:func:`steerlab.steering.conditions.condition_similarity`)
of both groups at each candidate layer in one capture, fits θ per layer and keeps the layer with the
best accuracy. A given θ (not ``auto``) is checked against the observed range and its accuracy
reported. The result is written and read as ``condition.json`` (:meth:`ConditionCalibration.to_json`,
:func:`load_condition`), which embeds the direction of the chosen layer so that the file alone is the
condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SteerlabError
from ..io.files import read_json
from ..model.chat import Prompt
from ..model.layers import LayerSpec, parse_layers
from ..vectors.vector import SteeringVector
from ..version import __version__
from .conditions import (
    FORMULA,
    Condition,
    check_threshold,
    condition_similarity,
    gate_samples,
    parse_comparator,
    passes,
    prompt_activations,
)

FORMAT = "steerlab.condition/1"


@dataclass(frozen=True)
class ThresholdFit:
    """A threshold θ with its comparator and how it sorts the examples: ``accuracy`` (fraction right),
    ``positive_pass`` / ``negative_pass`` (fraction of each group passing), ``gap`` (width of the
    interval around θ holding no example; cosine units)."""

    threshold: float
    comparator: str
    accuracy: float
    positive_pass: float
    negative_pass: float
    gap: float


def score_threshold(positive: torch.Tensor, negative: torch.Tensor, threshold: float, comparator: str) -> ThresholdFit:
    """How θ with ``comparator`` sorts similarities ``positive`` ``[n_pos]`` and ``negative`` ``[n_neg]``."""
    comparator = parse_comparator(comparator)
    pos, neg = passes(positive.double(), threshold, comparator), passes(negative.double(), threshold, comparator)
    values = torch.cat([positive, negative]).double()
    above, below = values[values > threshold], values[values <= threshold]
    gap = (float(above.min()) if above.numel() else threshold) - (float(below.max()) if below.numel() else threshold)
    correct = int(pos.sum()) + int((~neg).sum())
    return ThresholdFit(
        threshold, comparator, correct / values.numel(), float(pos.double().mean()), float(neg.double().mean()), gap
    )


def fit_threshold(positive: torch.Tensor, negative: torch.Tensor, comparator: str | None = None) -> ThresholdFit:
    """The θ (and comparator, unless given) that best separates ``positive`` from ``negative``
    similarities (module docstring). Raises SteerlabError for an empty group or when every similarity
    is equal (nothing separates the groups)."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise SteerlabError("condition calibration needs at least one positive and one negative example")
    values = torch.unique(torch.cat([positive, negative]).double())  # sorted
    if values.numel() < 2:
        raise SteerlabError(
            f"every condition example has the same similarity ({float(values[0]):.4g}): nothing separates "
            "positives from negatives at this layer"
        )
    candidates = ((values[1:] + values[:-1]) / 2).tolist()
    gaps = (values[1:] - values[:-1]).tolist()
    agrees = ">" if float(positive.double().mean()) >= float(negative.double().mean()) else "<"
    best: tuple[tuple[float, float, bool], ThresholdFit] | None = None
    for op in [comparator] if comparator else [">", "<"]:
        for theta, gap in zip(candidates, gaps, strict=True):
            fit = score_threshold(positive, negative, theta, op)
            key = (fit.accuracy, gap, fit.comparator == agrees)
            if best is None or key > best[0]:
                best = (key, fit)
    assert best is not None
    return best[1]


def _summary(values: torch.Tensor) -> dict[str, float | int]:
    return {
        "n": values.numel(),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.double().mean()),
    }


@dataclass
class ConditionCalibration:
    """A calibrated condition (:func:`calibrate_condition`): the :class:`Condition` at the chosen layer,
    its :class:`ThresholdFit` on the examples, the similarity summaries (``n``, ``min``, ``max``,
    ``mean``) of ``positive`` and ``negative``, the held-out fit (``heldout``: ``{"accuracy",
    "positive_pass", "negative_pass", "n"}``) when held-out examples were given, whether θ was fitted
    (``auto``), and ``layers``: one row per candidate layer (its fit, ranges and held-out accuracy)."""

    condition: Condition
    fit: ThresholdFit
    positive: dict[str, float | int]
    negative: dict[str, float | int]
    auto: bool
    heldout: dict[str, float | int] | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, direction: torch.Tensor, **extra: Any) -> dict[str, Any]:
        """The ``condition.json`` document: format, formula, layer, θ, comparator, reduction, observed
        range, accuracy and pass rates, the groups' summaries, the held-out fit, the per-layer scan,
        the condition ``direction`` ``[d_model]`` at the chosen layer, and ``extra`` (model, vector file)."""
        c = self.condition
        return {
            "format": FORMAT,
            "steerlab_version": __version__,
            "formula": FORMULA,
            **extra,
            "layer": c.layer,
            "threshold": c.threshold,
            "comparator": c.comparator,
            "reduction": c.reduction,
            "threshold_source": "auto" if self.auto else "given",
            "observed": list(c.observed) if c.observed else None,
            "accuracy": self.fit.accuracy,
            "positive_pass": self.fit.positive_pass,
            "negative_pass": self.fit.negative_pass,
            "positive": self.positive,
            "negative": self.negative,
            "heldout": self.heldout,
            "layers": self.layers,
            "direction": [float(x) for x in direction.float().tolist()],
        }


def calibrate_condition(
    model: Any,
    vector: SteeringVector | torch.Tensor,
    layers: LayerSpec,
    positives: Sequence[Prompt],
    negatives: Sequence[Prompt],
    *,
    threshold: float | str = "auto",
    comparator: str | None = None,
    reduction: str = "prompt_avg",
    system: str | None = None,
    heldout: tuple[Sequence[Prompt], Sequence[Prompt]] | None = None,
    batch_size: int = 16,
) -> ConditionCalibration:
    """Calibrate a condition on example prompts (module docstring) read by ``model`` (an engine or a
    LoadedModel): positives should pass the gate, negatives not.

    ``vector``: the condition direction(s), ``[n_layers, d_model]`` (row L at layer L) or ``[d_model]``;
    ``layers``: candidate layers (layer grammar; the best is kept); ``threshold``: ``"auto"`` (fitted)
    or a number (checked against the observed range, then scored); ``comparator``: ``">"``, ``"<"`` or
    None (chosen with θ); ``reduction``: ``prompt_avg`` or ``prompt_last``; ``system``: the system prompt
    the prompts are rendered with; ``heldout``: (positives, negatives) scored with the fitted θ, not
    used to fit it.

    Raises SteerlabError for no positives or negatives, layers out of range, a vector that does not fit
    the model, a zero direction, similarities that do not separate at all, or a given θ outside [-1, 1]
    or outside the observed similarities.
    """
    if not positives or not negatives:
        raise SteerlabError(
            "condition calibration needs positive and negative example prompts (--positive, --negative)"
        )
    auto = isinstance(threshold, str) and threshold.strip().lower() == "auto"
    if not auto:
        check_threshold(threshold)
    candidates = parse_layers(layers, model.n_layers, "--layer")
    if not auto and len(candidates) > 1:
        raise SteerlabError(
            f"--threshold {threshold}: a given threshold is for one layer (similarities differ per layer); "
            "scan several layers with --threshold auto"
        )
    probes = {layer: Condition(vector, layer, 0.0, comparator or ">", reduction) for layer in candidates}
    directions = {layer: probe.direction(model) for layer, probe in probes.items()}  # every check first
    held_pos, held_neg = heldout if heldout is not None else ([], [])
    prompts = [*positives, *negatives, *held_pos, *held_neg]
    acts = prompt_activations(model, gate_samples(prompts, system), candidates, reduction, batch_size)
    a, b, c = len(positives), len(positives) + len(negatives), len(positives) + len(negatives) + len(held_pos)
    best: tuple[tuple[float, float], ConditionCalibration] | None = None
    rows = []
    for j, layer in enumerate(candidates):
        sims = condition_similarity(acts[:, j], directions[layer])
        pos, neg = sims[:a], sims[a:b]
        observed = (float(sims[:b].min()), float(sims[:b].max()))
        if auto:
            fit = fit_threshold(pos, neg, comparator)
        else:
            theta = check_threshold(threshold, observed)
            fit = max(
                (score_threshold(pos, neg, theta, op) for op in ([comparator] if comparator else [">", "<"])),
                key=lambda f: f.accuracy,
            )
        held = None
        if heldout is not None and held_pos and held_neg:
            h = score_threshold(sims[b:c], sims[c:], fit.threshold, fit.comparator)
            held = {
                "accuracy": h.accuracy,
                "positive_pass": h.positive_pass,
                "negative_pass": h.negative_pass,
                "n": len(held_pos) + len(held_neg),
            }
        result = ConditionCalibration(
            Condition(vector, layer, fit.threshold, fit.comparator, reduction, observed),
            fit,
            _summary(pos),
            _summary(neg),
            auto,
            held,
        )
        rows.append(
            {
                "layer": layer,
                "threshold": fit.threshold,
                "comparator": fit.comparator,
                "accuracy": fit.accuracy,
                "positive_pass": fit.positive_pass,
                "negative_pass": fit.negative_pass,
                "gap": fit.gap,
                "positive": result.positive,
                "negative": result.negative,
                "heldout_accuracy": held["accuracy"] if held else None,
            }
        )
        key = (fit.accuracy, fit.gap)
        if best is None or key > best[0]:
            best = (key, result)
    assert best is not None
    best[1].layers = rows
    return best[1]


def load_condition(path: str | Path, threshold: float | None = None, comparator: str | None = None) -> Condition:
    """The :class:`Condition` of a ``condition.json`` (:meth:`ConditionCalibration.to_json`): its embedded
    direction ``[d_model]``, layer, θ, comparator, reduction and observed range; ``threshold`` /
    ``comparator`` override the file's (θ still checked against the observed range).

    Raises SteerlabError naming the file for a missing or malformed file, an unknown format, or a
    field of the wrong type, and as :class:`Condition` does for the values.
    """
    doc = read_json(path, "condition file")
    where = f"condition file {path}"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SteerlabError(f"{where}: expected a {FORMAT} document (written by steerlab condition -o)")
    direction = doc.get("direction")
    if not isinstance(direction, list) or not direction or not all(isinstance(x, int | float) for x in direction):
        raise SteerlabError(f"{where}: field 'direction' must be a non-empty list of numbers")
    for name, kind in (("layer", int), ("threshold", int | float), ("comparator", str), ("reduction", str)):
        if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool):
            raise SteerlabError(f"{where}: field {name!r} is missing or of the wrong type")
    observed = doc.get("observed")
    if observed is not None and not (
        isinstance(observed, list) and len(observed) == 2 and all(isinstance(x, int | float) for x in observed)
    ):
        raise SteerlabError(f"{where}: field 'observed' must be [min, max] or null")
    try:
        return Condition(
            torch.tensor(direction, dtype=torch.float32),
            doc["layer"],
            doc["threshold"] if threshold is None else threshold,
            doc["comparator"] if comparator is None else comparator,
            doc["reduction"],
            tuple(observed) if observed is not None else None,
        )
    except SteerlabError as exc:
        raise SteerlabError(f"{where}: {exc}") from None


__all__ = [
    "ConditionCalibration",
    "ThresholdFit",
    "calibrate_condition",
    "fit_threshold",
    "load_condition",
    "score_threshold",
]
