"""The diff study's ``summary.json`` (:class:`~steerlab.pipelines.study_records.DiffSummary`): headline
numbers of ``directions.json`` and ``study.json`` at the best layer, the blends
(:mod:`steerlab.pipelines.study_blends`), the fine-tuning objectives
(:mod:`steerlab.pipelines.diff_objectives`) and a plain-language reading whose every sentence comes
from the evidence (intervals, random bands, verdicts). Pure: nothing is recomputed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..evaluate.controls import cosine_verdict
from ..model.loading import LoadedModel
from ..version import __version__
from .diff_objectives import objectives_summary, steering_rows
from .records import DirectionsDoc
from .study import StudyResult
from .study_blends import blend_summary
from .study_records import DiffSummary


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _ci_text(ci: list[float | None] | None) -> str:
    return "" if not ci or None in ci else f" (95% CI {_pct(ci[0])} to {_pct(ci[1])})"


def diff_summary(
    lm: LoadedModel,
    comparison: DirectionsDoc,
    studies: Mapping[str, StudyResult],
    config: Any,
    timings: Mapping[str, float],
    training: Mapping[str, dict[str, Any]],
) -> DiffSummary:
    """The summary of a diff study (``config``: its :class:`~steerlab.pipelines.diff_study.DiffStudyConfig`;
    ``studies``: each objective's study, ``sft`` first; ``training``: each fine-tune's last epoch)."""
    study = studies["sft"]
    best, ref = study.best_layer, study.reference
    band = comparison["baseline"]["band"]
    ci = comparison.get("cosine_ci95", {})
    directions = list(comparison["names"])
    steered = [
        n for n in dict.fromkeys(r["vector"] for r in study.rows if r["stage"] == "sweep" and r["scale"] == "raw")
    ]
    best_steering = {
        f"{vector}|{model}": row for vector in steered for model, row in steering_rows(study, vector, best).items()
    }
    summary: dict[str, Any] = {
        "steerlab_version": __version__,
        "model": lm.name,
        "n_layers": lm.n_layers,
        "d_model": lm.d_model,
        "margins": {"base": ref["base"], "finetuned": ref["finetuned"], "gap": study.gap},
        "best_layer": best,
        "directions": directions,
        "cosine_at_best_layer": {k: v[best] for k, v in comparison["cosine"].items()},
        "cosine_ci95_at_best_layer": {k: v[best] for k, v in ci.items()},
        "random_band": band,
        "reliability_at_best_layer": {k: v["mean"][best] for k, v in comparison["reliability"].items()},
        "best_steering": best_steering,
        "prompting": study.prompting,
        "blends": blend_summary(study),
        "objectives": objectives_summary(comparison, studies, config.beta, training),
        "trait": None,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    summary["reading"] = reading(summary)  # type: ignore[arg-type]
    return summary  # type: ignore[return-value]


def reading(s: DiffSummary) -> list[str]:
    """Plain-language lines: the gap, each pair of directions at the best layer with its verdict, the
    best coherent steering of each direction, then the blends', objectives' and trait's readings."""
    m, best, band = s["margins"], s["best_layer"], s["random_band"]
    lines = [
        f"Held-out behaviour margin (nats/token, behaviour minus other answer): base {m['base']:+.3f}, "
        f"fine-tuned {m['finetuned']:+.3f} (gap {m['gap']:+.3f}); best layer {best}."
    ]
    for key, cos in s["cosine_at_best_layer"].items():
        ci = s["cosine_ci95_at_best_layer"].get(key)
        ci_text = "" if not ci or None in ci else f" (95% CI {ci[0]:+.3f} to {ci[1]:+.3f})"
        lines.append(
            f"cosine({key.replace('|', ', ')}) at layer {best}: {cos:+.3f}{ci_text}, "
            f"{cosine_verdict(cos, ci, band)} (±{band:.3f})."
        )
    prompting = s.get("prompting")
    if prompting:
        ask, induce = prompting["finetuned_asked_opposite"], prompting["base_asked_behaviour"]
        lines.append(
            f"Prompting baseline: asking the fine-tuned model for the opposite undoes {_pct(ask['effect'])} of the gap"
            f"{_ci_text(ask.get('ci95'))}; asking the base model for the behaviour induces {_pct(induce['effect'])}"
            f"{_ci_text(induce.get('ci95'))}."
        )
    for key, row in s["best_steering"].items():
        if not row:
            continue
        vector, model = key.split("|")
        effect = "undoes" if model == "finetuned" else "induces"
        where = "subtracted from the fine-tuned model" if model == "finetuned" else "added to the base"
        lines.append(
            f"{vector} {where} at layer {best}, coefficient {row['coeff']:g}: {effect} "
            f"{_pct(row.get('undone' if model == 'finetuned' else 'induced'))} of the gap{_ci_text(row.get('ci95'))}; "
            f"{row.get('verdict') or 'no random controls'}."
        )
    if s.get("blends"):
        lines.append(s["blends"]["reading"])  # type: ignore[index]
    if s.get("objectives"):
        lines.extend(s["objectives"]["reading"])  # type: ignore[index]
    if s.get("trait"):
        lines.extend(s["trait"]["reading"])  # type: ignore[index]
    return lines
