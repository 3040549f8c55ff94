"""The shapes of the diff study's readings, declared once (as :mod:`steerlab.pipelines.records`): the
blends (:mod:`steerlab.pipelines.study_blends`), the fine-tuning objectives
(:mod:`steerlab.pipelines.diff_objectives`), the trait a study was built from
(:mod:`steerlab.pipelines.trait_study`) and the diff study's ``summary.json`` (:class:`DiffSummary`).

Units as in :mod:`steerlab.pipelines.records`: effects are fractions of the base → fine-tuned gap
(``undone`` on the fine-tuned model, ``induced`` on the base), margins in nats/token, cosines unitless;
layers are numbers, a set of layers a number or ``"all"``.
"""

from __future__ import annotations

from typing import Any, TypedDict

from ..evaluate.evidence import Interval, RandomDoc
from .records import LayerSet, StudyPrompting, StudyRow

# --- blends ----------------------------------------------------------------------------------------


class BlendPoint(TypedDict):
    """One blend weight α under one condition: its effect with ``ci95`` (the margin change's interval
    over the pairs as a fraction of the measured gap,
    :func:`steerlab.pipelines.study_blends.effect_interval`), the random band of the model-diff
    vector's norms, the verdict, the per-pair spread, prompting's multiple, the fluency drop
    (nats/token), ``coherent`` (drop within the limit) and ``beats_both`` (0 < α < 1, coherent, and
    the effect above both pure vectors' intervals)."""

    alpha: float
    effect: float | None
    ci95: Interval
    random: RandomDoc | None
    verdict: str | None
    steerable_fraction: float | None
    vs_prompting: float | None
    fluency_drop: float
    coherent: bool
    beats_both: bool


class BlendPure(TypedDict):
    """A pure vector's effect and interval under a blend cell's condition."""

    effect: float | None
    ci95: Interval


class BlendCell(TypedDict):
    """Every blend weight under one condition (``model``, ``layers``, ``coeff``); ``key`` names the
    effect (``undone`` / ``induced``); ``pure``: the model-diff vector (α = 0) and the contrastive
    vector at the model-diff norms (α = 1)."""

    model: str
    key: str
    layers: LayerSet
    coeff: float
    pure: dict[str, BlendPure]
    points: list[BlendPoint]


class BlendWinner(TypedDict):
    """A blend that beats both pure vectors beyond their intervals, and the intervals' upper ends."""

    model: str
    layers: LayerSet
    coeff: float
    alpha: float
    effect: float | None
    ci95: Interval
    verdict: str | None
    pure_upper: dict[str, float | None]


class BlendsDoc(TypedDict):
    """``blends`` of a summary: the weights, the study's ``reference`` (model-diff vector), best layer
    and coherence limit, the cells, the ``winners`` and a one-paragraph ``reading``."""

    alphas: list[float]
    reference: str
    best_layer: int
    max_fluency_drop: float
    cells: list[BlendCell]
    winners: list[BlendWinner]
    reading: str


# --- fine-tuning objectives ------------------------------------------------------------------------


class ObjectiveDoc(TypedDict):
    """One fine-tune of a study with several objectives: its model-diff ``vector`` and ``adapter``
    directory, held-out ``margins`` (base, finetuned, gap), its study's ``best_layer``, the last
    epoch's ``training`` record, the best coherent ``steering`` rows of its model-diff vector and of
    the ``contrastive`` vector on it (``finetuned``: subtracted, ``base``: added) and its
    ``prompting`` baseline."""

    vector: str
    adapter: str
    margins: dict[str, float]
    best_layer: int
    training: dict[str, Any]
    steering: dict[str, StudyRow | None]
    contrastive: dict[str, StudyRow | None]
    prompting: StudyPrompting | None


class ObjectivesDoc(TypedDict):
    """``objectives`` of a diff study's summary: the objectives (``sft`` first) and DPO's ``beta``, the
    model-diff vector of each, the random band, per pair of the directions (``"a|b"``) the cosine per
    layer with its resampling interval per layer, each direction's split-half reliability per layer,
    the same ``at_best_layer`` (the SFT study's), each objective's :class:`ObjectiveDoc` and a
    ``reading``."""

    objectives: list[str]
    beta: float
    vectors: dict[str, str]
    random_band: float
    cosine: dict[str, list[float]]
    cosine_ci95: dict[str, list[list[float]] | None]
    reliability: dict[str, list[float]]
    at_best_layer: dict[str, Any]
    per_objective: dict[str, ObjectiveDoc]
    reading: list[str]


# --- a trait's study (diff study -t) ---------------------------------------------------------------


class TraitStudyDoc(TypedDict):
    """``trait`` of a diff study's summary when it was built from a trait (``diff study -t``): the
    trait's ``name`` and ``source``, the ``judge``, the pair ``filter`` (effective | none) with the
    ``counts`` and the judge's ``answer_counts``, the train / held-out ``split`` (by question, seeded),
    the ``prompting`` instructions, the persona vector's ``persona`` reading (cosines with the other
    directions at the best layer, intervals, reliability, best coherent steering rows) and a
    ``reading``."""

    name: str
    source: str
    judge: str
    filter: str
    counts: dict[str, Any]
    answer_counts: dict[str, Any]
    split: dict[str, Any]
    prompting: dict[str, Any]
    persona: dict[str, Any]
    reading: list[str]


# --- the diff study's summary.json -----------------------------------------------------------------


class DiffSummary(TypedDict):
    """``summary.json`` of a diff study: headline numbers (margins, best layer, every direction's
    cosine with every other at the best layer with its interval, the random band, reliabilities, the
    best coherent steering per direction and model, the prompting baseline), ``blends``,
    ``objectives``, ``trait`` (None when not run), per-stage ``timings`` and a ``reading``. Keys are
    only ever added."""

    steerlab_version: str
    model: str
    n_layers: int
    d_model: int
    margins: dict[str, float]
    best_layer: int
    directions: list[str]
    cosine_at_best_layer: dict[str, float]
    cosine_ci95_at_best_layer: dict[str, Interval]
    random_band: float
    reliability_at_best_layer: dict[str, float]
    best_steering: dict[str, StudyRow | None]
    prompting: StudyPrompting | None
    blends: BlendsDoc | None
    objectives: ObjectivesDoc | None
    trait: TraitStudyDoc | None
    timings: dict[str, float]
    reading: list[str]
