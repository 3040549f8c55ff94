"""`steerlab monitor`: projections of activations on a vector, without steering."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..activations.capture import Reduction
from ..errors import SteerlabError
from ..evaluate.monitor import DEFAULT_REDUCTIONS, load_monitor_data, project, projection_rows, summarize
from ..io.atomic import write_json
from ..io.tables import write_csv, write_jsonl
from ..model.layers import parse_layers
from ..model.loading import load_model
from ..progress import console, results
from ..vectors.vector import SteeringVector, steerlab_version
from .app import app
from .options import AdapterOpt, BatchOpt, DeviceOpt, DtypeOpt, ModelOpt, layer_option, vector_option


def summary_path(out: Path) -> Path:
    """The JSON beside ``--out`` with the version, config and per-group summary."""
    return out.with_name(f"{out.stem}.summary.json")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4g}"


@app.command()
def monitor(
    model: str = ModelOpt,
    vector: Path = vector_option(),
    layer: str = layer_option(..., help="Layer(s) to read."),
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help='Chat JSONL ({"messages": [...]}) or generations from steerlab sweep (generations.jsonl or its run directory) / generate --out.',
    ),
    per_turn: bool = typer.Option(
        False, "--per-turn", help="Chat data: one projection per assistant turn (prompt = the conversation up to it)."
    ),
    reductions: str = typer.Option(
        ",".join(DEFAULT_REDUCTIONS),
        "--reductions",
        "--reduction",
        "-r",
        help="Comma-separated: response_avg, prompt_last, prompt_avg, first_k[:K].",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Per-sample rows, .jsonl or .csv (plus OUT_STEM.summary.json with config and summary).",
    ),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Project activations on a vector: (a·v)/‖v‖ per sample, layer and reduction.

    Generations (from sweep/generate) are read by the model as loaded, without steering, so the
    projection shows how much of the trait direction the unsteered model sees in the steered text.
    Summary per group (steering layer and coefficient for sweeps, turn with --per-turn). Example:

        steerlab monitor -m smollm2 -v evil.safetensors -l 12 -d out/sweep --out out/monitor.csv
    """
    if out is not None and out.suffix not in (".jsonl", ".csv"):
        raise SteerlabError(f"--out {out}: expected a file name ending in .jsonl or .csv")
    names = [Reduction.parse(r.strip()).name for r in reductions.split(",") if r.strip()]
    if not names:
        raise SteerlabError(f"--reductions {reductions!r}: no reductions given")
    names = list(dict.fromkeys(names))
    dataset = load_monitor_data(data, per_turn=per_turn)
    vec = SteeringVector.load(vector)
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    if vec.d_model != lm.d_model or vec.n_layers != lm.n_layers:
        raise SteerlabError(
            f"--vector {vector}: shape [{vec.n_layers}, {vec.d_model}] does not match --model {model} "
            f"({lm.n_layers} layers, d_model {lm.d_model})"
        )
    layers = parse_layers(layer, lm.n_layers, "--layer")
    values = project(lm, dataset.samples, vec, layers, names, batch_size=batch_size)
    rows = projection_rows(dataset, values, layers)
    summary = summarize(rows, dataset.group_by, names)
    if out is not None:
        record = {
            "steerlab_version": steerlab_version(),
            "config": {
                "model": model,
                "adapter": adapter,
                "vector": str(vector),
                "layers": layers,
                "data": str(data),
                "kind": dataset.kind,
                "per_turn": per_turn,
                "reductions": names,
                "formula": "(a·v)/‖v‖",
                "rows": str(out),
            },
            "vector": vec.metadata,
            "n_samples": len(dataset.samples),
            "group_by": dataset.group_by,
            "summary": summary,
        }
        if out.suffix == ".csv":
            write_csv(out, rows)
        else:
            write_jsonl(out, rows)
        write_json(summary_path(out), record)

    table = Table(title=f"projection on {vector.name} ((a·v)/‖v‖), {len(dataset.samples)} samples from {data}")
    for col in [*dataset.group_by, "layer", "n"]:
        table.add_column(col, justify="right")
    for name in names:
        table.add_column(f"{name} mean", justify="right")
        table.add_column(f"{name} std", justify="right")
    for s in summary:
        cells = [str(s[k]) if s[k] is not None else "-" for k in [*dataset.group_by, "layer", "n"]]
        for name in names:
            cells += [_fmt(s[f"{name}_mean"]), _fmt(s[f"{name}_std"]).lstrip("+")]
        table.add_row(*cells)
    results.print(table)
    if out is not None:
        console.print(f"wrote {len(rows)} rows to {out} and the summary to {summary_path(out)}")
