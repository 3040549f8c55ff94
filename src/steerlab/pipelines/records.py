"""The shapes of the results every pipeline writes, declared once (docs/design.md §8): producers
(pipelines), readers (report, CLI printers) and tests import these.

The documents stay plain JSON (dicts and lists), so every file reads anywhere; each key is declared
here as a :class:`~typing.TypedDict`. Units: margins and their changes in nats/token, judge scores
0-100, fractions unitless (1 = the whole gap), p-values with their sidedness (``alternative``, chosen
in :mod:`steerlab.evaluate.evidence`). Layers are numbers (layer L = the output of decoder block L);
a set of layers is a number or ``"all"``.

Documents: ``study.json`` (:class:`StudyDoc`), ``directions.json`` of a diff study
(:class:`DirectionsDoc`; ``steerlab compare`` writes its own ``compare.json``), ``margins.csv`` and
``scores.csv`` and ``generations.jsonl`` of a sweep (:class:`SweepMarginRow`, :class:`SweepScoreRow`,
:class:`SweepGeneration`), ``positions.json`` (:class:`PositionsDoc`), ``monitor.json``
(:class:`MonitorDoc`) and a demo's ``summary.json`` (:class:`DemoSummary`); the multi-trait study's
``traits.json`` and ``traits.csv`` in :mod:`steerlab.pipelines.trait_records`; the diff study's blends,
objectives, trait and ``summary.json`` in :mod:`steerlab.pipelines.study_records`.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from ..evaluate.evidence import Alternative, Interval, RandomDoc

LayerSet = int | Literal["all"]


def layer_set(value: Any) -> LayerSet:
    """A set of layers as recorded: ``"all"`` or a layer number. Reads files written before layers
    stayed numbers (``"24"`` -> 24)."""
    if value == "all":
        return "all"
    return int(value)


# --- the steering study (study.json) ---------------------------------------------------------------


class StudyRow(TypedDict):
    """One condition x coefficient of the steering study.

    ``stage``: ``layer_scan`` | ``sweep`` | ``ablation``; ``model``: ``finetuned`` (steered towards
    the base: *undone*) or ``base`` (towards the fine-tuned model: *induced*); ``direction``: add |
    subtract | ablate; ``margin``/``std``/``fluency`` and ``fluency_drop`` in nats/token; ``undone``
    or ``induced``: the fraction of the base → fine-tuned gap. Sweep and ablation rows add the
    evidence (:meth:`steerlab.evaluate.evidence.Evidence.gap_fraction`): ``effect`` (= the
    fraction) with ``ci95``, ``delta`` (margin change, nats/token) with ``delta_ci95``,
    ``margin_ci95``, ``per_pair``, the steerable fractions, ``random`` (controls' fractions),
    ``alternative``, ``verdict``, ``vs_prompting`` (with its interval). A blend's rows
    (:mod:`steerlab.pipelines.study_vectors`) have ``vector`` ``blend_<alpha>`` and ``alpha``, the
    weight of the contrastive direction.
    """

    stage: str
    model: str
    vector: str
    scale: str
    operator: str
    direction: str
    layers: LayerSet
    coeff: float
    margin: float
    std: float
    fluency: float
    fluency_drop: float
    undone: NotRequired[float | None]
    induced: NotRequired[float | None]
    effect: NotRequired[float | None]
    ci95: NotRequired[Interval]
    delta: NotRequired[float]
    delta_ci95: NotRequired[Interval]
    margin_ci95: NotRequired[Interval]
    per_pair: NotRequired[list[float]]
    steerable_fraction: NotRequired[float | None]
    anti_steerable_fraction: NotRequired[float | None]
    random: NotRequired[RandomDoc | None]
    random_effects: NotRequired[list[float]]
    alternative: NotRequired[Alternative]
    verdict: NotRequired[str | None]
    vs_prompting: NotRequired[float | None]
    vs_prompting_ci95: NotRequired[Interval]
    alpha: NotRequired[float]


class StudyReference(TypedDict):
    """Unsteered margins and fluencies (nats/token) of the base and the fine-tuned model."""

    base: float
    base_fluency: float
    finetuned: float
    finetuned_fluency: float


class PromptedMargins(TypedDict):
    """A model asked in its system prompt: its fraction of the gap (``effect``) with ``ci95``, its
    margin with ``margin_ci95`` and the per-pair spread."""

    effect: float | None
    ci95: Interval
    margin: float
    margin_ci95: Interval
    steerable_fraction: float | None
    anti_steerable_fraction: float | None


class StudyPrompting(TypedDict):
    """The prompting baseline of the study: the system prompts and both models asked."""

    behaviour_system: str
    opposite_system: str
    base_asked_behaviour: PromptedMargins
    finetuned_asked_opposite: PromptedMargins


class PairedComparison(TypedDict):
    """Model-diff vs contrastive (at the model-diff vector's norms) on the same pairs: the margin
    difference a - b (nats/token) with a paired bootstrap 95% interval."""

    model: str
    layers: LayerSet
    coeff: float
    a: str
    b: str
    margin_difference: float
    ci95: list[float]
    distinguishable: bool


class StudySample(TypedDict):
    """One greedy answer of the study's samples (``vector`` None: unsteered)."""

    model: str
    vector: str | None
    layer: int | None
    coeff: float
    question: str
    text: str


class StudyDoc(TypedDict):
    """``study.json``: :meth:`steerlab.pipelines.study.StudyResult.to_dict`."""

    reference: StudyReference
    prompting: StudyPrompting | None
    rows: list[StudyRow]
    best_layer: int
    samples: list[StudySample]
    layers_scanned: list[int]
    comparisons: list[PairedComparison]
    config: dict[str, Any]


class DirectionsDoc(TypedDict):
    """``directions.json`` of a diff study: :meth:`steerlab.evaluate.geometry.Comparison.to_dict`
    of the contrastive and model-diff vectors (``cosine``, ``norms``, ``distance``, ``baseline``...)
    plus split-half ``reliability`` per vector and ``cosine_ci95`` (``{"contrastive|model_diff":
    [[lo, hi]] * n_layers}``)."""

    names: list[str]
    n_layers: int
    d_model: int
    cosine: dict[str, list[float]]
    baseline: dict[str, Any]
    reliability: dict[str, dict[str, Any]]
    cosine_ci95: dict[str, list[list[float]]]


class PositionDoc(TypedDict):
    """One token position of the position-resolved model diff: its cosine with the contrastive
    vector per layer, the resampling interval per layer and the vector's norm per layer."""

    cosine_with_contrastive: list[float]
    ci95: list[list[float]]
    norms: list[float]


class PositionsDoc(TypedDict):
    """``positions.json``: the fine-tuned − base difference at tokens 0..k-1 of ``n_prompts``
    unrelated prompts (``positions`` keyed by the position as a string, as JSON keys are), the random
    band of |cos| and the ``best_position`` the study also steers with."""

    k: int
    n_prompts: int
    inputs: str
    random_band: float
    positions: dict[str, PositionDoc]
    best_position: int


class MonitorDoc(TypedDict):
    """``monitor.json``: projections (activation units) of answers per group, with a summary."""

    title: str
    layer: int
    groups: dict[str, list[float]]
    summary: list[dict[str, Any]]


# --- sweeps (generations.jsonl, margins.csv, scores.csv) -------------------------------------------


class SweepGeneration(TypedDict):
    """One row of ``generations.jsonl`` / ``control_generations.jsonl``: the cell (``layer``,
    ``coeff``, ``question_index``), the text, and ``control`` (None for the vector itself, else the
    random direction's index); the generation settings; judged ``trait_score`` / ``coherence``."""

    layer: int
    coeff: float
    question_index: int
    question: str
    text: str
    n_new_tokens: int
    finish_reason: str
    control: int | None
    trait_score: NotRequired[float | None]
    coherence: NotRequired[float | None]


class SweepMarginRow(TypedDict):
    """One (layer, coefficient) of ``margins.csv``: the margin, its change from unsteered
    (``delta``, with ``delta_ci95_lo``/``_hi``), the random controls' band of changes and p
    (``random_*``, ``alternative``), the verdict and the steerable fractions (c != 0)."""

    layer: int
    coeff: float
    margin: float
    std: float
    n_pairs: int
    delta: float
    delta_ci95_lo: float | None
    delta_ci95_hi: float | None
    steerable_fraction: NotRequired[float]
    anti_steerable_fraction: NotRequired[float]
    random_mean: NotRequired[float]
    random_lo: NotRequired[float]
    random_hi: NotRequired[float]
    random_p: NotRequired[float]
    random_k: NotRequired[int]
    alternative: NotRequired[Alternative]
    verdict: NotRequired[str]


class SweepScoreRow(TypedDict):
    """One (layer, coefficient) of ``scores.csv``: judged trait and coherence (0-100: mean, std, n),
    the trait mean's interval, and — where random directions were generated and judged — their band
    of trait means and p (``random_*``, ``alternative``, ``verdict``). ``reported``: the cell whose
    effect the sweep reports for its layer."""

    layer: int
    coeff: float
    trait_mean: float | None
    trait_std: float | None
    trait_n: int
    coherence_mean: float | None
    coherence_std: float | None
    coherence_n: int
    n: int
    reported: bool
    trait_ci95_lo: NotRequired[float]
    trait_ci95_hi: NotRequired[float]
    random_mean: NotRequired[float]
    random_lo: NotRequired[float]
    random_hi: NotRequired[float]
    random_p: NotRequired[float]
    random_k: NotRequired[int]
    alternative: NotRequired[Alternative]
    verdict: NotRequired[str]


# --- the demo (summary.json) -----------------------------------------------------------------------


class DemoSummary(TypedDict):
    """``summary.json`` of a demo run: headline numbers (see README "What the demo does"). Keys are
    only ever added."""

    steerlab_version: str
    model: str
    judge: str
    size: str
    n_layers: int
    d_model: int
    margins: dict[str, float]
    cosine_per_layer: list[float]
    best_layer: int
    cosine_at_best_layer: float
    random_baseline: dict[str, Any]
    reliability_at_best_layer: dict[str, float]
    cosine_ci95_at_best_layer: list[float]
    best_steering: dict[str, StudyRow | None]
    steering_positions: str
    controls: int
    prompting: StudyPrompting | None
    model_diff_vs_contrastive: list[PairedComparison]
    model_diff_positions: dict[str, Any] | None  # positions.json read at the best layer
    monitor: list[dict[str, Any]]
    traits: dict[str, Any]
    traits_failed: dict[str, str]
    traits_judge: str
    traits_readings: list[str]
    timings: dict[str, float]
    engine: str
    reading: list[str]
    blends: NotRequired[dict[str, Any] | None]  # steerlab.pipelines.study_records.BlendsDoc
    objectives: NotRequired[dict[str, Any] | None]  # steerlab.pipelines.study_records.ObjectivesDoc
    calibration: NotRequired[dict[str, Any]]  # per vector: recommended layer and range, reading (demo_calibration)
