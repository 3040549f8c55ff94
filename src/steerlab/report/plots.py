"""Plotly figures for sweeps and studies, written as self-contained HTML (plotly.js inlined, so the
files open offline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_path, write_text
from ..pipelines.records import SweepMarginRow, SweepScoreRow
from ..pipelines.trait_records import TraitEntry


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


def score_vs_coeff_figure(scores: Sequence[SweepScoreRow], title: str = "judged score vs coefficient"):
    """Trait score (left) and coherence (right) vs coefficient, one line per layer, ±1 std bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("trait score (0-100)", "coherence (0-100)"))
    for layer in sorted({s["layer"] for s in scores}):
        rows = sorted((s for s in scores if s["layer"] == layer), key=lambda s: s["coeff"])
        coeffs = [r["coeff"] for r in rows]
        for col, key in ((1, "trait"), (2, "coherence")):
            fig.add_trace(
                go.Scatter(
                    x=coeffs,
                    y=[r[f"{key}_mean"] for r in rows],
                    mode="lines+markers",
                    name=f"layer {layer}",
                    legendgroup=f"layer {layer}",
                    showlegend=col == 1,
                    error_y={"type": "data", "array": [r[f"{key}_std"] or 0 for r in rows], "visible": True},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="coefficient")
    fig.update_yaxes(range=[-2, 102])
    fig.update_layout(title=title, template="plotly_white", height=420)
    return fig


def margin_vs_coeff_figure(
    margins: Sequence[SweepMarginRow] | Sequence[dict[str, Any]], title: str = "behaviour margin vs coefficient"
):
    """Behaviour margin vs coefficient, one line per (layer[, method/condition]) group."""
    import plotly.graph_objects as go

    fig = go.Figure()
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in margins:
        label = f"layer {m['layer']}" + (f" · {m['condition']}" if m.get("condition") else "")
        groups.setdefault(label, []).append(m)
    for label, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["coeff"])
        fig.add_trace(
            go.Scatter(
                x=[r["coeff"] for r in rows],
                y=[r["margin"] for r in rows],
                mode="lines+markers",
                name=label,
                error_y={"type": "data", "array": [r.get("std") or 0 for r in rows], "visible": False},
            )
        )
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=420,
        xaxis_title="coefficient",
        yaxis_title="margin (behaviour − other, log-lik per token)",
    )
    return fig


def _band_trace(
    go: Any, x: Sequence[float], lo: Sequence[float], hi: Sequence[float], color: str, name: str, **kw: Any
):
    """A filled band between ``lo`` and ``hi`` over ``x`` (one closed polygon)."""
    return go.Scatter(
        x=list(x) + list(x)[::-1],
        y=list(hi) + list(lo)[::-1],
        fill="toself",
        fillcolor=color,
        mode="lines",
        line={"width": 0},
        hoverinfo="skip",
        name=name,
        **kw,
    )


def trait_cosine_figure(cosine: dict[str, Any], layer: int | None = None):
    """Trait × trait cosine heatmaps, one per layer, with a layer slider (``layer`` shown first).

    ``cosine``: ``traits.json["cosine"]`` (``names``, ``layers``, ``matrix [n_layers][k][k]``,
    ``random_band``, ``ci95`` per pair, optional ``best_layers``). The title states the random band:
    |cos| of unrelated directions in d_model dims lies below ``band`` 95% of the time; hover shows
    each cell's resampling interval.
    """
    import plotly.graph_objects as go

    names, layers = cosine["names"], cosine["layers"]
    band = cosine["random_band"]
    ci = cosine.get("ci95", {})
    if layer is None:
        best = list((cosine.get("best_layers") or {}).values())
        layer = max(set(best), key=best.count) if best else layers[len(layers) // 2]
    fig = go.Figure()
    for L, matrix in zip(layers, cosine["matrix"], strict=True):
        hover = [
            [f"{a} vs {b}: cos {matrix[i][j]:+.3f}" + _ci_text(ci, a, b, L) for j, b in enumerate(names)]
            for i, a in enumerate(names)
        ]
        fig.add_trace(
            go.Heatmap(
                z=matrix,
                x=names,
                y=names,
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                reversescale=True,
                visible=layer == L,
                text=[[f"{v:+.2f}" for v in row] for row in matrix],
                texttemplate="%{text}",
                customdata=hover,
                hovertemplate="%{customdata}<extra></extra>",
                colorbar={"title": "cosine"},
                name=f"layer {L}",
            )
        )
    steps = [
        {
            "method": "update",
            "label": str(L),
            "args": [
                {"visible": [k == i for k in range(len(layers))]},
                {"title.text": f"trait × trait cosine at layer {L}"},
            ],
        }
        for i, L in enumerate(layers)
    ]
    size = max(420, 90 * len(names) + 220)
    fig.update_layout(
        title=f"trait × trait cosine at layer {layer}",
        template="plotly_white",
        height=size + 80,
        width=size + 120,
        yaxis={"autorange": "reversed"},
        sliders=[
            {"active": layers.index(layer), "steps": steps, "currentvalue": {"prefix": "layer "}, "pad": {"t": 40}}
        ],
        annotations=[
            {
                "text": f"random directions (d={band['d_model']}): 95% of |cos| < {band['band']:.3f}",
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": 1.08,
                "showarrow": False,
            }
        ],
    )
    return fig


def _ci_text(ci: dict[str, Any], a: str, b: str, layer: int) -> str:
    interval = ci.get(f"{a}|{b}") or ci.get(f"{b}|{a}")
    return f" (95% CI {interval[layer][0]:+.3f} to {interval[layer][1]:+.3f})" if interval else ""


def trait_steering_figure(name: str, entry: TraitEntry):
    """One trait's steering evidence: the change in margin vs coefficient (95% interval band, band of
    random same-norm directions, the prompting baselines' changes as dashed lines), the per-pair
    changes per coefficient (violins with every pair; above 0 = moved towards the trait), and, when
    judged, the trait score vs coefficient (interval bars, random band).

    ``entry``: a ``traits.json`` trait entry (``rows``, ``unsteered``, ``prompting``, ``best_layer``);
    changes are in nats/token against the unsteered model.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = sorted(entry["rows"], key=lambda r: r["coeff"])
    scored = any(r.get("score_mean") is not None for r in rows)
    titles = ["change in margin vs coefficient", "per-pair change"] + (["judged trait score"] if scored else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    coeffs = [r["coeff"] for r in rows]
    with_ci = [r for r in rows if r.get("ci95")]
    if with_ci:
        fig.add_trace(
            _band_trace(
                go,
                [r["coeff"] for r in with_ci],
                [r["ci95"][0] for r in with_ci],
                [r["ci95"][1] for r in with_ci],
                "rgba(214,39,40,0.18)",
                "95% interval (pairs)",
            ),
            row=1,
            col=1,
        )
    with_random = [r for r in rows if r.get("random")]
    if with_random:
        fig.add_trace(
            _band_trace(
                go,
                [r["coeff"] for r in with_random],
                [r["random"]["lo"] for r in with_random],
                [r["random"]["hi"] for r in with_random],
                "rgba(128,128,128,0.25)",
                f"random directions ({with_random[0]['random']['k']}, 2.5-97.5%)",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=coeffs,
            y=[r["effect"] for r in rows],
            mode="lines+markers",
            name="persona vector",
            line={"color": "#d62728"},
        ),
        row=1,
        col=1,
    )
    fig.add_hline(y=0, line_dash="dot", line_color="black", annotation_text="unsteered", row=1, col=1)
    for kind, color in (("pos", "#2ca02c"), ("neg", "#1f77b4")):
        prompted = (entry.get("prompting") or {}).get(kind)
        if prompted:
            fig.add_hline(
                y=prompted["effect"],
                line_dash="dash",
                line_color=color,
                annotation_text=f"{'positive' if kind == 'pos' else 'negative'} system prompt",
                row=1,
                col=1,
            )
    base = entry["unsteered"]["per_pair"]
    for r in rows:
        fig.add_trace(
            go.Violin(
                y=[m - b for m, b in zip(r["per_pair"], base, strict=True)],
                name=f"{r['coeff']:g}",
                points="all",
                box_visible=True,
                showlegend=False,
                line_color="#555",
                pointpos=0,
                jitter=0.3,
            ),
            row=1,
            col=2,
        )
    fig.add_hline(y=0, line_dash="dot", line_color="black", row=1, col=2)
    if scored:
        srows = [r for r in rows if r.get("score_mean") is not None]
        rand = [r for r in srows if r.get("score_random")]
        if rand:
            fig.add_trace(
                _band_trace(
                    go,
                    [r["coeff"] for r in rand],
                    [r["score_random"]["lo"] for r in rand],
                    [r["score_random"]["hi"] for r in rand],
                    "rgba(128,128,128,0.25)",
                    "random directions (score)",
                    showlegend=False,
                ),
                row=1,
                col=3,
            )
        fig.add_trace(
            go.Scatter(
                x=[r["coeff"] for r in srows],
                y=[r["score_mean"] for r in srows],
                mode="lines+markers",
                name="judged score",
                line={"color": "#9467bd"},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "visible": True,
                    "array": [(r["score_ci95"] or [0, r["score_mean"]])[1] - r["score_mean"] for r in srows],
                    "arrayminus": [r["score_mean"] - (r["score_ci95"] or [r["score_mean"], 0])[0] for r in srows],
                },
            ),
            row=1,
            col=3,
        )
        fig.update_yaxes(title_text="trait score (0-100)", row=1, col=3)
    fig.update_xaxes(title_text="coefficient", row=1, col=1)
    fig.update_xaxes(title_text="coefficient", type="category", row=1, col=2)
    fig.update_yaxes(title_text="change in margin (nats/token)", row=1, col=1)
    fig.update_layout(title=f"{name}: steering at layer {entry['best_layer']}", template="plotly_white", height=440)
    return fig
