"""Coefficient x layer sweeps of steered generation, with the judge-free behaviour margin.

For each layer, every (coefficient, question) row is generated in one batch stream with per-row
coefficients. Results go to a run directory:

- ``generations.jsonl``  every generation with its layer, coefficient and settings;
- ``margins.csv``        behaviour margin per (layer, coefficient) when pairs are given;
- ``scores.csv``, ``scores.html``  judged trait and coherence (mean, std, n) per (layer, coefficient)
  and a plot of score vs coefficient per layer, when a judge and a trait are given;
- ``sweep.json``         the config, steerlab version and timings.

Generation is a run stage (:mod:`steerlab.runs`): each finished layer is checkpointed, a rerun of a
killed sweep skips finished layers, a rerun with the same config skips generation entirely, and a
changed config (vector, questions, coefficients, settings, judge) starts afresh. Files are written
atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate.margin import behaviour_margin
from ..formats.pairs import Pair
from ..io.atomic import write_json, write_jsonl, write_text
from ..judge.judges import Judge, judge_coherence, judge_trait
from ..model.chat import Prompt
from ..model.loading import LoadedModel
from ..steering.generation import expand_grid, generate_batch
from ..steering.steerer import SteeringSpec, parse_layers
from ..vectors.vector import SteeringVector
from ..version import __version__
from .runs import RunDir


@dataclass
class SweepConfig:
    layers: list[int]
    coeffs: list[float]
    positions: str = "all"
    operator: str = "add"
    scale: str = "raw"
    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0
    system: str | None = None
    batch_size: int | None = None


@dataclass
class SweepResult:
    generations: list[dict[str, Any]]
    margins: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)


def _prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def run_sweep(
    lm: LoadedModel,
    vector: SteeringVector,
    questions: Sequence[Prompt],
    out_dir: str | Path,
    layers: str | Sequence[int],
    coeffs: Sequence[float],
    pairs: Sequence[Pair] | None = None,
    positions: str = "all",
    operator: str = "add",
    scale: str = "raw",
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    system: str | None = None,
    batch_size: int | None = None,
    reference_norms=None,
    extra_config: dict[str, Any] | None = None,
    judge: Judge | None = None,
    eval_prompt: str | None = None,
) -> SweepResult:
    """Run (or resume) a sweep into ``out_dir``; see the module docstring for the files.

    With ``judge`` and ``eval_prompt`` (a trait's), every generation gets ``trait_score`` and
    ``coherence`` (None where the judge gave no number).
    """
    config = SweepConfig(parse_layers(layers, lm.n_layers, "--layers"), [float(c) for c in coeffs],
                         positions, operator, scale, max_new_tokens, temperature, seed, system, batch_size)
    vector.check_compatible(lm.n_layers, lm.d_model, lm.name, config.layers)
    out = Path(out_dir)
    judged = judge is not None and eval_prompt is not None
    settings = {"positions": positions, "operator": operator, "scale": scale,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    stage = RunDir(out).stage("generations", "generations.jsonl", {
        "model": lm.name, "vector": hashlib.sha256(vector.data.numpy().tobytes()).hexdigest(),
        "questions": [_prompt_text(q) for q in questions], "coeffs": config.coeffs, "system": system,
        "settings": settings, "judge": getattr(judge, "name", type(judge).__name__) if judged else None,
        "eval_prompt": eval_prompt if judged else None,
    })
    timings: dict[str, float] = {"generation_s": 0.0, "margin_s": 0.0, "judge_s": 0.0}

    def generate_layer(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        layer = items[0]["layer"]
        start = time.perf_counter()
        prompts, row_coeffs = expand_grid(questions, config.coeffs)
        gens = generate_batch(
            lm, prompts, system=system,
            steering=SteeringSpec(vector, layer, row_coeffs, operator, positions, scale),
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            batch_size=batch_size, reference_norms=reference_norms, description=f"layer {layer}: generating",
        )
        timings["generation_s"] += time.perf_counter() - start
        rows = [
            {"layer": layer, "coeff": c, "question_index": i % len(questions), "question": _prompt_text(p),
             "text": g.text, "n_new_tokens": g.n_new_tokens, "finish_reason": g.finish_reason, **settings}
            for i, (p, c, g) in enumerate(zip(prompts, row_coeffs, gens, strict=True))
        ]
        if judged:
            start = time.perf_counter()
            qs, answers = [r["question"] for r in rows], [r["text"] for r in rows]
            for r, t, c in zip(rows, judge_trait(judge, eval_prompt, qs, answers),
                               judge_coherence(judge, qs, answers), strict=True):
                r["trait_score"], r["coherence"] = t, c
            timings["judge_s"] += time.perf_counter() - start
        return [{"key": items[0]["key"], "rows": rows}]

    if stage.done():
        rows_all = stage.load_rows()
    else:
        # One checkpoint per layer: a killed sweep resumes at the first unfinished layer.
        per_layer = stage.run_items([{"key": str(layer), "layer": layer} for layer in config.layers],
                                    generate_layer, chunk=1)
        rows_all = [row for item in per_layer for row in item["rows"]]
        stage.save_rows(rows_all)
    margins: list[dict[str, Any]] = []
    for layer in config.layers:
        spec = SteeringSpec(vector, layer, 1.0, operator, positions, scale)
        if pairs:
            start = time.perf_counter()
            result = behaviour_margin(lm, pairs, spec, config.coeffs, batch_size=batch_size or 16,
                                      reference_norms=reference_norms)
            timings["margin_s"] += time.perf_counter() - start
            margins.extend(
                {"layer": layer, "coeff": c, "margin": m, "std": s, "n_pairs": len(pairs)}
                for c, m, s in zip(result.coeffs, result.mean, result.std, strict=True)
            )
    write_jsonl(out / "generations.jsonl", rows_all)
    if margins:
        write_csv(out / "margins.csv", margins)
    scores = score_table(rows_all) if judged else []
    if scores:
        write_csv(out / "scores.csv", scores)
        from ..report.plots import score_vs_coeff_figure, write_figure

        write_figure(out / "scores.html", score_vs_coeff_figure(scores))
    write_json(out / "sweep.json", {
        "steerlab_version": __version__, "model": lm.name, "vector": vector.metadata,
        "config": {**asdict(config), **(extra_config or {})}, "n_questions": len(questions),
        "n_pairs": len(pairs or []), "timings": timings,
    })
    return SweepResult(rows_all, margins, timings, scores)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def score_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, std and n of trait and coherence scores per (layer, coeff); None scores are left out."""
    groups: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["coeff"]), []).append(r)
    table = []
    for (layer, coeff), items in sorted(groups.items()):
        trait = [r["trait_score"] for r in items if r.get("trait_score") is not None]
        coherence = [r["coherence"] for r in items if r.get("coherence") is not None]
        t_mean, t_std = _stats(trait)
        c_mean, c_std = _stats(coherence)
        table.append({"layer": layer, "coeff": coeff, "trait_mean": t_mean, "trait_std": t_std, "trait_n": len(trait),
                      "coherence_mean": c_mean, "coherence_std": c_std, "coherence_n": len(coherence),
                      "n": len(items)})
    return table
