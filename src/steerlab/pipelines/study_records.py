"""The shapes of the diff study's readings, declared once (as :mod:`steerlab.pipelines.records`): the
blends (:mod:`steerlab.pipelines.study_blends`), the fine-tuning objectives
(:mod:`steerlab.pipelines.diff_objectives`), the trait a study was built from
(:mod:`steerlab.pipelines.trait_study`) and the diff study's ``summary.json`` (:class:`DiffSummary`).

Units as in :mod:`steerlab.pipelines.records`: effects are fractions of the base → fine-tuned gap
(``undone`` on the fine-tuned model, ``induced`` on the base), margins in nats/token, cosines unitless;
layers are numbers, a set of layers a number or ``"all"``.
"""

from __future__ import annotations

from typing import TypedDict

from ..evaluate.evidence import Interval, RandomDoc
from .records import LayerSet

# --- blends ----------------------------------------------------------------------------------------


class BlendPoint(TypedDict):
    """One blend weight α under one condition: its effect with ``ci95``, the random band of the
    model-diff vector's norms, the verdict, the per-pair spread, prompting's multiple, the fluency drop
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
