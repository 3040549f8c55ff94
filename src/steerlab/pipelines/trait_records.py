"""The shapes of the multi-trait study's results (``traits.json``, ``traits.csv``), declared once like
those of :mod:`steerlab.pipelines.records`: the pipeline, the report and the CLI printers import them.

Margins and their changes in nats/token, judge scores 0-100, p-values with their sidedness
(``alternative``); layers are numbers.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from ..evaluate.evidence import Alternative, EvidenceDoc, Interval, RandomDoc


class ScoreStats(TypedDict):
    """Judged scores of one condition: mean, interval and count of trait scores, mean coherence."""

    score_mean: float | None
    score_ci95: Interval
    score_n: int
    coherence_mean: float | None


class TraitRow(EvidenceDoc):
    """One coefficient of a trait: :meth:`~steerlab.evaluate.evidence.Evidence.to_dict` of the
    change in margin from unsteered (``effect``, nats/token; the fields of
    :class:`~steerlab.evaluate.evidence.EvidenceDoc`), plus ``coeff``, ``fluency`` and
    ``fluency_drop``, and when judged ``score_mean``/``score_ci95``/``score_n``/``coherence_mean``
    and ``score_random`` (controls' band of mean scores with p)."""

    coeff: float
    fluency: float
    fluency_drop: float
    score_mean: NotRequired[float | None]
    score_ci95: NotRequired[Interval]
    score_n: NotRequired[int]
    coherence_mean: NotRequired[float | None]
    score_random: NotRequired[RandomDoc | None]
    score_verdict: NotRequired[str | None]


class TraitScanRow(TypedDict):
    """One candidate layer of a trait's layer scan (margin change at the scan coefficient)."""

    layer: int
    margin: float
    effect: float
    fluency_drop: float
    coherent: bool


class TraitEntry(TypedDict):
    """A finished trait of ``traits.json`` (``status`` ok): extraction counts, ``best_layer`` with
    its ``layer_scan``, the ``unsteered`` and ``prompting`` margins, one :class:`TraitRow` per
    coefficient, judged ``scores`` (or why not) and the ``reading``."""

    status: Literal["ok"]
    effective_pairs: int
    pairs_averaged: int
    filter: str
    counts: dict[str, Any]
    answer_counts: dict[str, Any]
    held_out: bool
    vector: str
    reduction: str
    n_eval_pairs: int
    best_layer: int
    layer_scan: dict[str, Any]
    controls: dict[str, Any]
    unsteered: dict[str, Any]
    prompting: dict[str, Any]
    rows: list[TraitRow]
    scores: dict[str, Any] | None
    reading: NotRequired[str]


class TraitFailure(TypedDict):
    """A trait that failed (``status`` failed) and why."""

    status: Literal["failed"]
    error: str
    counts: NotRequired[dict[str, Any]]
    answer_counts: NotRequired[dict[str, Any]]


class TraitTableRow(TypedDict, total=False):
    """One row of ``traits.csv``: the reading's coefficient of a trait (or its error)."""

    trait: str
    status: str
    error: str
    filter: str
    effective_pairs: int
    pairs_averaged: int
    eval_pairs: int
    best_layer: int
    unsteered: float
    coeff: float | None
    margin: float | None
    effect: float | None
    effect_lo: float | None
    effect_hi: float | None
    random_lo: float | None
    random_hi: float | None
    p: float | None
    alternative: Alternative | None
    steerable_fraction: float | None
    anti_steerable_fraction: float | None
    vs_prompting: float | None
    vs_prompting_lo: float | None
    vs_prompting_hi: float | None
    score_mean: float | None


class PromptedEffect(TypedDict):
    """A persona system prompt's effect on the eval pairs: the prompted margin with its interval and
    its change from unsteered (``effect``) with a paired interval (nats/token)."""

    margin: float
    margin_ci95: Interval
    effect: float
    ci95: Interval


class TraitReference(TypedDict):
    """The unsteered margins (``{margin, margin_ci95, fluency, per_pair}``) and the prompting
    baseline (``{"systems", "pos": PromptedEffect, "neg": PromptedEffect}``) of a trait's eval pairs."""

    unsteered: dict[str, Any]
    prompting: dict[str, Any]


class TraitScores(TypedDict):
    """Judged scores of a trait's steered answers: the unsteered and prompted conditions'
    :class:`ScoreStats`, and per coefficient the real condition's with the controls' evidence."""

    unsteered: ScoreStats
    prompting: dict[str, ScoreStats]
    rows: list[dict[str, Any]]
