"""The reading of a study's blend rows (:mod:`steerlab.pipelines.study_vectors`): per model, layer set
and coefficient, the effect (undone / induced fraction of the gap) against the blend weight α with its
interval and random band, and whether any blend beats both pure vectors beyond their intervals.

A blend *beats both pure vectors* at a coefficient when it is coherent (fluency drop at most the
study's limit), 0 < α < 1, and its effect lies above the upper end of the 95% interval of both the
model-diff vector (α = 0) and the contrastive vector at the model-diff norms (α = 1) under the same
condition (same model, layers, coefficient, hence the same norm). Pure, derived from the rows of
``study.json`` (nothing is recomputed).

The intervals compared are those of each row's margin change (``delta_ci95``, resampled over the
held-out pairs) expressed as a fraction of the measured gap: every condition compared shares that gap,
so its own uncertainty cancels from the comparison (the row's ``ci95`` also resamples the gap, and is
unbounded whenever the gap's interval reaches 0, as on small models). Rows without ``delta_ci95``
fall back to ``ci95``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import LayerSet, StudyRow
from .study_records import BlendCell, BlendPoint, BlendsDoc, BlendWinner

KEYS = {"finetuned": "undone", "base": "induced"}


def effect_interval(row: StudyRow | None, model: str, gap: float | None) -> list[float | None] | None:
    """The 95% interval of a row's effect (undone / induced fraction) at the measured ``gap``: its
    margin change's interval ``delta_ci95`` (nats/token) divided by the gap, signed the intended way
    (undone = −change / gap, induced = change / gap); the row's ``ci95`` without a gap or
    ``delta_ci95``."""
    row = row or {}
    ci = row.get("delta_ci95")
    if gap and ci and None not in ci:
        sign = -1.0 if model == "finetuned" else 1.0
        lo, hi = sorted(sign * float(c) / gap for c in ci)
        return [lo, hi]
    return row.get("ci95")


def _upper(ci: Sequence[float | None] | None) -> float | None:
    return None if not ci or ci[1] is None else float(ci[1])


def blend_cells(
    rows: Sequence[StudyRow], max_drop: float, reference: str = "model_diff", gap: float | None = None
) -> tuple[list[float], list[BlendCell]]:
    """(the blend weights, one :class:`~steerlab.pipelines.study_records.BlendCell` per model x layer
    set x coefficient) of a study's sweep rows; empty when it ran no blends. ``gap``: the study's
    fine-tuned minus base margin, for the intervals (:func:`effect_interval`)."""
    blends = [r for r in rows if r["stage"] == "sweep" and r.get("alpha") is not None]
    alphas = sorted({float(r["alpha"]) for r in blends})
    cells: list[BlendCell] = []
    index: dict[tuple[str, LayerSet, float, str, str], StudyRow] = {
        (r["model"], r["layers"], r["coeff"], r["vector"], r["scale"]): r
        for r in rows
        if r["stage"] == "sweep" and r.get("alpha") is None
    }
    keys = list(dict.fromkeys((r["model"], r["layers"], r["coeff"]) for r in blends))
    for model, layers, coeff in keys:
        key = KEYS[model]
        pure = {
            reference: index.get((model, layers, coeff, reference, "raw")),
            "contrastive": index.get((model, layers, coeff, "contrastive", "normalized")),
        }
        intervals = {name: effect_interval(p, model, gap) for name, p in pure.items()}
        uppers = [_upper(ci) for ci in intervals.values()]
        bar = None if None in uppers else max(u for u in uppers if u is not None)
        points: list[BlendPoint] = []
        for r in sorted(
            (r for r in blends if (r["model"], r["layers"], r["coeff"]) == (model, layers, coeff)),
            key=lambda r: r["alpha"],
        ):
            effect = r.get(key)
            coherent = r["fluency_drop"] <= max_drop
            beats = coherent and 0.0 < float(r["alpha"]) < 1.0 and None not in (effect, bar) and effect > bar
            points.append(
                {
                    "alpha": float(r["alpha"]),
                    "effect": effect,
                    "ci95": effect_interval(r, model, gap),
                    "random": r.get("random"),
                    "verdict": r.get("verdict"),
                    "steerable_fraction": r.get("steerable_fraction"),
                    "vs_prompting": r.get("vs_prompting"),
                    "fluency_drop": r["fluency_drop"],
                    "coherent": coherent,
                    "beats_both": bool(beats),
                }
            )
        cells.append(
            {
                "model": model,
                "key": key,
                "layers": layers,
                "coeff": coeff,
                "pure": {name: {"effect": (p or {}).get(key), "ci95": intervals[name]} for name, p in pure.items()},
                "points": points,
            }
        )
    return alphas, cells


def blend_summary(study: Any, reference: str = "model_diff") -> BlendsDoc | None:
    """The ``blends`` document of a study (:class:`~steerlab.pipelines.study.StudyResult` or its
    ``study.json`` dict): its cells, the blends that beat both pure vectors (``winners``) and a
    one-paragraph ``reading``; None when the study ran no blends."""
    doc = study.to_dict() if hasattr(study, "to_dict") else study
    max_drop = float(doc.get("config", {}).get("max_fluency_drop", 1.0))
    ref = doc.get("reference") or {}
    gap = ref["finetuned"] - ref["base"] if {"finetuned", "base"} <= set(ref) else None
    alphas, cells = blend_cells(doc["rows"], max_drop, reference, gap)
    if not cells:
        return None
    winners: list[BlendWinner] = [
        {
            "model": c["model"],
            "layers": c["layers"],
            "coeff": c["coeff"],
            "alpha": p["alpha"],
            "effect": p["effect"],
            "ci95": p["ci95"],
            "verdict": p["verdict"],
            "pure_upper": {name: _upper(v["ci95"]) for name, v in c["pure"].items()},
        }
        for c in cells
        for p in c["points"]
        if p["beats_both"]
    ]
    return {
        "alphas": alphas,
        "reference": reference,
        "best_layer": int(doc["best_layer"]),
        "max_fluency_drop": max_drop,
        "cells": cells,
        "winners": winners,
        "reading": _reading(cells, winners, int(doc["best_layer"])),
    }


def _where(layers: LayerSet) -> str:
    return "all layers" if layers == "all" else f"layer {layers}"


def _reading(cells: list[BlendCell], winners: list[BlendWinner], best: int) -> str:
    """One paragraph: whether any coherent blend beats both pure vectors beyond their intervals."""
    n = sum(p["coherent"] and 0 < p["alpha"] < 1 for c in cells for p in c["points"])
    weights = sorted({p["alpha"] for c in cells for p in c["points"] if 0 < p["alpha"] < 1})
    what = (
        f"Blends α·contrastive + (1 − α)·model-diff (α = {', '.join(f'{a:g}' for a in weights)}; each at the "
        f"model-diff vector's norm, with its random directions)"
    )
    if not winners:
        return (
            f"{what}: none of the {n} coherent blend conditions at layer {best} and at all layers beats both "
            "pure vectors beyond their 95% intervals."
        )
    w = max(winners, key=lambda w: w["effect"] or 0.0)
    action = "subtracted from the fine-tuned model" if w["model"] == "finetuned" else "added to the base"
    key = "undoes" if w["model"] == "finetuned" else "induces"
    ci = w["ci95"] or [None, None]
    ci_text = "" if None in ci else f" (95% CI {ci[0]:.0%} to {ci[1]:.0%})"
    uppers = " and ".join(
        f"{name.replace('_', '-')} up to {u:.0%}" for name, u in w["pure_upper"].items() if u is not None
    )
    return (
        f"{what}: {len(winners)} of {n} coherent blend conditions beat both pure vectors beyond their 95% "
        f"intervals. The largest: α = {w['alpha']:g} {action} at {_where(w['layers'])}, coefficient "
        f"{w['coeff']:g}, {key} {w['effect']:.0%} of the gap{ci_text}, above {uppers}; against random "
        f"directions: {w['verdict']}."
    )
