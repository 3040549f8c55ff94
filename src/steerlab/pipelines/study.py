"""The fine-tuning steering study: do the model-diff and the contrastive directions steer alike?

Given a base model, a behaviour fine-tune of it (PEFT adapter, applied unmerged) and held-out pairs,
measured with the judge-free behaviour margin (positive − negative log-likelihood per token):

1. **Reference**: margin of the base and of the fine-tuned model, unsteered; the *gap* between them
   is the fine-tuning shift to explain.
2. **Layer scan**: subtract each vector (coefficient 1, raw) from the fine-tuned model at each
   candidate layer; the best layer undoes the largest fraction of the gap while staying fluent.
3. **Coefficient sweeps** at the best layer and at all layers, for every vector: subtract from the
   fine-tuned model and add to the base model; ``raw`` (the vector as extracted) and ``normalized``
   (each layer rescaled to the model-diff vector's norm there, so equal coefficients mean equal-size
   interventions for every vector; for the model-diff vector itself this is the raw vector).
4. **Projection ablation** of each direction from the fine-tuned model, at the best layer and at all.

Every row records the margin, its std over pairs, ``undone`` = (ft − steered) / (ft − base) for
conditions on the fine-tuned model (``induced`` = (steered − base) / (ft − base) on the base), and
``fluency`` (mean log-likelihood per token of both answers; its drop from the unsteered model flags
incoherent steering). A few greedy generations per condition are kept as samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate.margin import behaviour_margin
from ..extract.model_diff import attached_adapter
from ..formats.pairs import Pair
from ..model.loading import LoadedModel
from ..steering.generation import generate_batch
from ..steering.steerer import SteeringSpec
from ..vectors.vector import SteeringVector

log = logging.getLogger("steerlab")

@dataclass
class StudyConfig:
    """Settings of the steering study: candidate single ``layers`` (default: five spread over the
    middle), ``coeffs`` for the sweeps, the forward ``batch_size``, ``max_fluency_drop`` (nats/token
    below the unsteered model still counted coherent), and the sample generations' count and length."""

    layers: list[int] | None = None  # candidate single layers; default: a spread over the middle
    coeffs: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])
    batch_size: int = 32
    max_fluency_drop: float = 1.0  # nats/token below the unsteered model still counted as coherent
    n_samples: int = 3
    max_new_tokens: int = 40


def default_layers(n_layers: int) -> list[int]:
    """Five layers spread over 20%..80% of the depth."""
    return sorted({round(n_layers * f) for f in (0.2, 0.35, 0.5, 0.65, 0.8)})


def normalized_like(vector: SteeringVector, reference: SteeringVector) -> SteeringVector:
    """``vector`` rescaled per layer to ``reference``'s norm at that layer."""
    unit = vector.normalized().data
    scaled = SteeringVector(unit * reference.norms()[:, None], dict(vector.metadata))
    scaled.metadata["derived"] = f"normalized to {reference.metadata.get('method', 'reference')} norms"
    return scaled


def _row(condition: dict[str, Any], coeff: float, margin: float, std: float, fluency: float,
         reference: dict[str, float]) -> dict[str, Any]:
    gap = reference["finetuned"] - reference["base"]
    row = {**condition, "coeff": coeff, "margin": margin, "std": std, "fluency": fluency}
    if condition["model"] == "finetuned":
        row["undone"] = (reference["finetuned"] - margin) / gap if gap else None
        row["fluency_drop"] = reference["finetuned_fluency"] - fluency
    else:
        row["induced"] = (margin - reference["base"]) / gap if gap else None
        row["fluency_drop"] = reference["base_fluency"] - fluency
    return row


def run_study(
    base: LoadedModel,
    adapter_dir: str | Path,
    vectors: dict[str, SteeringVector],
    heldout: Sequence[Pair],
    config: StudyConfig | None = None,
) -> dict[str, Any]:
    """Run the study; returns ``{"reference", "rows", "best", "samples", "config"}``.

    ``vectors`` must include ``model_diff`` (its norms define the normalized scale).
    """
    config = config or StudyConfig()
    layers = config.layers or default_layers(base.n_layers)
    for layer in layers:
        base.check_layer(layer, "--layers")
    diff = vectors["model_diff"]
    variants = {name: {"raw": v, "normalized": normalized_like(v, diff)} for name, v in vectors.items()}
    rows: list[dict[str, Any]] = []

    def margins(lm: LoadedModel, spec: SteeringSpec | None, coeffs: Sequence[float]):
        return behaviour_margin(lm, heldout, [spec] if spec else [], coeffs if spec else None,
                                batch_size=config.batch_size)

    with attached_adapter(base, adapter_dir) as tuned:
        models = {"base": base, "finetuned": tuned}
        contexts = {"base": tuned.model.disable_adapter, "finetuned": nullcontext}
        reference: dict[str, float] = {}
        for name in ("base", "finetuned"):
            with contexts[name]():
                r = margins(models[name], None, [])
            reference[name], reference[f"{name}_fluency"] = r.mean[0], r.fluency[0]
        log.info("margin base %+.4f, fine-tuned %+.4f", reference["base"], reference["finetuned"])

        def sweep(model: str, vector: str, scale: str, layer_set: Any, coeffs: Sequence[float],
                  operator: str = "add") -> list[dict[str, Any]]:
            sign = -1.0 if model == "finetuned" and operator == "add" else 1.0
            spec = SteeringSpec(variants[vector][scale], layer_set, operator=operator)
            with contexts[model]():
                r = margins(models[model], spec, [sign * c for c in coeffs])
            condition = {"stage": "", "model": model, "vector": vector, "scale": scale, "operator": operator,
                         "direction": ("ablate" if operator == "ablate" else "subtract" if sign < 0 else "add"),
                         "layers": "all" if layer_set == "all" else str(layer_set)}
            return [_row(condition, c, m, s, f, reference)
                    for c, m, s, f in zip(coeffs, r.mean, r.std, r.fluency, strict=True)]

        scan = []
        for name in vectors:
            for layer in layers:
                scan += [dict(r, stage="layer_scan") for r in sweep("finetuned", name, "raw", layer, [1.0])]
        rows += scan
        best = _best_layer(scan, "model_diff", config.max_fluency_drop)
        log.info("best layer (model_diff, coefficient 1): %d", best)

        for name in vectors:
            for layer_set in (best, "all"):
                # model_diff rescaled to its own norms is itself: "normalized" only differs for others
                for scale in ("raw",) if name == "model_diff" else ("raw", "normalized"):
                    for model in ("finetuned", "base"):
                        rows += [dict(r, stage="sweep") for r in sweep(model, name, scale, layer_set, config.coeffs)]
                rows += [dict(r, stage="ablation") for r in sweep("finetuned", name, "raw", layer_set, [1.0], "ablate")]

        samples = _samples(models, contexts, variants, heldout, best, rows, config)
    return {"reference": reference, "rows": rows, "best_layer": best, "samples": samples,
            "layers_scanned": layers, "config": config.__dict__}


def _best_layer(scan: list[dict[str, Any]], vector: str, max_drop: float) -> int:
    candidates = [r for r in scan if r["vector"] == vector]
    coherent = [r for r in candidates if r["fluency_drop"] <= max_drop] or candidates
    return int(max(coherent, key=lambda r: r["undone"] or float("-inf"))["layers"])


def best_coherent(rows: list[dict[str, Any]], key: str, max_drop: float, **match: Any) -> dict[str, Any] | None:
    """The row with the largest ``key`` (undone / induced) among coherent rows matching ``match``."""
    chosen = [r for r in rows if all(r.get(k) == v for k, v in match.items())
              and r.get(key) is not None and r["fluency_drop"] <= max_drop]
    return max(chosen, key=lambda r: r[key]) if chosen else None


def _samples(models, contexts, variants, heldout, best, rows, config) -> list[dict[str, Any]]:
    """Greedy answers to a few held-out questions: unsteered base / fine-tuned, and each vector
    subtracted from the fine-tuned model / added to the base at the best layer, at the largest
    coherent coefficient."""
    questions = [p.question for p in heldout[: config.n_samples]]
    out = []
    conditions: list[tuple[str, str | None, float]] = [("base", None, 0.0), ("finetuned", None, 0.0)]
    for name in variants:
        for model, key in (("finetuned", "undone"), ("base", "induced")):
            row = best_coherent(rows, key, config.max_fluency_drop, stage="sweep", vector=name, model=model,
                                scale="raw", layers=str(best))
            if row:
                conditions.append((model, name, (-1 if model == "finetuned" else 1) * row["coeff"]))
    for model, vector, coeff in conditions:
        spec = SteeringSpec(variants[vector]["raw"], best, coeff) if vector else ()
        with contexts[model]():
            gens = generate_batch(models[model], questions, steering=spec, max_new_tokens=config.max_new_tokens,
                                  description=f"samples: {model} {vector or ''} {coeff:+g}")
        out += [{"model": model, "vector": vector, "layer": best if vector else None, "coeff": coeff,
                 "question": q, "text": g.text} for q, g in zip(questions, gens, strict=True)]
    return out
