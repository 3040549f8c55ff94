"""Plotly figures for sweeps and studies, written as self-contained HTML (plotly.js inlined, so the
files open offline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_path, write_text


def figure_html(fig: Any) -> str:
    """A complete HTML page with plotly.js embedded (no network needed to view it)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_figure(path: str | Path, fig: Any) -> None:
    """Write a figure as a standalone HTML file (atomic)."""
    write_text(path, figure_html(fig))


def heatmap_png(path: str | Path, names: Sequence[str], matrix: Any, title: str) -> None:
    """A cosine heatmap (values written in, colours fixed to [-1, 1]) as a PNG, with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [[float(x) for x in row] for row in matrix]
    size = 1.2 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="cosine")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def score_vs_coeff_figure(scores: Sequence[dict[str, Any]], title: str = "judged score vs coefficient"):
    """Trait score (left) and coherence (right) vs coefficient, one line per layer, ±1 std bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("trait score (0-100)", "coherence (0-100)"))
    for layer in sorted({s["layer"] for s in scores}):
        rows = sorted((s for s in scores if s["layer"] == layer), key=lambda s: s["coeff"])
        coeffs = [r["coeff"] for r in rows]
        for col, key in ((1, "trait"), (2, "coherence")):
            fig.add_trace(go.Scatter(
                x=coeffs, y=[r[f"{key}_mean"] for r in rows], mode="lines+markers", name=f"layer {layer}",
                legendgroup=f"layer {layer}", showlegend=col == 1,
                error_y={"type": "data", "array": [r[f"{key}_std"] or 0 for r in rows], "visible": True},
            ), row=1, col=col)
    fig.update_xaxes(title_text="coefficient")
    fig.update_yaxes(range=[-2, 102])
    fig.update_layout(title=title, template="plotly_white", height=420)
    return fig


def margin_vs_coeff_figure(margins: Sequence[dict[str, Any]], title: str = "behaviour margin vs coefficient"):
    """Behaviour margin vs coefficient, one line per (layer[, method/condition]) group."""
    import plotly.graph_objects as go

    fig = go.Figure()
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in margins:
        label = f"layer {m['layer']}" + (f" · {m['condition']}" if m.get("condition") else "")
        groups.setdefault(label, []).append(m)
    for label, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["coeff"])
        fig.add_trace(go.Scatter(
            x=[r["coeff"] for r in rows], y=[r["margin"] for r in rows], mode="lines+markers", name=label,
            error_y={"type": "data", "array": [r.get("std") or 0 for r in rows], "visible": False},
        ))
    fig.update_layout(title=title, template="plotly_white", height=420, xaxis_title="coefficient",
                      yaxis_title="margin (behaviour − other, log-lik per token)")
    return fig
