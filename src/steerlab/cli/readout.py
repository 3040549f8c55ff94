"""`steerlab inspect`: read a vector per layer — logit lens, norm against the residual norm, cosines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..evaluate.readout import DEFAULT_REFERENCE_PROMPTS, DEFAULT_TOP_K, readout_vector
from ..formats.prompts import load_prompts
from ..io.atomic import write_json
from ..model.loading import load_model
from ..progress import OutputConsole, console
from ..vectors.vector import SteeringVector
from .app import app
from .compare import default_names
from .options import AdapterOpt, BatchOpt, DeviceOpt, DtypeOpt, ModelOpt, check_out, layer_option

results = OutputConsole()  # stdout: the table is the command's result


def _tokens(entries: list[dict[str, Any]]) -> str:
    return " ".join(json.dumps(e["token"], ensure_ascii=False) for e in entries)


def readout_table(doc: dict[str, Any]) -> Table:
    """The readout document as a rich table: one row per layer (norms, tokens, cosines)."""
    table = Table(
        title=f"{doc['name']} read by {doc['model']}: logit lens (final norm + unembedding), "
        f"norm vs mean residual norm on {doc['reference'].get('n_prompts', '?')} reference prompts"
    )
    for col in ("layer", "‖v‖", "mean ‖h‖", "‖v‖/‖h‖"):
        table.add_column(col, justify="right")
    table.add_column(f"promoted (top {doc['top_k']})")
    table.add_column(f"suppressed (top {doc['top_k']})")
    for name in doc["compare"]:
        table.add_column(f"cos {name}", justify="right")
    for row in doc["layers"]:
        ratio = row["relative_norm"]
        cosines = [("-" if c is None else f"{c:+.3f}") for c in row["cosine"].values()]
        table.add_row(
            str(row["layer"]),
            f"{row['norm']:.4g}",
            f"{row['residual_norm']:.4g}",
            "-" if ratio is None else f"{ratio:.3g}",
            "(zero)" if row["zero"] else _tokens(row["promoted"]),
            "(zero)" if row["zero"] else _tokens(row["suppressed"]),
            *cosines,
        )
    return table


@app.command("inspect")
def inspect_vector(
    vector: Path = typer.Argument(..., help="The vector to read (.safetensors, .gguf or persona-vectors .pt)."),
    model: str = ModelOpt,
    layer: str = layer_option(None, help="Layers to read (default: every layer the vector holds)."),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", min=1, help="Promoted and suppressed tokens per layer."),
    compare: list[Path] = typer.Option(
        None, "--compare", help="Another vector to give the cosine with, per layer (repeat the flag for several)."
    ),
    reference_prompts: Path = typer.Option(
        None,
        "--reference-prompts",
        help="Prompts (.txt, .jsonl or .json) for the mean residual norm per layer "
        f"(default: the first {DEFAULT_REFERENCE_PROMPTS} built-in generic prompts).",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Write the full readout here (a .json file)."),
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    adapter: str = AdapterOpt,
) -> None:
    """Read a vector per layer: the tokens it promotes and suppresses, its size, its cosines.

    For each layer L (the output of block L): the logit lens of the direction — the model's own
    final norm and unembedding applied to the vector's row L, lens(v) = U(N(v)) − U(N(0)) (N: final
    norm, U: unembedding; the activation difference lens of Minder et al. 2025) — as the top-k
    promoted and suppressed tokens; its L2 norm against the mean residual norm ‖h‖ at L on reference
    prompts (activation units; ‖v‖/‖h‖ = 1 adds a vector as long as the residual stream); and its
    cosine with each --compare vector. A table goes to stdout, the full readout (token ids, logits)
    to --out. Example:

        steerlab inspect deception.safetensors -m smollm2 -l 10-20 --compare persona.safetensors -o readout.json
    """
    if out is not None:
        check_out(out, ".json")
    vec = SteeringVector.load(vector)
    others = list(compare or [])
    loaded = {name: SteeringVector.load(p) for name, p in zip(default_names(others), others, strict=True)}
    prompts = load_prompts(reference_prompts) if reference_prompts else None
    lm = load_model(model, device=device, dtype=dtype, adapter=adapter)
    doc = readout_vector(
        lm, vec, layer, top_k=top_k, compare=loaded, prompts=prompts, source=vector, batch_size=batch_size
    )
    if reference_prompts:
        doc["reference"]["prompts"] = str(reference_prompts)
    doc["compare_files"] = {name: str(p) for name, p in zip(loaded, others, strict=True)}
    if out is not None:
        write_json(out, doc)
    results.print(readout_table(doc))
    if out is not None:
        console.print(f"wrote {out}")
