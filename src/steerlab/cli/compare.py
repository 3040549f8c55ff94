"""`steerlab compare`: cosine similarity, norms and distances per layer between vectors."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import SteerlabError
from ..evaluate.geometry import DEFAULT_N_RANDOM, DEFAULT_QUANTILE, compare_vectors, pair_key, per_layer_summary
from ..io.atomic import write_json, write_text
from ..model.layers import resolve_one_layer
from ..progress import console, results
from ..report.geometry_plots import cosine_per_layer_figure, trait_matrix_figure
from ..report.plots import figure_html, heatmap_png
from ..vectors.vector import SteeringVector, steerlab_version
from .app import app
from .options import layer_option, seed_option

FILES = ("compare.json", "cosine_per_layer.html", "trait_matrix.html", "trait_matrix.png")


def default_names(paths: list[Path]) -> list[str]:
    """File stems; where two stems collide, ``parent/stem``; then a ``#i`` suffix if still equal."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def parse_names(text: str | None, paths: list[Path]) -> list[str]:
    """``--names a,b,c``: one distinct, non-empty name per vector (default: :func:`default_names`).
    Raises SteerlabError naming ``--names``."""
    if text is None:
        return default_names(paths)
    names = [n.strip() for n in text.split(",")]
    if len(names) != len(paths):
        raise SteerlabError(f"--names {text!r}: {len(names)} names for {len(paths)} vectors (one name per vector)")
    if any(not n for n in names) or any("|" in n for n in names):
        raise SteerlabError(f"--names {text!r}: names must be non-empty and must not contain '|'")
    if len(set(names)) != len(names):
        raise SteerlabError(f"--names {text!r}: names must be distinct")
    return names


def load_vectors(paths: list[Path], names: list[str]) -> dict[str, SteeringVector]:
    """Load every file and check that all have one shape (the error names each file's shape)."""
    vectors = {name: SteeringVector.load(p) for name, p in zip(names, paths, strict=True)}
    shapes = [tuple(v.data.shape) for v in vectors.values()]
    if len(set(shapes)) > 1:
        listing = ", ".join(f"{p} {list(s)}" for p, s in zip(paths, shapes, strict=True))
        raise SteerlabError(
            f"vectors differ in shape [n_layers, d_model]: {listing}; compare vectors made for one model"
        )
    return vectors


@app.command()
def compare(
    vectors: list[Path] = typer.Argument(
        ..., help="Two or more vectors (.safetensors, .gguf or persona-vectors .pt) of one shape."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output directory: compare.json, cosine_per_layer.html, trait_matrix.html/.png."
    ),
    names: str = typer.Option(None, "--names", help="Comma-separated names, one per vector (default: file names)."),
    layer: str = layer_option(None, help="The one layer of the trait matrix (default: the middle layer)."),
    n_random: int = typer.Option(DEFAULT_N_RANDOM, "--n-random", min=2, help="Random directions for the noise band."),
    quantile: float = typer.Option(
        DEFAULT_QUANTILE,
        "--quantile",
        min=0.5,
        max=0.9999,
        help="Noise band: this quantile of |cos| between random directions.",
    ),
    seed: int = seed_option("Seed of the random directions."),
) -> None:
    """Cosine per layer between every two vectors, norms, distances, and the random-direction baseline.

    Writes DIR/compare.json, DIR/cosine_per_layer.html (noise band drawn) and DIR/trait_matrix.html
    (cosine heatmap at --layer). HTML files embed plotly.js and open offline. Example:

        steerlab compare contrastive.safetensors persona.safetensors diff.safetensors -o out/compare
    """
    if len(vectors) < 2:
        raise SteerlabError(f"compare needs at least two vector files (got {len(vectors)})")
    if out.exists() and not out.is_dir():
        raise SteerlabError(f"--out {out}: exists and is not a directory")
    labels = parse_names(names, vectors)
    loaded = load_vectors(vectors, labels)
    first = next(iter(loaded.values()))
    n_layers = first.n_layers
    layer = n_layers // 2 if layer is None else resolve_one_layer(layer, n_layers, "--layer", "each vector")
    comparison = compare_vectors(loaded, n_random=n_random, seed=seed, quantile=quantile)
    matrix = comparison.matrix(layer)
    band = comparison.baseline["band"]
    summary = {}
    for (a, b), cos in comparison.cosines.items():
        s = per_layer_summary(cos)
        s["at_layer"] = float(cos[layer])
        s["layers_above_band"] = int((cos.abs() > band).sum())
        summary[pair_key(a, b)] = s
    record = {
        "steerlab_version": steerlab_version(),
        "config": {
            "vectors": [str(p) for p in vectors],
            "names": labels,
            "layer": layer,
            "n_random": n_random,
            "quantile": quantile,
            "seed": seed,
        },
        "files": {name: str(p) for name, p in zip(labels, vectors, strict=True)},
        **comparison.to_dict(),
        "summary": summary,
        "trait_matrix": {"layer": layer, "names": labels, "matrix": [[float(x) for x in row] for row in matrix]},
    }
    title = f"steerlab compare: {', '.join(labels)}"
    html_cos = figure_html(cosine_per_layer_figure(comparison, title))
    html_matrix = figure_html(trait_matrix_figure(labels, matrix, layer))
    # Everything is computed before the first write; each file is written atomically.
    write_json(out / FILES[0], record)
    write_text(out / FILES[1], html_cos)
    write_text(out / FILES[2], html_matrix)
    heatmap_png(out / FILES[3], labels, matrix, f"cosine between vectors at layer {layer}")

    base = comparison.baseline
    table = Table(
        title=f"cosine per layer ({n_layers} layers, d_model {comparison.d_model}); random "
        f"directions: E|cos| = {base['expected_abs_cos']:.3f}, "
        f"{base['quantile']:.0%} band {band:.3f}"
    )
    for col in ("pair", f"cos @ L{layer}", "mean", "min (layer)", "max (layer)", "|cos| > band"):
        table.add_column(col, justify="left" if col == "pair" else "right")
    for (a, b), s in zip(comparison.pairs, summary.values(), strict=True):
        table.add_row(
            f"{a} vs {b}",
            f"{s['at_layer']:+.3f}",
            f"{s['mean']:+.3f}",
            f"{s['min']:+.3f} ({s['argmin']})",
            f"{s['max']:+.3f} ({s['argmax']})",
            f"{s['layers_above_band']}/{n_layers}",
        )
    results.print(table)
    mat = Table(title=f"trait matrix at layer {layer}")
    mat.add_column("")
    for name in labels:
        mat.add_column(name, justify="right")
    for name, row in zip(labels, matrix, strict=True):
        mat.add_row(name, *(f"{float(x):+.2f}" for x in row))
    results.print(mat)
    console.print(f"wrote {', '.join(str(out / f) for f in FILES)}")
