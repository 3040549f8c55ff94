"""What a sweep's cells show and what they cost (:mod:`steerlab.pipelines.sweep`).

Random directions cost what the rows they steer cost. Where that is little they run at every cell;
elsewhere, by default (``controls_at="reported"``), at each layer's *reported cell* — the largest
coefficient (positive ones first) that keeps the model coherent, whose effect the sweep reports:

- margins steered at ``response`` positions share each prompt's pass (teacher-forced rows from the
  last prompt token on), so K controls are K short rows per pair: every cell;
- margins steered at ``all`` or ``prompt`` positions run whole sequences, K times the margin cost:
  the reported cell by fluency (:func:`margin_reported_coeff`: drop <= ``max_fluency_drop``
  nats/token);
- generated text costs K generations per question (and 2K judge calls): with a judge, the reported
  cell by judged coherence (:func:`reported_coeff`); without one nothing reads them, so none.

``controls_at="all"`` runs them at every cell.

- :func:`margin_rows` — the behaviour margin at one layer for every coefficient, with
  :func:`steerlab.evaluate.evidence.steering_evidence` of its change from unsteered against the
  random directions where they ran;
- :func:`reported_coeff` / :func:`margin_reported_coeff` — a layer's reported cell;
- :func:`score_table` — judged trait and coherence per cell, with the controls' evidence where they
  ran;
- :func:`sweep_plan` — how many generations and judge calls a sweep will make, before it starts.

Sidedness: a positive coefficient is meant to raise the margin or trait score and a negative one to
lower it, so p is one-sided that way (two-sided at coefficient 0); see :mod:`steerlab.evaluate.evidence`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..evaluate.evidence import Evidence, steering_evidence
from ..evaluate.margin import MarginResult
from .records import SweepMarginRow, SweepScoreRow

CONTROLS_AT = ("reported", "all")


def _sign(c: float) -> float:
    return 1.0 if c > 0 else -1.0 if c < 0 else 0.0


RANDOM_COLUMNS = ("random_mean", "random_lo", "random_hi", "random_p", "random_k", "alternative", "verdict")


def _random_columns(ev: Evidence, ran: bool = True) -> dict[str, Any]:
    """A record's controls as the flat CSV columns of a sweep table (None where none ran at the cell)."""
    if ev.random is None:
        return {**dict.fromkeys(RANDOM_COLUMNS), "alternative": ev.alternative, "verdict": ev.verdict if ran else None}
    r = ev.random
    values = (r["mean"], r["lo"], r["hi"], r["p"], r["k"], r["alternative"], ev.verdict)
    return dict(zip(RANDOM_COLUMNS, values, strict=True))


def margins_everywhere(config: Any) -> bool:
    """Whether a sweep's margins get their random directions at every cell: with ``controls_at="all"``,
    or when they are cheap (steering at ``response`` positions: prompts shared)."""
    return config.controls_at == "all" or config.positions == "response"


def margin_reported_coeff(
    coeffs: Sequence[float], fluency: Sequence[float], unsteered_fluency: float, max_drop: float
) -> float | None:
    """The reported cell of a layer's margins: the largest non-zero coefficient, positive ones first,
    whose fluency (mean log-likelihood of both answers, nats/token) drops by at most ``max_drop``
    from unsteered; when none does, the one that drops least. None without a non-zero coefficient."""
    drops = {c: unsteered_fluency - f for c, f in zip(coeffs, fluency, strict=True) if c != 0}
    if not drops:
        return None
    coherent = [c for c, d in drops.items() if d <= max_drop]
    if coherent:
        return max(coherent, key=lambda c: (c > 0, abs(c)))
    return min(drops, key=lambda c: (drops[c], not c > 0, -abs(c)))


def margin_rows(
    layer: int,
    coeffs: Sequence[float],
    unsteered: MarginResult,
    real: MarginResult,
    controls: Mapping[float, Sequence[torch.Tensor]],
    reported: float | None,
    n_resamples: int,
    seed: int,
) -> list[SweepMarginRow]:
    """One ``margins.csv`` row per coefficient at ``layer``: the margin, its std over pairs, its
    fluency and fluency drop from ``unsteered`` (nats/token), whether it is the ``reported`` cell, and
    the evidence of its change from the unsteered margins against ``controls[c]`` (each random
    direction's per-pair margins at coefficient c, where they ran): ``delta``,
    ``delta_ci95_lo``/``_hi``, ``random_*``, ``alternative``, ``verdict`` (None where no control ran,
    so everywhere with ``controls=0``), the steerable fractions (None at c = 0). Every row has every
    column."""
    rows: list[SweepMarginRow] = []
    base = unsteered.per_pair[0]
    for i, c in enumerate(coeffs):
        ev = steering_evidence(
            real.per_pair[i],
            base,
            list(controls.get(c, ())),
            intended=_sign(c),
            n_resamples=n_resamples,
            seed=seed,
        )
        ci = ev.ci95 or [None, None]
        row: dict[str, Any] = {
            "layer": layer,
            "coeff": c,
            "margin": real.mean[i],
            "std": real.std[i],
            "n_pairs": ev.n,
            "delta": ev.effect,
            "delta_ci95_lo": ci[0],
            "delta_ci95_hi": ci[1],
            "steerable_fraction": ev.steerable_fraction,
            "anti_steerable_fraction": ev.anti_steerable_fraction,
            "fluency": real.fluency[i],
            "fluency_drop": unsteered.fluency[0] - real.fluency[i],
            "reported": c == reported,
            **_random_columns(ev, ran=c in controls),
        }
        rows.append(row)  # type: ignore[arg-type]
    return rows


def _means(rows: Sequence[dict[str, Any]], key: str) -> dict[float, list[float]]:
    """Scores ``key`` (None left out) of ``rows`` by coefficient."""
    out: dict[float, list[float]] = {}
    for r in rows:
        if r.get(key) is not None:
            out.setdefault(r["coeff"], []).append(r[key])
    return out


def reported_coeff(rows: Sequence[dict[str, Any]], min_coherence: float) -> float | None:
    """The coefficient whose judged effect a layer reports, from its judged real generations
    ``rows`` (``coeff``, ``coherence``): the largest non-zero coefficient — positive ones first — whose
    mean judged coherence (0-100) is at least ``min_coherence``; when none is, the most coherent
    non-zero one. None when no non-zero coefficient has a coherence score."""
    coherence = {c: sum(v) / len(v) for c, v in _means(rows, "coherence").items() if c != 0}
    if not coherence:
        return None
    coherent = [c for c, m in coherence.items() if m >= min_coherence]
    if coherent:
        return max(coherent, key=lambda c: (c > 0, abs(c)))
    return max(coherence, key=lambda c: (coherence[c], c > 0, abs(c)))


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def score_table(
    rows: list[dict[str, Any]], n_bootstrap: int = 1000, seed: int = 0, min_coherence: float = 50.0
) -> list[SweepScoreRow]:
    """Mean, std and n of trait and coherence scores (0-100) per (layer, coeff) of judged generation
    rows (real ones and, with ``control`` set, the random directions'), with a bootstrap 95% interval
    of the trait mean over questions, whether the cell is its layer's :func:`reported_coeff`, and where
    random directions were judged at the cell the evidence of the trait mean among theirs
    (``random_*``, ``alternative``, ``verdict``: :func:`~steerlab.evaluate.evidence.steering_evidence`
    on scores as levels). None scores are left out."""
    groups: dict[tuple[int, float], list[dict[str, Any]]] = {}
    null: dict[tuple[int, float], dict[int, list[float]]] = {}
    for r in rows:
        if r.get("control") is not None:
            if r.get("trait_score") is not None:
                null.setdefault((r["layer"], r["coeff"]), {}).setdefault(r["control"], []).append(r["trait_score"])
            continue
        groups.setdefault((r["layer"], r["coeff"]), []).append(r)
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for (layer, _), items in groups.items():
        by_layer.setdefault(layer, []).extend(items)
    reported = {layer: reported_coeff(items, min_coherence) for layer, items in by_layer.items()}
    table: list[SweepScoreRow] = []
    for (layer, coeff), items in sorted(groups.items()):
        trait = [r["trait_score"] for r in items if r.get("trait_score") is not None]
        coherence = [r["coherence"] for r in items if r.get("coherence") is not None]
        t_mean, t_std = _stats(trait)
        c_mean, c_std = _stats(coherence)
        row: dict[str, Any] = {
            "layer": layer,
            "coeff": coeff,
            "trait_mean": t_mean,
            "trait_std": t_std,
            "trait_n": len(trait),
            "coherence_mean": c_mean,
            "coherence_std": c_std,
            "coherence_n": len(coherence),
            "n": len(items),
            "reported": reported[layer] == coeff,
        }
        controls = [v for v in null.get((layer, coeff), {}).values() if v]
        row["trait_ci95_lo"] = row["trait_ci95_hi"] = None
        row.update(dict.fromkeys(RANDOM_COLUMNS))
        if trait:
            ev = steering_evidence(trait, None, controls, intended=_sign(coeff), n_resamples=n_bootstrap, seed=seed)
            if ev.ci95 is not None:
                row["trait_ci95_lo"], row["trait_ci95_hi"] = ev.ci95
            row.update(_random_columns(ev, ran=bool(controls)))
        table.append(row)  # type: ignore[arg-type]
    return table


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will run: ``layers`` x ``coeffs`` x ``questions`` generations, plus the random
    directions' (``controls`` of them: at every cell with ``controls_at="all"``, else at one reported
    cell per layer when judged, none without a judge), each generation judged twice (trait and
    coherence) when ``judged``; with ``pairs``, the margins' teacher-forced sequences (two per pair:
    both answers), the random directions' at every cell when ``margins_everywhere`` else at one
    reported cell per layer."""

    layers: int
    coeffs: int
    questions: int
    controls: int
    controls_at: str
    judged: bool
    pairs: int = 0
    margins_everywhere: bool = True

    @property
    def generations(self) -> int:
        """Steered generations of the vector itself."""
        return self.layers * self.coeffs * self.questions

    @property
    def control_generations(self) -> int:
        """Generations steered by random directions (at most: a layer whose judge gave no coherence
        score gets none)."""
        if self.controls_at == "all":
            return self.controls * self.generations
        return self.controls * self.layers * self.questions if self.judged else 0

    @property
    def judge_calls(self) -> int:
        """Judge requests: a trait score and a coherence score per generation."""
        return 2 * (self.generations + self.control_generations) if self.judged else 0

    @property
    def margin_sequences(self) -> int:
        """Teacher-forced sequences of the margins: unsteered once, the vector at every cell, the
        random directions where they run."""
        if not self.pairs:
            return 0
        cells = self.layers * (self.coeffs if self.margins_everywhere else 1)
        return 2 * self.pairs * (1 + self.layers * self.coeffs + self.controls * cells)

    def describe(self) -> str:
        """One line for stderr before the run starts."""
        grid = f"{self.layers} layers x {self.coeffs} coefficients x {self.questions} questions"
        text = f"sweep: {self.generations} generations ({grid})"
        if self.control_generations:
            where = "at every cell" if self.controls_at == "all" else "at each layer's reported cell"
            text += f" + up to {self.control_generations} for {self.controls} random directions {where}"
        if self.judged:
            text += f"; up to {self.judge_calls} judge calls (trait and coherence per generation)"
        if self.pairs:
            where = "at every cell" if self.margins_everywhere else "at each layer's reported cell"
            text += f"; margins: {self.margin_sequences} teacher-forced sequences ({self.pairs} pairs"
            text += f", {self.controls} random directions {where})" if self.controls else ")"
        return text


def sweep_plan(config: Any, n_layers: int, n_questions: int, judged: bool, n_pairs: int = 0) -> SweepPlan:
    """The :class:`SweepPlan` of a :class:`~steerlab.pipelines.sweep.SweepConfig` over ``n_layers``
    resolved layers, ``n_questions`` questions and ``n_pairs`` pairs (``judged``: a judge and a trait
    are given)."""
    coeffs = config.coeffs
    n_coeffs = max((len(c) for c in coeffs.values()), default=0) if isinstance(coeffs, dict) else len(coeffs)
    return SweepPlan(
        n_layers,
        n_coeffs,  # per-layer grids (--coeff auto): the longest
        n_questions,
        config.controls,
        config.controls_at,
        judged,
        n_pairs,
        margins_everywhere(config),
    )
