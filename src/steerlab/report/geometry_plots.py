"""Plotly figures for :mod:`steerlab.evaluate.geometry` results, written as self-contained HTML (plotly.js
embedded, so files open offline).

- :func:`cosine_per_layer_figure` — cosine per layer for every pair, with the random-direction noise
  band (empirical quantile, shaded) and the analytic expected |cos| (dashed), and norms per layer.
- :func:`trait_matrix_figure` — cosine heatmap of several vectors at one layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..evaluate.geometry import Comparison


def cosine_per_layer_figure(comparison: Comparison, title: str | None = None):
    """Two panels sharing the layer axis: cosine per pair (with noise band) and norm per vector."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layers = list(range(comparison.n_layers))
    base = comparison.baseline
    band, expected = base["band"], base["expected_abs_cos"]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.65, 0.35],
        subplot_titles=("cosine similarity per layer", "norm per layer"),
    )
    # Noise band: a filled polygon from -band to +band across all layers.
    fig.add_trace(
        go.Scatter(
            x=layers + layers[::-1],
            y=[band] * len(layers) + [-band] * len(layers),
            fill="toself",
            fillcolor="rgba(128,128,128,0.2)",
            line={"width": 0},
            hoverinfo="skip",
            name=f"random directions: {base['quantile']:.0%} of |cos| < {band:.3f} (d={comparison.d_model})",
        ),
        row=1,
        col=1,
    )
    for sign in (1, -1):
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=[sign * expected] * len(layers),
                mode="lines",
                line={"dash": "dash", "color": "gray", "width": 1},
                hoverinfo="skip",
                name=f"expected |cos| of random directions ≈ √(2/πd) = {expected:.3f}",
                showlegend=sign == 1,
                legendgroup="expected",
            ),
            row=1,
            col=1,
        )
    for (a, b), cos in comparison.cosines.items():
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=[float(c) for c in cos],
                mode="lines+markers",
                name=f"{a} vs {b}",
                hovertemplate="layer %{x}: cos %{y:.3f}<extra>" + f"{a} vs {b}</extra>",
            ),
            row=1,
            col=1,
        )
    for name, norms in comparison.norms.items():
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=[float(n) for n in norms],
                mode="lines+markers",
                name=f"‖{name}‖",
                hovertemplate="layer %{x}: norm %{y:.4g}<extra>" + f"{name}</extra>",
            ),
            row=2,
            col=1,
        )
    fig.update_yaxes(title_text="cosine", range=[-1.05, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="L2 norm", row=2, col=1)
    fig.update_xaxes(title_text="layer (output of block L)", row=2, col=1)
    fig.update_layout(
        title=title or "steerlab compare", template="plotly_white", height=800, legend={"orientation": "v"}
    )
    return fig


def trait_matrix_figure(names: Sequence[str], matrix: torch.Tensor, layer: int, title: str | None = None):
    """Heatmap of a cosine matrix (diverging colours fixed to [-1, 1]) with the values written in."""
    import plotly.graph_objects as go

    values = [[float(x) for x in row] for row in matrix]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=list(names),
            y=list(names),
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            text=[[f"{v:.2f}" for v in row] for row in values],
            texttemplate="%{text}",
            hovertemplate="%{y} vs %{x}: cos %{z:.3f}<extra></extra>",
            colorbar={"title": "cosine"},
        )
    )
    size = max(400, 80 * len(names) + 200)
    fig.update_layout(
        title=title or f"cosine between vectors at layer {layer}",
        template="plotly_white",
        width=size + 100,
        height=size,
        yaxis={"autorange": "reversed"},
    )
    return fig
