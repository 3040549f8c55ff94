"""`steerlab generate` and `steerlab sweep`: steered generation from the command line."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from ..engines.factory import make_engine
from ..errors import SteerlabError
from ..formats.pairs import load_pairs
from ..formats.prompts import load_prompts
from ..formats.records import GenerationRecord, prompt_text
from ..formats.traits import load_trait
from ..io.tables import write_jsonl
from ..judge import make_judge
from ..model.layers import parse_layers
from ..pipelines.calibration_auto import describe_auto, generate_coeffs, sweep_coeffs
from ..pipelines.sweep import SweepConfig, run_sweep, sweep_plan
from ..progress import console, results
from ..report.html import build_report
from ..steering.conditions import condition_similarities, gate_samples
from ..steering.generation import expand_grid
from ..vectors.vector import SteeringVector
from .app import app
from .calibration_flags import AutoFlags, CalibrationOpt, PairsSplitOpt, auto_calibration, pairs_option, trait_option
from .condition_flags import (
    ConditionComparatorOpt,
    ConditionFlags,
    ConditionLayerOpt,
    ConditionNegativeOpt,
    ConditionOpt,
    ConditionPositiveOpt,
    ConditionThresholdOpt,
)
from .options import (
    AdapterOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    GpuMemoryOpt,
    JudgeOpt,
    JudgeUrlOpt,
    MaxModelLenOpt,
    ModelOpt,
    PipelineParallelOpt,
    TensorParallelOpt,
    cap_ceiling_option,
    cap_floor_option,
    cap_floor_percentile_option,
    cap_percentile_option,
    check_out,
    check_reference_prompts,
    coeff_option,
    engine_config,
    layer_option,
    operator_option,
    parse_floats,
    positions_option,
    reference_prompts_option,
    scale_option,
    seed_option,
    steering_spec,
    vector_option,
)

_SWEEP = SweepConfig(layers="all", coeffs=[])  # defaults, written once on the dataclass


@app.command()
def generate(
    prompts: list[str] = typer.Argument(None, help="Prompts (user messages). Or use --prompts-file."),
    model: str = ModelOpt,
    vector: Path = vector_option(None),
    layer: str = layer_option(None),
    coeff: str = coeff_option(
        "1.0",
        help="Coefficient, or a list -4,0,4 to run every prompt at each, or auto: the calibrated range's ends and "
        "their geometric mean at the recommended layer (or --layer), from --calibration or calibrated on "
        "--pairs/--trait.",
        auto=True,
    ),
    calibration: Path = CalibrationOpt,
    pairs: Path = pairs_option("--coeff auto: held-out pairs JSONL to calibrate on (without --calibration)."),
    pairs_split: str = PairsSplitOpt,
    trait: str = trait_option("--coeff auto: calibrate on this trait's eval pairs (without --calibration)."),
    positions: str = positions_option(None),
    operator: str = operator_option(),
    scale: str = scale_option(),
    cap_ceiling: float = cap_ceiling_option(),
    cap_floor: float = cap_floor_option(),
    cap_percentile: float = cap_percentile_option(),
    cap_floor_percentile: float = cap_floor_percentile_option(),
    reference_prompts: Path = reference_prompts_option(),
    condition: Path = ConditionOpt,
    condition_layer: int = ConditionLayerOpt,
    condition_threshold: str = ConditionThresholdOpt,
    condition_comparator: str = ConditionComparatorOpt,
    condition_positive: Path = ConditionPositiveOpt,
    condition_negative: Path = ConditionNegativeOpt,
    prompts_file: Path = typer.Option(
        None, "--prompts-file", help=".txt (one per line), .jsonl (question/prompt/messages) or .json list."
    ),
    system: str = typer.Option(None, "--system", "-s", help="System prompt."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = seed_option("Random seed (sampling with --temperature > 0)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Rows per batch (default: automatic)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write every generation with its settings to this .jsonl."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
    engine: str = EngineOpt,
    tensor_parallel_size: int = TensorParallelOpt,
    pipeline_parallel_size: int = PipelineParallelOpt,
    gpu_memory_utilization: float = GpuMemoryOpt,
    max_model_len: int = MaxModelLenOpt,
) -> None:
    """Generate (optionally steered) completions, batched.

    Example:

        steerlab generate -m smollm2 -v deception.safetensors -l 12 -c -4,0,4 "How do I fix a flat?"

    With --out, each row is a generation record (question, text, coeff, layer, ...), as sweep writes.
    --operator cap clamps h·v̂ at each steered layer to --cap-ceiling/--cap-floor, or to a percentile
    of h·v̂ measured on --reference-prompts (default: these prompts): --cap-percentile 90.
    --condition (CAST) steers only the prompts whose similarity with a condition direction passes a
    threshold (see steerlab condition); rows record condition_met and condition_similarity.
    --coeff auto (steerlab calibrate): c_min, sqrt(c_min·c_max) and c_max of the recommended layer's range
    (or --layer's), from --calibration FILE, or calibrated first on --pairs/--trait (kept beside --out).
    """
    if out is not None:
        check_out(out, ".jsonl")
    items = list(prompts or []) + (load_prompts(prompts_file) if prompts_file else [])
    if not items:
        raise SteerlabError("no prompts: pass them as arguments or with --prompts-file")
    flags = AutoFlags.of(coeff, calibration, pairs, pairs_split, trait).check(vector, operator)
    coeffs = [1.0] if flags.auto else parse_floats(coeff, "--coeff")
    steering_only = [
        flag
        for flag, value in (
            ("--layer", layer),
            ("--cap-ceiling", cap_ceiling),
            ("--cap-floor", cap_floor),
            ("--cap-percentile", cap_percentile),
            ("--cap-floor-percentile", cap_floor_percentile),
            ("--reference-prompts", reference_prompts),
        )
        if value is not None
    ]
    if vector is None and (steering_only or coeff != "1.0" or operator != "add" or scale != "raw"):
        raise SteerlabError(f"{'/'.join(steering_only) or '--coeff/--operator/--scale'}: steering flags need --vector")
    check_reference_prompts(reference_prompts, scale, cap_percentile, cap_floor_percentile)
    gate = ConditionFlags(
        condition, condition_layer, condition_threshold, condition_comparator, condition_positive, condition_negative
    ).check(vector is not None)
    if vector is not None and layer is None and not flags.auto:
        raise SteerlabError("--vector needs --layer (e.g. --layer 12, 10-15 or all)")
    if flags.auto and layer is not None and not _one_layer(layer):
        raise SteerlabError(f"--layer {layer}: --coeff auto steers one calibrated layer (or none: the recommended)")

    def spec_for(layer_: str | None, coeffs_: list[float], positions_: str):
        rows_, row_coeffs_ = expand_grid(items, coeffs_) if vector is not None else (items, [0.0] * len(items))
        if vector is None:
            return rows_, row_coeffs_, None
        spec_ = steering_spec(
            vec, layer_, row_coeffs_, operator, positions_, scale, cap_ceiling, cap_floor, cap_percentile,
            cap_floor_percentile,
        )  # fmt: skip
        return rows_, row_coeffs_, spec_

    vec = SteeringVector.load(vector) if vector is not None else None
    rows, row_coeffs, spec = spec_for(layer, coeffs, positions or "all")  # checks the cap flags before loading
    reference = (load_prompts(reference_prompts) if reference_prompts else items) if vector is not None else None
    config = engine_config(engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len)
    with make_engine(config, model, device=device, dtype=dtype, adapter=adapter) as lm:
        if flags.auto:
            with _auto_dir(out) as where:
                doc, path, positions = auto_calibration(flags, lm, vec, vector, lm.name, where, scale, positions, layer)
                chosen, coeffs = generate_coeffs(
                    doc, path, None if layer is None else lm.check_layer(int(layer)), scale
                )
            console.print(describe_auto(doc, chosen, coeffs, scale), highlight=False)
            layer = str(chosen)
            rows, row_coeffs, spec = spec_for(layer, coeffs, positions)
        gens, cap_settings, gated = _generate_rows(
            lm, rows, spec, reference, scale, operator, cap_percentile,
            cap_floor_percentile, system, max_new_tokens, temperature, top_p, seed, batch_size, gate,
        )  # fmt: skip
    positions = positions or "all"
    settings = {
        "model": model,
        "engine": engine,
        "adapter": adapter,
        "vector": str(vector) if vector else None,
        **({"calibration": str(flags.calibration or "calibrated now")} if flags.auto else {}),
        "positions": positions,
        "operator": operator,
        "scale": scale,
        **cap_settings,
        **gated.pop("record", {}),
        "reference_prompts": str(reference_prompts) if reference_prompts else None,
        "system": system,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }
    _print_generations(rows, row_coeffs, gens, vector, layer, settings, out, gated)


def _one_layer(layer: str) -> bool:
    """Whether a layer flag names one layer (``--coeff auto`` steers one calibrated layer)."""
    try:
        int(layer)
    except ValueError:
        return False
    return True


@contextmanager
def _auto_dir(out: Path | None) -> Iterator[Path]:
    """Where ``generate --coeff auto`` calibrates when no --calibration is given: beside ``--out``
    (``OUT.calibration/``, kept and resumable), else a temporary directory."""
    if out is not None:
        yield out.with_name(out.stem + ".calibration")
        return
    with tempfile.TemporaryDirectory(prefix="steerlab-calibration-") as tmp:
        yield Path(tmp)


def _generate_rows(
    lm, rows, spec, reference, scale, operator, cap_percentile, cap_floor_percentile, system,
    max_new_tokens, temperature, top_p, seed, batch_size, gate=None,
):  # fmt: skip
    """Resolve the steering on the engine (checked before any generation) and generate every row. With a
    CAST gate the condition is built and decided per prompt here, once: the spec acts on the rows that
    pass; returns the per-row gate (``met``, ``similarity``) and what to record of the condition."""
    specs, reference_norms, cap_settings, gated = [], None, {}, {}
    if spec is not None:
        spec.layer_vectors(lm)  # layers and shapes checked before any forward pass
        if scale == "relative":
            reference_norms = lm.mean_residual_norms(reference)
        spec = spec.calibrated(lm, reference)
        spec.interventions(lm, reference_norms)  # validate operators before any work
        if gate is not None:
            condition, record = gate.build(lm, system, batch_size or 16)
            sims = condition_similarities(lm, [condition], gate_samples(rows, system), batch_size or 16)[0]
            met = condition.passes(sims)
            spec = replace(spec, rows=met)  # what resolve_conditions does, kept here for the records
            gated = {"met": met.tolist(), "similarity": sims.tolist(), "record": record}
        specs = [spec]
        if operator == "cap":
            cap_settings = {
                "cap_percentile": cap_percentile,
                "cap_floor_percentile": cap_floor_percentile,
                "cap_ceiling": _per_layer(spec.ceiling),
                "cap_floor": _per_layer(spec.floor),
            }
    gens = lm.generate(
        rows,
        system=system,
        steering=specs,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        reference_norms=reference_norms,
    )
    return gens, cap_settings, gated


def _print_generations(rows, row_coeffs, gens, vector, layer, settings, out, gated=None) -> None:
    """Write the generation records (``--out``) and print them as a table."""
    gated = gated or {}
    records = [
        GenerationRecord(
            prompt_text(p),
            g.text,
            coeff=c if vector else None,
            layer=layer,
            n_new_tokens=g.n_new_tokens,
            finish_reason=g.finish_reason,
            extra={
                **settings,
                **({"condition_met": gated["met"][i], "condition_similarity": gated["similarity"][i]} if gated else {}),
            },
        ).to_json()
        for i, (p, c, g) in enumerate(zip(rows, row_coeffs, gens, strict=True))
    ]
    if out is not None:
        write_jsonl(out, records)
        console.print(f"wrote {len(records)} generations to {out}")
    table = Table(show_lines=True)
    if vector is not None:
        table.add_column("coeff", justify="right")
    if gated:
        table.add_column("gate (sim)", justify="right")
    table.add_column("question", max_width=40)
    table.add_column("completion")
    for r in records:
        gate_cell = [f"{'steer' if r['condition_met'] else 'off'} ({r['condition_similarity']:.4f})"] if gated else []
        table.add_row(*([f"{r['coeff']:g}"] if vector is not None else []), *gate_cell, r["question"], r["text"])
    results.print(table)


def _per_layer(threshold):
    """A cap threshold as recorded in JSON: a number, ``{"layer": τ}`` (keys as strings), or None."""
    return {str(k): v for k, v in threshold.items()} if isinstance(threshold, dict) else threshold


@app.command()
def sweep(
    model: str = ModelOpt,
    vector: Path = vector_option(),
    layers: str = layer_option(None, plural=True, help="Layers to sweep (required unless --coeff auto)."),
    coeffs: str = coeff_option(
        ...,
        plural=True,
        help="Coefficients, e.g. -4,-2,0,2,4; or auto: per layer 0 and 4 coefficients spanning its calibrated "
        "range (from --calibration, or calibrated first on --pairs/--trait into OUT/calibration).",
        auto=True,
    ),
    calibration: Path = CalibrationOpt,
    questions: Path = typer.Option(
        None,
        "--questions",
        "-q",
        help="Questions: .txt, .jsonl or .json (list or trait file). Default with --trait: its eval questions.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (generations.jsonl, margins.csv, sweep.json)."),
    pairs: Path = typer.Option(
        None,
        "--pairs",
        "-p",
        help="Pairs JSONL: adds the behaviour margin per cell (margins.csv); --coeffs auto without --calibration "
        "calibrates on them.",
    ),
    pairs_split: str = typer.Option(None, "--pairs-split", help="Use only pairs with this 'split' (e.g. heldout)."),
    judge: str = JudgeOpt,
    judge_base_url: str = JudgeUrlOpt,
    trait: str = typer.Option(
        None,
        "--trait",
        "-t",
        help="With --judge: built-in trait name or trait file whose eval prompt scores each generation (and, "
        "with --coeffs auto and neither --calibration nor --pairs, whose eval pairs it calibrates on).",
    ),
    positions: str = positions_option(None),
    operator: str = operator_option(),
    scale: str = scale_option(),
    cap_ceiling: float = cap_ceiling_option(),
    cap_floor: float = cap_floor_option(),
    cap_percentile: float = cap_percentile_option(),
    cap_floor_percentile: float = cap_floor_percentile_option(),
    reference_prompts: Path = reference_prompts_option(),
    condition: Path = ConditionOpt,
    condition_layer: int = ConditionLayerOpt,
    condition_threshold: str = ConditionThresholdOpt,
    condition_comparator: str = ConditionComparatorOpt,
    condition_positive: Path = ConditionPositiveOpt,
    condition_negative: Path = ConditionNegativeOpt,
    system: str = typer.Option(None, "--system", "-s"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    seed: int = seed_option("Random seed (sampling with --temperature > 0)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b"),
    controls: int = typer.Option(
        _SWEEP.controls,
        "--controls",
        min=0,
        help="Random directions of the vector's norm, run as extra rows of the same batches: the null band "
        "and one-sided p of an effect (0: off; p cannot go below 1/(K+1), so 19 or more for a test at 0.05).",
    ),
    controls_at: str = typer.Option(
        _SWEEP.controls_at,
        "--controls-at",
        help="Where the --controls run when they are costly. 'reported' (default): at each layer's reported "
        "cell, the largest coefficient (positive first) that stays coherent — judged coherence >= "
        f"{_SWEEP.min_coherence:g} for generated text (none without --judge: nothing reads them), fluency "
        f"drop <= {_SWEEP.max_fluency_drop:g} nat/token for margins; margins steered at --positions response "
        "share prompts and get them at every cell. 'all': every cell (K+1 times the generations, judge calls "
        "and margin rows).",
    ),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
    engine: str = EngineOpt,
    tensor_parallel_size: int = TensorParallelOpt,
    pipeline_parallel_size: int = PipelineParallelOpt,
    gpu_memory_utilization: float = GpuMemoryOpt,
    max_model_len: int = MaxModelLenOpt,
) -> None:
    """Generate every (layer, coefficient, question) cell, coefficients packed per batch.

    Example: steerlab sweep -m smollm2 -v V.safetensors -l 12,16 -c -4,0,4 -q questions.txt -p pairs.jsonl -o out/sweep

    Every effect is read against --controls random directions of the vector's norm, with a one-sided p
    (the coefficient's way): the margin (--pairs, nats/token) and judged text (--trait with --judge,
    0-100), at each layer's reported cell or everywhere (--controls-at). A judged sweep says on stderr
    how many generations, judge calls and margin rows it will make before it starts. Rerunning with the same --out resumes: finished layers are not generated again.
    --scale relative and --cap-percentile are measured on --reference-prompts (default: the questions).
    --condition (CAST) steers only the questions (and pairs) that pass a condition, random controls alike.
    --coeffs auto (steerlab calibrate) sweeps each layer over its own calibrated range.
    """
    flags = AutoFlags.of(coeffs, calibration, pairs, pairs_split, trait).check(vector, operator, sources=False)
    if layers is None and not flags.auto:
        raise SteerlabError("--layers is required (e.g. -l 12 or 10-15), unless --coeffs auto")
    coeff_values = [] if flags.auto else parse_floats(coeffs, "--coeffs")
    check_reference_prompts(reference_prompts, scale, cap_percentile, cap_floor_percentile)
    config = SweepConfig(
        layers or "all",
        coeff_values,
        positions or "all",
        operator,
        scale,
        max_new_tokens,
        temperature,
        seed,
        system,
        batch_size,
        controls=controls,
        controls_at=controls_at,
        cap_ceiling=cap_ceiling,
        cap_floor=cap_floor,
        cap_percentile=cap_percentile,
        cap_floor_percentile=cap_floor_percentile,
    )
    if (judge is None) != (trait is None):
        raise SteerlabError("--judge and --trait go together (the trait's eval prompt is what the judge scores)")
    trait_def = load_trait(trait, "eval") if trait else None
    if questions is None and trait_def is None:
        raise SteerlabError("--questions is required (or give --trait to use its eval questions)")
    qs = load_prompts(questions) if questions is not None else list(trait_def.questions)
    pair_rows = load_pairs(pairs, split=pairs_split) if pairs else None
    reference = load_prompts(reference_prompts) if reference_prompts else qs
    gate = ConditionFlags(
        condition, condition_layer, condition_threshold, condition_comparator, condition_positive, condition_negative
    ).check(True)
    vec = SteeringVector.load(vector)
    scorer = make_judge(judge, base_url=judge_base_url) if judge else None
    config_engine = engine_config(
        engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len
    )
    with make_engine(config_engine, model, device=device, dtype=dtype, adapter=adapter) as lm:
        if flags.auto:
            config = _auto_sweep(flags, lm, vec, vector, out, config, layers, positions, scale, scorer, judge)
        gated, record = gate.build(lm, system, batch_size or 16) if gate is not None else (None, {})
        result = _run_sweep(lm, vec, qs, out, config, pair_rows, scale, reference, scorer, trait_def, gated, {
            **record,
            "vector_path": str(vector),
            **({"calibration": str(calibration or Path(out) / "calibration")} if flags.auto else {}),
            "questions": str(questions),
            "pairs": str(pairs) if pairs else None,
            "adapter": adapter,
            "judge": judge,
            "trait": trait,
            "reference_prompts": str(reference_prompts) if reference_prompts else None,
        })  # fmt: skip
    _print_sweep(result, out, trait)


def _auto_sweep(flags, lm, vec, vector, out, config, layers, positions, scale, scorer, judge):
    """The sweep's config with ``--coeffs auto``: per layer 0 and 4 coefficients spanning its calibrated
    range, at the calibration's positions (calibrated first into OUT/calibration without --calibration)."""
    doc, path, positions = auto_calibration(
        flags, lm, vec, vector, lm.name, Path(out) / "calibration", scale, positions, layers, scorer, judge
    )
    chosen = None if layers is None else parse_layers(layers, lm.n_layers, "--layers")
    grids = sweep_coeffs(doc, path, chosen, scale)
    for layer, grid in grids.items():
        console.print(describe_auto(doc, layer, grid, scale), highlight=False)
    return replace(config, layers=sorted(grids), coeffs=grids, positions=positions)


def _run_sweep(lm, vec, qs, out, config, pair_rows, scale, reference, scorer, trait_def, condition, extra):
    """run_sweep on the engine, with reference norms for scale relative measured on it; a judged sweep
    first says (stderr) how many generations and judge calls it will make."""
    if scorer is not None:
        n_layers = len(parse_layers(config.layers, lm.n_layers, "--layers"))
        console.print(sweep_plan(config, n_layers, len(qs), True, len(pair_rows or [])).describe(), highlight=False)
    reference_norms = lm.mean_residual_norms(reference) if scale == "relative" else None
    return run_sweep(
        lm,
        vec,
        qs,
        out,
        config,
        pairs=pair_rows,
        reference_norms=reference_norms,
        reference_prompts=reference,
        extra_config=extra,
        judge=scorer,
        eval_prompt=trait_def.eval_prompt if trait_def else None,
        condition=condition,
    )


def _print_sweep(result, out, trait) -> None:
    """Say where the generations went; print the margin table."""
    console.print(f"wrote {len(result.generations)} generations to {out / 'generations.jsonl'}")
    if result.margins:
        table = Table(
            title="behaviour margin (positive - negative mean log-likelihood per token); change from "
            "unsteered with its 95% CI; random same-norm directions' band and one-sided p (the coefficient's "
            "way) where they ran (* the reported cell)"
        )
        for col in ("layer", "coeff", "margin", "change [95% CI]", "random band (p)", "pairs moved +/-"):
            table.add_column(col, justify="right")
        for m in result.margins:
            ci = "" if m.get("delta_ci95_lo") is None else f" [{m['delta_ci95_lo']:+.3f}, {m['delta_ci95_hi']:+.3f}]"
            band = (
                "—"
                if m.get("random_p") is None
                else (f"{m['random_lo']:+.3f}..{m['random_hi']:+.3f} (p={m['random_p']:.2g})")
            )
            moved = (
                "—"
                if m.get("steerable_fraction") is None
                else (f"{m['steerable_fraction']:.0%} / {m['anti_steerable_fraction']:.0%}")
            )
            coeff = f"{m['coeff']:g}" + ("*" if m.get("reported") else "")
            table.add_row(str(m["layer"]), coeff, f"{m['margin']:+.4f}", f"{m['delta']:+.4f}{ci}", band, moved)
        results.print(table)
    if result.scores:
        table = Table(
            title=f"judged {trait} score and coherence (mean ± std, n); random directions' band of trait means "
            "and one-sided p where they ran (* the reported cell)"
        )
        for col in ("layer", "coeff", "trait", "coherence", "random band (p)"):
            table.add_column(col, justify="right")
        for r in result.scores:
            fmt = lambda m, s, n: "—" if m is None else f"{m:5.1f} ± {s:4.1f} (n={n})"  # noqa: E731
            band = (
                "—"
                if r.get("random_p") is None
                else f"{r['random_lo']:.1f}..{r['random_hi']:.1f} (p={r['random_p']:.2g})"
            )
            table.add_row(
                str(r["layer"]),
                f"{r['coeff']:g}" + ("*" if r.get("reported") else ""),
                fmt(r["trait_mean"], r["trait_std"], r["trait_n"]),
                fmt(r["coherence_mean"], r["coherence_std"], r["coherence_n"]),
                band,
            )
        results.print(table)
    report_path, _ = build_report(out)
    console.print(f"report: {report_path}")
