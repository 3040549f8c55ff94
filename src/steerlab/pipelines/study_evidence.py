"""The evidence of the steering study's rows (:mod:`steerlab.pipelines.study`): each condition's margin
change read as a fraction of the base → fine-tuned gap (:func:`row_evidence`), the prompting baseline
(:func:`prompting_baseline`) and model-diff vs contrastive on the same pairs (:func:`paired_comparisons`).
All go through :func:`steerlab.evaluate.evidence.steering_evidence`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..evaluate.evidence import steering_evidence
from ..evaluate.margin import MarginResult
from ..evaluate.statistics import paired_bootstrap_ci
from ..formats.pairs import Pair
from .records import PairedComparison, PromptedMargins, StudyPrompting, StudyRow

if TYPE_CHECKING:
    from .study import StudyConfig

Margins = Callable[..., list[MarginResult]]


def _towards(model: str) -> tuple[str, str]:
    """(origin, target) of a condition on ``model``: steering the fine-tuned model aims at the base
    (undone), steering the base aims at the fine-tuned model (induced)."""
    return ("finetuned", "base") if model == "finetuned" else ("base", "finetuned")


def row_evidence(
    row: StudyRow,
    steered: torch.Tensor,
    controls: list[torch.Tensor],
    per_pair: dict[str, torch.Tensor],
    prompted: dict[str, torch.Tensor],
    config: StudyConfig,
) -> None:
    """Add the evidence fields to a sweep/ablation row (in place): the margin change from the
    unsteered model, read as a fraction of the gap (:meth:`~steerlab.evaluate.evidence.Evidence.gap_fraction`)."""
    origin, target = _towards(row["model"])
    intended = 1.0 if float(per_pair[target].mean() - per_pair[origin].mean()) >= 0 else -1.0
    change = steering_evidence(
        steered,
        per_pair[origin],
        controls,
        intended=intended,
        prompted=prompted.get(row["model"]),
        n_resamples=config.n_bootstrap,
        seed=config.seed,
    )
    fraction = change.gap_fraction(per_pair[origin], per_pair[target], config.n_bootstrap, config.seed)
    row.update(fraction.to_dict(digits=5))  # type: ignore[typeddict-item]
    row["delta"], row["delta_ci95"] = change.effect, change.ci95  # type: ignore[typeddict-item]


def paired_comparisons(
    rows: list[StudyRow], config: StudyConfig, reference: str = "model_diff"
) -> list[PairedComparison]:
    """Model-diff (``reference``) vs contrastive on the same held-out pairs, at equal-size
    interventions: for each model, layer set and coefficient, the difference of their margins
    (model-diff minus contrastive at the model-diff vector's norms, nats/token) with a paired
    bootstrap 95% interval (the two share pairs, so what the pairs share cancels)."""
    out: list[PairedComparison] = []
    index = {
        (r["model"], r["layers"], r["coeff"], r["vector"], r["scale"]): r
        for r in rows
        if r["stage"] == "sweep" and r.get("per_pair")
    }
    for (model, layers_, coeff, vector, scale), a in index.items():
        if vector != reference or scale != "raw":
            continue
        b = index.get((model, layers_, coeff, "contrastive", "normalized"))
        if b is None or len(a["per_pair"]) < 2:
            continue
        lo, hi = paired_bootstrap_ci(a["per_pair"], b["per_pair"], config.n_bootstrap, config.seed)
        out.append(
            {
                "model": model,
                "layers": layers_,
                "coeff": coeff,
                "a": reference,
                "b": "contrastive (normalized)",
                "margin_difference": a["margin"] - b["margin"],
                "ci95": [lo, hi],
                "distinguishable": not lo <= 0.0 <= hi,
            }
        )
    return out


def prompting_baseline(
    margins: Margins, heldout: Sequence[Pair], per_pair: dict[str, torch.Tensor], config: StudyConfig
) -> tuple[StudyPrompting | None, dict[str, torch.Tensor]]:
    """The prompting baseline: the base asked for the behaviour, the fine-tuned model asked for its
    opposite; their fractions of the gap (induced / undone) with intervals, and their per-pair
    margins by model (what each steering row is compared with)."""
    if not config.prompts:
        return None, {}
    doc: dict[str, Any] = {
        "behaviour_system": config.prompts["behaviour"],
        "opposite_system": config.prompts["opposite"],
    }
    prompted: dict[str, torch.Tensor] = {}
    for model, key in (("base", "behaviour"), ("finetuned", "opposite")):
        origin, target = _towards(model)
        (r,) = margins(model, [[]], [0.0], [p.model_copy(update={"system": config.prompts[key]}) for p in heldout])
        prompted[model] = r.per_pair[0].double()
        intended = 1.0 if float(per_pair[target].mean() - per_pair[origin].mean()) >= 0 else -1.0
        ev = steering_evidence(
            prompted[model], per_pair[origin], intended=intended, n_resamples=config.n_bootstrap, seed=config.seed
        ).gap_fraction(per_pair[origin], per_pair[target], config.n_bootstrap, config.seed)
        asked: PromptedMargins = {
            "effect": ev.effect,
            "ci95": ev.ci95,
            "margin": ev.level,
            "margin_ci95": ev.level_ci95,
            "steerable_fraction": ev.steerable_fraction,
            "anti_steerable_fraction": ev.anti_steerable_fraction,
        }
        doc[f"{model}_asked_{key}"] = asked
    return doc, prompted  # type: ignore[return-value]
