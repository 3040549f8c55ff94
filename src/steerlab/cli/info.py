"""`steerlab info`: what a model spec loads to."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..model.loading import load_model
from ..progress import results
from .app import app
from .options import AdapterOpt, DeviceOpt, DtypeOpt


@app.command()
def info(
    model: str = typer.Argument(..., help="Model spec: smollm2, HF id, directory, .gguf, BASE+ADAPTER."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Show architecture, layer count, d_model, dtype, device and chat-template facts of a model."""
    facts = load_model(model, device=device, dtype=dtype, adapter=adapter).info()
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    table = Table(title=f"steerlab info {model}", show_header=False)
    for key, value in facts.items():
        table.add_row(key, str(value))
    results.print(table)
