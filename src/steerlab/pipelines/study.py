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

Evidence (docs/design.md §7, :mod:`steerlab.evaluate.evidence`): every sweep and ablation row also carries a
bootstrap 95% interval (``ci95``, of its undone/induced fraction; ``margin_ci95``), the per-pair
margins and the steerable / anti-steerable fractions, and ``random``: the same fraction for
``controls`` random directions with the vector's norm at each steered layer, run through the
identical condition as extra rows of the same batches (null band and empirical p; ``verdict`` says
"not distinguishable from random directions" when the effect lies inside the band). With
``prompts`` (a system prompt asking for the behaviour and one asking for its opposite), the
reference also holds the prompting baseline: the base model asked for the behaviour and the
fine-tuned model asked for its opposite, and each row's ``vs_prompting`` is its effect as a
fraction of prompting's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SteerlabError
from ..evaluate.controls import random_directions
from ..evaluate.evidence import steering_evidence
from ..evaluate.margin import MarginResult, condition_margins
from ..evaluate.statistics import paired_bootstrap_ci
from ..extract.model_diff import attached_adapter
from ..formats.pairs import Pair
from ..model.loading import LoadedModel
from ..steering.generation import generate_batch
from ..steering.operators import POSITIONS
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
    controls: int = 8  # random same-norm directions per condition (0: off)
    seed: int = 0  # of the random directions and the bootstrap
    n_bootstrap: int = 1000
    prompts: dict[str, str] | None = None  # {"behaviour": system prompt, "opposite": system prompt}
    positions: str = "response"  # where every condition steers (docs/design.md §4): the seed's evaluation default


def default_layers(n_layers: int) -> list[int]:
    """Five layers spread over 20%..80% of the depth."""
    return sorted({round(n_layers * f) for f in (0.2, 0.35, 0.5, 0.65, 0.8)})


def normalized_like(vector: SteeringVector, reference: SteeringVector) -> SteeringVector:
    """``vector`` rescaled per layer to ``reference``'s norm at that layer."""
    unit = vector.normalized().data
    scaled = SteeringVector(unit * reference.norms()[:, None], dict(vector.metadata))
    scaled.metadata["derived"] = f"normalized to {reference.metadata.get('method', 'reference')} norms"
    return scaled


def _row(
    condition: dict[str, Any], coeff: float, result: MarginResult, i: int, reference: dict[str, Any]
) -> dict[str, Any]:
    gap = reference["finetuned"] - reference["base"]
    margin, std, fluency = result.mean[i], result.std[i], result.fluency[i]
    row = {**condition, "coeff": coeff, "margin": margin, "std": std, "fluency": fluency}
    if condition["model"] == "finetuned":
        row["undone"] = (reference["finetuned"] - margin) / gap if gap else None
        row["fluency_drop"] = reference["finetuned_fluency"] - fluency
    else:
        row["induced"] = (margin - reference["base"]) / gap if gap else None
        row["fluency_drop"] = reference["base_fluency"] - fluency
    return row


def _evidence(
    row: dict[str, Any],
    steered: torch.Tensor,
    controls: list[torch.Tensor],
    per_pair: dict[str, torch.Tensor],
    prompting: dict[str, float | None],
    config: StudyConfig,
) -> None:
    """Add the evidence fields to a sweep/ablation row (in place)."""
    origin, target = ("finetuned", "base") if row["model"] == "finetuned" else ("base", "finetuned")
    row.update(
        steering_evidence(
            per_pair[origin],
            per_pair[target],
            steered,
            controls,
            prompting.get(row["model"]),
            config.n_bootstrap,
            config.seed,
        )
    )


def _prompted(pairs: Sequence[Pair], system: str) -> list[Pair]:
    return [p.model_copy(update={"system": system}) for p in pairs]


def run_study(
    base: LoadedModel,
    adapter_dir: str | Path,
    vectors: dict[str, SteeringVector],
    heldout: Sequence[Pair],
    config: StudyConfig | None = None,
) -> dict[str, Any]:
    """Run the study; returns ``{"reference", "prompting", "rows", "best_layer", "samples", "config"}``.

    ``vectors`` must include ``model_diff`` (its norms define the normalized scale). Margins are in
    nats/token; fractions are of the base → fine-tuned gap. See the module docstring for the rows.
    """
    config = config or StudyConfig()
    if config.positions not in POSITIONS:
        raise SteerlabError(f"--steering-positions {config.positions!r}: expected one of {', '.join(POSITIONS)}")
    layers = config.layers or default_layers(base.n_layers)
    for layer in layers:
        base.check_layer(layer, "--layers")
    diff = vectors["model_diff"]
    variants = {name: {"raw": v, "normalized": normalized_like(v, diff)} for name, v in vectors.items()}
    # One set of random directions per norm profile: a control has the norm of the vector it controls.
    norm_profile = {
        (name, scale): "model_diff" if scale == "normalized" else name
        for name in vectors
        for scale in ("raw", "normalized")
    }
    controls = {
        name: [SteeringVector(d) for d in random_directions(vectors[name], config.controls, config.seed)]
        for name in vectors
    }
    rows: list[dict[str, Any]] = []

    def spec(vector: SteeringVector, layer_set: Any, operator: str = "add") -> SteeringSpec:
        return SteeringSpec(vector, layer_set, operator=operator, positions=config.positions)

    def scales(name: str) -> tuple[str, ...]:
        # model_diff rescaled to its own norms is itself; a position-resolved diff (read on unrelated
        # text, another scale altogether) is compared at the model-diff vector's norms only.
        if name == "model_diff":
            return ("raw",)
        return ("normalized",) if name.startswith("model_diff_pos") else ("raw", "normalized")

    with attached_adapter(base, adapter_dir) as tuned:
        models = {"base": base, "finetuned": tuned}
        contexts = {"base": tuned.model.disable_adapter, "finetuned": nullcontext}

        def margins(
            model: str, conditions: list[list[SteeringSpec]], coeffs: Sequence[float], pairs: Sequence[Pair] = heldout
        ) -> list[MarginResult]:
            with contexts[model]():
                return condition_margins(models[model], pairs, conditions, coeffs, config.batch_size)

        reference: dict[str, Any] = {}
        per_pair: dict[str, torch.Tensor] = {}
        for name in ("base", "finetuned"):
            (r,) = margins(name, [[]], [0.0])
            reference[name], reference[f"{name}_fluency"] = r.mean[0], r.fluency[0]
            per_pair[name] = r.per_pair[0].double()
        log.info("margin base %+.4f, fine-tuned %+.4f", reference["base"], reference["finetuned"])
        prompting_doc, prompting = _prompting(margins, heldout, per_pair, config)

        def condition(model: str, vector: str, scale: str, layer_set: Any, operator: str = "add") -> dict[str, Any]:
            sign = -1.0 if model == "finetuned" and operator == "add" else 1.0
            return {
                "stage": "",
                "model": model,
                "vector": vector,
                "scale": scale,
                "operator": operator,
                "direction": ("ablate" if operator == "ablate" else "subtract" if sign < 0 else "add"),
                "layers": "all" if layer_set == "all" else str(layer_set),
            }

        # Layer scan: every (vector, layer) subtracted at coefficient 1, as rows of one stream.
        scan_conditions = [(name, layer) for name in vectors for layer in layers]
        results = margins(
            "finetuned", [[spec(variants[n][scales(n)[0]], layer)] for n, layer in scan_conditions], [-1.0]
        )
        scan = [
            dict(_row(condition("finetuned", n, scales(n)[0], layer), 1.0, r, 0, reference), stage="layer_scan")
            for (n, layer), r in zip(scan_conditions, results, strict=True)
        ]
        rows += scan
        best = _best_layer(scan, "model_diff", config.max_fluency_drop)
        log.info("best layer (model_diff, coefficient 1): %d", best)

        for layer_set in (best, "all"):
            real = [(name, scale) for name in vectors for scale in scales(name)]
            profiles = list(dict.fromkeys(norm_profile[c] for c in real))
            for model in ("finetuned", "base"):
                sign = -1.0 if model == "finetuned" else 1.0
                conditions = [[spec(variants[n][s], layer_set)] for n, s in real]
                conditions += [[spec(c, layer_set)] for prof in profiles for c in controls[prof]]
                results = margins(model, conditions, [sign * c for c in config.coeffs])
                ctrl = {
                    prof: results[len(real) + i * config.controls : len(real) + (i + 1) * config.controls]
                    for i, prof in enumerate(profiles)
                }
                for (n, s), r in zip(real, results, strict=False):
                    for i, c in enumerate(config.coeffs):
                        row = dict(_row(condition(model, n, s, layer_set), c, r, i, reference), stage="sweep")
                        null = [x.per_pair[i].double() for x in ctrl[norm_profile[n, s]]]
                        _evidence(row, r.per_pair[i].double(), null, per_pair, prompting, config)
                        rows.append(row)
            # Projection ablation of each direction and of random directions (a direction's norm is moot).
            conditions = [[spec(variants[n]["raw"], layer_set, operator="ablate")] for n in vectors]
            conditions += [[spec(c, layer_set, operator="ablate")] for c in controls["model_diff"]]
            results = margins("finetuned", conditions, [1.0])
            for n, r in zip(vectors, results, strict=False):
                row = dict(
                    _row(condition("finetuned", n, "raw", layer_set, "ablate"), 1.0, r, 0, reference), stage="ablation"
                )
                _evidence(
                    row,
                    r.per_pair[0].double(),
                    [x.per_pair[0].double() for x in results[len(vectors) :]],
                    per_pair,
                    prompting,
                    config,
                )
                rows.append(row)

        samples = _samples(models, contexts, variants, heldout, best, rows, config)
    return {
        "reference": reference,
        "prompting": prompting_doc,
        "rows": rows,
        "best_layer": best,
        "samples": samples,
        "layers_scanned": layers,
        "comparisons": paired_comparisons(rows, config),
        "config": asdict(config),
    }


def paired_comparisons(rows: list[dict[str, Any]], config: StudyConfig) -> list[dict[str, Any]]:
    """Model-diff vs contrastive on the same held-out pairs, at equal-size interventions: for each
    model, layer set and coefficient, the difference of their margins (model-diff minus contrastive
    at the model-diff vector's norms, nats/token) with a paired bootstrap 95% interval (the two share
    pairs, so what the pairs share cancels)."""
    out = []
    index = {
        (r["model"], r["layers"], r["coeff"], r["vector"], r["scale"]): r
        for r in rows
        if r["stage"] == "sweep" and r.get("per_pair")
    }
    for (model, layer_set, coeff, vector, scale), a in index.items():
        if vector != "model_diff" or scale != "raw":
            continue
        b = index.get((model, layer_set, coeff, "contrastive", "normalized"))
        if b is None or len(a["per_pair"]) < 2:
            continue
        lo, hi = paired_bootstrap_ci(a["per_pair"], b["per_pair"], config.n_bootstrap, config.seed)
        out.append(
            {
                "model": model,
                "layers": layer_set,
                "coeff": coeff,
                "a": "model_diff",
                "b": "contrastive (normalized)",
                "margin_difference": a["margin"] - b["margin"],
                "ci95": [lo, hi],
                "distinguishable": not lo <= 0.0 <= hi,
            }
        )
    return out


def _prompting(
    margins: Any, heldout: Sequence[Pair], per_pair: dict[str, torch.Tensor], config: StudyConfig
) -> tuple[dict[str, Any] | None, dict[str, float | None]]:
    """The prompting baseline: the base asked for the behaviour, the fine-tuned model asked for its
    opposite; their fractions of the gap (induced / undone) with intervals."""
    if not config.prompts:
        return None, {}
    doc: dict[str, Any] = {
        "behaviour_system": config.prompts["behaviour"],
        "opposite_system": config.prompts["opposite"],
    }
    fractions: dict[str, float | None] = {}
    for model, key, origin, target in (
        ("base", "behaviour", "base", "finetuned"),
        ("finetuned", "opposite", "finetuned", "base"),
    ):
        (r,) = margins(model, [[]], [0.0], _prompted(heldout, config.prompts[key]))
        ev = steering_evidence(
            per_pair[origin], per_pair[target], r.per_pair[0].double(), (), None, config.n_bootstrap, config.seed
        )
        doc[f"{model}_asked_{key}"] = {
            k: ev[k]
            for k in ("effect", "ci95", "margin", "margin_ci95", "steerable_fraction", "anti_steerable_fraction")
        }
        fractions[model] = ev["effect"]
    return doc, fractions


def _best_layer(scan: list[dict[str, Any]], vector: str, max_drop: float) -> int:
    candidates = [r for r in scan if r["vector"] == vector]
    coherent = [r for r in candidates if r["fluency_drop"] <= max_drop] or candidates
    return int(max(coherent, key=lambda r: r["undone"] or float("-inf"))["layers"])


def best_coherent(rows: list[dict[str, Any]], key: str, max_drop: float, **match: Any) -> dict[str, Any] | None:
    """The row with the largest ``key`` (undone / induced) among coherent rows matching ``match``."""
    chosen = [
        r
        for r in rows
        if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None and r["fluency_drop"] <= max_drop
    ]
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
            row = best_coherent(
                rows,
                key,
                config.max_fluency_drop,
                stage="sweep",
                vector=name,
                model=model,
                scale="raw",
                layers=str(best),
            )
            if row:
                conditions.append((model, name, (-1 if model == "finetuned" else 1) * row["coeff"]))
    # One generation call per model: every condition's questions are rows, each spec acting on its own.
    for model in ("base", "finetuned"):
        chosen = [(vector, coeff) for m, vector, coeff in conditions if m == model]
        grid = [(vector, coeff, q) for vector, coeff in chosen for q in questions]
        specs = [
            SteeringSpec(
                variants[vector]["raw"],
                best,
                coeff,
                positions=config.positions,
                rows=[i * len(questions) + j for j in range(len(questions))],
            )
            for i, (vector, coeff) in enumerate(chosen)
            if vector
        ]
        with contexts[model]():
            gens = generate_batch(
                models[model],
                [q for _, _, q in grid],
                steering=specs,
                max_new_tokens=config.max_new_tokens,
                description=f"samples: {model}",
            )
        out += [
            {
                "model": model,
                "vector": vector,
                "layer": best if vector else None,
                "coeff": coeff,
                "question": q,
                "text": g.text,
            }
            for (vector, coeff, q), g in zip(grid, gens, strict=True)
        ]
    return out
