"""`steerlab condition`: calibrate a CAST condition (conditional steering) on example prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..errors import SteerlabError
from ..extract.condition import extract_condition_vector
from ..formats.condition_examples import condition_examples, load_condition_examples
from ..io.atomic import write_json
from ..model.loading import load_model
from ..progress import OutputConsole, console
from ..steering.condition_threshold import ConditionCalibration, calibrate_condition
from ..steering.conditions import CONDITION_REDUCTIONS, parse_comparator
from ..vectors.vector import SteeringVector
from .app import app
from .options import AdapterOpt, BatchOpt, DeviceOpt, DtypeOpt, ModelOpt, check_out, layer_option

results = OutputConsole()  # stdout: the table is the command's result

ExamplesOpt = typer.Option(
    None, "--examples", help="Built-in condition examples (cooking): train lines fit, held-out lines are scored."
)
PositiveOpt = typer.Option(None, "--positive", help="Prompts that should pass the gate (.txt, .jsonl or .json).")
NegativeOpt = typer.Option(None, "--negative", help="Prompts that should not pass the gate (.txt, .jsonl or .json).")


def examples_from_flags(
    examples: str | None, positive: Path | None, negative: Path | None
) -> tuple[tuple[list[Any], list[Any]], tuple[list[Any], list[Any]] | None, str]:
    """(fit examples, held-out examples or None, description) from ``--examples`` or ``--positive`` +
    ``--negative``. Raises SteerlabError for neither, both, or one file without the other."""
    if examples is not None and (positive is not None or negative is not None):
        raise SteerlabError("give --examples NAME or --positive/--negative files, not both")
    if examples is not None:
        return condition_examples(examples, "train"), condition_examples(examples, "heldout"), f"built-in {examples}"
    if positive is None or negative is None:
        raise SteerlabError(
            "condition examples: give --positive FILE and --negative FILE (or --examples cooking, built in)"
        )
    return load_condition_examples(positive, negative), None, f"{positive} / {negative}"


def calibration_table(calib: ConditionCalibration) -> Table:
    """The per-layer scan as a table (the chosen layer marked)."""
    table = Table(
        title="condition similarity sim = cos(h, tanh(P h)), P = c cᵀ/cᵀc, h = the prompt's "
        f"{calib.condition.reduction} at layer L: threshold, accuracy, pass rates and ranges per layer"
    )
    for col in ("layer", "θ", "steer if", "accuracy", "positives pass", "negatives pass", "positives", "negatives"):
        table.add_column(col, justify="right")
    if calib.heldout is not None:
        table.add_column("held-out accuracy", justify="right")
    for row in calib.layers:
        mark = " *" if row["layer"] == calib.condition.layer else ""
        cells = [
            f"{row['layer']}{mark}",
            f"{row['threshold']:.4f}",
            f"sim {row['comparator']} θ",
            f"{row['accuracy']:.0%}",
            f"{row['positive_pass']:.0%}",
            f"{row['negative_pass']:.0%}",
            f"{row['positive']['min']:.4f}..{row['positive']['max']:.4f}",
            f"{row['negative']['min']:.4f}..{row['negative']['max']:.4f}",
        ]
        if calib.heldout is not None:
            cells.append("-" if row["heldout_accuracy"] is None else f"{row['heldout_accuracy']:.0%}")
        table.add_row(*cells)
    return table


@app.command("condition")
def condition_cmd(
    model: str = ModelOpt,
    vector: Path = typer.Option(
        None,
        "--vector",
        "-v",
        help="Condition vector (.safetensors, .gguf, .pt). Default: extracted from the (train) examples: "
        "mean prompt activation of positives - negatives.",
    ),
    layer: str = layer_option("all", help="Candidate condition layers; the most accurate is kept."),
    examples: str = ExamplesOpt,
    positive: Path = PositiveOpt,
    negative: Path = NegativeOpt,
    threshold: str = typer.Option(
        "auto", "--threshold", help="auto (the most accurate θ) or a cosine in [-1, 1] (for one layer)."
    ),
    comparator: str = typer.Option(
        "auto", "--comparator", help="auto, > (steer when the similarity is above θ) or < (below)."
    ),
    reduction: str = typer.Option(
        "prompt_avg", "--reduction", "-r", help="prompt_avg (mean over the prompt's tokens) | prompt_last."
    ),
    system: str = typer.Option(None, "--system", "-s", help="System prompt the prompts are rendered with."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the condition here (condition.json, for --condition)."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Calibrate a CAST condition: the layer, threshold and comparator that best separate prompts to steer.

    Conditional activation steering (Lee et al. 2024) steers a prompt only when its hidden state h at
    the condition layer (the mean over its tokens) lies along a condition direction c: the similarity
    cos(h, tanh(P h)), P = c cᵀ/cᵀc, a cosine in [-1, 1], must be above (>) or below (<) a threshold θ.
    For each candidate layer the most accurate θ on the examples is found; the table (stdout) gives
    accuracy, pass rates and both groups' similarity ranges, and --out writes the best as condition.json
    for generate/sweep --condition. Example:

        steerlab condition -m smollm2 --examples cooking -l 4-28 -o cooking.json
        steerlab generate -m smollm2 -v V -l 12 -c 4 --condition cooking.json "How do I poach an egg?"
    """
    if out is not None:
        check_out(out, ".json")
    if reduction not in CONDITION_REDUCTIONS:
        raise SteerlabError(f"--reduction {reduction!r}: expected one of {', '.join(CONDITION_REDUCTIONS)}")
    cmp = None if comparator.strip().lower() == "auto" else parse_comparator(comparator, "--comparator")
    fit_examples, heldout, source = examples_from_flags(examples, positive, negative)
    vec = SteeringVector.load(vector) if vector is not None else None
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    if vec is None:
        vec = extract_condition_vector(lm, *fit_examples, reduction=reduction, system=system, batch_size=batch_size)
    calib = calibrate_condition(
        lm, vec, layer, *fit_examples, threshold=threshold, comparator=cmp, reduction=reduction,
        system=system, heldout=heldout, batch_size=batch_size,
    )  # fmt: skip
    if out is not None:
        direction = calib.condition.direction(lm)
        write_json(
            out,
            calib.to_json(
                direction, model=model, vector=str(vector) if vector else "extracted from the examples",
                examples=source, system=system,
            ),
        )  # fmt: skip
    results.print(calibration_table(calib))
    c = calib.condition
    held = (
        "" if calib.heldout is None else f"; held-out accuracy {calib.heldout['accuracy']:.0%} ({calib.heldout['n']})"
    )
    results.print(
        f"condition: layer {c.layer}, steer when sim {c.comparator} {c.threshold:.4f}; accuracy "
        f"{calib.fit.accuracy:.0%} on {calib.positive['n']} + {calib.negative['n']} examples ({source}){held}",
        highlight=False,
    )
    if out is not None:
        console.print(f"wrote {out}")
