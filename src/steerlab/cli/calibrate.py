"""`steerlab calibrate`: the layer and the coefficient range where a vector steers a behaviour."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..engines.factory import make_engine
from ..judge import make_judge
from ..pipelines.artifacts import CALIBRATION_PLOT
from ..pipelines.calibration import CalibrationConfig
from ..progress import OutputConsole, console
from ..vectors.vector import SteeringVector
from .app import app
from .calibration_flags import PairsSplitOpt, held_out_pairs, pairs_option, run_cli_calibration, trait_option
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
    engine_config,
    layer_option,
    parse_floats,
    scale_option,
    seed_option,
    steering_positions_option,
    vector_option,
)

results = OutputConsole()  # stdout: the table is the command's result
_DEFAULTS = CalibrationConfig()  # defaults, written once on the dataclass


def _units(u: dict[str, float] | None, scale: str) -> str:
    if u is None:
        return "—"
    return f"{u[scale]:.3g} ({u['relative']:.3g} rel)" if scale != "relative" else f"{u[scale]:.3g}"


def calibration_table(doc: dict) -> Table:
    """Per layer and direction: the usable range, the largest fluent coefficient and the evidence at c_max."""
    scale = doc["config"]["scale"]
    table = Table(
        title=f"calibration ({scale} coefficients; rel = times the mean residual norm). Effective: "
        f"{doc['criterion']['effective']}. Fluent: {doc['criterion']['fluent']}. * recommended"
    )
    for col in ("layer", "direction", "c_min", "c_max", "largest fluent", "change at c_max [95% CI]", "verdict"):
        table.add_column(col, justify="right" if col not in ("direction", "verdict") else "left")
    rec = doc["recommended"]
    for t in doc["tracks"]:
        mark = " *" if rec and rec["layer"] == t["layer"] and rec["direction"] == t["direction"] else ""
        ci = t["ci95_at_c_max"]
        change = "—" if t["effect_at_c_max"] is None else f"{t['effect_at_c_max']:+.3f}"
        if ci and None not in ci:
            change += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        c_max = t["c_max"]["value"] if t["usable"] and t["c_max"] else None
        table.add_row(
            f"{t['layer']}{mark}",
            t["direction"],
            _units(t["c_min"]["value"], scale),
            _units(c_max, scale) if t["usable"] else "(empty range)",
            _units(t["c_fluent"]["value"], scale),
            change,
            t["verdict_at_c_max"] or "—",
        )
    return table


@app.command()
def calibrate(
    model: str = ModelOpt,
    vector: Path = vector_option(),
    pairs: Path = pairs_option(),
    pairs_split: str = PairsSplitOpt,
    trait: str = trait_option(),
    layers: str = layer_option(None, plural=True, help="Candidate layers (default: five spread over 20-80% of depth)."),
    scale: str = scale_option(),
    direction: str = typer.Option(
        _DEFAULTS.direction,
        "--direction",
        help="add (coefficients > 0, meant to raise the behaviour) | subtract (< 0, to lower it) | both.",
    ),
    positions: str = steering_positions_option(
        _DEFAULTS.positions,
        help="Where steering acts: response (default: the last prompt token and every answer token; every "
        "candidate shares the prompts' pass) | all | prompt. generate/sweep --coeff auto steer there too.",
    ),
    controls: int = typer.Option(
        _DEFAULTS.controls,
        "--controls",
        help="Random directions of the vector's norm per candidate (19: the fewest for one-sided p <= 0.05; with "
        "fewer, effective means outside all of them).",
    ),
    min_effect: float = typer.Option(
        _DEFAULTS.min_effect,
        "--min-effect",
        help="Smallest change in the behaviour margin (nats/token, the intended way) that counts as an effect.",
    ),
    max_fluency_drop: float = typer.Option(
        _DEFAULTS.max_fluency_drop,
        "--max-fluency-drop",
        help="Largest drop in the held-out answers' mean log-likelihood (nats/token) that still counts as fluent.",
    ),
    judge: str = JudgeOpt,
    judge_base_url: str = JudgeUrlOpt,
    min_coherence: float = typer.Option(
        _DEFAULTS.min_coherence,
        "--min-coherence",
        help="With --judge: fluent also needs the steered answers' mean judged coherence (0-100) at least this.",
    ),
    search_range: str = typer.Option(
        None,
        "--range",
        help="LO,HI: coefficient magnitudes searched, in --scale units (default: 0.005 to 5 times the mean "
        "residual norm at each layer).",
    ),
    grid: int = typer.Option(_DEFAULTS.grid, "--grid", help="Candidates of the first step (log-spaced)."),
    steps: int = typer.Option(_DEFAULTS.steps, "--steps", help="Bisection steps after the first."),
    per_bracket: int = typer.Option(
        _DEFAULTS.per_bracket, "--per-bracket", help="Candidates inside each open bracket per step."
    ),
    tolerance: float = typer.Option(
        _DEFAULTS.tolerance, "--tolerance", help="A bracket whose hi/lo ratio is at most this is closed."
    ),
    trait_questions: int = typer.Option(10, "--trait-questions", min=1, help="--trait: eval questions answered."),
    max_new_tokens: int = typer.Option(
        _DEFAULTS.max_new_tokens, "--max-new-tokens", "-n", min=1, help="Judged answers' (and --trait answers') length."
    ),
    seed: int = seed_option("Random seed of the random directions and the bootstrap."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, "--batch-size", "-b", min=1),
    out: Path = typer.Option(
        Path("out/calibration"), "--out", "-o", help="Run directory: calibration.json, calibration.html (resumes)."
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
    """Find the layer and the coefficient range where a vector steers a behaviour: per layer, from the
    smallest coefficient whose effect stands out from random directions to the largest that keeps the
    model fluent.

    Example: steerlab calibrate -m smollm2 -v deception.safetensors -p heldout.jsonl -l 20-26 -o out/cal

    On held-out pairs (--pairs, or --trait's eval pairs), a log-scale bisection per layer and direction
    finds c_min, the smallest coefficient whose change in the behaviour margin is at least --min-effect
    nats/token and beyond --controls random directions of the vector's norm (one-sided p <= 0.05 with
    19), and c_max, the largest that keeps the answers' likelihood within --max-fluency-drop (and, with
    --judge, the judged coherence at least --min-coherence). Every candidate of a step, and its random
    directions, run as rows of one batch. An empty range is an answer: no coefficient is both.
    Writes OUT/calibration.json (each bound in raw, unit and relative units, every point with its
    evidence, the recommended layer) and OUT/calibration.html; generate/sweep --coeff auto read it.
    """
    from ..errors import SteerlabError

    if pairs is None and trait is None:
        raise SteerlabError("calibrate: give --pairs FILE or --trait NAME (held-out pairs to calibrate on)")
    if pairs is not None and trait is not None:
        raise SteerlabError("--pairs and --trait: give one to calibrate on")
    config = CalibrationConfig(
        layers=layers, scale=scale, direction=direction, positions=positions, controls=controls,
        min_effect=min_effect, max_fluency_drop=max_fluency_drop, min_coherence=min_coherence,
        search_range=parse_floats(search_range, "--range") if search_range else None, grid=grid, steps=steps,
        per_bracket=per_bracket, tolerance=tolerance, max_new_tokens=max_new_tokens, seed=seed,
        batch_size=batch_size,
    )  # fmt: skip
    vec = SteeringVector.load(vector)
    scorer = make_judge(judge, base_url=judge_base_url) if judge else None
    engines = engine_config(engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len)
    with make_engine(engines, model, device=device, dtype=dtype, adapter=adapter) as lm:
        held, source = held_out_pairs(lm, pairs, pairs_split, trait, out, trait_questions, max_new_tokens)
        result = run_cli_calibration(lm, vec, vector, held, source, out, config, scorer, judge)
    results.print(calibration_table(result.doc))
    for line in result.reading:
        results.print(f"- {line}", highlight=False)
    console.print(f"wrote {result.path} and {out / CALIBRATION_PLOT}")
