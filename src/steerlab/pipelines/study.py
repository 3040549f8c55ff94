"""The fine-tuning steering study: do the model-diff and the contrastive directions steer alike?

Given a base model, a behaviour fine-tune of it (PEFT adapter, applied unmerged) and held-out pairs,
measured with the judge-free behaviour margin (positive − negative log-likelihood per token):

1. **Reference**: margin of the base and of the fine-tuned model, unsteered; the *gap* between them
   is the fine-tuning shift to explain.
2. **Layer scan**: subtract each vector (coefficient 1, raw) from the fine-tuned model at each
   candidate layer; the best layer undoes the largest fraction of the gap while staying fluent.
3. **Coefficient sweeps** at the best layer (``coeffs``) and at all layers (``all_layers_coeffs``,
   default ``coeffs``; ``all_layers_models``, default both), for every vector: subtract from the
   fine-tuned model and add to the base model; ``raw`` (the vector as extracted) and ``normalized`` (each
   layer rescaled to the model-diff vector's norm there, so equal coefficients mean equal-size
   interventions for every vector; for the model-diff vector itself this is the raw vector).
4. **Projection ablation** of each direction from the fine-tuned model, at the best layer and at all.
5. **Blends** (with ``blend_alphas``): α·contrastive + (1 − α)·model-diff directions at the model-diff
   vector's norms (:mod:`steerlab.pipelines.study_vectors`), swept like the others at the best layer
   and at all layers; rows ``vector`` = ``blend_<α>``, ``scale`` = ``normalized``, ``alpha`` = α. They
   are extra rows of the sweep's batch streams, controlled by the model-diff vector's random
   directions (a blend has its norms); α = 0 and α = 1 are the model-diff and normalized contrastive
   conditions themselves, so their rows equal those exactly.

Every row (:class:`~steerlab.pipelines.records.StudyRow`) records the margin, its std over pairs,
``undone`` = (ft − steered) / (ft − base) for conditions on the fine-tuned model (``induced`` =
(steered − base) / (ft − base) on the base), and ``fluency`` (mean log-likelihood per token of both
answers; its drop from the unsteered model flags incoherent steering). ``layers`` is a layer number
or ``"all"``. A few greedy generations per condition are kept as samples.

Evidence (docs/design.md §7): every sweep and ablation row also carries
:meth:`steerlab.evaluate.evidence.Evidence.gap_fraction` of its margins — a bootstrap 95% interval
(``ci95``, of its undone/induced fraction; ``margin_ci95``; ``delta`` and ``delta_ci95``, the change
in margin), the per-pair margins and the steerable / anti-steerable fractions, and ``random``: the
same fraction for ``controls`` random directions with the vector's norm at each steered layer, run
through the identical condition as extra rows of the same batches (null band and one-sided
empirical p, ``alternative``; ``verdict`` says whether the effect stands out and what K controls can
resolve). With ``prompts`` (a system prompt asking for the behaviour and one asking for its
opposite), the reference also holds the prompting baseline: the base model asked for the behaviour
and the fine-tuned model asked for its opposite, and each row's ``vs_prompting`` is its margin change
as a fraction of prompting's (with an interval). The best layer follows the one layer rule of
:func:`steerlab.evaluate.selection.choose_layer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engines.base import Engine
from ..engines.hf import as_engine
from ..errors import SteerlabError
from ..evaluate.controls import random_directions
from ..evaluate.margin import MarginResult, condition_margins
from ..evaluate.selection import ScanPoint, choose_layer
from ..formats.pairs import Pair
from ..model.loading import LoadedModel
from ..steering.operators import POSITIONS
from ..steering.steerer import SteeringSpec
from ..vectors.vector import SteeringVector
from .records import (
    LayerSet,
    PairedComparison,
    StudyDoc,
    StudyPrompting,
    StudyReference,
    StudyRow,
    StudySample,
    layer_set,
)
from .study_evidence import paired_comparisons, prompting_baseline, row_evidence
from .study_samples import best_coherent, sample_generations
from .study_vectors import blend_vectors, check_alphas, normalized_like

log = logging.getLogger("steerlab")
STUDY_MODELS = ("finetuned", "base")  # subtract from the fine-tuned model, add to the base


@dataclass
class StudyConfig:
    """Settings of the steering study: candidate single ``layers`` (default: five spread over the
    middle), ``coeffs`` for the sweeps, the forward ``batch_size``, ``max_fluency_drop`` (nats/token
    below the unsteered model still counted coherent), the sample generations' count and length, and
    ``blend_alphas``: blends of the contrastive and model-diff directions to sweep (each in [0, 1]; empty:
    none).

    ``all_layers_coeffs``: the coefficient magnitudes of the all-layers sweep (None: ``coeffs``). A
    coefficient applied at every layer adds its vector once per layer to the residual stream, so the
    all-layers sweep usually needs much smaller coefficients than a single layer: on smollm2 (30
    layers) every all-layers row at 1, 2 and 4 broke the model (fluency drop 3-38 nats/token) while
    0.125 steered coherently (the demo's sizes use such a list). ``all_layers_models``: which all-layers
    sweeps run, ``finetuned`` (subtract: does it undo the fine-tune?) and/or ``base`` (add: does it
    induce the behaviour?); the best-layer sweep always runs both."""

    layers: list[int] | None = None  # candidate single layers; default: a spread over the middle
    coeffs: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    batch_size: int = 32
    max_fluency_drop: float = 1.0  # nats/token below the unsteered model still counted as coherent
    n_samples: int = 3
    max_new_tokens: int = 40
    controls: int = 8  # random same-norm directions per condition (0: off)
    seed: int = 0  # of the random directions and the bootstrap
    n_bootstrap: int = 1000
    prompts: dict[str, str] | None = None  # {"behaviour": system prompt, "opposite": system prompt}
    positions: str = "response"  # where every condition steers (docs/design.md §4): the seed's evaluation default
    blend_alphas: list[float] = field(default_factory=list)  # weights of the contrastive direction (empty: off)
    all_layers_coeffs: list[float] | None = None  # the all-layers sweep's magnitudes (None: coeffs)
    all_layers_models: list[str] = field(default_factory=lambda: list(STUDY_MODELS))  # all-layers sweeps run

    def sweep_coeffs(self, layers: LayerSet) -> list[float]:
        """The coefficient magnitudes swept at ``layers`` (a layer number, or ``"all"``)."""
        if layers == "all" and self.all_layers_coeffs is not None:
            return self.all_layers_coeffs
        return self.coeffs


@dataclass
class StudyResult:
    """What :func:`run_study` measured (``study.json`` is :meth:`to_dict`): the unsteered
    ``reference`` margins, the ``prompting`` baseline (None without prompts), every
    :class:`~steerlab.pipelines.records.StudyRow`, the ``best_layer`` (model-diff vector, coefficient 1),
    the sample generations, the layers scanned, the paired model-diff vs contrastive ``comparisons``
    and the ``config`` (:class:`StudyConfig` as a dict)."""

    reference: StudyReference
    prompting: StudyPrompting | None
    rows: list[StudyRow]
    best_layer: int
    samples: list[StudySample]
    layers_scanned: list[int]
    comparisons: list[PairedComparison]
    config: dict[str, Any]

    @property
    def gap(self) -> float:
        """The base → fine-tuned margin gap (nats/token)."""
        return self.reference["finetuned"] - self.reference["base"]

    @property
    def max_fluency_drop(self) -> float:
        """The coherence limit the study used (nats/token)."""
        return float(self.config.get("max_fluency_drop", StudyConfig.max_fluency_drop))

    def swept(self, layers: LayerSet, model: str) -> bool:
        """Whether the study swept ``model`` (``finetuned`` or ``base``) at ``layers`` (the all-layers
        sweeps run on ``all_layers_models`` only; a study from before that setting swept both)."""
        return layers != "all" or model in self.config.get("all_layers_models", STUDY_MODELS)

    def to_dict(self) -> StudyDoc:
        """The ``study.json`` document."""
        return {
            "reference": self.reference,
            "prompting": self.prompting,
            "rows": self.rows,
            "best_layer": self.best_layer,
            "samples": self.samples,
            "layers_scanned": self.layers_scanned,
            "comparisons": self.comparisons,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StudyResult:
        """Read a ``study.json`` document (also one written before layers stayed numbers)."""
        rows = [{**r, "layers": layer_set(r["layers"])} for r in doc["rows"]]
        comparisons = [{**c, "layers": layer_set(c["layers"])} for c in doc.get("comparisons", [])]
        return cls(
            doc["reference"],
            doc.get("prompting"),
            rows,  # type: ignore[arg-type]
            int(doc["best_layer"]),
            doc.get("samples", []),
            list(doc.get("layers_scanned", [])),
            comparisons,  # type: ignore[arg-type]
            doc.get("config", {}),
        )


def check_all_layers_models(models: Sequence[str]) -> list[str]:
    """The models of the all-layers sweeps, each ``finetuned`` or ``base``, given once.

    Raises:
        SteerlabError: naming ``--all-layers-models``, for another name, a repeat or none.
    """
    out = list(models)
    if not out or any(m not in STUDY_MODELS for m in out) or len(set(out)) < len(out):
        raise SteerlabError(
            f"--all-layers-models {','.join(out) or '(none)'}: expected finetuned, base or finetuned,base"
        )
    return out


def check_all_layers_coeffs(coeffs: Sequence[float] | None) -> list[float] | None:
    """The all-layers sweep's magnitudes as floats (None stays None: the sweep uses ``coeffs``).

    Raises:
        SteerlabError: naming ``--all-layers-coeffs``, for an empty list or a magnitude that is not a
            finite number > 0 (the sign comes from the condition: subtracted from the fine-tuned model,
            added to the base).
    """
    if coeffs is None:
        return None
    out = [float(c) for c in coeffs]
    if not out or any(not (math.isfinite(c) and c > 0) for c in out):
        raise SteerlabError(
            f"--all-layers-coeffs {','.join(f'{c:g}' for c in out) or '(none)'}: expected one or more "
            "finite magnitudes > 0, e.g. 0.0625,0.125"
        )
    return out


def default_layers(n_layers: int) -> list[int]:
    """Five layers spread over 20%..80% of the depth."""
    return sorted({round(n_layers * f) for f in (0.2, 0.35, 0.5, 0.65, 0.8)})


def _row(condition: dict[str, Any], coeff: float, result: MarginResult, i: int, ref: StudyReference) -> StudyRow:
    gap = ref["finetuned"] - ref["base"]
    margin, std, fluency = result.mean[i], result.std[i], result.fluency[i]
    row = {**condition, "coeff": coeff, "margin": margin, "std": std, "fluency": fluency}
    if condition["model"] == "finetuned":
        row["undone"] = (ref["finetuned"] - margin) / gap if gap else None
        row["fluency_drop"] = ref["finetuned_fluency"] - fluency
    else:
        row["induced"] = (margin - ref["base"]) / gap if gap else None
        row["fluency_drop"] = ref["base_fluency"] - fluency
    return row  # type: ignore[return-value]


def run_study(
    base: Engine | LoadedModel,
    adapter_dir: str | Path,
    vectors: dict[str, SteeringVector],
    heldout: Sequence[Pair],
    config: StudyConfig | None = None,
    reference: str = "model_diff",
) -> StudyResult:
    """Run the study; returns a :class:`StudyResult` (``study.json`` is its ``to_dict()``).

    ``vectors`` must include ``reference`` (default ``model_diff``; e.g. ``model_diff_dpo`` for a study
    of a DPO fine-tune): the fine-tune's own direction, whose norms define the normalized scale and
    whose layer scan chooses the best layer; blends (``config.blend_alphas``) also need
    ``contrastive``. Margins are in nats/token; fractions are of the base → fine-tuned gap. See the
    module docstring for the rows. ``base`` is the engine (:mod:`steerlab.engines`) that scores and
    generates, or a loaded model (run on the ``hf`` engine); the fine-tuned model is the engine's view
    with ``adapter_dir`` applied. Raises SteerlabError for bad positions, layers or blend weights, or
    blends without a contrastive vector (before any model work).
    """
    config = config or StudyConfig()
    base = as_engine(base)
    if config.positions not in POSITIONS:
        raise SteerlabError(f"--steering-positions {config.positions!r}: expected one of {', '.join(POSITIONS)}")
    layers = config.layers or default_layers(base.n_layers)
    for layer in layers:
        base.check_layer(layer, "--layers")
    if config.blend_alphas and "contrastive" not in vectors:
        raise SteerlabError("--blend-alphas: blends need a contrastive vector among the study's vectors")
    check_alphas(config.blend_alphas)
    check_all_layers_coeffs(config.all_layers_coeffs)
    check_all_layers_models(config.all_layers_models)
    diff = vectors[reference]
    variants = {name: {"raw": v, "normalized": normalized_like(v, diff)} for name, v in vectors.items()}
    blends = (
        blend_vectors(variants["contrastive"]["normalized"], diff, config.blend_alphas) if config.blend_alphas else {}
    )
    alphas = dict(zip(blends, config.blend_alphas, strict=True))
    # One set of random directions per norm profile: a control has the norm of the vector it controls
    # (a blend has the reference's norms).
    norm_profile = {
        (name, scale): reference if scale == "normalized" else name
        for name in [*vectors, *blends]
        for scale in ("raw", "normalized")
    }
    controls = {
        name: [SteeringVector(d) for d in random_directions(vectors[name], config.controls, config.seed)]
        for name in vectors
    }
    rows: list[StudyRow] = []

    def spec(vector: SteeringVector, layers_: LayerSet, operator: str = "add") -> SteeringSpec:
        return SteeringSpec(vector, layers_, operator=operator, positions=config.positions)

    def scales(name: str) -> tuple[str, ...]:
        # the reference rescaled to its own norms is itself; a position-resolved diff (read on unrelated
        # text, another scale altogether) is compared at the model-diff vector's norms only.
        if name == reference:
            return ("raw",)
        return ("normalized",) if name.startswith("model_diff_pos") else ("raw", "normalized")

    def steered(name: str, scale: str) -> SteeringVector:
        return blends[name] if name in blends else variants[name][scale]

    with base.adapter(str(adapter_dir)) as tuned:
        models: dict[str, Engine] = {"base": base, "finetuned": tuned}

        def margins(
            model: str, conditions: list[list[SteeringSpec]], coeffs: Sequence[float], pairs: Sequence[Pair] = heldout
        ) -> list[MarginResult]:
            return condition_margins(models[model], pairs, conditions, coeffs, config.batch_size)

        ref_margins: dict[str, float] = {}
        per_pair: dict[str, torch.Tensor] = {}
        for name in ("base", "finetuned"):
            (r,) = margins(name, [[]], [0.0])
            ref_margins[name], ref_margins[f"{name}_fluency"] = r.mean[0], r.fluency[0]
            per_pair[name] = r.per_pair[0].double()
        ref: StudyReference = ref_margins  # type: ignore[assignment]
        log.info("margin base %+.4f, fine-tuned %+.4f", ref["base"], ref["finetuned"])
        prompting_doc, prompted = prompting_baseline(margins, heldout, per_pair, config)

        def condition(model: str, vector: str, scale: str, layers_: LayerSet, operator: str = "add") -> dict[str, Any]:
            sign = -1.0 if model == "finetuned" and operator == "add" else 1.0
            return {
                "stage": "",
                "model": model,
                "vector": vector,
                "scale": scale,
                "operator": operator,
                "direction": ("ablate" if operator == "ablate" else "subtract" if sign < 0 else "add"),
                "layers": layers_,
                **({"alpha": alphas[vector]} if vector in alphas else {}),
            }

        # Layer scan: every (vector, layer) subtracted at coefficient 1, as rows of one stream.
        scan_conditions = [(name, layer) for name in vectors for layer in layers]
        results = margins(
            "finetuned", [[spec(variants[n][scales(n)[0]], layer)] for n, layer in scan_conditions], [-1.0]
        )
        scan: list[StudyRow] = [
            {**_row(condition("finetuned", n, scales(n)[0], layer), 1.0, r, 0, ref), "stage": "layer_scan"}
            for (n, layer), r in zip(scan_conditions, results, strict=True)
        ]
        rows += scan
        best = choose_layer(
            [ScanPoint(int(r["layers"]), r["undone"], r["fluency_drop"]) for r in scan if r["vector"] == reference],
            config.max_fluency_drop,
        )
        log.info("best layer (%s, coefficient 1): %d", reference, best)

        real = [(name, scale) for name in vectors for scale in scales(name)] + [(b, "normalized") for b in blends]
        # A blend at alpha 0 or 1 is the very vector of a pure condition: one condition, several rows.
        distinct = list({id(steered(n, s)): steered(n, s) for n, s in real}.values())
        slot = {(n, s): [id(v) for v in distinct].index(id(steered(n, s))) for n, s in real}
        profiles = list(dict.fromkeys(norm_profile[c] for c in real))
        for layer_set_ in (best, "all"):
            for model in (m for m in STUDY_MODELS if layer_set_ != "all" or m in config.all_layers_models):
                sign = -1.0 if model == "finetuned" else 1.0
                conditions = [[spec(v, layer_set_)] for v in distinct]
                conditions += [[spec(c, layer_set_)] for prof in profiles for c in controls[prof]]
                coeffs = config.sweep_coeffs(layer_set_)
                results = margins(model, conditions, [sign * c for c in coeffs])
                ctrl = {
                    prof: results[len(distinct) + i * config.controls : len(distinct) + (i + 1) * config.controls]
                    for i, prof in enumerate(profiles)
                }
                for n, s in real:
                    r = results[slot[n, s]]
                    for i, c in enumerate(coeffs):
                        row: StudyRow = {**_row(condition(model, n, s, layer_set_), c, r, i, ref), "stage": "sweep"}
                        null = [x.per_pair[i].double() for x in ctrl[norm_profile[n, s]]]
                        row_evidence(row, r.per_pair[i].double(), null, per_pair, prompted, config)
                        rows.append(row)
            # Projection ablation of each direction and of random directions (a direction's norm is moot).
            conditions = [[spec(variants[n]["raw"], layer_set_, operator="ablate")] for n in vectors]
            conditions += [[spec(c, layer_set_, operator="ablate")] for c in controls[reference]]
            results = margins("finetuned", conditions, [1.0])
            null = [x.per_pair[0].double() for x in results[len(vectors) :]]
            for n, r in zip(vectors, results, strict=False):
                cond = condition("finetuned", n, "raw", layer_set_, "ablate")
                row = {**_row(cond, 1.0, r, 0, ref), "stage": "ablation"}
                row_evidence(row, r.per_pair[0].double(), null, per_pair, prompted, config)
                rows.append(row)

        samples = sample_generations(models, variants, heldout, best, rows, config)
    comparisons = paired_comparisons(rows, config, reference)
    return StudyResult(ref, prompting_doc, rows, best, samples, list(layers), comparisons, asdict(config))


__all__ = [
    "StudyConfig",
    "StudyResult",
    "best_coherent",
    "check_all_layers_coeffs",
    "check_all_layers_models",
    "default_layers",
    "normalized_like",
    "paired_comparisons",
    "run_study",
]
