"""The steering study's reading of its rows: the best coherent condition, and a few greedy answers
under it (:mod:`steerlab.pipelines.study`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..engines.base import Engine
from ..formats.pairs import Pair
from ..steering.steerer import SteeringSpec
from ..vectors.vector import SteeringVector
from .records import StudyRow, StudySample

if TYPE_CHECKING:
    from .study import StudyConfig


def best_coherent(rows: Sequence[StudyRow], key: str, max_drop: float, **match: Any) -> StudyRow | None:
    """The row with the largest ``key`` (undone / induced) among coherent rows (fluency drop <=
    ``max_drop`` nats/token) matching ``match`` (e.g. ``stage="sweep", layers=24``); None if none."""
    chosen = [
        r
        for r in rows
        if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None and r["fluency_drop"] <= max_drop
    ]
    return max(chosen, key=lambda r: r[key]) if chosen else None  # type: ignore[literal-required]


def sample_generations(
    models: Mapping[str, Engine],
    variants: Mapping[str, Mapping[str, SteeringVector]],
    heldout: Sequence[Pair],
    best: int,
    rows: Sequence[StudyRow],
    config: StudyConfig,
) -> list[StudySample]:
    """Greedy answers to a few held-out questions: unsteered base / fine-tuned, and each vector
    subtracted from the fine-tuned model / added to the base at the best layer, at the largest
    coherent coefficient (one generation call per model: every condition's questions are rows)."""
    questions = [p.question for p in heldout[: config.n_samples]]
    out: list[StudySample] = []
    conditions: list[tuple[str, str | None, float]] = [("base", None, 0.0), ("finetuned", None, 0.0)]
    for name in variants:
        for model, key in (("finetuned", "undone"), ("base", "induced")):
            row = best_coherent(
                rows, key, config.max_fluency_drop, stage="sweep", vector=name, model=model, scale="raw", layers=best
            )
            if row:
                conditions.append((model, name, (-1 if model == "finetuned" else 1) * row["coeff"]))
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
        gens = models[model].generate(
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
