"""`steerlab persona ...`: the persona-vector pipeline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..engines.factory import make_engine
from ..errors import SteerlabError
from ..formats.traits import load_trait
from ..judge import make_judge
from ..model.loading import load_model
from ..pipelines.persona import PersonaConfig, run_persona
from ..pipelines.persona_traits import PersonaTraitsConfig, PersonaTraitsResult, resolve_traits, run_persona_traits
from ..pipelines.trait_model_diff import TRAIT_FINETUNE
from ..progress import console, results
from ..steering.steerer import parse_layers
from .app import app, new_group
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
    parse_floats,
    steering_positions_option,
)

persona_app = new_group("Persona vectors (Chen et al. 2025): prompted personas, judged, filtered, extracted.")
app.add_typer(persona_app, name="persona")


_DEFAULTS = PersonaConfig()
_STUDY = PersonaTraitsConfig()


@persona_app.command("extract")
def extract(
    model: str = ModelOpt,
    trait: list[str] = typer.Option(
        ...,
        "--trait",
        "-t",
        help="Built-in trait name (steerlab traits list) or a trait JSON file; repeat for several traits, or 'all' for every built-in trait (then the multi-trait study runs, see below).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; rerun with the same --out to resume."),
    judge: str = typer.Option("local", "--judge", "-j", help=JudgeOpt.help),
    judge_base_url: str = JudgeUrlOpt,
    samples_per_question: int = typer.Option(
        _DEFAULTS.samples_per_question,
        "--samples-per-question",
        min=1,
        help="Answers per question and instruction (use --temperature > 0 for more than 1).",
    ),
    max_questions: int = typer.Option(
        _DEFAULTS.max_questions, "--max-questions", min=1, help="Use only the first K questions."
    ),
    max_instructions: int = typer.Option(
        _DEFAULTS.max_instructions, "--max-instructions", min=1, help="Use only the first K instruction pairs."
    ),
    threshold: float = typer.Option(
        _DEFAULTS.threshold, "--threshold", help="Keep pairs with positive score >= T and negative < 100 - T."
    ),
    min_coherence: float = typer.Option(
        _DEFAULTS.min_coherence, "--min-coherence", help="Both answers' coherence must be >= this."
    ),
    filter_pairs: bool = typer.Option(
        _DEFAULTS.filter,
        "--filter/--no-filter",
        help="--no-filter: keep every (positive, negative) pair, not only the effective ones (for a judge that cannot score); recorded in the vectors' metadata and the report.",
    ),
    max_new_tokens: int = typer.Option(_DEFAULTS.max_new_tokens, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(_DEFAULTS.temperature, "--temperature", min=0.0),
    seed: int = typer.Option(
        _DEFAULTS.seed,
        "--seed",
        help="Random seed: sampling, and with several traits the random-direction controls and bootstrap resamples.",
    ),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, "--batch-size", "-b"),
    coeffs: str = typer.Option(
        None,
        "--coeffs",
        help=f"Several traits: steering coefficients at the best layer, comma-separated (default {','.join(f'{c:g}' for c in _STUDY.coeffs)}).",
    ),
    controls: int = typer.Option(
        None,
        "--controls",
        min=0,
        help=f"Several traits: random same-norm directions per condition (default {_STUDY.controls}; 0: off).",
    ),
    layers: str = typer.Option(
        None,
        "--layers",
        help="Several traits: candidate layers of the layer scan, e.g. 8-16 or 6,9,12 (default: five spread over 20-80% of the depth; layer L = output of block L).",
    ),
    scan_coeff: float = typer.Option(
        None, "--scan-coeff", help=f"Several traits: coefficient of the layer scan (default {_STUDY.scan_coeff:g})."
    ),
    steering_positions: str = steering_positions_option(
        None,
        f"Several traits: where steering acts (default {_STUDY.positions}: the last prompt token and every answer token; all | prompt | response, as persona-vectors' --steering_type).",
    ),
    eval_questions: int = typer.Option(
        None,
        "--eval-questions",
        min=1,
        help=f"Several traits: held-out eval questions for the eval pairs and steered answers (default {_STUDY.eval_questions}).",
    ),
    model_diff: bool = typer.Option(
        False,
        "--model-diff",
        help="Several traits: also fine-tune the model on each trait's persona answers (LoRA, without their "
        "instructions) and add its model-diff direction, model_diff:<trait>, to the trait x trait cosine matrix "
        "(one fine-tune per trait; off by default).",
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
    """Generate answers under positive/negative persona system prompts, judge them, keep effective
    pairs, and write persona vectors (response_avg, prompt_avg, prompt_last) for every layer.

    With several traits (-t evil -t sycophantic, or -t all) the model and judge load once and each
    trait gets DIR/<trait>/ (the single-trait layout) plus its steering evidence on held-out eval
    questions: best layer (layer scan at --scan-coeff: the largest margin increase with a fluency drop
    of at most 1 nat/token), the behaviour margin per coefficient with bootstrap 95% intervals,
    --controls random directions and the prompting baseline, judged scores when the judge can score;
    DIR/traits.json adds the trait x trait cosine per layer with the random band. A trait that fails
    is recorded and the others go on; the command then exits with status 2 naming it.

    Example:

        steerlab persona extract -m smollm2 -t humorous -j local -o out/humorous --max-questions 10
    """
    study_flags = {
        "--coeffs": coeffs,
        "--controls": controls,
        "--layers": layers,
        "--scan-coeff": scan_coeff,
        "--eval-questions": eval_questions,
        "--steering-positions": steering_positions,
        "--model-diff": model_diff or None,
    }
    engines = engine_config(engine, tensor_parallel_size, pipeline_parallel_size, gpu_memory_utilization, max_model_len)
    several = len(trait) > 1 or trait == ["all"]
    if not several and any(v is not None for v in study_flags.values()):
        given = ", ".join(k for k, v in study_flags.items() if v is not None)
        raise SteerlabError(f"{given}: only with several traits (repeat -t, or -t all)")
    config = PersonaConfig(
        samples_per_question=samples_per_question,
        max_questions=max_questions,
        max_instructions=max_instructions,
        threshold=threshold,
        min_coherence=min_coherence,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
        filter=filter_pairs,
    )
    if several:
        specs = resolve_traits(trait)  # bad names fail before the model loads
        study = PersonaTraitsConfig(
            persona=config,
            seed=seed,
            **{
                k: v
                for k, v in (
                    ("coeffs", parse_floats(coeffs, "--coeffs") if coeffs is not None else None),
                    ("controls", controls),
                    ("scan_coeff", scan_coeff),
                    ("eval_questions", eval_questions),
                    ("positions", steering_positions),
                    ("model_diff", TRAIT_FINETUNE if model_diff else None),
                )
                if v is not None
            },
        )
        lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
        if layers is not None:
            study.layers = parse_layers(layers, lm.n_layers, "--layers")
        scorer = make_judge(judge, base_url=judge_base_url)
        with make_engine(engines, model, lm, dtype=dtype) as generator:
            result = run_persona_traits(
                lm,
                [(s.extract, s.eval) if s.held_out else s.extract for s in specs],
                scorer,
                out,
                study,
                judge_name=judge,
                engine=generator,
            )
        _print_study(result, out)
        return
    trait_def = load_trait(trait[0], "extract")
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    scorer = make_judge(judge, base_url=judge_base_url)
    with make_engine(engines, model, lm, dtype=dtype) as generator:
        result = run_persona(lm, trait_def, scorer, out, config, judge_name=judge, engine=generator)
    table = Table(title=f"persona extract: {trait_def.name}")
    table.add_column("")
    table.add_column("value")
    for key, value in result.counts.items():
        table.add_row(key, str(value))
    answers = result.answer_counts
    table.add_row("answers unscored by the judge", f"{answers['unscored']} of {answers['answers']}")
    table.add_row("pairs averaged", f"{result.n_pairs} ({'unfiltered' if result.filter == 'none' else 'effective'})")
    for stage, seconds in result.timings.items():
        table.add_row(f"{stage} (s)", f"{seconds:.1f}")
    results.print(table)
    if result.filter == "none":
        console.print(
            f"--no-filter: the vectors average all {result.n_pairs} pairs, unfiltered "
            f"({result.n_effective} would pass the filter); their metadata says filter=none"
        )
    for reduction, path in result.vectors.items():
        console.print(f"{reduction}: {path}")


def _print_study(result: PersonaTraitsResult, out: Path) -> None:
    """The multi-trait table (one row per trait), the readings, and an error naming failed traits."""
    table = Table(title="persona extract: traits (change in margin, nats/token, at the largest coherent coefficient)")
    for col in (
        "trait",
        "pairs",
        "best layer",
        "coeff",
        "effect [95% CI]",
        "random band",
        "p (one-sided)",
        "steerable",
        "anti",
        "vs prompting [95% CI]",
    ):
        table.add_column(col)

    def num(v, fmt="{:+.3f}"):
        return "-" if v is None else fmt.format(v)

    for row in result.table:
        if row["status"] != "ok":
            table.add_row(row["trait"], "failed", "", "", "", "", "", "", "", "")
            continue
        pairs = f"{row['pairs_averaged']}" + (" (unfiltered)" if row["filter"] == "none" else " effective")
        table.add_row(
            row["trait"],
            pairs,
            str(row["best_layer"]),
            num(row["coeff"], "{:g}"),
            f"{num(row['effect'])} [{num(row['effect_lo'])}, {num(row['effect_hi'])}]",
            f"[{num(row['random_lo'])}, {num(row['random_hi'])}]",
            num(row["p"], "{:.2g}"),
            num(row["steerable_fraction"], "{:.0%}"),
            num(row["anti_steerable_fraction"], "{:.0%}"),
            f"{num(row['vs_prompting'], '{:.0%}')} [{num(row['vs_prompting_lo'], '{:.0%}')}, "
            f"{num(row['vs_prompting_hi'], '{:.0%}')}]",
        )
    results.print(table)
    for name, entry in result.traits.items():
        results.print(
            entry["reading"] if entry["status"] == "ok" else f"{name}: failed: {entry['error']}", highlight=False
        )
    if result.cosine:
        band = result.cosine["random_band"]["band"]
        results.print(f"trait x trait cosine per layer in {result.path} (random directions: 95% of |cos| < {band:.3f})")
    console.print(f"wrote {result.path} and {result.run_dir / 'traits.csv'}; steerlab report {out}")
    if result.failed:
        names = ", ".join(result.failed)
        raise SteerlabError(
            f"{len(result.failed)} of {len(result.traits)} traits failed: {names} (reasons above and "
            f"in {result.path}); the other traits' results are saved in {out}"
        )


@persona_app.command("monitor")
def monitor(
    model: str = ModelOpt,
    trait: str = typer.Option(
        ..., "--trait", "-t", help="Built-in trait name or trait file (its eval questions are used)."
    ),
    vector: Path = typer.Option(..., "--vector", "-v", help="Persona vector (.safetensors)."),
    layer: int = typer.Option(..., "--layer", "-l", help="Layer to steer and monitor (output of block L)."),
    coeff: float = typer.Option(4.0, "--coeff", "-c", help="Coefficient for the steered condition."),
    max_questions: int = typer.Option(8, "--max-questions", min=1),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", "-n", min=1),
    out: Path = typer.Option(
        None, "--out", "-o", help="Write projections and texts to this .json and a box plot beside it (.html)."
    ),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Compare baseline, prompted (positive persona) and steered responses by their projection on
    the persona vector (box plot + table)."""
    import plotly.graph_objects as go

    from ..evaluate.persona_eval import persona_monitor
    from ..io.atomic import write_json
    from ..report.plots import write_figure
    from ..vectors.vector import SteeringVector
    from .options import check_out

    if out is not None:
        check_out(out, ".json")
    trait_def = load_trait(trait, "eval")
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    vec = SteeringVector.load(vector)
    vec.check_compatible(lm.n_layers, lm.d_model, lm.name)
    doc = persona_monitor(lm, trait_def, vec, lm.check_layer(layer), coeff, max_questions, max_new_tokens)
    table = Table(title=doc["title"])
    for col in ("condition", "mean projection", "n"):
        table.add_column(col)
    for row in doc["summary"]:
        table.add_row(row["condition"], f"{row['mean']:+.3f}", str(row["n"]))
    results.print(table)
    if out is not None:
        write_json(out, {**doc, "config": {"model": model, "trait": trait, "vector": str(vector), "coeff": coeff}})
        fig = go.Figure([go.Box(y=v, name=k, boxpoints="all") for k, v in doc["groups"].items()])
        fig.update_layout(title=doc["title"], yaxis_title="(a·v)/‖v‖", template="plotly_white")
        write_figure(out.with_suffix(".html"), fig)
        console.print(f"wrote {out} and {out.with_suffix('.html')}")
