"""`steerlab demo`: the end-to-end job on the embedded default model (offline).

Interim version (until the full study pipeline lands): load smollm2, extract a contrastive
deception vector from the built-in training pairs, measure the behaviour margin on held-out pairs
at a few coefficients, and print greedy answers to held-out questions at each coefficient.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..atomic import write_json
from ..extract import extract_contrastive
from ..generation import expand_grid, generate_batch
from ..margin import behaviour_margin
from ..models import load_model
from ..pairs import builtin_pairs_path, load_pairs
from ..progress import console
from ..steering import SteeringSpec
from .app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Run directory."),
    model: str = typer.Option("smollm2", "--model", "-m", help="Model spec (default: the embedded smollm2)."),
    layer: int = typer.Option(10, "--layer", "-l", help="Layer to steer (output of block L)."),
    n_train: int = typer.Option(96, "--train-pairs", help="Training pairs for the contrastive vector."),
    n_heldout: int = typer.Option(32, "--heldout-pairs", help="Held-out pairs for the margin."),
) -> None:
    """Extract a deception vector on the embedded model, steer with it, and show the effect."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    lm = load_model(model)
    timings["load_s"] = time.perf_counter() - start
    path = builtin_pairs_path("deception")
    train = load_pairs(path, split="train")[:n_train]
    held = load_pairs(path, split="heldout")[:n_heldout]

    start = time.perf_counter()
    vector = extract_contrastive(lm, train)
    vector.save(out / "vectors" / "contrastive.safetensors")
    timings["extract_s"] = time.perf_counter() - start

    coeffs = [-4.0, -2.0, 0.0, 2.0, 4.0]
    start = time.perf_counter()
    margins = behaviour_margin(lm, held, SteeringSpec(vector, layer), coeffs=coeffs)
    timings["margin_s"] = time.perf_counter() - start
    table = Table(title=f"behaviour margin on {len(held)} held-out pairs, layer {layer} (deceptive − honest log-lik/token)")
    table.add_column("coeff", justify="right")
    table.add_column("margin", justify="right")
    for c, m in zip(margins.coeffs, margins.mean, strict=True):
        table.add_row(f"{c:+g}", f"{m:+.4f}")
    console.print(table)

    questions = [p.question for p in held[:3]]
    shown = [-4.0, 0.0, 4.0]
    rows, row_coeffs = expand_grid(questions, shown)
    start = time.perf_counter()
    gens = generate_batch(lm, rows, steering=SteeringSpec(vector, layer, row_coeffs), max_new_tokens=40)
    timings["generate_s"] = time.perf_counter() - start
    samples = Table(title="greedy answers (steered at every position)", show_lines=True)
    samples.add_column("question", max_width=36)
    for c in shown:
        samples.add_column(f"coeff {c:+g}")
    for i, q in enumerate(questions):
        samples.add_row(q, *[gens[j * len(questions) + i].text for j in range(len(shown))])
    console.print(samples)
    write_json(out / "summary.json", {
        "model": model, "layer": layer, "n_train": len(train), "n_heldout": len(held),
        "margins": dict(zip(map(str, margins.coeffs), margins.mean, strict=True)), "timings": timings,
        "samples": [{"question": r, "coeff": c, "text": g.text} for r, c, g in zip(rows, row_coeffs, gens, strict=True)],
    })
    console.print(f"wrote {out / 'summary.json'} and {out / 'vectors' / 'contrastive.safetensors'}")
