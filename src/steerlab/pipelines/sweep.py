"""Coefficient x layer sweeps of steered generation, with the judge-free behaviour margin.

For each layer, every (coefficient, question) row is generated in one batch stream with per-row
coefficients. Results go to a run directory:

- ``generations.jsonl``  every generation with its layer, coefficient and settings;
- ``control_generations.jsonl``  generations steered by each of ``controls`` random directions of
  the vector's norm (field ``control``): with ``controls_at="reported"`` (the default), only when a
  judge scores the sweep, and only at each layer's reported cell
  (:func:`~steerlab.pipelines.sweep_evidence.reported_coeff`: the largest coefficient whose judged
  coherence is at least ``min_coherence``, positive ones first); with ``controls_at="all"`` at every
  cell, as extra rows of the same batches (K + 1 times the generations and judge calls);
- ``margins.csv``        behaviour margin per (layer, coefficient) when pairs are given, with its
  change from unsteered (``delta``, bootstrap 95% interval over pairs), the random controls' band
  and one-sided p (at every cell when they are cheap — steering at ``response`` positions, prompts
  shared — or with ``controls_at="all"``; otherwise at each layer's reported cell,
  :func:`~steerlab.pipelines.sweep_evidence.margins_everywhere`), the verdict, and the steerable /
  anti-steerable fractions of pairs (:class:`~steerlab.pipelines.records.SweepMarginRow`);
- ``scores.csv``         judged trait and coherence (mean, std, n) per (layer, coefficient), when a
  judge and a trait are given, with the controls' band and p where they ran
  (:class:`~steerlab.pipelines.records.SweepScoreRow`; ``steerlab report DIR`` plots them);
- ``sweep.json``         the config, steerlab version and timings.

:func:`~steerlab.pipelines.sweep_evidence.sweep_plan` says beforehand how many generations and judge
calls a sweep makes (the CLI prints it for judged sweeps).

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
from ..errors import SteerlabError
from ..evaluate.controls import random_directions
from ..evaluate.evidence import EVIDENCE_FORMAT
from ..evaluate.margin import condition_margins
from ..formats.pairs import Pair
from ..io.atomic import write_json, write_jsonl
from ..io.runs import ROWS, Codec, Stage
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
from .records import SweepGeneration, SweepMarginRow, SweepScoreRow
from .runs import RunDir, read_jsonl_rows
from .sweep_evidence import (
    CONTROLS_AT,
    margin_reported_coeff,
    margin_rows,
    margins_everywhere,
    reported_coeff,
    score_table,
    sweep_plan,
)

__all__ = ["SweepConfig", "SweepResult", "run_sweep", "score_table", "sweep_plan"]


@dataclass
class SweepConfig:
    """What a sweep runs; each default is written here once (the CLI reads them).

    ``layers``: a layer spec (``all``, ``12``, ``10,12``, ``8-16``; layer L = output of block L).
    ``coeffs``: coefficients, all generated as rows of one batch stream per layer; or ``{layer:
    coefficients}``, a grid of its own per layer (``--coeff auto``: each layer's calibrated range,
    :mod:`steerlab.pipelines.calibration_auto`), which must name every layer swept.
    ``controls``: random directions of the vector's norm (0: off); ``controls_at``: where they run when
    they are costly — ``"reported"`` (default: at each layer's reported cell, the largest coefficient,
    positive ones first, that stays coherent: judged coherence >= ``min_coherence`` (0-100) for
    generated text, fluency drop <= ``max_fluency_drop`` nats/token for margins steered at ``all`` or
    ``prompt`` positions; margins steered at ``response`` positions get them at every cell, as they
    share prompts; generated text without a judge gets none, as nothing reads it) or ``"all"`` (every
    cell). See :mod:`steerlab.pipelines.sweep_evidence`.
    ``cap_ceiling``/``cap_floor``: ``operator="cap"`` thresholds on h·v̂ (activation units), or
    ``cap_percentile``/``cap_floor_percentile``: the same as percentiles (0-100) of h·v̂ at each layer
    on the reference prompts (:func:`run_sweep`'s ``reference_prompts``, default the questions).
    Raises SteerlabError for inconsistent cap options (see
    :func:`~steerlab.steering.operators.check_cap_options`) or an unknown ``controls_at``.
    """

    layers: str | list[int]
    coeffs: list[float] | dict[int, list[float]]
    positions: str = "all"
    operator: str = "add"
    scale: str = "raw"
    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0
    system: str | None = None
    batch_size: int | None = None
    controls: int = 8  # random directions of the vector's norm (0: off)
    n_bootstrap: int = 1000
    cap_ceiling: float | None = None
    cap_floor: float | None = None
    cap_percentile: float | None = None
    cap_floor_percentile: float | None = None
    controls_at: str = "reported"  # where costly controls run: each layer's "reported" cell, or "all"
    min_coherence: float = 50.0  # judged coherence (0-100) of a reported cell of generated text
    max_fluency_drop: float = 1.0  # nats/token: a reported cell of the margins stays this fluent

    def __post_init__(self) -> None:
        """Raises SteerlabError for inconsistent cap options or an unknown ``controls_at``, before
        any model work."""
        check_cap_options(
            self.operator, self.cap_ceiling, self.cap_floor, self.cap_percentile, self.cap_floor_percentile
        )
        if self.controls_at not in CONTROLS_AT:
            raise SteerlabError(f"--controls-at {self.controls_at!r}: expected one of {', '.join(CONTROLS_AT)}")

    def coeffs_at(self, layer: int) -> list[float]:
        """The coefficients swept at ``layer`` (the shared list, or the layer's own).

        Raises:
            SteerlabError: per-layer coefficients without an entry for ``layer``.
        """
        if isinstance(self.coeffs, dict):
            grid = self.coeffs.get(layer, self.coeffs.get(str(layer)))  # type: ignore[call-overload]
            if grid is None:
                raise SteerlabError(f"--coeffs: no coefficients for layer {layer} (given for {sorted(self.coeffs)})")
            return [float(c) for c in grid]
        return [float(c) for c in self.coeffs]


@dataclass
class SweepResult:
    """Every generation (``generations.jsonl`` rows), the margin per (layer, coeff) when pairs were
    given, the judged score table when a judge was, and seconds per stage."""

    generations: list[SweepGeneration]
    margins: list[SweepMarginRow] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scores: list[SweepScoreRow] = field(default_factory=list)


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
    per_layer = {layer: config.coeffs_at(layer) for layer in layers}  # checked before any work
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

    def generate(layer: int, directions: list[SteeringVector], grid_coeffs: list[float]) -> list[dict[str, Any]]:
        """Rows for every question at each of ``grid_coeffs`` under each direction (the real vector
        first, then controls), as row blocks of the same batches; judged when a judge is given."""
        start = time.perf_counter()
        prompts, row_coeffs = expand_grid(questions, grid_coeffs)
        n = len(prompts)
        met = [True] * n if not gate else [gate["met"][i % len(questions)] for i in range(n)]
        total = n * len(directions)
        # The real vector and each direction are row blocks of the same batches (gated rows only).
        specs = [
            spec(
                layer,
                row_coeffs * len(directions),
                d,
                torch.tensor([k * n <= i < (k + 1) * n and met[i % n] for i in range(total)]),
            )
            for k, d in enumerate(directions)
        ]
        gens = lm.generate(
            prompts * len(directions),
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
        index = {id(d): k for k, d in enumerate(controls)}
        rows = [
            {
                "layer": layer,
                "coeff": row_coeffs[i % n],
                "question_index": i % len(questions),
                "question": _prompt_text(prompts[i % n]),
                "text": g.text,
                "n_new_tokens": g.n_new_tokens,
                "finish_reason": g.finish_reason,
                "control": index.get(id(directions[i // n])),
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
        return rows

    def generate_layer(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        layer = items[0]["layer"]
        if config.controls_at == "all":
            rows = generate(layer, [vector, *controls], per_layer[layer])
        else:
            rows = generate(layer, [vector], per_layer[layer])
            reported = reported_coeff(rows, config.min_coherence) if judged and controls else None
            if reported is not None:
                rows += generate(layer, controls, [reported])
        return [{"key": items[0]["key"], "rows": rows}]

    def generate_all(stage: Stage) -> list[dict[str, Any]]:
        # One checkpoint per layer: a killed sweep resumes at the first unfinished layer.
        per_layer = stage.run_items([{"key": str(layer), "layer": layer} for layer in layers], generate_layer, chunk=1)
        every = [row for item in per_layer for row in item["rows"]]
        write_jsonl(out / CONTROL_GENERATIONS, [r for r in every if r["control"] is not None])  # before the marker
        return [r for r in every if r["control"] is None]

    # Control generations exist only when something reads them: a judge, or controls_at="all".
    generated_controls = config.controls > 0 and (judged or config.controls_at == "all")
    rows_all = run.cached(
        GENERATIONS.removesuffix(".jsonl"),
        GENERATIONS,
        {
            "model": lm.name,
            **lm.fingerprint(),
            "vector": vector_hash,
            "layers": layers,
            "questions": [_prompt_text(q) for q in questions],
            "judge": getattr(judge, "name", type(judge).__name__) if judged else None,
            "eval_prompt": eval_prompt if judged else None,
            **calibration,
        },
        generate_all,
        codec=ROWS,
        settings=config,
        # the margins' bootstrap; the batch size (float rounding); the layer spec (resolved above);
        # without control generations, how many there would be
        ignore=(
            "n_bootstrap",
            "batch_size",
            "layers",
            "max_fluency_drop",
            *(() if generated_controls else ("controls", "controls_at", "min_coherence")),
        ),
        beside=[CONTROL_GENERATIONS],
    ).value
    control_rows = read_jsonl_rows(out / CONTROL_GENERATIONS)

    margins: list[SweepMarginRow] = []
    if pairs:

        def measure(stage: Stage) -> list[SweepMarginRow]:
            start = time.perf_counter()
            batch = config.batch_size or 16
            everywhere = margins_everywhere(config)
            gated = condition is not None
            # the unsteered margins, once: the same at every layer and coefficient
            (unsteered,) = condition_margins(lm, pairs, [[]], [0.0], batch, reference_norms)
            steered = None
            if gated:  # the pairs (question + system prompt) whose prompt passes the condition
                sims = condition_similarities(lm, [condition], gate_samples(pair_samples(pairs)[0]), batch)
                steered = int(condition.passes(sims[0]).sum())
            rows: list[SweepMarginRow] = []
            for layer in layers:
                coeffs = per_layer[layer]
                directions = [vector, *controls] if everywhere else [vector]
                real, *null = condition_margins(
                    lm, pairs, [[spec(layer, 1.0, d, gated=gated)] for d in directions], coeffs, batch, reference_norms
                )
                reported = margin_reported_coeff(coeffs, real.fluency, unsteered.fluency[0], config.max_fluency_drop)
                at = {c: [x.per_pair[i] for x in null] for i, c in enumerate(coeffs)} if null else {}
                if not everywhere and controls and reported is not None:
                    null = condition_margins(
                        lm, pairs, [[spec(layer, 1.0, d, gated=gated)] for d in controls], [reported], batch,
                        reference_norms,
                    )  # fmt: skip
                    at = {reported: [x.per_pair[0] for x in null]}
                layer_rows = margin_rows(layer, coeffs, unsteered, real, at, reported, config.n_bootstrap, config.seed)
                if steered is not None:
                    layer_rows = [{**r, "n_pairs_steered": steered} for r in layer_rows]  # type: ignore[misc]
                rows += layer_rows
            timings["margin_s"] += time.perf_counter() - start
            return rows

        margins = run.cached(
            "margins",
            MARGINS,
            {
                "model": lm.name,
                **lm.fingerprint(),
                "vector": vector_hash,
                "layers": layers,
                "pairs": [[p.question, p.positive, p.negative, p.system] for p in pairs],
                "evidence": EVIDENCE_FORMAT,
                **calibration,
            },
            measure,
            codec=Codec(_read_margins, lambda stage, rows: (write_csv(stage.path, rows), stage.mark_done())),
            settings=config,
            # generation settings, the generated controls' threshold and the batch size (float rounding)
            ignore=("layers", "max_new_tokens", "temperature", "system", "min_coherence", "batch_size"),
        ).value
    scores = (
        score_table(rows_all + control_rows, config.n_bootstrap, config.seed, config.min_coherence) if judged else []
    )
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
            "plan": asdict(sweep_plan(config, len(layers), len(questions), judged, len(pairs or []))),
            "timings": timings,
        },
    )
    return SweepResult(rows_all, margins, timings, scores)


def _read_margins(stage: Stage) -> list[SweepMarginRow]:
    """``margins.csv`` read back: numbers parsed, ``reported`` a bool."""
    rows = [{k: cell_value(v) for k, v in r.items()} for _, r in read_csv(stage.path, "margins")[1]]
    return [{**r, "reported": r.get("reported") in (True, "True")} for r in rows]  # type: ignore[misc]


def _at(threshold: float | Mapping[int, float] | None, layer: int) -> float | None:
    """A cap threshold at ``layer``: the value itself, or its entry in a ``{layer: τ}`` mapping."""
    return threshold.get(layer) if isinstance(threshold, Mapping) else threshold
