"""`steerlab persona ...`: the persona-vector pipeline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..formats.traits import load_trait
from ..judge import make_judge
from ..model.loading import load_model
from ..pipelines.persona import PersonaConfig, run_persona
from ..progress import console
from .app import app, new_group
from .options import AdapterOpt, DeviceOpt, DtypeOpt, JudgeOpt, JudgeUrlOpt, ModelOpt

persona_app = new_group("Persona vectors (Chen et al. 2025): prompted personas, judged, filtered, extracted.")
app.add_typer(persona_app, name="persona")



_DEFAULTS = PersonaConfig()


@persona_app.command("extract")
def extract(
    model: str = ModelOpt,
    trait: str = typer.Option(..., "--trait", "-t", help="Built-in trait name (steerlab traits list) or a trait JSON file."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory; rerun with the same --out to resume."),
    judge: str = typer.Option("local", "--judge", "-j", help=JudgeOpt.help),
    judge_base_url: str = JudgeUrlOpt,
    samples_per_question: int = typer.Option(_DEFAULTS.samples_per_question, "--samples-per-question", min=1, help="Answers per question and instruction (use --temperature > 0 for more than 1)."),
    max_questions: int = typer.Option(_DEFAULTS.max_questions, "--max-questions", min=1, help="Use only the first K questions."),
    max_instructions: int = typer.Option(_DEFAULTS.max_instructions, "--max-instructions", min=1, help="Use only the first K instruction pairs."),
    threshold: float = typer.Option(_DEFAULTS.threshold, "--threshold", help="Keep pairs with positive score >= T and negative < 100 - T."),
    min_coherence: float = typer.Option(_DEFAULTS.min_coherence, "--min-coherence", help="Both answers' coherence must be >= this."),
    filter_pairs: bool = typer.Option(_DEFAULTS.filter, "--filter/--no-filter", help="--no-filter: keep every (positive, negative) pair, not only the effective ones (for a judge that cannot score); recorded in the vectors' metadata and the report."),
    max_new_tokens: int = typer.Option(_DEFAULTS.max_new_tokens, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(_DEFAULTS.temperature, "--temperature", min=0.0),
    seed: int = typer.Option(_DEFAULTS.seed, "--seed"),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, "--batch-size", "-b"),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Generate answers under positive/negative persona system prompts, judge them, keep effective
    pairs, and write persona vectors (response_avg, prompt_avg, prompt_last) for every layer.

    Example: steerlab persona extract -m smollm2 -t humorous -j local -o out/humorous --max-questions 10
    """
    trait_def = load_trait(trait, "extract")
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    scorer = make_judge(judge, base_url=judge_base_url)
    config = PersonaConfig(samples_per_question=samples_per_question, max_questions=max_questions,
                           max_instructions=max_instructions, threshold=threshold, min_coherence=min_coherence,
                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size,
                           filter=filter_pairs)
    result = run_persona(lm, trait_def, scorer, out, config, judge_name=judge)
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
    console.print(table)
    if result.filter == "none":
        console.print(f"--no-filter: the vectors average all {result.n_pairs} pairs, unfiltered "
                      f"({result.n_effective} would pass the filter); their metadata says filter=none")
    for reduction, path in result.vectors.items():
        console.print(f"{reduction}: {path}")


@persona_app.command("monitor")
def monitor(
    model: str = ModelOpt,
    trait: str = typer.Option(..., "--trait", "-t", help="Built-in trait name or trait file (its eval questions are used)."),
    vector: Path = typer.Option(..., "--vector", "-v", help="Persona vector (.safetensors)."),
    layer: int = typer.Option(..., "--layer", "-l", help="Layer to steer and monitor (output of block L)."),
    coeff: float = typer.Option(4.0, "--coeff", "-c", help="Coefficient for the steered condition."),
    max_questions: int = typer.Option(8, "--max-questions", min=1),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", "-n", min=1),
    out: Path = typer.Option(None, "--out", "-o", help="Write projections and texts to this .json and a box plot beside it (.html)."),
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
    console.print(table)
    if out is not None:
        write_json(out, {**doc, "config": {"model": model, "trait": trait, "vector": str(vector), "coeff": coeff}})
        fig = go.Figure([go.Box(y=v, name=k, boxpoints="all") for k, v in doc["groups"].items()])
        fig.update_layout(title=doc["title"], yaxis_title="(a·v)/‖v‖", template="plotly_white")
        write_figure(out.with_suffix(".html"), fig)
        console.print(f"wrote {out} and {out.with_suffix('.html')}")
