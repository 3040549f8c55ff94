"""Coefficient x layer sweeps of steered generation, with the judge-free behaviour margin.

For each layer, every (coefficient, question) row is generated in one batch stream with per-row
coefficients. Results go to a run directory:

- ``generations.jsonl``  every generation with its layer, coefficient and settings;
- ``control_generations.jsonl``  the same grid steered by each of ``controls`` random directions of
  the vector's norm (field ``control``), generated as extra rows of the same batches;
- ``margins.csv``        behaviour margin per (layer, coefficient) when pairs are given, with its
  change from unsteered (``delta``, bootstrap 95% interval over pairs), the random controls' band
  and p, and the steerable / anti-steerable fractions of pairs;
- ``scores.csv``         judged trait and coherence (mean, std, n) per (layer, coefficient), when a
  judge and a trait are given (``steerlab report DIR`` plots them);
- ``sweep.json``         the config, steerlab version and timings.

Generation and margins are run stages (:mod:`steerlab.pipelines.runs`): each finished layer is
checkpointed, a rerun of a killed sweep skips finished layers, a rerun with the same config skips
generation and margins entirely, and a changed config (vector, questions, coefficients, settings,
judge, pairs) recomputes what it affects. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..activations.samples import pair_samples
from ..engines.base import Engine
from ..engines.hf import as_engine
from ..evaluate.controls import control_summary, random_directions
from ..evaluate.margin import condition_margins
from ..evaluate.statistics import bootstrap_ci, steerable_fractions
from ..formats.pairs import Pair
from ..io.atomic import write_json, write_jsonl
from ..io.tables import cell_value, read_csv, write_csv
from ..judge import Judge, judge_coherence, judge_trait
from ..model.chat import Prompt
from ..model.loading import LoadedModel
from ..steering.conditions import Condition, condition_similarities, gate_samples
from ..steering.generation import expand_grid
from ..steering.operators import check_cap_options
from ..steering.steerer import SteeringSpec, parse_layers
from ..vectors.vector import SteeringVector
from ..version import __version__
from .artifacts import CONTROL_GENERATIONS, GENERATIONS, MARGINS, SCORES, SWEEP
from .runs import RunDir, read_jsonl_rows


@dataclass
class SweepConfig:
    """What a sweep runs; each default is written here once (the CLI reads them).

    ``layers``: a layer spec (``all``, ``12``, ``10,12``, ``8-16``; layer L = output of block L).
    ``coeffs``: coefficients, all generated as rows of one batch stream per layer.
    ``cap_ceiling``/``cap_floor``: ``operator="cap"`` thresholds on h·v̂ (activation units), or
    ``cap_percentile``/``cap_floor_percentile``: the same as percentiles (0-100) of h·v̂ at each layer
    on the reference prompts (:func:`run_sweep`'s ``reference_prompts``, default the questions).
    Raises SteerlabError for inconsistent cap options (see :func:`~steerlab.steering.operators.check_cap_options`).
    """

    layers: str | list[int]
    coeffs: list[float]
    positions: str = "all"
    operator: str = "add"
    scale: str = "raw"
    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0
    system: str | None = None
    batch_size: int | None = None
    controls: int = 8  # random directions of the vector's norm per layer, run as extra rows (0: off)
    n_bootstrap: int = 1000
    cap_ceiling: float | None = None
    cap_floor: float | None = None
    cap_percentile: float | None = None
    cap_floor_percentile: float | None = None

    def __post_init__(self) -> None:
        """Raises SteerlabError for inconsistent cap options, before any model work."""
        check_cap_options(
            self.operator, self.cap_ceiling, self.cap_floor, self.cap_percentile, self.cap_floor_percentile
        )


@dataclass
class SweepResult:
    """Every generation (``generations.jsonl`` rows), the margin per (layer, coeff) when pairs were
    given, the judged score table when a judge was, and seconds per stage."""

    generations: list[dict[str, Any]]
    margins: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)


def _prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def run_sweep(
    lm: Engine | LoadedModel,
    vector: SteeringVector,
    questions: Sequence[Prompt],
    out_dir: str | Path,
    config: SweepConfig,
    *,
    pairs: Sequence[Pair] | None = None,
    judge: Judge | None = None,
    eval_prompt: str | None = None,
    reference_norms: torch.Tensor | None = None,
    reference_prompts: Sequence[Prompt] | None = None,
    extra_config: dict[str, Any] | None = None,
    condition: Condition | None = None,
) -> SweepResult:
    """Run (or resume) a sweep into ``out_dir``; see the module docstring for the files.

    Args:
        lm: the engine (:mod:`steerlab.engines`), or a loaded model run on the ``hf`` engine.
        vector: ``[n_layers, d_model]``, row L used at layer L.
        questions: prompts (strings or message lists); every (layer, coeff, question) is a generation.
        config: layers, coefficients and generation settings.
        pairs: held-out pairs: adds the behaviour margin (nats/token) per (layer, coeff).
        judge, eval_prompt: with both, every generation gets ``trait_score`` and ``coherence`` (0-100,
            None where the judge gave no number).
        reference_norms: ``[n_layers]`` mean residual norms, needed for scale ``relative``.
        reference_prompts: where ``config.cap_percentile``/``cap_floor_percentile`` are measured
            (default: ``questions``). With ``operator="cap"`` every generation row records the
            thresholds used at its layer (``cap_ceiling``, ``cap_floor``), and ``sweep.json`` all of them.
        extra_config: recorded in ``sweep.json`` (e.g. the CLI's file paths).
        condition: a CAST condition (:mod:`steerlab.steering.conditions`): the vector and its random
            controls steer only the questions (and, for margins, the pairs' questions) that pass it,
            decided once per prompt; generation rows record ``condition_met`` and
            ``condition_similarity``, margin rows ``n_pairs_steered``, ``sweep.json`` the condition.

    Raises:
        SteerlabError: bad layer spec, vector/model mismatch, bad operator/positions/scale/cap options, a
            condition that does not fit the model.
    """
    lm = as_engine(lm)
    if condition is not None:
        condition.direction(lm)  # checked before any work
    layers = parse_layers(config.layers, lm.n_layers, "--layers")
    vector.check_compatible(lm.n_layers, lm.d_model, lm.name, layers)
    uncalibrated = SteeringSpec(
        vector,
        layers,
        1.0,
        config.operator,
        config.positions,
        config.scale,
        config.cap_ceiling,
        config.cap_floor,
        ceiling_percentile=config.cap_percentile,
        floor_percentile=config.cap_floor_percentile,
    )
    base = uncalibrated.calibrated(
        lm, questions if reference_prompts is None else reference_prompts, config.batch_size or 16
    )
    coeffs = [float(c) for c in config.coeffs]
    out = Path(out_dir)
    run = RunDir(out)
    judged = judge is not None and eval_prompt is not None
    settings = {
        "positions": config.positions,
        "operator": config.operator,
        "scale": config.scale,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "seed": config.seed,
    }
    # cap: the thresholds used at each layer (given, or resolved from percentiles), in rows and hashes
    thresholds: dict[int, dict[str, float | None]] = {}
    if config.operator == "cap":
        settings.update(cap_percentile=config.cap_percentile, cap_floor_percentile=config.cap_floor_percentile)
        thresholds = {
            layer: {"cap_ceiling": _at(base.ceiling, layer), "cap_floor": _at(base.floor, layer)} for layer in layers
        }
    calibration = {"cap": {str(layer): t for layer, t in thresholds.items()}} if thresholds else {}
    if condition is not None:  # only then, so that the hashes of unconditioned runs stay as they were
        calibration["condition"] = condition.describe()
    if reference_norms is not None and config.scale == "relative":  # they may come from other prompts
        calibration["reference_norms"] = [round(float(reference_norms[layer]), 6) for layer in layers]
    vector_hash = hashlib.sha256(vector.data.numpy().tobytes()).hexdigest()
    stage = run.stage(
        GENERATIONS.removesuffix(".jsonl"),
        GENERATIONS,
        {
            "model": lm.name,
            **lm.fingerprint(),
            "vector": vector_hash,
            "questions": [_prompt_text(q) for q in questions],
            "coeffs": coeffs,
            "system": config.system,
            "settings": settings,
            "judge": getattr(judge, "name", type(judge).__name__) if judged else None,
            "eval_prompt": eval_prompt if judged else None,
            "controls": config.controls,
            **calibration,
        },
    )
    timings: dict[str, float] = {"generation_s": 0.0, "margin_s": 0.0, "judge_s": 0.0}

    # Random directions of the vector's norm; with percentile caps each is calibrated on its own direction.
    controls = [SteeringVector(d) for d in random_directions(vector, config.controls, config.seed)]
    reference = questions if reference_prompts is None else reference_prompts
    percentile_cap = config.cap_percentile is not None or config.cap_floor_percentile is not None
    bases = {id(vector): base}
    for d in controls:
        own = replace(uncalibrated, vector=d)
        bases[id(d)] = (
            own.calibrated(lm, reference, config.batch_size or 16) if percentile_cap else replace(base, vector=d)
        )

    def spec(layer: int, coeff: Any, direction: SteeringVector = vector, rows: Any = None, gated: bool = False):
        return replace(
            bases[id(direction)], layers=layer, coeff=coeff, rows=rows, condition=condition if gated else None
        )

    # The gate of each question, decided once for the whole sweep (rows of a question share it).
    gate: dict[str, Any] = {}
    if condition is not None:
        sims = condition_similarities(lm, [condition], gate_samples(questions, config.system), config.batch_size or 16)
        gate = {"similarity": sims[0].tolist(), "met": condition.passes(sims[0]).tolist()}

    def gate_of(question: int) -> dict[str, Any]:
        return (
            {"condition_met": gate["met"][question], "condition_similarity": gate["similarity"][question]}
            if gate
            else {}
        )

    def generate_layer(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        layer = items[0]["layer"]
        start = time.perf_counter()
        prompts, row_coeffs = expand_grid(questions, coeffs)
        n = len(prompts)
        met = [True] * n if not gate else [gate["met"][i % len(questions)] for i in range(n)]
        total = n * (1 + len(controls))
        # The real vector and each random control are row blocks of the same batches (gated rows only).
        specs = [
            spec(
                layer,
                row_coeffs * (1 + len(controls)),
                d,
                torch.tensor([k * n <= i < (k + 1) * n and met[i % n] for i in range(total)]),
            )
            for k, d in enumerate([vector, *controls])
        ]
        gens = lm.generate(
            prompts * (1 + len(controls)),
            system=config.system,
            steering=specs,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=config.seed,
            batch_size=config.batch_size,
            reference_norms=reference_norms,
            description=f"layer {layer}: generating",
        )
        timings["generation_s"] += time.perf_counter() - start
        rows = [
            {
                "layer": layer,
                "coeff": row_coeffs[i % n],
                "question_index": i % len(questions),
                "question": _prompt_text(prompts[i % n]),
                "text": g.text,
                "n_new_tokens": g.n_new_tokens,
                "finish_reason": g.finish_reason,
                "control": None if i < n else i // n - 1,
                **gate_of(i % len(questions)),
                **settings,
                **thresholds.get(layer, {}),
            }
            for i, g in enumerate(gens)
        ]
        if judged:
            start = time.perf_counter()
            qs, answers = [r["question"] for r in rows], [r["text"] for r in rows]
            for r, t, c in zip(
                rows, judge_trait(judge, eval_prompt, qs, answers), judge_coherence(judge, qs, answers), strict=True
            ):
                r["trait_score"], r["coherence"] = t, c
            timings["judge_s"] += time.perf_counter() - start
        return [{"key": items[0]["key"], "rows": rows}]

    if stage.done():
        rows_all = stage.load_rows()
        control_rows = read_jsonl_rows(out / CONTROL_GENERATIONS) if (out / CONTROL_GENERATIONS).is_file() else []
    else:
        # One checkpoint per layer: a killed sweep resumes at the first unfinished layer.
        per_layer = stage.run_items([{"key": str(layer), "layer": layer} for layer in layers], generate_layer, chunk=1)
        every = [row for item in per_layer for row in item["rows"]]
        rows_all = [r for r in every if r["control"] is None]
        control_rows = [r for r in every if r["control"] is not None]
        write_jsonl(out / CONTROL_GENERATIONS, control_rows)  # before the stage's marker
        stage.save_rows(rows_all)

    margins: list[dict[str, Any]] = []
    if pairs:
        margin_stage = run.stage(
            "margins",
            MARGINS,
            {
                "model": lm.name,
                **lm.fingerprint(),
                "vector": vector_hash,
                "layers": layers,
                "coeffs": coeffs,
                "settings": settings,
                "pairs": [[p.question, p.positive, p.negative, p.system] for p in pairs],
                "controls": config.controls,
                "seed": config.seed,
                "n_bootstrap": config.n_bootstrap,
                **calibration,
            },
        )
        if margin_stage.done():
            margins = [{k: cell_value(v) for k, v in r.items()} for _, r in read_csv(margin_stage.path, "margins")[1]]
        else:
            start = time.perf_counter()
            for layer in layers:
                margins += _layer_margins(
                    lm, pairs, layer, coeffs, [vector, *controls], spec, config, reference_norms, condition
                )
            timings["margin_s"] += time.perf_counter() - start
            write_csv(margin_stage.path, margins)
            margin_stage.mark_done()
    scores = score_table(rows_all + control_rows, config.n_bootstrap, config.seed) if judged else []
    if scores:
        write_csv(out / SCORES, scores)
    write_json(
        out / SWEEP,
        {
            "steerlab_version": __version__,
            "model": lm.name,
            "engine": lm.kind,
            **lm.fingerprint(),
            "vector": vector.metadata,
            "config": {**asdict(config), "layers": layers, **calibration, **(extra_config or {})},
            "n_questions": len(questions),
            "n_pairs": len(pairs or []),
            "timings": timings,
        },
    )
    return SweepResult(rows_all, margins, timings, scores)


def _layer_margins(
    lm: Engine,
    pairs: Sequence[Pair],
    layer: int,
    coeffs: list[float],
    directions: list[SteeringVector],
    spec: Any,
    config: SweepConfig,
    reference_norms: torch.Tensor | None,
    condition: Condition | None = None,
) -> list[dict[str, Any]]:
    """Margins at one layer for the vector and its random controls (rows of one stream), with the
    unsteered margins: per coefficient the margin, its change from unsteered with a bootstrap
    interval over pairs, the controls' band and p, and the steerable / anti-steerable fractions.
    With a CAST ``condition`` every steered condition acts only on the pairs whose question passes it
    (``n_pairs_steered``)."""
    conditions = [[]] + [[spec(layer, 1.0, d, gated=condition is not None)] for d in directions]
    steered = None
    if condition is not None:
        sims = condition_similarities(lm, [condition], gate_samples(pair_samples(pairs)[0]), config.batch_size or 16)
        steered = int(condition.passes(sims[0]).sum())  # pairs (question + system prompt) that pass
    unsteered, real, *null = condition_margins(lm, pairs, conditions, coeffs, config.batch_size or 16, reference_norms)
    rows = []
    for i, c in enumerate(coeffs):
        base = unsteered.per_pair[i].double()
        delta = real.per_pair[i].double() - base
        row: dict[str, Any] = {
            "layer": layer,
            "coeff": c,
            "margin": real.mean[i],
            "std": real.std[i],
            "n_pairs": len(pairs),
            "delta": float(delta.mean()),
            **({"n_pairs_steered": steered} if steered is not None else {}),
        }
        lo, hi = bootstrap_ci(delta, config.n_bootstrap, config.seed) if len(pairs) > 1 else (None, None)
        row.update(delta_ci95_lo=lo, delta_ci95_hi=hi)
        if c != 0:
            spread = steerable_fractions(delta, 1.0 if c > 0 else -1.0)
            row.update(steerable_fraction=spread["steerable"], anti_steerable_fraction=spread["anti_steerable"])
        if null:
            band = control_summary(row["delta"], [float((x.per_pair[i].double() - base).mean()) for x in null])
            row.update(random_mean=band["mean"], random_lo=band["lo"], random_hi=band["hi"], random_p=band["p"])
        rows.append(row)
    return rows


def _at(threshold: float | Mapping[int, float] | None, layer: int) -> float | None:
    """A cap threshold at ``layer``: the value itself, or its entry in a ``{layer: τ}`` mapping."""
    return threshold.get(layer) if isinstance(threshold, Mapping) else threshold


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var**0.5


def score_table(rows: list[dict[str, Any]], n_bootstrap: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Mean, std and n of trait and coherence scores (0-100) per (layer, coeff), with a bootstrap
    95% interval of the trait mean over questions and, when the sweep ran random controls, the band
    and p of the controls' trait means. None scores are left out."""
    groups: dict[tuple[int, float], list[dict[str, Any]]] = {}
    null: dict[tuple[int, float], dict[int, list[float]]] = {}
    for r in rows:
        if r.get("control") is not None:
            if r.get("trait_score") is not None:
                null.setdefault((r["layer"], r["coeff"]), {}).setdefault(r["control"], []).append(r["trait_score"])
            continue
        groups.setdefault((r["layer"], r["coeff"]), []).append(r)
    table = []
    for (layer, coeff), items in sorted(groups.items()):
        trait = [r["trait_score"] for r in items if r.get("trait_score") is not None]
        coherence = [r["coherence"] for r in items if r.get("coherence") is not None]
        t_mean, t_std = _stats(trait)
        c_mean, c_std = _stats(coherence)
        row = {
            "layer": layer,
            "coeff": coeff,
            "trait_mean": t_mean,
            "trait_std": t_std,
            "trait_n": len(trait),
            "coherence_mean": c_mean,
            "coherence_std": c_std,
            "coherence_n": len(coherence),
            "n": len(items),
        }
        if len(trait) > 1:
            row["trait_ci95_lo"], row["trait_ci95_hi"] = bootstrap_ci(trait, n_bootstrap, seed)
        control_means = [sum(v) / len(v) for v in null.get((layer, coeff), {}).values() if v]
        if control_means and t_mean is not None:
            band = control_summary(t_mean, control_means)
            row.update(random_mean=band["mean"], random_lo=band["lo"], random_hi=band["hi"], random_p=band["p"])
        table.append(row)
    return table
